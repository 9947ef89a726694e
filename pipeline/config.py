"""Every default of the pipeline, in one place, validated once at the edge.

Each stage has a frozen dataclass. `from_dict` refuses unknown keys and bad choices with a
message naming the valid options, so a typo in a config file never passes silently. A run
directory keeps a JSON copy of the config each stage ran with.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from pipeline.artifacts import run_directory
from pipeline.errors import ConfigError

# Languages written without spaces between words: SentencePiece needs a character coverage
# below 1.0 there, or rare characters each take a vocabulary slot.
_CJK = {"ja", "zh", "ko", "th"}
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "one", "mirrored", "multiworker")
BLEU_TOKENIZERS = ("none", "13a", "intl", "char", "ja-mecab", "zh")  # sacreBLEU's, as evaluate and train use them


def default_character_coverage(lang: str) -> float:
    return 0.9995 if lang.split("-")[0].lower() in _CJK else 1.0


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, low: float | None = None,
            high: float | None = None, low_open: bool = False, high_open: bool = False, cli: str | None = None) -> Any:
    """A config field, defined once: its default, its help text (the CLI option's and the TOML key's),
    and the checks `Section.validate` applies: `choices`, or the bounds `low`/`high` (closed unless
    `low_open`/`high_open`). `cli` names the command-line option when it is not `--field-name`."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high,
                                            "low_open": low_open, "high_open": high_open, "cli": cli})


class Section:
    """A config section (`[train]`, ...): its fields are `setting`s, checked by `validate`; a
    subclass adds the checks that involve several fields in `check`."""

    SECTION = ""

    def validate(self) -> None:
        for f in fields(self):
            _check_field(f"{self.SECTION}.{f.name}", getattr(self, f.name), f.metadata)
        self.check()

    def check(self) -> None:
        pass


@dataclass(frozen=True)
class SplitConfig(Section):
    """Held-out sets cut from a corpus that comes as one file (Tatoeba's export, say)."""

    SECTION = "split"
    dev: int = setting(0, "Source sentences held out for dev, with all their translations (0: none).", low=0)
    test: int = setting(0, "Source sentences held out for test, with all their translations (0: none).", low=0)
    seed: int = setting(1234, "Salts the source-sentence hash that decides each pair's side.")

    @property
    def enabled(self) -> bool:
        return self.dev > 0 or self.test > 0


@dataclass(frozen=True)
class TokenizeConfig(Section):
    SECTION = "tokenize"
    model_type: str = setting("unigram", "SentencePiece model type.", choices=("unigram", "bpe", "char"))
    vocab_size: int = setting(4000, "SentencePiece vocabulary size per language.", low=8)
    character_coverage: float | None = setting(
        None, "Characters covered by the vocabulary (default: 0.9995 for ja/zh/ko/th, else 1.0).", low=0.9, high=1.0)
    max_tokens: int = setting(100, "Drop pairs with more pieces than this on either side.", low=1)
    # Sampling bounds memory as the corpus grows (500k pairs: 396 MB peak instead of 715 MB, half
    # the time); plenty for vocabularies of a few thousand pieces, raise it for much larger ones.
    input_sentence_size: int = setting(250_000, "SentencePiece learns its pieces from at most this many "
                                                "lines per language, sampled.", low=1)
    seed: int = setting(1234, "Seed of SentencePiece's sampling.")


@dataclass(frozen=True)
class PretrainConfig(Section):
    SECTION = "pretrain"
    dim: int = setting(256, "Vector size; must equal train's --embed-dim to be used.", low=1)
    window: int = setting(5, "Largest context distance (sampled per word, as word2vec does).", low=1)
    negatives: int = setting(5, "Negative samples per (centre, context) pair.", low=1)
    epochs: int = setting(5, "Passes over each side's corpus.", low=1)
    subsample: float = setting(1e-3, "Down-sampling threshold of frequent pieces; 0 disables.", low=0, high=1,
                               high_open=True)
    learning_rate: float = setting(0.025, "Start of word2vec's linearly decaying SGD rate (to 1e-4 of it).",
                                   low=0, low_open=True)
    batch_size: int = setting(4096, "About this many (centre, context) pairs per step.", low=1)
    extra_src: str | None = setting(None, "Extra monolingual source-language text, one sentence a line.")
    extra_tgt: str | None = setting(None, "Extra monolingual target-language text, one sentence a line.")
    seed: int = setting(1234, "Seed of initialisation and sampling.")


