"""Word2vec skip-gram with negative sampling (Mikolov et al., 2013) as a Keras model.

The model is word2vec's: each context word's *input* vector predicts the centre word's *output*
vector against `negatives` noise words drawn from the unigram distribution raised to 0.75; frequent
words are down-sampled; the window is sampled in 1..window per centre word; plain SGD with a
linearly decaying rate. The exported embedding is the input table, as in word2vec and gensim.

How a step is laid out, and why it is fast on a CPU: the subsampled corpus is cut into blocks of
`2 * window` consecutive centre words, and each block also takes the `window` words on either side
as context. One batched matmul per block scores every output row (each centre word and the block's
noise words) against every context row of the block; a mask keeps the pairs word2vec trains
(context inside the centre's sampled window and sentence, noise word != centre). The gradients are
two more batched matmuls, and both tables are updated in place by scatter-adds on the gathered rows
only. A context row is thus read once per block, not once per pair.

The noise words are drawn per block and shared by all its pairs, extending Ji et al.'s sharing of a
centre word's noise words among its context words (2016, "Parallelizing Word2Vec in Shared and
Distributed Memory") to the block: a block draws `NOISE_DRAWS * negatives` of them and each counts
`1 / NOISE_DRAWS` of a noise term, so every pair's expected update is word2vec's with `negatives`
noise words, at half the output rows that noise drawn per centre word needs (30 rows against 60
with window 5 and 5 negatives; gathering rows is the step's dearest part under XLA on a CPU). On
small_parallel_enja this costs no held-out fit against noise drawn per centre word, and both
land within 0.01 nats a pair of gensim's per-pair draws (`benchmarks/w2v_heldout.py`;
BENCHMARKS.md, "bfloat16 on AMX": 0.003-0.008 above, about the spread over seeds).

XLA runs the step on one core; `pipeline.pretrain` trains the two sides at once to use two.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import PretrainConfig
from pipeline.errors import ConfigError, StageError
from pipeline.progress import log, progress
from pipeline.vocab import FIRST_WORD

NOISE_POWER = 0.75
MIN_RATE = 1e-4  # the rate decays linearly to this fraction of its start, as in word2vec.c
CENTRES_PER_CALL = 16_384  # centre words per train_on_batch call: SGD steps in one compiled loop
CHUNK_TOKENS = 1 << 20  # about this many tokens are subsampled and cut into blocks at a time
NOISE_DRAWS = 4  # a block draws this many noise words per `negatives`, each counting 1 / NOISE_DRAWS


class SkipGram(keras.Model):
    """Two embedding tables trained by word2vec's sparse SGD; `call` looks up input vectors."""

    def __init__(self, vocab_size: int, dim: int, window: int = 5, negatives: int = 5,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.dim, self.window, self.negatives, self.seed = (
            vocab_size, dim, window, negatives, seed)
        self.block = 2 * window
        self.input_vectors = keras.layers.Embedding(
            vocab_size, dim, name="input_vectors",
            embeddings_initializer=keras.initializers.RandomUniform(-0.5 / dim, 0.5 / dim, seed=seed))
        self.output_vectors = keras.layers.Embedding(
            vocab_size, dim, name="output_vectors", embeddings_initializer="zeros")
        self.input_vectors.build((None,))
        self.output_vectors.build((None,))
        self.built = True
        # Context column j of a block sits offset[i, j] positions from its centre word i.
        columns = np.arange(self.block + 2 * window)
        self._offset = (columns[None, :] - window - np.arange(self.block)[:, None]).astype(np.int32)

    def call(self, ids):
        """Input vectors: (batch, length) piece ids -> (batch, length, dim)."""
        return self.input_vectors(ids)

    def train_step(self, data):
        """Run `data["steps"]` SGD steps from one stacked batch made by `SkipGramBatches`."""
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)

        def body(i):
            self._sgd_step(data["centres"][i], data["contexts"][i], data["sentences"][i],
                           data["windows"][i], data["noise"][i], data["rates"][i])
            return (i + 1,)

        tf.while_loop(lambda i: i < data["steps"], body, (tf.constant(0),))
        return {"steps": data["steps"]}

    def _sgd_step(self, centres, contexts, sentences, windows, noise, rate):
        """One SGD step on `blocks` blocks of `block` centre words.

        centres (blocks, block) ids; contexts (blocks, columns) ids of the block and `window`
        words either side, columns = block + 2 * window; sentences (blocks, columns) sentence
        number of each column, -1 for padding; windows (blocks, block) each centre's sampled
        window, 0 for padding; noise (blocks, draws) ids, draws = NOISE_DRAWS * negatives;
        rate () the learning rate.
        """
        inputs = self.input_vectors.embeddings.value  # tf.Variable (vocab, dim)
        outputs = self.output_vectors.embeddings.value
        block, draws = self.block, noise.shape[1]

        # The (centre, context) pairs word2vec trains: (blocks, block, columns)
        centre_sentence = sentences[:, self.window:self.window + block]
        pairs = tf.cast((tf.abs(self._offset) <= windows[:, :, None]) & (self._offset != 0)
                        & (sentences[:, None, :] == centre_sentence[:, :, None]), tf.float32)
        # A noise word trains against a context column once per pair of that column whose centre
        # it is not (word2vec skips a noise word that happens to be the centre word).
        not_centre = tf.cast(noise[:, :, None] != centres[:, None, :], tf.float32)  # (blocks, draws, block)
        noise_weight = tf.matmul(not_centre, pairs) * (self.negatives / draws)  # (blocks, draws, columns)
        weight = tf.concat([pairs, noise_weight], axis=1)  # (blocks, rows, columns), rows = block + draws
        targets = tf.concat([centres, noise], axis=1)  # (blocks, rows): centre words, then noise words
        label = tf.concat([tf.ones([block, 1]), tf.zeros([draws, 1])], axis=0)

        u = tf.gather(outputs, targets)  # (blocks, rows, dim)
        v = tf.gather(inputs, contexts)  # (blocks, columns, dim)
        logits = tf.matmul(u, v, transpose_b=True)  # like weight
        # d log sigmoid(+-x) / dx = label - sigmoid(x); SGD climbs the log-likelihood by `rate`.
        g = (label - tf.sigmoid(logits)) * weight * rate
        du = tf.matmul(g, v)  # (blocks, rows, dim)
        dv = tf.matmul(g, u, transpose_a=True)  # (blocks, columns, dim)
        # Plain SGD, touching only the rows gathered above; XLA applies repeated ids in order.
        inputs.scatter_add(tf.IndexedSlices(tf.reshape(dv, [-1, self.dim]), tf.reshape(contexts, [-1])))
        outputs.scatter_add(tf.IndexedSlices(tf.reshape(du, [-1, self.dim]), tf.reshape(targets, [-1])))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, dim=self.dim, window=self.window,
                      negatives=self.negatives, seed=self.seed)
        return config


