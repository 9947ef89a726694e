"""The encoded training corpus on disk, and the batches training reads from it, in tf.data.

`tokenize` writes the pairs it keeps, in corpus order, as TFRecord shards of at most
SHARD_PAIRS pairs (`train-00000.tfrecord`, ...) and an index, `train.json`: each shard's pairs
and tokens. A record is a `tf.train.Example` with int64 features `src` and `tgt` (piece ids,
without <s> or </s>) and `n` (the pair's number in the corpus, from 0). Nothing here holds the
corpus in memory: writing goes shard by shard, reading streams.

Training batches (`batches`) keep what the in-memory path did: each epoch a new order drawn
from the seed and the epoch number (so a resumed or repeated run sees the same batches), and
little padding, because pools of POOL batches' worth of pairs are sorted by target then source
length before they are cut into batches. Shuffling is streamed: shard order, then a buffer of
SHUFFLE_PAIRS pairs (the whole corpus, below that size), then a buffer of batches.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.artifacts import atomic_path
from pipeline.errors import ConfigError
from pipeline.vocab import BOS, EOS, PAD

INDEX = "train.json"
FORMAT = "tfrecord-shards-1"  # recorded by tokenize: a run tokenized in another format is tokenized anew
SHARD_PAIRS = 100_000
SHUFFLE_PAIRS = 100_000
RESEGMENT_CHUNK = 4096  # sentences segmented per call, each chunk's draws seeded anew
POOL = 100  # batches' worth of pairs sorted by length together
SHUFFLE_BATCHES = 2 * POOL
INTERLEAVE = 4  # shards read at once


def shard_name(number: int) -> str:
    return f"train-{number:05d}.tfrecord"


class ShardWriter:
    """Writes encoded pairs into numbered TFRecord shards in `directory`, then the index."""

    def __init__(self, directory: Path, shard_pairs: int = SHARD_PAIRS):
        import tensorflow as tf

        self.tf, self.directory, self.shard_pairs = tf, Path(directory), shard_pairs
        self.shards: list[dict[str, Any]] = []
        self.writer = None
        self.pairs = 0

    def add(self, src: list[int], tgt: list[int]) -> None:
        tf = self.tf
        if self.writer is None or self.shards[-1]["pairs"] == self.shard_pairs:
            self._next_shard()
        feature = {"src": tf.train.Feature(int64_list=tf.train.Int64List(value=src)),
                   "tgt": tf.train.Feature(int64_list=tf.train.Int64List(value=tgt)),
                   "n": tf.train.Feature(int64_list=tf.train.Int64List(value=[self.pairs]))}
        # deterministic: the feature map's keys in order; by default upb orders them differently in
        # every process, so the same pairs gave other shard bytes (and hashes) in each run
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        self.writer.write(example.SerializeToString(deterministic=True))
        shard = self.shards[-1]
        shard["pairs"] += 1
        shard["src_tokens"] += len(src)
        shard["tgt_tokens"] += len(tgt)
        self.pairs += 1

    def _next_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.shards.append({"name": shard_name(len(self.shards)), "pairs": 0, "src_tokens": 0, "tgt_tokens": 0})
        self.writer = self.tf.io.TFRecordWriter(str(self.directory / self.shards[-1]["name"]))

    def close(self) -> list[str]:
        """Close the last shard, write the index; return the names of the files written."""
        if self.writer is not None:
            self.writer.close()
        (self.directory / INDEX).write_text(json.dumps({"pairs": self.pairs, "shards": self.shards}, indent=1))
        return [INDEX] + [shard["name"] for shard in self.shards]


class EncodedCorpus:
    """The shards of a tokenize stage directory, read through tf.data."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        index = json.loads((self.directory / INDEX).read_text(encoding="utf-8"))
        self.shards: list[dict[str, Any]] = index["shards"]
        self.pairs: int = index["pairs"]

    @staticmethod
    def files(directory: Path) -> list[str]:
        """The index and shard names of the corpus in `directory` (for a manifest check)."""
        index = json.loads((Path(directory) / INDEX).read_text(encoding="utf-8"))
        return [INDEX] + [shard["name"] for shard in index["shards"]]

    def tokens(self, side: str) -> int:
        return sum(shard[f"{side}_tokens"] for shard in self.shards)

    def pools(self, size: int, seed: int | None = None, first: int = 0, end: int | None = None):
        """The pairs numbered first..end-1, parsed in pools of up to `size` pairs: {"src", "tgt"}
        int32 ragged tensors, one row per pair. In corpus order, or, with a `seed`, shuffled: the
        shards' order, their records interleaved, then a buffer of SHUFFLE_PAIRS records. Records
        are parsed a pool at a time, which costs a fraction of parsing them one by one."""
        import tensorflow as tf

        end = self.pairs if end is None else end
        starts = np.cumsum([0] + [shard["pairs"] for shard in self.shards])
        wanted = [str(self.directory / shard["name"]) for shard, lo, hi in zip(self.shards, starts, starts[1:])
                  if lo < end and hi > first]
        files = tf.data.Dataset.from_tensor_slices(wanted)
        if seed is None:
            records = tf.data.TFRecordDataset(files)
        else:
            parallel = min(INTERLEAVE, len(wanted))
            records = (files.shuffle(len(wanted), seed=seed)
                       .interleave(tf.data.TFRecordDataset, cycle_length=parallel, num_parallel_calls=parallel,
                                   deterministic=True)
                       .shuffle(SHUFFLE_PAIRS, seed=seed + 1))
        pools = records.batch(size).map(lambda pool: _parse(pool, first, end), num_parallel_calls=tf.data.AUTOTUNE,
                                         deterministic=True)
        return pools.filter(lambda pool: pool["src"].nrows() > 0)  # pools wholly outside first..end-1

    def unreadable_shard(self) -> Path | None:
        """The first shard whose records cannot all be read, if any."""
        import tensorflow as tf

        for shard in self.shards:
            path = self.directory / shard["name"]
            try:
                for _ in tf.data.TFRecordDataset(str(path)):
                    pass
            except tf.errors.OpError:
                return path
        return None

    def read(self, first: int = 0, end: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(src, tgt) id arrays of the pairs first..end-1, in corpus order."""
        for src, tgt in self.chunks(("src", "tgt"), 4096, first, end):
            yield from zip(np.split(src[0], np.cumsum(src[1])[:-1]), np.split(tgt[0], np.cumsum(tgt[1])[:-1]))

    def chunks(self, sides, sentences: int, first: int = 0, end: int | None = None) -> Iterator:
        """One side's sentences (`sides` a side's name), or a tuple of sides', in corpus order, in
        chunks of up to `sentences` sentences: (flat ids, lengths) arrays per side."""
        def flat(pool):
            if isinstance(sides, str):
                return pool[sides].flat_values, pool[sides].row_lengths()
            return tuple((pool[side].flat_values, pool[side].row_lengths()) for side in sides)

        yield from self.pools(sentences, first=first, end=end).map(flat).prefetch(2).as_numpy_iterator()


def _parse(records, first: int, end: int) -> dict:
    """A pool of serialized records -> {"src", "tgt"} int32 ragged rows of the pairs first..end-1."""
    import tensorflow as tf

    spec = {"src": tf.io.RaggedFeature(tf.int64), "tgt": tf.io.RaggedFeature(tf.int64),
            "n": tf.io.FixedLenFeature([], tf.int64)}
    example = tf.io.parse_example(records, spec)
    keep = (example["n"] >= first) & (example["n"] < end)
    return {side: tf.ragged.boolean_mask(tf.cast(example[side], tf.int32), keep) for side in ("src", "tgt")}


# SentencePiece scores an unknown piece as its lowest piece's score less this (unigram_model.cc's kUnkPenalty)
UNKNOWN_PENALTY = 10.0


class SegmentationSampler:
    """Kudo's (2018) l-best sampling for one SentencePiece unigram model: of a text's `nbest` best
    segmentations x, one drawn with probability proportional to P(x)^alpha, by a numpy generator.

    SentencePiece samples so itself (`encode(enable_sampling=True)`), but its generator, after
    `set_random_generator_seed`, draws otherwise in every process (0.2.3, found 2026-12-07), so a
    resumed or repeated run would train on other segmentations. Here SentencePiece only finds the
    n best (deterministic), and P(x) is the product of their pieces' probabilities, as it scores them.
    With 64 best, the segmentations drawn are close to sampling among all of them (`nbest_size=-1`).
    Finding the n best is the slow part and gives the same every epoch, so `nbest` is kept apart
    from `draw`.
    """

    def __init__(self, processor, alpha: float, nbest: int):
        try:
            processor.nbest_encode("", nbest_size=2)
        except RuntimeError as error:  # "NBestEncode is not available for the current model"
            raise ConfigError("train.subword_alpha samples among the n best segmentations, which SentencePiece "
                              "finds for unigram tokenizers only; this run's are not",
                              hint="tokenize with --model-type unigram, or set train.subword_alpha 0") from error
        self.processor, self.alpha, self.nbest_size = processor, alpha, nbest
        scores = np.array([processor.get_score(i) for i in range(processor.get_piece_size())])
        scores[processor.unk_id()] = scores.min() - UNKNOWN_PENALTY
        self.scores = scores
        self.id_type = np.uint16 if processor.get_piece_size() <= 2**16 else np.int32

    def log_probabilities(self, segmentations: list[np.ndarray]) -> np.ndarray:
        """log P(x) of each segmentation (0 for an empty text's)."""
        lengths = [len(x) for x in segmentations]
        owner = np.repeat(np.arange(len(segmentations)), lengths)
        return np.bincount(owner, self.scores[np.concatenate(segmentations)], minlength=len(segmentations))

    def nbest(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The n best segmentations of each text, flat: `ids` (every segmentation's, one after
        another), `lengths` and `log_p` (one per segmentation), `counts` (segmentations per text)."""
        nbests = self.processor.nbest_encode(texts, nbest_size=self.nbest_size, out_type="numpy")
        segmentations = [x for nbest in nbests for x in nbest]
        return {"ids": np.concatenate(segmentations).astype(self.id_type),
                "lengths": np.array([len(x) for x in segmentations], np.int32),
                "log_p": self.log_probabilities(segmentations),
                "counts": np.array([len(nbest) for nbest in nbests], np.int32)}

    def draw(self, nbest: dict[str, np.ndarray], rng: np.random.Generator) -> list[list[int]]:
        """One segmentation per text of `nbest`, drawn by `rng` by the Gumbel-max trick: the one
        with the largest alpha log P(x) plus Gumbel noise is distributed as P(x)^alpha, normalised."""
        noisy = self.alpha * nbest["log_p"] + rng.gumbel(size=len(nbest["log_p"]))
        counts = nbest["counts"]
        owner = np.repeat(np.arange(len(counts)), counts)
        chosen = np.lexsort((-noisy, owner))[np.cumsum(counts) - counts]  # each text's largest, the first of ties
        starts = np.cumsum(nbest["lengths"]) - nbest["lengths"]
        ids = nbest["ids"]
        return [ids[start:start + length].tolist() for start, length in zip(starts[chosen], nbest["lengths"][chosen])]


class Resegmenter:
    """Subword regularisation (Kudo 2018): each epoch, pairs 0..end-1 of `corpus` segmented anew,
    each sentence drawn among its `nbest` best segmentations by `SegmentationSampler` (`alpha`
    smooths the distribution), written as a corpus of its own under `directory/epoch-NNNNN/`.

    The n best of each sentence are found once, on the first epoch made (about 40 seconds for 50k
    pairs with 64 best, the wait before the first epoch), and kept under `directory/nbest/` (about
    5 KB a pair with 64 best); each epoch after draws from them (a few seconds), on a background
    thread while the epoch before trains. Each chunk's draws come from a generator seeded by the
    seed, the epoch and the chunk: an epoch's segmentations are the same on any thread, in any
    process, whichever epoch comes first, so a resumed run trains on what the uninterrupted one
    would have.
    """

    def __init__(self, corpus: EncodedCorpus, processors: dict, alpha: float, nbest: int, seed: int, end: int,
                 epochs: int, directory: Path):
        self.corpus, self.seed, self.end, self.epochs, self.directory = corpus, seed, end, epochs, Path(directory)
        self.samplers = {side: SegmentationSampler(processor, alpha, nbest) for side, processor in processors.items()}
        shutil.rmtree(self.directory, ignore_errors=True)  # an interrupted training's n best may be half written
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="resegment")
        self.pending: dict[int, Future] = {}
        self.current: tuple[int, EncodedCorpus] | None = None

    def epoch(self, epoch: int) -> EncodedCorpus:
        """Epoch `epoch`'s corpus, once made; starts making the next one's. Asked again for the
        same epoch (one input pipeline per replica), it gives the same corpus."""
        if self.current and self.current[0] == epoch:
            return self.current[1]
        made = (self.pending.pop(epoch, None) or self.worker.submit(self._write, epoch)).result()
        self.current = (epoch, made)
        for old in self.directory.glob("epoch-*"):
            if old != made.directory:
                shutil.rmtree(old, ignore_errors=True)
        if epoch + 1 < self.epochs:
            self.pending[epoch + 1] = self.worker.submit(self._write, epoch + 1)
        return made

    def close(self) -> None:
        """Wait for the work in progress, then remove every epoch's corpus and the n best."""
        self.worker.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _write(self, epoch: int) -> EncodedCorpus:
        directory = self.directory / f"epoch-{epoch:05d}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        writer = ShardWriter(directory)
        for number, sides in enumerate(self.corpus.chunks(("src", "tgt"), RESEGMENT_CHUNK, end=self.end)):
            segmented = [self.samplers[side].draw(self._nbest(number, side, *chunk),
                                                  np.random.default_rng([self.seed, epoch, number, k]))
                         for k, (side, chunk) in enumerate(zip(("src", "tgt"), sides))]
            for src, tgt in zip(*segmented):
                writer.add(src, tgt)
        writer.close()
        return EncodedCorpus(directory)

    def _nbest(self, number: int, side: str, ids: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """Chunk `number`'s n best on `side` (its pieces `ids`, sentences of `lengths`): found on
        the first epoch, read after."""
        path = self.directory / "nbest" / f"{number:05d}-{side}.npz"
        if path.exists():
            with np.load(path) as stored:
                return dict(stored)
        sampler = self.samplers[side]
        rows = np.split(ids, np.cumsum(lengths)[:-1])
        nbest = sampler.nbest(sampler.processor.decode([row.tolist() for row in rows]))
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            np.savez(file, **nbest)
        return nbest


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's order: a function of the run's seed and the epoch number only."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] % (2**31 - 4))


def batches(pools, batch_size: int, max_len: int, seed: int | None = None, min_rows: int = 1):
    """Batches ((src, tgt_in), tgt_out) for teacher forcing from `pools` of pairs ({"src", "tgt"}
    ragged id rows; `EncodedCorpus.pools(POOL * batch_size)`, or `pool_of`).

    src gets </s> appended; tgt_in = <s> y, tgt_out = y </s>, padded with PAD. Pairs with an empty
    side or a side of `max_len` pieces or more are skipped. Each pool is sorted by target then
    source length and cut into batches, so nearly every target row of a batch has the batch's
    length; with a `seed` the batches are then shuffled. Batches of fewer than `min_rows` rows
    (one for each replica) are dropped.
    """
    import tensorflow as tf

    def cut(pool):
        s_len, t_len = pool["src"].row_lengths(), pool["tgt"].row_lengths()
        fits = (s_len > 0) & (s_len < max_len) & (t_len > 0) & (t_len < max_len)
        src, tgt = tf.ragged.boolean_mask(pool["src"], fits), tf.ragged.boolean_mask(pool["tgt"], fits)
        order = tf.argsort(tf.boolean_mask(t_len * (max_len + 1) + s_len, fits), stable=True)
        sorted_pool = (tf.gather(src, order), tf.gather(tgt, order))
        return tf.data.Dataset.from_tensor_slices(sorted_pool).ragged_batch(batch_size)

    def teacher_forcing(src, tgt):
        n = src.nrows()
        eos, bos = tf.fill([n, 1], EOS), tf.fill([n, 1], BOS)
        src = tf.concat([src, eos], axis=1).to_tensor(PAD)
        return (src, tf.concat([bos, tgt], axis=1).to_tensor(PAD)), tf.concat([tgt, eos], axis=1).to_tensor(PAD)

    out = pools.flat_map(cut).map(teacher_forcing, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if min_rows > 1:
        out = out.filter(lambda inputs, target: tf.shape(target)[0] >= min_rows)
    if seed is not None:
        out = out.shuffle(SHUFFLE_BATCHES, seed=seed + 2)
    return out.prefetch(tf.data.AUTOTUNE)


def pool_of(src: list, tgt: list):
    """A dataset of one pool of pairs from id lists in memory (a dev set, a test's corpus)."""
    import tensorflow as tf

    ragged = {"src": tf.ragged.constant([list(map(int, x)) for x in src], dtype=tf.int32, ragged_rank=1),
              "tgt": tf.ragged.constant([list(map(int, y)) for y in tgt], dtype=tf.int32, ragged_rank=1)}
    return tf.data.Dataset.from_tensors(ragged)
