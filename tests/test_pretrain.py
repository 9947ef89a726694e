"""The pretrain stage: word2vec skip-gram vectors aligned with the run's SentencePiece ids."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline import pretrain as pretrain_stage, word2vec
from pipeline.artifacts import Run
from pipeline.config import PretrainConfig, TokenizeConfig
from pipeline.errors import InputError, StageError
from pipeline.pretrain import load_pretrained, pretrain
from pipeline.tokenize import load_encoded, load_processor, tokenize

# Each sentence uses the letters of one group only, so letters of a group always co-occur and
# letters of different groups never do. A character model makes every letter one piece.
GROUPS = {"src": ("abcdef", "uvwxyz"), "tgt": ("ghijkl", "mnopqr")}
TINY = PretrainConfig(dim=16, window=2, negatives=3, epochs=4, subsample=0.0, learning_rate=0.05,
                      batch_size=240, seed=7)


def _write_corpus(path: Path, groups: tuple[str, ...], sentences: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(sentences):
        letters = list(groups[rng.integers(len(groups))])
        words = ["".join(rng.choice(letters, size=rng.integers(2, 5))) for _ in range(rng.integers(2, 5))]
        lines.append(" ".join(words))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tokenize(root: Path, corpus: Path, config: TokenizeConfig | None = None) -> Run:
    run = Run.at(root)
    tokenize(run, config or TokenizeConfig(model_type="char", vocab_size=40),
             src=str(corpus / "train.xx"), tgt=str(corpus / "train.yy"), src_lang="xx", tgt_lang="yy")
    return run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    _write_corpus(root / "train.xx", GROUPS["src"], 1500, seed=1)
    _write_corpus(root / "train.yy", GROUPS["tgt"], 1500, seed=2)
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[Run, dict]:
    run = _tokenize(tmp_path_factory.mktemp("trained") / "run", corpus)
    return run, pretrain(run, TINY)


def test_vectors_line_up_with_the_sentencepiece_ids(trained):
    run, report = trained
    for side in ("src", "tgt"):
        sp = load_processor(run.path("tokenize", f"spm.{side}.model"))
        vectors = np.load(run.path("pretrain", f"emb.{side}.npy"))
        assert vectors.dtype == np.float32
        assert vectors.shape == (sp.get_piece_size(), TINY.dim) == (report[side]["vocab_size"], 16)

        lines = run.path("pretrain", f"emb.{side}.txt").read_text(encoding="utf-8").splitlines()
        assert lines[0] == f"{sp.get_piece_size()} {TINY.dim}"
        assert len(lines) == sp.get_piece_size() + 1
        for i, line in enumerate(lines[1:]):
            piece, *values = line.split(" ")
            assert piece == sp.id_to_piece(i)
            np.testing.assert_array_equal(np.array(values, dtype=np.float32), vectors[i])


def test_manifest_records_the_tokenizer_and_the_report(trained):
    run, report = trained
    manifest = json.loads(run.path("pretrain", "manifest.json").read_text(encoding="utf-8"))
    hashes = {side: run.output_hash("tokenize", f"spm.{side}.model") for side in ("src", "tgt")}
    assert manifest["tokenizer"] == hashes
    assert manifest["inputs"] == {}  # no extra text given
    assert set(manifest["outputs"]) == {f"emb.{s}.{e}" for s in ("src", "tgt") for e in ("npy", "txt")}
    assert manifest["config"]["dim"] == 16
    assert manifest["report"] == json.loads(json.dumps(report))
    for side in ("src", "tgt"):
        assert report[side]["tokens"] > 10_000
        # Nothing is subsampled here: every token is a centre word once per epoch.
        assert report[side]["effective_words"] == TINY.epochs * report[side]["tokens"]
        assert report[side]["words_per_second"] > 0
        assert len(report[side]["neighbours"]) == 1  # only rank 10 of SHOW_RANKS exists in 13 letters
        (neighbours,) = report[side]["neighbours"].values()
        assert len(neighbours) == 5


def test_letters_that_always_co_occur_end_up_closer(trained):
    run, _ = trained
    for side, groups in GROUPS.items():
        sp = load_processor(run.path("tokenize", f"spm.{side}.model"))
        vectors = np.load(run.path("pretrain", f"emb.{side}.npy"))
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        members = [[sp.piece_to_id(letter) for letter in group] for group in groups]
        within = [unit[a] @ unit[b] for group in members for a in group for b in group if a < b]
        across = [unit[a] @ unit[b] for a in members[0] for b in members[1]]
        assert np.mean(within) > np.mean(across) + 0.5, (side, np.mean(within), np.mean(across))
        assert min(within) > max(across)


def test_special_ids_are_not_trained(trained):
    run, _ = trained
    vectors = np.load(run.path("pretrain", "emb.src.npy"))
    start = word2vec.SkipGram(len(vectors), TINY.dim, seed=TINY.seed)  # the src side's seed
    np.testing.assert_array_equal(vectors[:4], start.input_vectors.embeddings.numpy()[:4])
    assert np.all(np.abs(vectors[:4]) <= 0.5 / TINY.dim) and np.all(vectors[:4] != 0)


def test_same_seed_gives_identical_vectors(trained, tmp_path):
    run, _ = trained
    again = Run.at(tmp_path / "again")
    shutil.copytree(run.stage_dir("tokenize"), again.stage_dir("tokenize"))
    pretrain(again, TINY)
    for side in ("src", "tgt"):
        np.testing.assert_array_equal(np.load(again.path("pretrain", f"emb.{side}.npy")),
                                      np.load(run.path("pretrain", f"emb.{side}.npy")))
    other = Run.at(tmp_path / "other")
    shutil.copytree(run.stage_dir("tokenize"), other.stage_dir("tokenize"))
    pretrain(other, replace(TINY, seed=8, epochs=1))
    first, second = (np.load(r.path("pretrain", "emb.src.npy")) for r in (run, other))
    assert not np.allclose(first, second)


def test_load_pretrained_follows_the_stage_and_the_tokenizer(corpus, tmp_path):
    run = _tokenize(tmp_path / "run", corpus)
    assert load_pretrained(run, "src") is None
    pretrain(run, replace(TINY, epochs=1))
    np.testing.assert_array_equal(load_pretrained(run, "tgt"), np.load(run.path("pretrain", "emb.tgt.npy")))

    _tokenize(tmp_path / "run", corpus, TokenizeConfig(model_type="unigram", vocab_size=30))
    with pytest.raises(StageError) as error:
        load_pretrained(run, "src")
    assert "different tokenizer" in error.value.message
    assert error.value.hint == f"rerun `python cli.py pretrain --run {run.root}`"


def test_load_pretrained_refuses_a_changed_file(corpus, tmp_path):
    run = _tokenize(tmp_path / "run", corpus)
    pretrain(run, replace(TINY, epochs=1))
    path = run.path("pretrain", "emb.src.npy")
    np.save(path, np.load(path) + 1)
    with pytest.raises(StageError, match="changed since the pretrain stage wrote it") as error:
        load_pretrained(run, "src")
    assert error.value.hint == f"rerun `python cli.py pretrain --run {run.root}`"


def test_pretrain_needs_the_tokenize_stage(tmp_path):
    with pytest.raises(StageError) as error:
        pretrain(Run.at(tmp_path / "empty"), TINY)
    assert error.value.message.startswith("`pretrain` needs the tokenize stage's output")
    assert error.value.hint == f"run `python cli.py tokenize --run {tmp_path / 'empty'}` first"
    assert not (tmp_path / "empty" / "pretrain").exists()


def test_extra_text_is_encoded_and_trained_on(corpus, tmp_path):
    run = _tokenize(tmp_path / "run", corpus)
    extra = _write_corpus(tmp_path / "more.xx", GROUPS["src"], 300, seed=3)
    with extra.open("a", encoding="utf-8") as f:
        f.write("\n\n")  # blank lines are skipped
    report = pretrain(run, replace(TINY, epochs=1, extra_src=str(extra)))
    sp = load_processor(run.path("tokenize", "spm.src.model"))
    lines = [line for line in extra.read_text(encoding="utf-8").splitlines() if line]
    pieces = sum(len(ids) for ids in sp.encode(lines))
    assert report["src"]["extra"] == {"path": str(extra), "sentences": 300, "tokens": pieces}
    assert report["tgt"]["extra"] is None
    encoded = list(load_encoded(run, "test").read())
    assert report["src"]["tokens"] == sum(np.count_nonzero(s >= 4) for s, _ in encoded) + pieces
    assert report["tgt"]["tokens"] == sum(np.count_nonzero(t >= 4) for _, t in encoded)
    manifest = run.manifest("pretrain")
    assert set(manifest["inputs"]) == {"extra_src"}
    assert manifest["inputs"]["extra_src"]["path"] == str(extra)


def test_missing_extra_text_fails_before_the_stage_starts(corpus, tmp_path):
    run = _tokenize(tmp_path / "run", corpus)
    with pytest.raises(InputError, match="file not found"):
        pretrain(run, replace(TINY, extra_tgt=str(tmp_path / "nope.yy")))
    assert not run.stage_dir("pretrain").exists()


# --- the algorithm, checked against a plain per-pair implementation of word2vec's update ---

def test_one_step_matches_a_per_pair_reference():
    """Windows stay inside sentences, every pair of a block meets the block's noise words (each
    counting 1 / NOISE_DRAWS), noise equal to the centre is skipped, both tables move."""
    vocab, dim, config = 12, 4, PretrainConfig(dim=4, window=2, negatives=2, epochs=1, subsample=0.0,
                                               learning_rate=0.1, batch_size=10_000, seed=3)
    ids = np.array([4, 5, 1, 6, 7, 4, 8, 9, 10, 11, 5, 6, 7], np.int32)  # id 1 (unk) is dropped
    offsets = np.array([0, 5, 6, 13])  # three sentences, the middle one a single word
    batches = word2vec.SkipGramBatches(word2vec.in_memory(ids, offsets), vocab, config, np.random.default_rng(0))
    (batch,) = list(batches.epoch())
    assert batch["steps"] == 1

    model = word2vec.SkipGram(vocab, dim, config.window, config.negatives, seed=1)
    rng = np.random.default_rng(5)
    model.output_vectors.embeddings.assign(rng.normal(size=(vocab, dim)).astype(np.float32))
    v0, u0 = model.input_vectors.embeddings.numpy(), model.output_vectors.embeddings.numpy()
    model.compile(optimizer=None, jit_compile=True)
    model.train_on_batch(batch)

    words = ids[ids >= 4]
    sentence = np.repeat(np.arange(3), np.diff(offsets))[ids >= 4]
    windows = batch["windows"].reshape(-1)[:len(words)]
    noise = batch["noise"].reshape(-1, config.negatives * word2vec.NOISE_DRAWS)  # per block
    block = 2 * config.window
    rate = batch["rates"][0]
    dv, du = np.zeros_like(v0), np.zeros_like(u0)
    pairs = 0
    for c, centre in enumerate(words):
        for x in range(len(words)):
            if x == c or abs(x - c) > windows[c] or sentence[x] != sentence[c]:
                continue
            pairs += 1
            context = words[x]
            for target, label, weight in [(centre, 1.0, 1.0)] + [(n, 0.0, 1 / word2vec.NOISE_DRAWS)
                                                                  for n in noise[c // block] if n != centre]:
                g = rate * weight * (label - 1 / (1 + np.exp(-v0[context] @ u0[target])))
                dv[context] += g * u0[target]
                du[target] += g * v0[context]
    assert pairs > 10
    np.testing.assert_allclose(model.input_vectors.embeddings.numpy(), v0 + dv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.output_vectors.embeddings.numpy(), u0 + du, rtol=1e-5, atol=1e-6)


def test_a_failing_side_stops_the_other_and_its_error_is_the_stages(monkeypatch, tmp_path):
    """The sides train in two threads: when one fails, the other is told to stop and the stage
    ends with the failing side's error, without waiting for the other side to finish."""
    def train(chunks, vocab_size, config, seed, name, stop):
        if name == "tgt":
            raise StageError("the tgt side broke")
        assert stop.wait(timeout=30), "the src side was never told to stop"
        raise StageError("src stopped")

    class Pieces:
        def get_piece_size(self):
            return 8

    monkeypatch.setattr(word2vec, "train", train)
    with pytest.raises(StageError, match="the tgt side broke"):
        pretrain_stage._pretrain_sides(tmp_path, {"src": (None, None), "tgt": (None, None)},
                                 {"src": Pieces(), "tgt": Pieces()}, TINY)


