"""Stage 2: word2vec skip-gram vectors for each language's SentencePiece pieces.

Reads `RUN/tokenize/` (the encoded corpus, streamed from its shards, and both SentencePiece
models), adds optional monolingual text per language, trains one skip-gram model per side
(`pipeline.word2vec`), both sides at once in two threads (each side's XLA step runs on one core;
the two models share nothing, so the vectors are those of training them one after the other), and
writes to `RUN/pretrain/`:

    emb.src.npy emb.tgt.npy   float32 (pieces, dim); row i is SentencePiece id i, specials included
    emb.src.txt emb.tgt.txt   the same vectors in word2vec's text format, pieces in id order

The manifest records the hash of the SentencePiece models the vectors belong to, so
`load_pretrained` refuses vectors made for another tokenizer.
"""

from __future__ import annotations

import threading
import time
from array import array
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import sentencepiece as spm

from pipeline import word2vec
from pipeline.artifacts import STAGE_COMMAND, Declaration, Run, atomic_path
from pipeline.config import PretrainConfig
from pipeline.data import batched, read_lines
from pipeline.errors import StageError
from pipeline.progress import log, progress
from pipeline.corpus import EncodedCorpus
from pipeline.tokenize import load_encoded, load_tokenizers, reading_encoded
from pipeline.vocab import FIRST_WORD, SIDES

STAGE = "pretrain"
ENCODE_BATCH = 4096  # lines of extra text encoded per SentencePiece call
CHUNK_SENTENCES = 1 << 16  # sentences of the corpus read and subsampled at a time
# A side of at most this many pieces (64 MiB of ids) is read from the shards once and kept; a
# larger one streams from them each epoch, in memory that does not grow with it.
KEPT_TOKENS = 1 << 24
# The report shows the nearest neighbours of the pieces at these frequency ranks: frequent, but
# past the few function pieces at the very top, whose neighbours say little about the vectors.
SHOW_RANKS = (10, 20, 40, 80, 160)
SHOW_NEIGHBOURS = 5


def pretrain(run: Run, config: PretrainConfig) -> dict[str, Any]:
    """Run the stage for both sides; return its report (also stored in the manifest)."""
    config.validate()
    with run.lock(STAGE), reading_encoded(run):
        return _pretrain(run, config)


def _pretrain(run: Run, config: PretrainConfig) -> dict[str, Any]:
    processors, tokenized = load_tokenizers(run, needed_by=STAGE)
    tokenizer = {side: tokenized["outputs"][f"spm.{side}.model"] for side in SIDES}
    encoded = load_encoded(run, needed_by=STAGE)
    extra_paths = {"src": config.extra_src, "tgt": config.extra_tgt}
    corpora = _read_corpora(encoded, processors, extra_paths)  # all checked before RUN/pretrain is touched

    with run.writing(STAGE) as stage:
        report = _pretrain_sides(stage.dir, corpora, processors, config)
        outputs = [f"emb.{side}.{ext}" for side in SIDES for ext in ("npy", "txt")]
        stage.finish(declare(config), outputs, extra={"tokenizer": tokenizer, "report": report})
    return report


def declare(config: PretrainConfig) -> Declaration:
    """The stage's settings and inputs (the extra text; the tokenizer is recorded by hash)."""
    return Declaration(asdict(config), {"extra_src": config.extra_src, "extra_tgt": config.extra_tgt})