@dataclass(frozen=True)
class ModelConfig(Section):
    SECTION = "model"
    cell: str = setting("gru", "Recurrent cell of encoder and decoder; lstm-peephole: an LSTM whose gates also "
                               "see the cell state (Gers and Schmidhuber).", choices=("gru", "lstm", "lstm-peephole"))
    embed_dim: int = setting(256, "Embedding size of both languages' pieces.", low=1)
    units: int = setting(256, "RNN units (encoder: per direction; decoder).", low=1)
    layers: int = setting(1, "Bidirectional encoder layers.", low=1)
    attention_units: int = setting(256, "Size of the additive attention's hidden layer.", low=1)
    dropout: float = setting(0.2, "Dropout on embeddings, between encoder layers and on the readout.", low=0, high=1,
                             high_open=True)
    word_dropout: float = setting(0.0, "Drop whole source and target words in training with this probability "
                                  "(their embeddings zeroed, Sennrich and Zhang 2019); 0: off.", low=0, high=1,
                                  high_open=True)
    tie_embeddings: bool = setting(True, "Share the target embedding with the output layer.")


@dataclass(frozen=True)
class TrainConfig(Section):
    SECTION = "train"
    epochs: int = setting(20, "Most epochs; early stopping may end sooner.", low=1)
    batch_size: int = setting(64, "Sentences per batch.", low=1)
    learning_rate: float = setting(1e-3, "Adam's learning rate.", low=0, low_open=True)
    clip_norm: float = setting(1.0, "Global gradient-norm clipping.", low=0, low_open=True)
    label_smoothing: float = setting(0.1, "Label smoothing of the loss.", low=0, high=1, high_open=True)
    patience: int = setting(4, "Epochs without a better dev BLEU before stopping.", low=1)
    # the learning rate's course: pipeline/train.py's `LearningRateSchedule`
    lr_schedule: str = setting("plateau", "plateau: lower the learning rate by lr_decay when dev BLEU stalls; "
                               "cosine: lower it along a half cosine to 0 at the last epoch (Loshchilov and Hutter "
                               "2017).", choices=("plateau", "cosine"))
    warmup_steps: int = setting(0, "Raise the learning rate linearly from 0 over this many steps first (0: off).",
                                low=0)
    lr_decay: float = setting(0.5, "Multiply the learning rate by this when dev BLEU stalls (plateau).", low=0, high=1,
                              low_open=True, high_open=True)
    lr_patience: int = setting(1, "Epochs without a better dev BLEU (by 0.1) before the learning rate is lowered "
                               "(plateau).", low=1)
    pretrained: bool = setting(True, "Initialise embeddings from the pretrain stage if it ran.")
    freeze_embeddings: bool = setting(False, "Keep pretrained embeddings fixed.")
    max_len: int = setting(80, "Skip training pairs with this many pieces or more on a side.", low=1)
    dev_beam: int = setting(1, "Beam size of the per-epoch dev BLEU (1: greedy, fast).", low=1)
    keep_checkpoints: int = setting(5, "Keep the last N epochs' weights for `average` (0: all).", low=0)
    average_checkpoints: int = setting(5, "Average the last N epochs at the end if dev BLEU gains (0: off).", low=0)
    time_budget: float = setting(0.0, "Stop after this many minutes, validation included (0: no limit).", low=0)
    # mixed: layers compute in float16 (GPUs with tensor cores; the loss is scaled) or bfloat16
    # (newer CPUs and GPUs), weights stay float32; the saved model is float32. auto: see
    # pipeline.distribute.precision_for
    precision: str = setting("auto", "auto: mixed_bfloat16 on a CPU with bfloat16 instructions (AVX512-BF16, "
                                     "AMX) and no GPU, float32 elsewhere; or float32, mixed_float16 (GPU), "
                                     "mixed_bfloat16.", choices=PRECISIONS)
    # subword regularisation (Kudo 2018): pipeline/corpus.py's `Resegmenter`
    subword_alpha: float = setting(0.0, "Segment the training pairs anew each epoch, sampled with this smoothing, "
                                        "e.g. 0.5 (0: off, the best segmentation); dev and test stay deterministic.",
                                   low=0)
    subword_nbest: int = setting(64, "With subword_alpha: sample among the N best segmentations (64 comes close to "
                                     "sampling among all).")
    seed: int = setting(1234, "Seed of initialisation, dropout, batch order and sampled segmentations.")
    # see pipeline/distribute.py and the README's "When one machine is not enough"
    strategy: str = setting("auto", "tf.distribute strategy: one device, mirrored (this machine's GPUs), multiworker "
                            "(the cluster in TF_CONFIG), or auto.", choices=STRATEGIES)

    @property
    def dev_decode(self) -> "DecodeConfig":
        """How the per-epoch dev BLEU decodes (and checkpoint averaging is judged)."""
        return DecodeConfig(strategy="beam" if self.dev_beam > 1 else "greedy", beam=self.dev_beam)

    def check(self) -> None:
        if 0 < self.keep_checkpoints < self.average_checkpoints:
            raise ConfigError(f"train.average_checkpoints ({self.average_checkpoints}) needs at least as many "
                              f"kept checkpoints; train.keep_checkpoints is {self.keep_checkpoints}")
        if self.subword_alpha and self.subword_nbest < 2:
            raise ConfigError(f"train.subword_nbest must be at least 2 to sample segmentations (-1, all of them, "
                              f"is SentencePiece's sampling, not reproducible between processes); "
                              f"got {self.subword_nbest}")


