"""Greedy, beam and sampling search over one decoder step, batched in the graph."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.model import build_model
from pipeline.search import Searcher
from pipeline.vocab import EOS, PAD, pad


@pytest.fixture(scope="module")
def searcher():
    keras.utils.set_random_seed(42)
    model = build_model(ModelConfig(embed_dim=16, units=16, attention_units=16, dropout=0.0), 30, 20)
    return Searcher(model)


def _sources(n=6, seed=0):
    rng = np.random.default_rng(seed)
    sources = [list(rng.integers(4, 30, rng.integers(2, 9))) + [EOS] for _ in range(n)]
    return pad(sources), np.array([len(s) + 4 for s in sources], np.int32)


def _ids(result):
    return np.asarray(result.tokens)


def test_greedy_respects_each_sentence_limit(searcher):
    src, limits = _sources()
    tokens = _ids(searcher.greedy(src, limits))[:, 0]
    for row, limit in zip(tokens, limits):
        real = [t for t in row if t != PAD]
        assert 1 <= len(real) <= limit
        assert real[-1] == EOS and EOS not in real[:-1]


def test_beam_of_width_one_without_length_penalty_equals_greedy(searcher):
    src, limits = _sources(8, seed=1)
    greedy = searcher.greedy(src, limits)
    beam = searcher.beam(src, limits, beam=1, length_penalty=0.0)
    g, b = _ids(greedy)[:, 0], _ids(beam)[:, 0]
    width = max(g.shape[1], b.shape[1])
    g = np.pad(g, ((0, 0), (0, width - g.shape[1])))
    b = np.pad(b, ((0, 0), (0, width - b.shape[1])))
    np.testing.assert_array_equal(g, b)
    np.testing.assert_allclose(np.asarray(greedy.log_probs), np.asarray(beam.log_probs), atol=1e-4)


def test_wide_beam_finds_the_exact_best_sequence(searcher):
    """With every prefix in the beam, beam search is exhaustive: compare with brute force over
    all outputs of at most 3 pieces (words are <unk> and ids 4..19; </s> ends)."""
    import itertools

    model = searcher.model
    src = pad([[5, 6, 7, EOS]])
    words = [1] + list(range(4, 20))
    candidates = [[EOS]] + [[a, EOS] for a in words] + [[a, b, EOS] for a, b in itertools.product(words, words)]
    tgt_out = pad(candidates)
    tgt_in = pad([[2] + c[:-1] for c in candidates], length=tgt_out.shape[1])
    log_probs = keras.ops.log_softmax(model((np.repeat(src, len(candidates), 0), tgt_in)), axis=-1)
    token_lp = np.take_along_axis(np.asarray(log_probs), tgt_out[..., None], -1)[..., 0]
    totals = (token_lp * (tgt_out != PAD)).sum(1)
    best = candidates[int(np.argmax(totals))]

    result = searcher.beam(src, np.array([3], np.int32), beam=len(words) ** 2, length_penalty=0.0)
    found = [t for t in _ids(result)[0, 0] if t != PAD]
    assert found == best
    np.testing.assert_allclose(float(np.asarray(result.log_probs)[0, 0]), totals.max(), atol=1e-4)


def test_n_best_is_sorted_and_distinct(searcher):
    src, limits = _sources(4, seed=3)
    result = searcher.beam(src, limits, beam=4, length_penalty=1.0, n_best=4)
    scores = np.asarray(result.scores)
    assert scores.shape == (4, 4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    for hyps in _ids(result):
        assert len({tuple(h) for h in hyps}) == 4


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_outputs_do_not_depend_on_the_batch_size(searcher, strategy):
    src, limits = _sources(6, seed=4)

    def run(s, l):
        if strategy == "greedy":
            return _ids(searcher.greedy(s, l))[:, 0]
        return _ids(searcher.beam(s, l, beam=3, length_penalty=1.0))[:, 0]

    together = run(src, limits)
    for i in range(len(src)):
        alone = run(src[i:i + 1], limits[i:i + 1])[0]
        n = (alone != PAD).sum()
        np.testing.assert_array_equal(together[i][:n], alone[:n])


def test_sampling_is_repeatable_with_a_seed_and_varies_without(searcher):
    src, limits = _sources(6, seed=5)
    a = _ids(searcher.sample(src, limits, temperature=1.0, top_k=0, seed=11))
    b = _ids(searcher.sample(src, limits, temperature=1.0, top_k=0, seed=11))
    c = _ids(searcher.sample(src, limits, temperature=1.0, top_k=0, seed=12))
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_top_k_one_sampling_is_greedy(searcher):
    src, limits = _sources(6, seed=6)
    np.testing.assert_array_equal(_ids(searcher.sample(src, limits, 1.0, top_k=1, seed=3)),
                                  _ids(searcher.greedy(src, limits)))


def test_attention_is_returned_on_request(searcher):
    src, limits = _sources(3, seed=7)
    result = searcher.beam(src, limits, beam=3, length_penalty=1.0, attention=True)
    att = np.asarray(result.attention)[:, 0]  # (batch, steps, src_len)
    tokens = _ids(result)[:, 0]
    for i in reversed(range(3)):
        steps = (tokens[i] != PAD).sum()
        np.testing.assert_allclose(att[i, :steps].sum(-1), 1.0, atol=1e-5)
        assert np.all(att[i, :, (src[i] == PAD)] == 0)
    # traced first for one sentence, the graph sees a static batch size of 1
    single = Searcher(searcher.model).beam(src[:1], limits[:1], beam=3, length_penalty=1.0, attention=True)
    np.testing.assert_array_equal(_ids(single)[0, 0][:steps], tokens[0][:steps])


def test_seeded_untrained_model_gives_fixed_output(searcher):
    """Golden output of the seeded model: catches silent changes to the model or the search."""
    src = pad([[5, 6, 7, EOS], [8, 9, EOS]])
    tokens = _ids(searcher.greedy(src, np.array([8, 8], np.int32)))[:, 0].tolist()
    assert tokens == GOLDEN


GOLDEN = [[5, 3, 0, 0, 0, 0, 0, 0], [5, 14, 13, 17, 13, 17, 13, 3]]


def test_beam_stops_each_sentence_when_no_alive_hypothesis_beats_the_finished_ones():
    """Sentences that are done at different steps (two early, four at their limit): a done
    sentence's n-best must not change while the rest of its batch goes on, and a batch whose
    sentences are all done stops before its limits."""
    keras.utils.set_random_seed(8)
    model = build_model(ModelConfig(embed_dim=16, units=16, attention_units=16, dropout=0.0), 30, 20)
    searcher = Searcher(model)
    src, _ = _sources(6, seed=8)
    limits = np.full(6, 40, np.int32)
    together = searcher.beam(src, limits, beam=3, length_penalty=1.0, n_best=3)
    lengths = [int((_ids(together)[i, 0] != PAD).sum()) for i in range(6)]
    assert min(lengths) < 10 and max(lengths) == 40  # what this test is about
    for i in range(len(src)):
        alone = searcher.beam(src[i:i + 1], limits[i:i + 1], beam=3, length_penalty=1.0, n_best=3)
        np.testing.assert_allclose(np.asarray(alone.scores)[0], np.asarray(together.scores)[i], atol=1e-5)
        n = _ids(alone).shape[-1]
        np.testing.assert_array_equal(_ids(together)[i, :, :n], _ids(alone)[0])
        assert (_ids(together)[i, :, n:] == PAD).all()
    early = [i for i in range(6) if lengths[i] < 10]
    assert _ids(searcher.beam(src[early], limits[early], beam=3, length_penalty=1.0)).shape[-1] < 40
