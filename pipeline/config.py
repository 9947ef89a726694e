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

from pipeline.errors import ConfigError

# Languages written without spaces between words: SentencePiece needs a character coverage
# below 1.0 there, or rare characters each take a vocabulary slot.
_CJK = {"ja", "zh", "ko", "th"}
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
BLEU_TOKENIZERS = ("none", "13a", "intl", "char", "ja-mecab", "zh")  # sacreBLEU's, as evaluate and train use them


def default_character_coverage(lang: str) -> float:
    return 0.9995 if lang.split("-")[0].lower() in _CJK else 1.0


@dataclass(frozen=True)
class SplitConfig:
    """Held-out sets cut from a corpus that comes as one file (Tatoeba's export, say)."""

    dev: int = 0  # source sentences (with all their translations) held out for dev; 0 = none
    test: int = 0  # source sentences held out for test; 0 = none. Both 0: no split stage
    seed: int = 1234  # salts the source-sentence hash that decides each pair's side

    @property
    def enabled(self) -> bool:
        return self.dev > 0 or self.test > 0

    def validate(self) -> None:
        _positive("split.dev", self.dev, minimum=0)
        _positive("split.test", self.test, minimum=0)


@dataclass(frozen=True)
class TokenizeConfig:
    model_type: str = "unigram"  # unigram | bpe | char
    vocab_size: int = 4000  # per language
    character_coverage: float | None = None  # None: 0.9995 for CJK languages, else 1.0
    max_tokens: int = 100  # pairs with more pieces than this on either side are dropped
    # SentencePiece learns its pieces from at most this many lines per language, sampled: memory
    # then stays flat as the corpus grows (500k pairs: 396 MB peak instead of 715 MB, half the
    # time); plenty for vocabularies of a few thousand pieces, raise it for much larger ones.
    input_sentence_size: int = 250_000
    seed: int = 1234

    def validate(self) -> None:
        _finite(self, "tokenize")
        _choice("tokenize.model_type", self.model_type, ("unigram", "bpe", "char"))
        _positive("tokenize.vocab_size", self.vocab_size, minimum=8)
        _positive("tokenize.max_tokens", self.max_tokens)
        if self.character_coverage is not None and not 0.9 <= self.character_coverage <= 1.0:
            raise ConfigError("tokenize.character_coverage must be between 0.9 and 1.0")