@dataclass(frozen=True)
class DecodeConfig(Section):
    SECTION = "decode"
    strategy: str = setting("beam", "Search: greedy, beam or sample.", choices=("greedy", "beam", "sample"))
    beam: int = setting(5, "Beam size (the default strategy).", low=1)
    length_penalty: float = setting(1.0, "Beam scores are log p / length**alpha.")
    max_len_ratio: float = setting(2.0, "Output pieces <= ratio * source pieces + 10.", low=0, low_open=True)
    temperature: float = setting(1.0, "Sampling temperature.", low=0, low_open=True)
    top_k: int = setting(0, "Sample among the k likeliest pieces (0: all).", low=0)
    batch_size: int = setting(128, "Sentences decoded together.", low=1)
    n_best: int = setting(1, "With --format jsonl: the n best hypotheses of the beam.", low=1)
    # its raw text is cut to 16 characters a piece (the longest SentencePiece piece) before
    # encoding, which bounds the encoding as well
    max_input_tokens: int = setting(256, "Cut a source line longer than this many pieces (counted in a warning), "
                                         "so one hostile line cannot stall a batch.", low=1)
    seed: int = setting(1234, "Seed for --sample.")

    def check(self) -> None:
        if self.n_best > self.beam and self.strategy == "beam":
            raise ConfigError(f"decode.n_best ({self.n_best}) cannot exceed decode.beam ({self.beam})")


@dataclass(frozen=True)
class EvaluateConfig(Section):
    SECTION = "evaluate"
    tokenize: str = setting("13a", "BLEU tokenisation (sacreBLEU's): 13a for raw text, none for pre-tokenised "
                                   "data, ...; evaluate's default is the one the run's training used.",
                            choices=BLEU_TOKENIZERS)
    group_references: bool = setting(False, "Score each distinct source sentence once, against the references of "
                                            "all its lines (a test set that repeats a source for each of its "
                                            "translations, as the split stage writes one).")


@dataclass(frozen=True)
class DataConfig(Section):
    """Where the corpus lives, for the `pipeline` command (and tokenize's and split's options)."""

    SECTION = "data"
    src: str | None = setting(None, "Source-language text, one sentence a line.")
    tgt: str | None = setting(None, "Target-language text, line-aligned with --src.")
    tsv: str | None = setting(None, "Tab-separated pairs instead of --src/--tgt, e.g. the Tatoeba export.")
    tsv_src_col: int = setting(1, "0-based --tsv column of the source (Tatoeba: 1 = Japanese).", low=0,
                               cli="--src-col")
    tsv_tgt_col: int = setting(0, "0-based --tsv column of the target (Tatoeba: 0 = English).", low=0,
                               cli="--tgt-col")
    src_lang: str | None = setting(None, "Source language code (default: --src's suffix, else ja).")
    tgt_lang: str | None = setting(None, "Target language code (default: --tgt's suffix, else en).")
    dev_src: str | None = setting(None, "Dev source text (train default: hold out 500 training pairs).")
    dev_tgt: str | None = setting(None, "Dev target text, line-aligned with --dev-src.")
    test_src: str | None = setting(None, "Test source text, for the evaluate stage.")
    test_tgt: str | None = setting(None, "Test references, line-aligned with --test-src.")


