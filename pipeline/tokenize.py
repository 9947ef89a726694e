"""Stage 1: train one SentencePiece model per language and encode the training pairs.

Outputs in `RUN/tokenize/`: `spm.src.model`, `spm.tgt.model` (and their `.vocab`), and the
encoded pairs as TFRecord shards with their index `train.json` (`pipeline.corpus`). Id 0 is
padding, 1 unknown, 2 begin and 3 end of sentence, the same for every language. Memory does not
grow with the corpus: the text is cleaned into files on disk, SentencePiece learns from a seeded
sample of at most `input_sentence_size` sentences, and the pairs are encoded shard by shard.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Iterator

import sentencepiece as spm

from pipeline.artifacts import STAGE_COMMAND, Declaration, Run
from pipeline.corpus import FORMAT, INDEX, EncodedCorpus, ShardWriter
from pipeline.config import TokenizeConfig, default_character_coverage
from pipeline.data import batched, corpus_inputs, normalise_space, read_corpus
from pipeline.errors import InputError, PipelineError, StageError, first_line
from pipeline.progress import log, progress
from pipeline.vocab import BOS, EOS, PAD, SIDES, UNK

STAGE = "tokenize"
# SentencePiece silently skips training lines longer than this many bytes; we count them instead.
MAX_LINE_BYTES = 4192
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def tokenize(
    run: Run,
    config: TokenizeConfig,
    src: str | None = None,
    tgt: str | None = None,
    tsv: str | None = None,
    tsv_src_col: int = 1,
    tsv_tgt_col: int = 0,
    src_lang: str = "src",
    tgt_lang: str = "tgt",
) -> dict[str, Any]:
    """Run the stage; return its report (also stored in the manifest)."""
    config.validate()
    pairs = read_corpus(src, tgt, tsv, tsv_src_col, tsv_tgt_col)

    with run.writing(STAGE) as stage:
        report, shards = _tokenize_into(stage.dir, pairs, config, {"src": src_lang, "tgt": tgt_lang})
        outputs = shards + [f"spm.{s}.{ext}" for s in SIDES for ext in ("model", "vocab")]
        stage.finish(declare(config, src, tgt, tsv, tsv_src_col, tsv_tgt_col, src_lang, tgt_lang), outputs,
                     extra={"report": report})
    return report


def declare(config: TokenizeConfig, src: str | None, tgt: str | None, tsv: str | None, tsv_src_col: int,
            tsv_tgt_col: int, src_lang: str, tgt_lang: str) -> Declaration:
    """The stage's settings and inputs, as its manifest records them (see `Declaration`): the
    languages too (they choose the character coverage), and the TSV columns when it reads one."""
    columns = {"src": tsv_src_col, "tgt": tsv_tgt_col} if tsv else None
    return Declaration({**asdict(config), "languages": {"src": src_lang, "tgt": tgt_lang}, "tsv_columns": columns,
                        "format": FORMAT}, corpus_inputs(src, tgt, tsv))


def _tokenize_into(out: Path, pairs: Iterable[tuple[str, str]], config: TokenizeConfig,
                   langs: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Clean the pairs, train both SentencePiece models and encode the pairs into shards in
    `out`; return the report and the names of the corpus files."""
    clean = {side: out / f".clean.{side}.txt" for side in SIDES}
    try:
        counts = _write_clean(pairs, clean)
        if counts["kept"] == 0:
            raise InputError("no usable sentence pairs: every pair had an empty side or was too long")
        report: dict[str, Any] = {"pairs_read": counts["read"], "languages": langs}
        for side in SIDES:
            report[side] = _train_spm(clean[side], out / f"spm.{side}", langs[side], config)
        processors = {side: load_processor(out / f"spm.{side}.model") for side in SIDES}
        kept, too_long, shards = _encode(clean, processors, out, config.max_tokens)
        if kept == 0:
            raise InputError(f"no usable sentence pairs: every pair has more than {config.max_tokens} pieces "
                             "on a side", hint="raise --max-tokens")
    finally:
        for path in clean.values():
            path.unlink(missing_ok=True)

    report.update(
        kept=kept,
        dropped_empty=counts["empty"],
        dropped_too_long=counts["too_long"] + too_long,
    )
    if report["dropped_empty"] or report["dropped_too_long"]:
        log.warning(
            "dropped %d pair(s) with an empty side and %d too long (> %d pieces or %d bytes)",
            report["dropped_empty"], report["dropped_too_long"], config.max_tokens, MAX_LINE_BYTES,
        )
    return report, shards


def _write_clean(pairs: Iterable[tuple[str, str]], paths: dict[str, Path]) -> dict[str, int]:
    counts = {"read": 0, "kept": 0, "empty": 0, "too_long": 0}
    with paths["src"].open("w", encoding="utf-8") as fs, paths["tgt"].open("w", encoding="utf-8") as ft:
        for s, t in progress(pairs, "reading", unit="pairs"):
            counts["read"] += 1
            s, t = normalise_space(s), normalise_space(t)
            if not s or not t:
                counts["empty"] += 1
            elif max(len(s.encode()), len(t.encode())) > MAX_LINE_BYTES:
                counts["too_long"] += 1
            else:
                counts["kept"] += 1
                fs.write(s + "\n")
                ft.write(t + "\n")
    return counts


