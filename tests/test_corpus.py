"""The encoded corpus on disk (TFRecord shards) and the training batches streamed from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.corpus import POOL, EncodedCorpus, ShardWriter, batches, epoch_seed, pool_of
from pipeline.vocab import BOS, EOS, PAD


def _random_pairs(n: int, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, n)  # target lengths follow source lengths, as in real corpora
    src = [rng.integers(4, 50, k).tolist() for k in lengths]
    tgt = [rng.integers(4, 50, max(1, k + rng.integers(-2, 3))).tolist() for k in lengths]
    return src, tgt


def _write(tmp_path, src, tgt, shard_pairs: int) -> EncodedCorpus:
    writer = ShardWriter(tmp_path, shard_pairs=shard_pairs)
    for s, t in zip(src, tgt):
        writer.add(s, t)
    files = writer.close()
    assert files == EncodedCorpus.files(tmp_path)
    return EncodedCorpus(tmp_path)


def test_shards_hold_every_pair_in_order_and_the_index_counts_them(tmp_path):
    src, tgt = _random_pairs(250)
    corpus = _write(tmp_path, src, tgt, shard_pairs=100)
    assert [s["pairs"] for s in corpus.shards] == [100, 100, 50] and corpus.pairs == 250
    assert corpus.tokens("tgt") == sum(map(len, tgt))
    read = list(corpus.read())
    assert [s.tolist() for s, _ in read] == src and [t.tolist() for _, t in read] == tgt
    assert [s.tolist() for s, _ in corpus.read(first=180, end=220)] == src[180:220]
    chunks = list(corpus.chunks("src", 64))
    assert [len(lengths) for _, lengths in chunks] == [64, 64, 64, 58]
    assert np.concatenate([ids for ids, _ in chunks]).tolist() == sum(src, [])


_WRITE_IN_A_PROCESS = """
import sys
from pipeline.corpus import ShardWriter
writer = ShardWriter(sys.argv[1])
writer.add([5, 6, 7], [8, 9])
writer.close()
"""


def test_the_same_pairs_give_the_same_shard_bytes_in_any_process(tmp_path):
    """A record's features are a protobuf map, which upb serialises in an order of its own in each
    process unless asked for a deterministic one: then a rerun's shards (and their hashes) differ."""
    import subprocess
    import sys

    folders = [tmp_path / str(i) for i in range(4)]  # 6 orders of 3 keys: 4 processes rarely all agree
    for folder in folders:
        folder.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITE_IN_A_PROCESS, str(folder)],
                              cwd=Path(__file__).resolve().parents[1]) for folder in folders]
    assert [proc.wait() for proc in procs] == [0] * len(procs)
    assert len({(folder / "train-00000.tfrecord").read_bytes() for folder in folders}) == 1


def _epoch(corpus, epoch, batch_size=16, end=None, min_rows=1):
    seed = epoch_seed(7, epoch)
    pools = corpus.pools(POOL * batch_size, seed=seed, end=end)
    return list(batches(pools, batch_size, 80, seed, min_rows).as_numpy_iterator())


def _rows(epoch_batches) -> list[tuple]:
    return [tuple(row[row != PAD].tolist()) for (s, _), _ in epoch_batches for row in s]


def test_each_epoch_takes_every_pair_once_in_its_own_seeded_order(tmp_path):
    src, tgt = _random_pairs(600, seed=1)
    corpus = _write(tmp_path, src, tgt, shard_pairs=128)
    first, again, second = _epoch(corpus, 0), _epoch(corpus, 0), _epoch(corpus, 1)
    expected = sorted(tuple(s + [EOS]) for s in src)
    assert sorted(_rows(first)) == sorted(_rows(second)) == expected
    assert _rows(first) == _rows(again)  # an epoch's batches depend on the seed and the epoch only
    assert _rows(first) != _rows(second)
    assert sorted(_rows(_epoch(corpus, 0, end=500))) == sorted(tuple(s + [EOS]) for s in src[:500])