@dataclass(frozen=True)
class PretrainConfig:
    dim: int = 256
    window: int = 5  # maximum distance; the effective window is sampled per word (word2vec)
    negatives: int = 5
    epochs: int = 5
    subsample: float = 1e-3  # word2vec's frequent-piece down-sampling threshold; 0 disables it
    learning_rate: float = 0.025  # linearly decayed to 1e-4 of it, as in word2vec
    batch_size: int = 4096  # about this many (centre, context) pairs per step
    extra_src: str | None = None  # optional monolingual text, one sentence a line
    extra_tgt: str | None = None
    seed: int = 1234

    def validate(self) -> None:
        _finite(self, "pretrain")
        for name in ("dim", "window", "negatives", "epochs", "batch_size"):
            _positive(f"pretrain.{name}", getattr(self, name))
        if not 0 <= self.subsample < 1:
            raise ConfigError("pretrain.subsample must be in [0, 1)")
        if self.learning_rate <= 0:
            raise ConfigError("pretrain.learning_rate must be positive")


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "gru"  # gru | lstm
    embed_dim: int = 256
    units: int = 256  # per direction in the encoder; the decoder has 2 * units
    layers: int = 1  # encoder layers (bidirectional)
    attention_units: int = 256
    dropout: float = 0.2
    tie_embeddings: bool = True  # share the target embedding with the output projection

    def validate(self) -> None:
        _finite(self, "model")
        _choice("model.cell", self.cell, ("gru", "lstm"))
        for name in ("embed_dim", "units", "layers", "attention_units"):
            _positive(f"model.{name}", getattr(self, name))
        if not 0 <= self.dropout < 1:
            raise ConfigError("model.dropout must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64  # sentences per batch
    learning_rate: float = 1e-3
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    patience: int = 4  # epochs without a better dev BLEU before stopping
    lr_decay: float = 0.5  # multiply the learning rate by this when dev BLEU stalls
    lr_patience: int = 1  # epochs without a better dev BLEU (by 0.1) before the rate is lowered
    pretrained: bool = True  # initialise embeddings from the pretrain stage when present
    freeze_embeddings: bool = False
    max_len: int = 80  # pieces; longer training pairs are skipped
    dev_beam: int = 1  # beam size for the per-epoch dev BLEU (1 = greedy, fast)
    keep_checkpoints: int = 5  # the last N epochs' weights, for checkpoint averaging; 0 keeps all
    average_checkpoints: int = 5  # at the end, average the last N epochs; kept if dev BLEU improves
    time_budget: float = 0.0  # minutes of training (validation included) before stopping; 0 = none
    # float32, or mixed precision: layers compute in float16 (GPUs with tensor cores; the loss is
    # scaled) or bfloat16 (newer CPUs and GPUs), weights stay float32; the saved model is float32
    precision: str = "float32"
    seed: int = 1234

    @property
    def dev_decode(self) -> "DecodeConfig":
        """How the per-epoch dev BLEU decodes (and checkpoint averaging is judged)."""
        return DecodeConfig(strategy="beam" if self.dev_beam > 1 else "greedy", beam=self.dev_beam)

    def validate(self) -> None:
        _finite(self, "train")
        _choice("train.precision", self.precision, PRECISIONS)
        for name in ("epochs", "batch_size", "max_len", "dev_beam", "lr_patience"):
            _positive(f"train.{name}", getattr(self, name))
        if self.keep_checkpoints < 0 or self.time_budget < 0 or self.average_checkpoints < 0:
            raise ConfigError("train.keep_checkpoints, average_checkpoints and time_budget must be >= 0")
        if 0 < self.keep_checkpoints < self.average_checkpoints:
            raise ConfigError(f"train.average_checkpoints ({self.average_checkpoints}) needs at least as many "
                              f"kept checkpoints; keep_checkpoints is {self.keep_checkpoints}")
        if self.learning_rate <= 0 or self.clip_norm <= 0:
            raise ConfigError("train.learning_rate and train.clip_norm must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("train.label_smoothing must be in [0, 1)")
        if not 0 < self.lr_decay < 1:
            raise ConfigError(f"train.lr_decay must be in (0, 1); got {self.lr_decay}")


@dataclass(frozen=True)
class DecodeConfig:
    strategy: str = "beam"  # greedy | beam | sample
    beam: int = 5
    length_penalty: float = 1.0  # alpha in score / length ** alpha; 0 = raw log-probability
    max_len_ratio: float = 2.0  # output pieces <= ratio * source pieces + 10
    temperature: float = 1.0
    top_k: int = 0  # 0 = sample from the whole distribution
    batch_size: int = 128  # sentences decoded together; 64 -> 128: +8% greedy, +19% beam 5 here
    n_best: int = 1
    # a source line longer than this many pieces is cut to it (and counted in a warning), so one
    # hostile line cannot stall translation; its raw text is cut to 16 characters a piece (the
    # longest SentencePiece piece) before encoding, which bounds the encoding as well
    max_input_tokens: int = 256
    seed: int = 1234

    def validate(self) -> None:
        _finite(self, "decode")
        _choice("decode.strategy", self.strategy, ("greedy", "beam", "sample"))
        for name in ("beam", "batch_size", "n_best", "max_input_tokens"):
            _positive(f"decode.{name}", getattr(self, name))
        if self.max_len_ratio <= 0:
            raise ConfigError("decode.max_len_ratio must be positive")
        if self.n_best > self.beam and self.strategy == "beam":
            raise ConfigError(f"decode.n_best ({self.n_best}) cannot exceed the beam ({self.beam})")
        if self.temperature <= 0:
            raise ConfigError("decode.temperature must be positive")
        if self.top_k < 0:
            raise ConfigError("decode.top_k must be >= 0")


@dataclass(frozen=True)
class EvaluateConfig:
    tokenize: str = "none"  # sacreBLEU tokeniser: none for pre-tokenised data, 13a for raw text

    def validate(self) -> None:
        _choice("evaluate.tokenize", self.tokenize, BLEU_TOKENIZERS)


@dataclass(frozen=True)
class DataConfig:
    """Where the corpus lives, for the `pipeline` command."""

    src: str | None = None
    tgt: str | None = None
    tsv: str | None = None
    tsv_src_col: int = 1
    tsv_tgt_col: int = 0
    src_lang: str | None = None
    tgt_lang: str | None = None
    dev_src: str | None = None
    dev_tgt: str | None = None
    test_src: str | None = None
    test_tgt: str | None = None

    def validate(self) -> None:
        if not self.tsv and not (self.src and self.tgt):
            raise ConfigError("data needs either `tsv` or both `src` and `tgt`")


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


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    from pipeline.data import read_lines

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    text = "\n".join(read_lines(path))  # one-line errors for a directory or bytes that are not UTF-8
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return from_dict(PipelineConfig, values)


def run_directory(path: str | Path) -> Path:
    """`path` as a run directory, refusing an empty path (the working directory) and a file."""
    if not str(path).strip():
        raise ConfigError("the run directory is an empty path", hint="give one, e.g. --run saved_models/NAME")
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"the run directory {path} is a file", hint="give a directory, e.g. saved_models/NAME")
    return Path(path)


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


def _finite(config: Any, section: str) -> None:
    """Every float setting must be a number: NaN passes every range check, and inf means nothing."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{f.name} must be a finite number; got {value}")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}; got {value!r}")


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}; got {value}")