def _pretrain_sides(out: Path, corpora: dict[str, tuple], processors: dict[str, spm.SentencePieceProcessor],
                    config: PretrainConfig) -> dict[str, Any]:
    """Train both sides' vectors side by side; the report holds each side's figures and, under
    "both", the words trained and the wall time of the two together."""
    stop = threading.Event()  # set when either side fails or the stage is interrupted: the other stops too
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(SIDES), thread_name_prefix="pretrain") as pool:
        futures = {side: pool.submit(_pretrain_side, out, side, number, corpora[side], processors[side], config, stop)
                   for number, side in enumerate(SIDES)}
        try:
            wait(futures.values(), return_when=FIRST_EXCEPTION)
            for future in futures.values():  # a failed side's error first, not after the other side ends
                if future.done() and future.exception() is not None:
                    raise future.exception()
            done = {side: future.result() for side, future in futures.items()}
        except BaseException:
            stop.set()
            raise
    report = {side: part for side, (part, _) in done.items()}
    clocks = [clock for _, clock in done.values()]  # each side's training, compiling excluded
    train_seconds = max(end for _, end in clocks) - min(start for start, _ in clocks)
    words = sum(part["effective_words"] for part in report.values())
    report["both"] = {"effective_words": words, "train_seconds": round(train_seconds, 2),
                      "words_per_second": round(words / max(train_seconds, 1e-9)),
                      "seconds": round(time.perf_counter() - started, 2)}
    log.info("pretrain: both sides, %s effective words/s over %.1f s", f"{report['both']['words_per_second']:,}",
             train_seconds)
    return report