def test_subsampling_and_rate_follow_word2vec():
    counts = np.array([0, 0, 0, 0, 900, 90, 9, 1])
    keep = word2vec.keep_probabilities(counts, subsample=0.01)
    t = 0.01 * counts.sum()
    expected = np.minimum(1, (np.sqrt(counts[4:] / t) + 1) * t / counts[4:])
    np.testing.assert_allclose(keep[4:], expected, rtol=1e-6)
    assert keep[4] < 0.2 and keep[7] == 1.0
    np.testing.assert_array_equal(keep[:4], 0.0)
    np.testing.assert_array_equal(word2vec.keep_probabilities(counts, 0.0), (counts > 0).astype(np.float32))

    rates = word2vec.linear_rate(0.025, np.array([0, 500, 1000, 2000]), total=1000)
    np.testing.assert_allclose(rates, [0.025, 0.0125, 0.025e-4, 0.025e-4], rtol=1e-6)


def test_noise_words_follow_the_unigram_distribution_to_the_075():
    counts = np.array([0, 0, 0, 0, 10_000, 1000, 100])
    ids = np.repeat(np.arange(7, dtype=np.int32), counts)
    config = PretrainConfig(dim=4, window=1, negatives=5, subsample=0.0, batch_size=64)
    batches = word2vec.SkipGramBatches(word2vec.in_memory(ids, [0, len(ids)]), 7, config, np.random.default_rng(0))
    noise = np.concatenate([b["noise"][:b["steps"]].reshape(-1) for b in batches.epoch()])
    expected = counts[4:] ** 0.75 / (counts[4:] ** 0.75).sum()
    observed = np.bincount(noise, minlength=7)[4:] / np.count_nonzero(noise >= 4)
    np.testing.assert_allclose(observed, expected, atol=0.01)
    assert np.all(noise[noise < 4] == 0)  # only padding blocks carry id 0


def test_windows_are_sampled_uniformly_up_to_the_maximum():
    ids = np.full(20_000, 4, np.int32)
    config = PretrainConfig(dim=4, window=4, subsample=0.0)
    batches = word2vec.SkipGramBatches(word2vec.in_memory(ids, [0, len(ids)]), 5, config, np.random.default_rng(0))
    windows = np.concatenate([b["windows"].reshape(-1) for b in batches.epoch()])
    windows = windows[windows > 0]  # 0 marks padding
    assert len(windows) == len(ids)
    np.testing.assert_allclose(np.bincount(windows)[1:] / len(windows), [0.25] * 4, atol=0.01)


def test_skipgram_reloads_from_its_config():
    model = word2vec.SkipGram(20, 8, window=3, negatives=4, seed=5)
    clone = word2vec.SkipGram.from_config(model.get_config())
    assert (clone.vocab_size, clone.dim, clone.window, clone.negatives) == (20, 8, 3, 4)
    assert model(np.array([[4, 5, 0]])).shape == (1, 3, 8)