def test_batches_are_bucketed_and_shifted_for_teacher_forcing(tmp_path):
    src, tgt = _random_pairs(300)
    corpus = _write(tmp_path, src, tgt, shard_pairs=1000)
    real = padded = 0
    for (s, t_in), t_out in _epoch(corpus, 0):
        assert t_in.shape == t_out.shape and s.shape[0] == t_in.shape[0] <= 16
        assert np.all(t_in[:, 0] == BOS) and np.all(s[np.arange(len(s)), (s != PAD).sum(1) - 1] == EOS)
        for row_in, row_out in zip(t_in, t_out):
            n = (row_out != PAD).sum()
            assert row_out[n - 1] == EOS
            np.testing.assert_array_equal(row_in[1:n], row_out[:n - 1])
        real += (s != PAD).sum() + (t_out != PAD).sum()
        padded += s.size + t_out.size
    # batches of 16 taken in corpus order would be about 60% real tokens here
    unbucketed = sum(len(x) + 1 for x in src + tgt) / sum(
        16 * (max(len(x) for x in src[i:i + 16]) + max(len(y) for y in tgt[i:i + 16]) + 2)
        for i in range(0, 288, 16))
    assert real / padded > unbucketed + 0.15


def test_long_and_empty_pairs_are_skipped_and_small_batches_dropped_for_replicas():
    pairs = pool_of([[4] * 3, [4] * 80, [5] * 2, [6]], [[7], [7], [], [8] * 5])
    kept = list(batches(pairs, 16, 80).as_numpy_iterator())
    assert [b[1].shape[0] for b in kept] == [2]  # the 80-piece and the empty side are skipped
    assert list(batches(pairs, 16, 80, min_rows=3).as_numpy_iterator()) == []


@pytest.mark.parametrize("epoch", [0, 3])
def test_epoch_seeds_differ_by_epoch_and_seed(epoch):
    assert epoch_seed(7, epoch) == epoch_seed(7, epoch)
    assert len({epoch_seed(7, epoch), epoch_seed(7, epoch + 1), epoch_seed(8, epoch)}) == 3


def _tokenized_toy(tmp_path, toy_corpus, model_type="unigram"):
    from pipeline.artifacts import Run
    from pipeline.config import TokenizeConfig
    from pipeline.tokenize import load_encoded, load_tokenizers, tokenize

    run = Run.at(tmp_path / "run")
    tokenize(run, TokenizeConfig(vocab_size=60, model_type=model_type), src=str(toy_corpus["train_src"]),
             tgt=str(toy_corpus["train_tgt"]))
    processors, _ = load_tokenizers(run, needed_by="test")
    return processors, load_encoded(run, needed_by="test")


# made in a process of its own: the segmentations of the run at argv[1], epoch 0, as JSON on stdout
_RESEGMENT_IN_A_PROCESS = """
import json, sys
from pipeline.artifacts import Run
from pipeline.corpus import Resegmenter
from pipeline.tokenize import load_encoded, load_tokenizers
run = Run.at(sys.argv[1])
resegmenter = Resegmenter(load_encoded(run, needed_by="test"), load_tokenizers(run, needed_by="test")[0], 0.1, 64,
                          1, 1000, 3, sys.argv[2])
print(json.dumps([(s.tolist(), t.tolist()) for s, t in resegmenter.epoch(0).read()]))
resegmenter.close()
"""