def _pretrain_side(out: Path, side: str, number: int, corpus: tuple, sp: spm.SentencePieceProcessor,
                   config: PretrainConfig, stop: threading.Event | None = None
                   ) -> tuple[dict[str, Any], tuple[float, float]]:
    """Train one side's vectors, write emb.SIDE.npy and .txt; return the side's report and when
    (time.perf_counter()) its training started and ended."""
    chunks, extra = corpus
    started = time.perf_counter()
    log.info("pretrain %s: %s pieces, %d-d vectors", side, f"{sp.get_piece_size():,}", config.dim)
    result = word2vec.train(chunks, sp.get_piece_size(), config, seed=config.seed + number, name=side, stop=stop)
    _write_vectors(out, side, result.vectors, sp)
    words_per_second = round(result.effective_words / max(result.train_seconds, 1e-9))
    log.info("pretrain %s: %s effective words/s over %.1f s", side, f"{words_per_second:,}",
             result.train_seconds)
    return {
        "vocab_size": sp.get_piece_size(),
        "sentences": result.sentences,
        "tokens": int(result.counts.sum()),
        "extra": extra,
        "effective_words": result.effective_words,
        "words_per_second": words_per_second,
        "train_seconds": round(result.train_seconds, 2),
        "compile_seconds": round(result.compile_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "neighbours": nearest_neighbours(result.vectors, result.counts, sp),
    }, (result.train_started, result.train_started + result.train_seconds)


def load_pretrained(run: Run, side: str) -> np.ndarray | None:
    """The side's (pieces, dim) vectors; None if the pretrain stage never finished in `run`.

    Raises StageError when the vectors no longer match: the file changed since the stage wrote it,
    or the run's tokenizer was retrained since.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")
    if not run.has(STAGE):
        if run.stage_dir(STAGE).is_dir():
            log.warning("the pretrain stage in %s did not finish; not using its vectors", run.root)
        return None
    name = f"emb.{side}.npy"
    manifest = run.verify(STAGE, [name])
    current = run.output_hash("tokenize", f"spm.{side}.model")
    if manifest.get("tokenizer", {}).get(side) != current:
        raise StageError(
            f"the {side} vectors in {run.stage_dir(STAGE)} were made with a different tokenizer "
            f"than the run's current one",
            hint=f"rerun `{STAGE_COMMAND[STAGE]} --run {run.root}`",
        )
    path = run.path(STAGE, name)
    try:
        vectors = np.load(path, allow_pickle=False)  # a pickled object would run code as it loads
        if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
            raise ValueError(f"expected a (pieces, dim) float array, got {vectors.dtype} of shape {vectors.shape}")
    except (OSError, ValueError, EOFError) as e:
        raise StageError(f"{path} is not a readable vector file ({type(e).__name__}: {e})",
                         hint=f"rerun `{STAGE_COMMAND[STAGE]} --run {run.root}`") from None
    return vectors


def nearest_neighbours(vectors: np.ndarray, counts: np.ndarray, sp: spm.SentencePieceProcessor,
                       ranks: tuple[int, ...] = SHOW_RANKS, k: int = SHOW_NEIGHBOURS) -> dict[str, list]:
    """{piece: [[neighbour, cosine], ...]} for the pieces at these frequency ranks (1 = most frequent)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    by_count = np.argsort(-counts, kind="stable")[:np.count_nonzero(counts)]
    frequent = [int(by_count[r - 1]) for r in ranks if r <= len(by_count)]
    cosine = unit[frequent] @ unit.T  # (pieces, vocab)
    cosine[:, :FIRST_WORD] = -np.inf
    cosine[np.arange(len(frequent)), frequent] = -np.inf
    shown = {}
    for row, i in zip(cosine, frequent):
        best = np.argsort(-row, kind="stable")[:k]
        shown[sp.id_to_piece(i)] = [[sp.id_to_piece(int(j)), round(float(row[j]), 3)] for j in best]
    return shown


def _read_corpora(encoded: EncodedCorpus, processors: dict[str, spm.SentencePieceProcessor],
                  extra_paths: dict[str, str | None]) -> dict[str, tuple[Callable, Any]]:
    """Each side's chunks of sentences (see `word2vec.SkipGramBatches`): the training pairs'
    side, from the shards (kept in memory up to KEPT_TOKENS, streamed beyond), then any extra
    text, encoded here once."""
    corpora = {}
    for side in SIDES:
        extra, extra_chunks = None, None
        if extra_paths[side]:
            more_ids, lengths = _encode_lines(read_lines(extra_paths[side]), processors[side],
                                              f"encoding extra {side}")
            if not len(lengths):
                log.warning("extra %s text %s has no non-empty lines", side, extra_paths[side])
            extra = {"path": str(extra_paths[side]), "sentences": len(lengths), "tokens": len(more_ids)}
            extra_chunks = word2vec.in_memory(more_ids, np.concatenate([[0], np.cumsum(lengths)]))

        if encoded.tokens(side) <= KEPT_TOKENS:  # read once, not again each epoch
            kept = list(encoded.chunks(side, CHUNK_SENTENCES))
            corpus_chunks = lambda kept=kept: iter(kept)  # noqa: E731
        else:
            corpus_chunks = lambda side=side: encoded.chunks(side, CHUNK_SENTENCES)  # noqa: E731

        def chunks(corpus_chunks=corpus_chunks, extra_chunks=extra_chunks):
            yield from corpus_chunks()
            if extra_chunks is not None:
                yield from extra_chunks()

        corpora[side] = (chunks, extra)
    return corpora


def _encode_lines(lines: Iterable[str], sp: spm.SentencePieceProcessor,
                  desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Encode text in batches of lines into flat int32 ids and per-line lengths (empty lines skipped)."""
    ids, lengths = array("i"), array("q")
    for batch in progress(batched((line for line in lines if line.strip()), ENCODE_BATCH), desc, unit="batch"):
        for seq in sp.encode(batch):
            if seq:
                ids.extend(seq)
                lengths.append(len(seq))
    return np.frombuffer(ids, dtype=np.int32), np.frombuffer(lengths, dtype=np.int64)


def _write_vectors(out: Path, side: str, vectors: np.ndarray, sp: spm.SentencePieceProcessor) -> None:
    """emb.SIDE.npy, and emb.SIDE.txt in word2vec's text format (`N D`, then `piece v1 ... vD`)."""
    with atomic_path(out / f"emb.{side}.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, vectors)
    row = " ".join(["%.9g"] * vectors.shape[1])  # 9 significant digits: float32 reads back exactly
    with atomic_path(out / f"emb.{side}.txt") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        for i, vector in enumerate(vectors):
            f.write(f"{sp.id_to_piece(i)} {row % tuple(vector)}\n")
