"""Tokenize stage: SentencePiece models per language, encoded pairs, counted drops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.artifacts import Run
from pipeline.config import TokenizeConfig
from pipeline.errors import InputError, StageError
from pipeline.tokenize import load_encoded, load_tokenizers, tokenize
from tests.conftest import toy_pairs, write_corpus


def test_sentencepiece_round_trip_and_encoded_pairs(toy_corpus, tmp_path):
    run = Run.at(tmp_path / "run")
    report = tokenize(run, TokenizeConfig(vocab_size=60), src=str(toy_corpus["train_src"]),
                      tgt=str(toy_corpus["train_tgt"]), src_lang="ja", tgt_lang="en")
    assert report["kept"] == 1200 and report["dropped_empty"] == 0
    processors, manifest = load_tokenizers(run, needed_by="test")
    assert manifest["stage"] == "tokenize" and set(manifest["outputs"]) >= {"train.json", "train-00000.tfrecord", "spm.src.model"}
    src_lines = toy_corpus["train_src"].read_text(encoding="utf-8").splitlines()
    tgt_lines = toy_corpus["train_tgt"].read_text(encoding="utf-8").splitlines()
    for line in src_lines[:50]:
        assert processors["src"].decode(processors["src"].encode(line)) == line
    encoded = list(load_encoded(run, needed_by="test").read())
    assert len(encoded) == 1200
    assert processors["tgt"].decode(encoded[7][1].tolist()) == tgt_lines[7]
    assert all(seq.dtype == np.int32 and seq.min() > 3 for seq, _ in encoded[:20])


def test_empty_and_overlong_pairs_are_dropped_and_counted(tmp_path):
    pairs = toy_pairs(200, seed=3) + [("", "dog ."), ("いぬ 。", "   "), (" ".join(["いぬ"] * 300), "dog .")]
    src, tgt = write_corpus(tmp_path, "c", pairs)
    report = tokenize(Run.at(tmp_path / "run"), TokenizeConfig(vocab_size=60, max_tokens=50),
                      src=str(src), tgt=str(tgt), src_lang="ja", tgt_lang="en")
    assert report == {**report, "pairs_read": 203, "kept": 200, "dropped_empty": 2, "dropped_too_long": 1}


def test_too_large_vocabulary_is_reduced_with_a_warning(toy_corpus, tmp_path, caplog):
    report = tokenize(Run.at(tmp_path / "run"), TokenizeConfig(vocab_size=5000), src=str(toy_corpus["train_src"]),
                      tgt=str(toy_corpus["train_tgt"]), src_lang="ja", tgt_lang="en")
    assert report["src"]["requested_vocab_size"] == 5000
    assert 20 < report["src"]["vocab_size"] < 5000
    assert "larger than this corpus supports" in caplog.text


def test_tsv_columns(tmp_path):
    pairs = toy_pairs(150, seed=4)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{en}\t{ja}\n" for ja, en in pairs), encoding="utf-8")
    run = Run.at(tmp_path / "run")
    report = tokenize(run, TokenizeConfig(vocab_size=60), tsv=str(tsv), tsv_src_col=1, tsv_tgt_col=0,
                      src_lang="ja", tgt_lang="en")
    assert report["kept"] == 150
    processors, _ = load_tokenizers(run, "test")
    first_src, _ = next(load_encoded(run, "test").read())
    assert processors["src"].decode(first_src.tolist()) == pairs[0][0]


def test_tsv_with_too_few_columns(tmp_path):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("only one column\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 1 has 1 tab-separated column"):
        tokenize(Run.at(tmp_path / "run"), TokenizeConfig(), tsv=str(tsv))


def test_later_stage_refuses_a_changed_tokenizer(toy_corpus, tmp_path):
    run = Run.at(tmp_path / "run")
    tokenize(run, TokenizeConfig(vocab_size=60), src=str(toy_corpus["train_src"]), tgt=str(toy_corpus["train_tgt"]))
    model = run.path("tokenize", "spm.src.model")
    model.write_bytes(model.read_bytes() + b"x")
    with pytest.raises(StageError, match="changed since the tokenize stage wrote it"):
        load_tokenizers(run, needed_by="train")
    manifest = json.loads(run.path("tokenize", "manifest.json").read_text())
    assert manifest["config"]["vocab_size"] == 60


def test_the_same_data_gives_the_same_tokenizer_bytes_in_any_run_directory(tmp_path):
    src, tgt = write_corpus(tmp_path, "c", toy_pairs(300, seed=4))
    runs = [Run.at(tmp_path / name) for name in ("a", "elsewhere/b")]
    for run in runs:
        tokenize(run, TokenizeConfig(vocab_size=60), src=str(src), tgt=str(tgt), src_lang="ja", tgt_lang="en")
    for side in ("src", "tgt"):
        a, b = (run.path("tokenize", f"spm.{side}.model").read_bytes() for run in runs)
        assert a == b and str(tmp_path).encode() not in a  # no path of the run is recorded inside


def test_a_run_tokenized_by_an_older_version_is_told_to_tokenize_again(toy_corpus, tmp_path):
    import json

    from pipeline.errors import StageError
    from pipeline.tokenize import declare

    run = Run.at(tmp_path / "run")
    tokenize(run, TokenizeConfig(vocab_size=60), src=str(toy_corpus["train_src"]), tgt=str(toy_corpus["train_tgt"]))
    path = run.stage_dir("tokenize") / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["outputs"] = {"train.npz": "0" * 64, **{k: v for k, v in manifest["outputs"].items() if "train" not in k}}
    del manifest["config"]["format"]  # as versions before the shards recorded it
    path.write_text(json.dumps(manifest))
    with pytest.raises(StageError, match="holds the pairs as train.npz") as error:
        load_encoded(run, "train")
    assert error.value.hint.startswith(f"rerun `python cli.py tokenize --run {run.root}`")
    declared = declare(TokenizeConfig(vocab_size=60), None, None, None, 1, 0, "src", "tgt")
    assert declared.settings["format"] != manifest["config"].get("format")  # so `pipeline` tokenizes anew