class SkipGramBatches:
    """Word2vec's sampling in numpy, one epoch per iteration, stacked for `SkipGram.train_step`.

    `chunks()` gives a side's sentences anew for each pass, as (flat piece ids, sentence lengths)
    arrays of whole sentences (`in_memory`, `EncodedCorpus.chunks`): one pass counts the pieces,
    then one per epoch trains, so the corpus is never held in memory whole. Each block carries
    the sentence number of its columns, so windows never cross a sentence boundary. Each step's
    learning rate follows the effective words trained before it, as in word2vec.
    """

    def __init__(self, chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], vocab_size: int,
                 config: PretrainConfig, rng: np.random.Generator):
        self.chunks, self.config, self.rng = chunks, config, rng
        self.vocab_size = vocab_size
        self.counts = np.zeros(vocab_size, np.int64)
        self.sentences = 0
        for ids, lengths in chunks():
            self.counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
            self.sentences += len(lengths)
        self.counts[:FIRST_WORD] = 0
        self.keep = keep_probabilities(self.counts, config.subsample)
        noise = self.counts.astype(np.float64) ** NOISE_POWER
        self.noise = noise / noise.sum() if noise.sum() else noise
        self.words_per_epoch = float(np.dot(self.counts, self.keep))  # expected, after subsampling
        self.block = 2 * config.window
        self.blocks_per_step = max(1, config.batch_size // ((config.window + 1) * self.block))
        self.steps_per_batch = max(1, CENTRES_PER_CALL // (self.blocks_per_step * self.block))
        self.words_done = 0  # effective words handed out so far, over all epochs

    def batch_spec(self) -> dict[str, tf.TensorSpec]:
        s, b, p, k = self.steps_per_batch, self.blocks_per_step, self.block, self.config.negatives
        c = p + 2 * self.config.window
        return {
            "centres": tf.TensorSpec((s, b, p), tf.int32),
            "contexts": tf.TensorSpec((s, b, c), tf.int32),
            "sentences": tf.TensorSpec((s, b, c), tf.int32),
            "windows": tf.TensorSpec((s, b, p), tf.int32),
            "noise": tf.TensorSpec((s, b, k * NOISE_DRAWS), tf.int32),
            "rates": tf.TensorSpec((s,), tf.float32),
            "steps": tf.TensorSpec((), tf.int32),
        }

    @property
    def batches_per_epoch(self) -> int:
        """About how many batches `epoch` yields (subsampling is random)."""
        centres_per_batch = self.steps_per_batch * self.blocks_per_step * self.block
        return int(np.ceil(self.words_per_epoch / centres_per_batch))

    def warmup(self) -> dict[str, np.ndarray]:
        """A batch of zero steps, to compile the train step before timing it."""
        return {name: np.zeros(spec.shape, spec.dtype.as_numpy_dtype)
                for name, spec in self.batch_spec().items()}

    def epoch(self) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the corpus, a chunk of whole sentences at a time."""
        for ids, lengths in self.chunks():
            yield from self._batches(*self._blocks(ids, lengths))

    def _blocks(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
        """Subsample a chunk's sentences and cut them into blocks of centre words with their context."""
        w, p = self.config.window, self.block
        sentence = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        kept = self.rng.random(len(ids), dtype=np.float32) < self.keep[ids]
        ids, sentence = ids[kept].astype(np.int32), sentence[kept]
        n = len(ids)
        blocks = -(-n // p)
        windows = np.zeros(blocks * p, np.int32)
        windows[:n] = self.rng.integers(1, w + 1, size=n, dtype=np.int32)
        padded_ids = np.zeros(blocks * p + 2 * w, np.int32)
        padded_ids[w:w + n] = ids
        padded_sentence = np.full(blocks * p + 2 * w, -1, np.int32)
        padded_sentence[w:w + n] = sentence
        columns = (np.arange(blocks) * p)[:, None] + np.arange(p + 2 * w)[None, :]  # (blocks, p + 2w)
        centres = padded_ids[w:w + blocks * p].reshape(blocks, p)
        noise = self.rng.choice(self.vocab_size, size=(blocks, NOISE_DRAWS * self.config.negatives), p=self.noise)
        return (centres, padded_ids[columns], padded_sentence[columns], windows.reshape(blocks, p),
                noise.astype(np.int32), n)

    def _batches(self, centres, contexts, sentences, windows, noise, words) -> Iterator[dict]:
        """Stack blocks into batches of steps_per_batch steps, padding the last one."""
        steps, per_step = self.steps_per_batch, self.blocks_per_step
        total = self.config.epochs * self.words_per_epoch
        arrays = {"centres": centres, "contexts": contexts, "sentences": sentences,
                  "windows": windows, "noise": noise}
        for first in range(0, len(centres), steps * per_step):
            taken = min(steps * per_step, len(centres) - first)  # blocks
            batch = {}
            for name, array in arrays.items():
                stacked = np.full((steps * per_step,) + array.shape[1:], -1 if name == "sentences" else 0,
                                  np.int32)
                stacked[:taken] = array[first:first + taken]
                batch[name] = stacked.reshape((steps, per_step) + array.shape[1:])
            done = self.words_done + np.arange(steps) * per_step * self.block
            batch["rates"] = linear_rate(self.config.learning_rate, done, total)
            batch["steps"] = np.int32(-(-taken // per_step))
            self.words_done += min(taken * self.block, words - first * self.block)
            yield batch


def keep_probabilities(counts: np.ndarray, subsample: float) -> np.ndarray:
    """word2vec's down-sampling: keep a word of frequency f with probability (sqrt(f/t) + 1) t/f."""
    keep = (counts > 0).astype(np.float32)
    if subsample > 0 and counts.sum() > 0:
        threshold = subsample * counts.sum()
        c = np.maximum(counts, 1).astype(np.float64)
        keep *= np.minimum(1.0, (np.sqrt(c / threshold) + 1) * threshold / c).astype(np.float32)
    return keep


def linear_rate(start: float, done: np.ndarray, total: float) -> np.ndarray:
    """The learning rate after `done` of `total` effective words: linear decay to MIN_RATE * start."""
    return (start * np.maximum(MIN_RATE, 1 - done / max(total, 1.0))).astype(np.float32)


@dataclass
class TrainResult:
    vectors: np.ndarray  # (vocab, dim) float32 input vectors, row i = piece id i
    output_vectors: np.ndarray  # (vocab, dim) float32, the rows the noise-contrastive scores use
    counts: np.ndarray  # training occurrences of each id (specials 0)
    sentences: int
    effective_words: int  # centre words trained on, over all epochs
    train_seconds: float
    compile_seconds: float
    train_started: float  # time.perf_counter() when the training clock started (after compiling)


def in_memory(ids: np.ndarray, offsets: np.ndarray) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    """Chunks (see `SkipGramBatches`) of flat piece ids whose sentences start at `offsets`."""
    ids, offsets = np.asarray(ids), np.asarray(offsets, np.int64)

    def chunks():
        starts = np.arange(0, offsets[-1], CHUNK_TOKENS)
        bounds = np.unique(np.append(np.searchsorted(offsets, starts, side="right") - 1, len(offsets) - 1))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            yield ids[offsets[lo]:offsets[hi]], np.diff(offsets[lo:hi + 1])

    return chunks


def train(chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], vocab_size: int, config: PretrainConfig,
          seed: int, name: str = "", stop: threading.Event | None = None) -> TrainResult:
    """Train skip-gram vectors on one side's sentences, given by `chunks` (see `SkipGramBatches`);
    `stop`, once set (by another thread), ends the training at its next batch with StageError."""
    if keras.backend.backend() != "tensorflow":
        raise ConfigError(f"pretraining needs Keras' TensorFlow backend, not {keras.backend.backend()}")
    rng = np.random.default_rng(seed)
    batches = SkipGramBatches(chunks, vocab_size, config, rng)
    model = SkipGram(vocab_size, config.dim, config.window, config.negatives, seed=seed,
                     name=f"skipgram_{name}")
    # No optimizer: the update is word2vec's own. XLA makes the step fast and its scatter-adds
    # deterministic (TensorFlow's CPU kernel applies large scatters from several threads).
    model.compile(optimizer=None, jit_compile=True)
    started = time.perf_counter()
    model.train_on_batch(batches.warmup())  # zero steps: compiles the step with XLA before the clock starts
    compiled = time.perf_counter()
    if batches.words_per_epoch == 0:
        log.warning("%s: no pieces to train on; the vectors keep their random start", name)
    for epoch in range(config.epochs if batches.words_per_epoch else 0):
        desc = f"word2vec {name} {epoch + 1}/{config.epochs}"
        for batch in progress(batches.epoch(), desc, total=batches.batches_per_epoch, unit="batch"):
            if stop is not None and stop.is_set():
                raise StageError(f"word2vec {name}: stopped, the other side failed or the stage was interrupted")
            model.train_on_batch(batch)
        seconds = time.perf_counter() - compiled
        log.info("word2vec %s: epoch %d/%d, %s effective words, %.0f words/s", name, epoch + 1,
                 config.epochs, f"{batches.words_done:,}", batches.words_done / max(seconds, 1e-9))
    finished = time.perf_counter()
    # Ids 0-3 are never trained: they keep their small random start (not zeros, which would give
    # cosine tools such as gensim's most_similar a division by zero).
    vectors = np.array(model.input_vectors.embeddings.numpy(), dtype=np.float32)
    output_vectors = np.array(model.output_vectors.embeddings.numpy(), dtype=np.float32)
    return TrainResult(vectors, output_vectors, batches.counts, batches.sentences, batches.words_done,
                       train_seconds=finished - compiled, compile_seconds=compiled - started, train_started=compiled)