def _train_spm(corpus: Path, prefix: Path, lang: str, config: TokenizeConfig) -> dict[str, Any]:
    coverage = config.character_coverage or default_character_coverage(lang)
    requested = config.vocab_size
    vocab_size = requested
    for attempt in range(3):
        try:
            _spm_train(corpus, prefix, vocab_size, coverage, config)
            break
        except RuntimeError as e:
            too_low = _TOO_LOW.search(str(e))
            if too_low:
                raise InputError(
                    f"vocabulary size {vocab_size} is below the {too_low.group(2)} pieces that the {lang} "
                    f"characters need; use --vocab-size {int(too_low.group(2)) + 8} or more, or a lower "
                    "--character-coverage"
                ) from None
            match = _TOO_HIGH.search(str(e))
            if not match or attempt == 2:
                raise PipelineError(f"SentencePiece failed for {lang}: {str(e).splitlines()[-1]}") from None
            largest = int(match.group(2))
            if largest < 8:
                raise InputError(
                    f"the {lang} side is too small for a vocabulary (SentencePiece allows at most {largest})"
                ) from None
            vocab_size = largest
    if vocab_size != requested:
        log.warning(
            "%s: vocabulary size %d is larger than this corpus supports; using %d",
            lang, requested, vocab_size,
        )
    size = load_processor(f"{prefix}.model").get_piece_size()
    return {"lang": lang, "vocab_size": size, "requested_vocab_size": requested,
            "model_type": config.model_type, "character_coverage": coverage}


def _spm_train(corpus: Path, prefix: Path, vocab_size: int, coverage: float, config: TokenizeConfig) -> None:
    # SentencePiece writes PREFIX.model and PREFIX.vocab itself; train under a temporary prefix
    # and rename, so an interrupted run never leaves a model that looks finished.
    tmp_prefix = prefix.with_name(f".{prefix.name}.partial")
    spm.set_random_generator_seed(config.seed)
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_prefix),
        vocab_size=vocab_size,
        model_type=config.model_type,
        character_coverage=coverage,
        input_sentence_size=config.input_sentence_size,
        shuffle_input_sentence=True,
        seed_sentencepiece_size=1_000_000,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        num_threads=2,
        minloglevel=2,
    )
    _forget_paths(Path(f"{tmp_prefix}.model"))
    for ext in ("model", "vocab"):
        Path(f"{tmp_prefix}.{ext}").replace(f"{prefix}.{ext}")


def _forget_paths(model: Path) -> None:
    """Clear the training file and output prefix that SentencePiece records in its model: they
    name this run's staging directory, and the same data and settings must give the same bytes
    in any run directory (ensembles and copied runs compare tokenizers by hash)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = ""
    model.write_bytes(proto.SerializeToString())


def _encode(clean: dict[str, Path], processors: dict[str, spm.SentencePieceProcessor],
            out: Path, max_tokens: int) -> tuple[int, int, list[str]]:
    writer = ShardWriter(out)
    too_long = 0
    with clean["src"].open(encoding="utf-8") as fs, clean["tgt"].open(encoding="utf-8") as ft:
        for batch in batched(zip(fs, ft), 1024):
            encoded = {side: processors[side].encode([p[i].rstrip("\n") for p in batch])
                       for i, side in enumerate(SIDES)}
            for s_ids, t_ids in zip(encoded["src"], encoded["tgt"]):
                if max(len(s_ids), len(t_ids)) > max_tokens:
                    too_long += 1
                else:
                    writer.add(s_ids, t_ids)
    files = writer.close()
    return writer.pairs, too_long, files


def load_processor(path: str | Path) -> spm.SentencePieceProcessor:
    """A SentencePiece model, refusing a corrupt or truncated file with one line (`path` is
    RUN/tokenize/spm.SIDE.model, so the hint names RUN)."""
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise StageError(f"{path} is not a readable SentencePiece model ({first_line(e)})",
                         hint=f"rerun `{STAGE_COMMAND[STAGE]} --run {Path(path).parent.parent}`") from None


def load_tokenizers(run: Run, needed_by: str) -> tuple[dict[str, spm.SentencePieceProcessor], dict]:
    """The run's two SentencePiece processors, after checking the tokenize stage finished intact."""
    manifest = run.verify(STAGE, ["spm.src.model", "spm.tgt.model"], needed_by=needed_by)
    return {side: load_processor(run.path(STAGE, f"spm.{side}.model")) for side in SIDES}, manifest


def load_encoded(run: Run, needed_by: str) -> EncodedCorpus:
    """The encoded training pairs (`pipeline.corpus.EncodedCorpus`), after checking that every
    shard is intact: a shard changed since tokenize wrote it is refused here, not mid-training."""
    if run.has(STAGE) and "train.npz" in run.manifest(STAGE)["outputs"]:
        raise StageError(f"{run.stage_dir(STAGE)} holds the pairs as train.npz, which this version no longer "
                         "reads (it streams TFRecord shards)",
                         hint=f"rerun `{STAGE_COMMAND[STAGE]} --run {run.root}` (or `pipeline`, which does)")
    run.verify(STAGE, [INDEX], needed_by=needed_by)
    directory = run.stage_dir(STAGE)
    rerun = f"rerun `{STAGE_COMMAND[STAGE]} --run {run.root}`"
    try:
        files = EncodedCorpus.files(directory)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StageError(f"{directory / INDEX} is not a readable corpus index ({first_line(e)})",
                         hint=rerun) from None
    run.verify(STAGE, files, needed_by=needed_by)
    return EncodedCorpus(directory)


@contextmanager
def reading_encoded(run: Run) -> Iterator[None]:
    """Refuse, with one line naming it, a shard found unreadable as it streams (one crafted with
    a matching hash in the manifest: `load_encoded` has checked every hash)."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.DataLossError as e:
        directory = run.stage_dir(STAGE)
        bad = EncodedCorpus(directory).unreadable_shard() or directory / INDEX
        raise StageError(f"{bad} is not a readable encoded corpus ({type(e).__name__}: {first_line(e)})",
                         hint=f"rerun `{STAGE_COMMAND[STAGE]} --run {run.root}`") from None