@dataclass(frozen=True)
class PipelineConfig:
    run: str = "saved_models/default"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def validate(self) -> None:
        run_directory(self.run)
        if not self.data.tsv and not (self.data.src and self.data.tgt):
            raise ConfigError("data needs either `tsv` or both `src` and `tgt`")
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        for held_out, given in (("dev", self.data.dev_src), ("test", self.data.test_src)):
            if getattr(self.split, held_out) and given:
                raise ConfigError(f"split.{held_out} and data.{held_out}_src both give a {held_out} set; "
                                  "choose one")


T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build `cls` from a plain dict, refusing unknown keys and wrongly typed values."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys: {', '.join(sorted(known))}"
        )
    kinds = typing.get_type_hints(cls)  # each field's annotated type: int, float | None, DataConfig, ...
    kwargs = {}
    for name, value in values.items():
        kind = kinds[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"config section [{name}] must be a table")
            value = from_dict(kind, value, where=name)
        else:
            value = _coerce(f"{where}.{name}" if where else name, value, kind)
        kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def with_new_settings(recorded: dict[str, Any], current: dict[str, Any], section: str) -> dict[str, Any]:
    """Settings that a stage recorded (its manifest's, an interrupted training's), with each setting
    that `current` holds at its default and they lack filled in. Such a setting came into the code
    after they were written; a new setting's default keeps the behaviour from before it, so a run
    made before an upgrade stays up to date, and its interrupted training resumable. `section`
    names the Section whose fields the top level holds; a nested dict is the section of its key."""
    defaults = next((dataclasses.asdict(f.default_factory()) for f in fields(PipelineConfig)
                     if f.default_factory is not dataclasses.MISSING and f.name == section), {})
    filled = dict(recorded)
    for key, value in current.items():
        if key not in filled and key in defaults and value == defaults[key]:
            filled[key] = value
        elif isinstance(value, dict) and isinstance(filled.get(key), dict):
            filled[key] = with_new_settings(filled[key], value, key)
    return filled


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """The config file, with `overrides` (`--section.key value` or `--section.key=value`, values
    in TOML syntax, a bare word taken as a string) applied on top, validated as one."""
    values = _read_toml(Path(path))
    for key, value in _override_pairs(overrides or []):
        *sections, name = key.split(".")
        table = values
        for section in sections:
            table = table.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--{key}: [{section}] is not a table in {path}")
        table[name] = value
    return from_dict(PipelineConfig, values)


def _override_pairs(args: list[str]) -> list[tuple[str, Any]]:
    pairs, args = [], list(args)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --train.epochs 3")
        key, eq, text = arg[2:].partition("=")
        if not eq:
            if not args:
                raise ConfigError(f"--{key} needs a value")
            text = args.pop(0)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word: a string
        pairs.append((key.replace("-", "_"), value))
    return pairs


def _read_toml(path: Path) -> dict[str, Any]:
    from pipeline.data import read_lines

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    text = "\n".join(read_lines(path))  # one-line errors for a directory or bytes that are not UTF-8
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return values


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """`value` checked against the field's annotated type: bool, int, float or str, maybe `| None`."""
    allowed = typing.get_args(kind) or (kind,)
    if value is None and type(None) in allowed:
        return value
    if bool in allowed:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif int in allowed:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif float in allowed:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        expected = "a number"
    else:
        if isinstance(value, str):
            return value
        expected = "a string"
    raise ConfigError(f"{name} must be {expected}, got {value!r}")


def _check_field(name: str, value: Any, meta: Any) -> None:
    """One field against its `setting`: finite, among its choices, within its bounds."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number; got {value}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {', '.join(meta['choices'])}; got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    too_low = low is not None and (value <= low if meta["low_open"] else value < low)
    too_high = high is not None and (value >= high if meta["high_open"] else value > high)
    if not (too_low or too_high):
        return
    if high is None:
        raise ConfigError(f"{name} must be {'>' if meta['low_open'] else '>='} {_number(low)}; got {value}")
    raise ConfigError(f"{name} must be in {'(' if meta['low_open'] else '['}{_number(low)}, {_number(high)}"
                      f"{')' if meta['high_open'] else ']'}; got {value}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