def test_resegmented_epochs_keep_the_text_and_are_seeded_by_epoch(tmp_path, toy_corpus):
    """Subword regularisation's corpora: the same text, segmented otherwise from epoch to epoch,
    and the same segmentation for the same seed and epoch on any thread, in any process."""
    import subprocess
    import sys

    from pipeline.corpus import Resegmenter

    processors, corpus = _tokenized_toy(tmp_path, toy_corpus)

    def epochs(numbers, folder, seed=1):
        resegmenter = Resegmenter(corpus, processors, 0.1, 64, seed, 1000, 3, tmp_path / folder)
        pairs = []
        for number in numbers:
            made = resegmenter.epoch(number)
            assert resegmenter.epoch(number) is made  # asked twice (a pipeline per replica): made once
            pairs.append([(s.tolist(), t.tolist()) for s, t in made.read()])
        resegmenter.close()
        assert not (tmp_path / folder).exists()
        return pairs

    def epoch(number, folder, seed=1):
        return epochs([number], folder, seed)[0]

    best = [(s.tolist(), t.tolist()) for s, t in corpus.read(end=1000)]
    first, second = epochs([0, 1], "a")  # the second from the n best the first found
    assert len(first) == 1000 and first == epoch(0, "b")  # made on another thread, another time
    assert second == epoch(1, "f")  # resumed at epoch 1: the n best found anew, the same draws
    for side in (0, 1):
        processor = processors[("src", "tgt")[side]]
        assert [processor.decode(p[side]) for p in first] == [processor.decode(p[side]) for p in best]
    changed = sum(p != q for p, q in zip(first, best))
    assert 50 < changed < 1000  # sampled: many pairs segmented otherwise, not all
    assert second != first and epoch(0, "d", seed=2) != first
    made_elsewhere = subprocess.run([sys.executable, "-c", _RESEGMENT_IN_A_PROCESS, str(tmp_path / "run"),
                                     str(tmp_path / "e")], capture_output=True, text=True, check=True,
                                    cwd=Path(__file__).resolve().parents[1])
    assert [tuple(p) for p in json.loads(made_elsewhere.stdout)] == first  # resumed or rerun: the same


def test_segmentations_are_drawn_with_probability_p_to_the_alpha_among_the_n_best(tmp_path, toy_corpus):
    """Kudo's l-best sampling: log P(x) as SentencePiece scores the segmentation (an unknown
    character included), and draws distributed as P(x)^alpha, normalised over the n best."""
    from pipeline.corpus import SegmentationSampler

    processors, _ = _tokenized_toy(tmp_path, toy_corpus)
    processor = processors["tgt"]
    sampler = SegmentationSampler(processor, alpha=0.5, nbest=8)
    for text in ("white bird flower .", "blue Zebra ."):  # Z is not in the vocabulary
        segmentations = processor.nbest_encode(text, nbest_size=8, out_type="numpy")
        proto = processor.nbest_encode(text, nbest_size=8, out_type="proto")
        np.testing.assert_allclose(sampler.log_probabilities(segmentations), [n.score for n in proto.nbests],
                                   rtol=1e-5)
    text = "white bird flower ."
    segmentations = [x.tolist() for x in processor.nbest_encode(text, nbest_size=8, out_type="numpy")]
    assert len(segmentations) == 8
    expected = np.exp(0.5 * sampler.log_probabilities([np.array(x) for x in segmentations]))
    expected /= expected.sum()
    rng = np.random.default_rng(0)
    draws = [segmentations.index(x) for x in sampler.draw(sampler.nbest([text] * 20000), rng)]
    observed = np.bincount(draws, minlength=8) / len(draws)
    np.testing.assert_allclose(observed, expected, atol=0.015)
    assert sampler.draw(sampler.nbest(["", "sky ."]), rng)[0] == []  # an empty text has one segmentation: none


def test_sampling_needs_unigram_tokenizers(tmp_path, toy_corpus):
    """SentencePiece finds the n best for unigram models only: a BPE run gets a clear error."""
    from pipeline.corpus import SegmentationSampler
    from pipeline.errors import ConfigError

    processors, _ = _tokenized_toy(tmp_path, toy_corpus, model_type="bpe")
    with pytest.raises(ConfigError, match="unigram tokenizers only"):
        SegmentationSampler(processors["src"], alpha=0.5, nbest=64)
