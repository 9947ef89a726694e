"""Ensembles of runs at search time, and scoring given pairs (`score`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.artifacts import Run
from pipeline.config import DecodeConfig, TokenizeConfig
from pipeline.ensemble import Ensemble
from pipeline.errors import StageError
from pipeline.model import Seq2Seq
from pipeline.score import Scorer
from pipeline.search import Searcher
from pipeline.tokenize import tokenize
from pipeline.translate import Translator
from pipeline.vocab import BOS, EOS, pad
from tests.conftest import write_corpus, toy_pairs
from tests.test_cli import cli


def _perturbed(model: Seq2Seq, scale: float, seed: int) -> Seq2Seq:
    """Another model with the same shapes: the trained weights plus noise."""
    rng = np.random.default_rng(seed)
    other = Seq2Seq.from_config(model.get_config())
    other.build()
    other.set_weights([w + scale * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    return other


@pytest.fixture(scope="module")
def members(tiny_run):
    translator = Translator.load(tiny_run)
    return translator, [translator.model, _perturbed(translator.model, 0.05, seed=1)]


def _sources(translator, lines):
    ids = [translator.sp_src.encode(line) + [EOS] for line in lines]
    return pad(ids), np.array([len(s) * 2 + 10 for s in ids], np.int32)


def test_the_ensemble_distribution_is_the_mean_of_the_members(members, toy_corpus):
    translator, models = members
    src, _ = _sources(translator, toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:4])
    tokens = np.full([len(src)], BOS, np.int32)
    ensemble = Ensemble(models)
    encoded, state = ensemble.encode(src)
    log_probs, _, weights = ensemble.decode_step(encoded, state, tokens)
    probs = [np.exp(m.decode_step(*m.encode(src), tokens)[0]) for m in models]
    np.testing.assert_allclose(np.exp(log_probs), (probs[0] + probs[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(np.sum(weights, -1), 1.0, atol=1e-5)


def test_an_ensemble_of_one_model_twice_searches_like_the_model(members, toy_corpus):
    translator, models = members
    src, limits = _sources(translator, toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:6])
    single, double = Searcher(models[0]), Searcher(Ensemble([models[0], models[0]]))
    for search in (lambda s: s.greedy(src, limits), lambda s: s.beam(src, limits, 3, 1.0, n_best=3)):
        a, b = search(single), search(double)
        np.testing.assert_array_equal(a.tokens.numpy(), b.tokens.numpy())
        np.testing.assert_allclose(a.log_probs.numpy(), b.log_probs.numpy(), rtol=1e-4, atol=1e-4)


def test_an_ensemble_of_different_models_decodes_every_strategy(members, toy_corpus):
    translator, models = members
    ensemble = Translator(Ensemble(models), translator.sp_src, translator.sp_tgt)
    lines = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:5]
    for config in (DecodeConfig(strategy="greedy"), DecodeConfig(beam=4, n_best=2), DecodeConfig(strategy="sample")):
        hyps = list(ensemble.translate(lines, config))
        assert len(hyps) == 5 and all(h.text for h in hyps)


def test_score_matches_the_log_probability_greedy_search_reports(tiny_run, toy_corpus):
    translator = Translator.load(tiny_run)
    lines = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:8]
    hyps = list(translator.translate(lines, DecodeConfig(strategy="greedy")))
    scores = list(Scorer.load(tiny_run).score([(s, h.text) for s, h in zip(lines, hyps)], batch_size=3))
    for hyp, scored in zip(hyps, scores):
        assert scored.pieces[-1] == "</s>"
        assert scored.log_prob == pytest.approx(hyp.log_prob, abs=1e-3)
        assert scored.log_prob == pytest.approx(sum(scored.piece_log_probs))


def test_score_prefers_the_reference_to_a_scrambled_one(tiny_run, toy_corpus):
    src = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:10]
    ref = toy_corpus["dev_tgt"].read_text(encoding="utf-8").splitlines()[:10]
    scrambled = [" ".join(reversed(r.split()[:-1])) + " ." for r in ref]  # wrong word order
    scorer = Scorer.load(tiny_run)
    good = [s.log_prob for s in scorer.score(zip(src, ref))]
    bad = [s.log_prob for s in scorer.score(zip(src, scrambled))]
    assert sum(g > b for g, b in zip(good, bad)) >= 9


def test_runs_with_different_tokenizers_cannot_ensemble(tiny_run, tmp_path):
    other = Run.at(tmp_path / "other")
    src, tgt = write_corpus(tmp_path, "x", toy_pairs(300, seed=9))
    tokenize(other, TokenizeConfig(vocab_size=50), src=str(src), tgt=str(tgt))
    with pytest.raises(StageError, match="different SentencePiece models"):
        Translator.load([tiny_run, other])


def test_cli_score_and_ensemble_translate(tiny_run, toy_corpus, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(tiny_run.root, twin)
    src, tgt = toy_corpus["dev_src"], toy_corpus["dev_tgt"]
    n = len(src.read_text(encoding="utf-8").splitlines())
    text = cli("score", "--run", tiny_run.root, "--src", src, "--tgt", tgt).stdout.splitlines()
    assert len(text) == n and all(float(x) < 0 for x in text)
    rows = [json.loads(x) for x in cli("score", "--run", tiny_run.root, "--run", twin, "--src", src, "--tgt", tgt,
                                       "--format", "jsonl").stdout.splitlines()]
    assert len(rows) == n and rows[0]["pieces"][-1] == "</s>"
    assert [r["log_prob"] for r in rows] == pytest.approx([float(x) for x in text], abs=1e-3)
    single = cli("translate", "--run", tiny_run.root, "-i", src, "--beam", "3").stdout
    assert cli("translate", "--run", tiny_run.root, "--run", twin, "-i", src, "--beam", "3").stdout == single
    report = json.loads(cli("evaluate", "--run", tiny_run.root, "--run", twin, "--src", src, "--ref", tgt,
                            "--json").stdout)
    assert report["runs"] == [str(tiny_run.root), str(twin)]
    assert Run.at(tiny_run.root).has("evaluate_ensemble")
    bad = cli("score", "--run", tiny_run.root, "--src", src, "--tgt", tmp_path / "missing.en", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error:")
