"""`python cli.py pipeline`: every stage from one config; unchanged stages are skipped."""

from __future__ import annotations

import json
import signal
import tomllib

import keras
import numpy as np
import pytest

import pipeline.model  # noqa: F401 (registers Seq2Seq, the class model.keras names)
from pipeline.artifacts import MANIFEST, Declaration, Run
from pipeline.config import ConfigError, load_pipeline_config
from tests.conftest import ROOT, cli_in_process
from tests.test_cli import cli
from tests.test_reliability import cli as cli_killed


def _config(tmp_path, toy_corpus, epochs: int) -> str:
    c = toy_corpus
    text = f"""
run = "{tmp_path / 'run'}"
[data]
src = "{c['train_src']}"
tgt = "{c['train_tgt']}"
dev_src = "{c['dev_src']}"
dev_tgt = "{c['dev_tgt']}"
test_src = "{c['dev_src']}"
test_tgt = "{c['dev_tgt']}"
[tokenize]
vocab_size = 60
[pretrain]
dim = 16
epochs = 1
[model]
embed_dim = 16
units = 16
attention_units = 16
[train]
epochs = {epochs}
batch_size = 64
[decode]
beam = 2
"""
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_pipeline_runs_all_stages_then_skips_what_is_up_to_date(tmp_path, toy_corpus):
    config = _config(tmp_path, toy_corpus, epochs=2)
    killed = cli_killed("pipeline", "--config", config, kill_at="backup-saved:1")  # in training, after epoch 1
    assert killed.returncode == -signal.SIGKILL
    first = json.loads(cli_in_process("pipeline", "--config", config).stdout)
    assert {k: v["status"] for k, v in first["stages"].items()} == {
        "tokenize": "skipped", "pretrain": "skipped", "train": "ran", "evaluate": "ran"}
    assert first["stages"]["train"]["report"]["resumed_after_epoch"] == 1  # it went on from epoch 1
    assert 0 <= first["stages"]["evaluate"]["report"]["bleu"] <= 100
    run = Run.at(tmp_path / "run")
    resumed = _weights(run)

    again = json.loads(cli_in_process("pipeline", "--config", config).stdout)
    assert [s["status"] for s in again["stages"].values()] == ["skipped"] * 4

    # a run made before a setting existed (its manifest lacks it) stays up to date at the setting's default
    path = run.stage_dir("train") / MANIFEST
    recorded = json.loads(path.read_text())
    for key in ("lr_schedule", "warmup_steps"):
        del recorded["config"]["train"][key]
    path.write_text(json.dumps(recorded))
    older = json.loads(cli_in_process("pipeline", "--config", config).stdout)
    assert [s["status"] for s in older["stages"].values()] == ["skipped"] * 4

    # a stage rerun by hand outdates the stages after it
    manifest = run.manifest("train")
    with run.writing("train", from_current=True) as stage:
        stage.finish(Declaration(manifest["config"], {k: v["path"] for k, v in manifest["inputs"].items()}),
                     list(manifest["outputs"]), extra={"tokenizer": manifest["tokenizer"], "report": manifest["report"]})
    rewritten = json.loads(cli_in_process("pipeline", "--config", config).stdout)
    assert [s["status"] for s in rewritten["stages"].values()] == ["skipped"] * 3 + ["ran"]

    forced = json.loads(cli_in_process("pipeline", "--config", config, "--force").stdout)  # uninterrupted this time
    assert [s["status"] for s in forced["stages"].values()] == ["ran"] * 4
    for got, want in zip(_weights(run), resumed, strict=True):
        np.testing.assert_array_equal(got, want)  # the resumed training ended as this one did

    config = _config(tmp_path, toy_corpus, epochs=1)  # a train setting changed
    changed = json.loads(cli_in_process("pipeline", "--config", config).stdout)
    assert {k: v["status"] for k, v in changed["stages"].items()} == {
        "tokenize": "skipped", "pretrain": "skipped", "train": "ran", "evaluate": "ran"}


def _weights(run: Run) -> list:
    return keras.saving.load_model(run.path("train", "model.keras"), compile=False).get_weights()


def test_unknown_config_key_names_the_valid_ones(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[train]\nepoch = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown config key train.epoch; valid keys: average_checkpoints, batch_size"):
        load_pipeline_config(path)
    proc = cli("pipeline", "--config", path, check=False)
    assert proc.returncode == 1 and "unknown config key train.epoch" in proc.stderr


def test_shipped_config_is_valid():
    config = load_pipeline_config(ROOT / "configs" / "enja.toml")
    assert config.evaluate.tokenize == "none" and config.data.src.endswith("train.ja")


@pytest.mark.parametrize("text,message", [
    ('[train]\nepochs = "ten"\n', "train.epochs must be an integer"),
    ('[model]\ncell = "rnn"\n', "model.cell must be one of gru, lstm"),
    ('[decode]\nbeam = 2\nn_best = 3\n', "decode.n_best (3) cannot exceed decode.beam (2)"),
    ('train = 3\n', "config section [train] must be a table"),
])
def test_bad_values_are_refused_with_the_valid_options(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_pipeline_config(path)
    assert message in str(error.value)


def test_a_tsv_config_without_split_is_skipped_when_rerun_and_reruns_just_what_a_change_touches(tmp_path, toy_corpus):
    """The bug a config of this shape had: tokenize recorded other settings than the runner
    compared, so every call re-tokenized and retrained."""
    from pipeline.runner import run_pipeline

    pairs = zip(toy_corpus["train_tgt"].read_text(encoding="utf-8").splitlines(),
                toy_corpus["train_src"].read_text(encoding="utf-8").splitlines())
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{en}\t{ja}\n" for en, ja in pairs), encoding="utf-8")
    path = tmp_path / "tsv.toml"
    path.write_text(f"""run = "{tmp_path / 'run'}"
[data]
tsv = "{tsv}"
src_lang = "ja"
tgt_lang = "en"
test_src = "{toy_corpus['dev_src']}"
test_tgt = "{toy_corpus['dev_tgt']}"
[tokenize]
vocab_size = 60
[pretrain]
dim = 16
epochs = 1
[model]
embed_dim = 16
units = 16
attention_units = 16
[train]
epochs = 1
batch_size = 64
[decode]
beam = 1
""", encoding="utf-8")

    def statuses(*overrides):
        summary = run_pipeline(load_pipeline_config(path, list(overrides)))
        return {name: stage["status"] for name, stage in summary["stages"].items()}

    assert set(statuses().values()) == {"ran"}
    assert set(statuses().values()) == {"skipped"}
    assert statuses("--pretrain.epochs", "2") == {"tokenize": "skipped", "pretrain": "ran", "train": "ran",
                                                  "evaluate": "ran"}
    assert statuses("--pretrain.epochs", "2", "--decode.length_penalty", "0.5") == {
        "tokenize": "skipped", "pretrain": "skipped", "train": "skipped", "evaluate": "ran"}


TINY = ["--tokenize.vocab_size", "60", "--pretrain.dim", "16", "--pretrain.epochs", "1", "--model.embed_dim", "16",
        "--model.units", "16", "--model.attention_units", "16", "--train.epochs", "1", "--train.batch_size", "64",
        "--decode.beam", "1"]


@pytest.mark.parametrize("shipped", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_skipped_when_rerun(tmp_path, toy_corpus,
                                                                                          shipped):
    """Each shipped config as it is (its sections, keys and values), its corpus files swapped for
    the toy corpus's by language and role, and tiny sizes given as overrides."""
    from benchmarks.bench import to_toml
    from pipeline.runner import run_pipeline

    config = tomllib.loads(shipped.read_text(encoding="utf-8"))
    config["run"] = str(tmp_path / "run")
    data = config["data"]
    for key, value in data.items():
        if key in ("src", "tgt", "dev_src", "dev_tgt", "test_src", "test_tgt"):
            role = "train" if key in ("src", "tgt") else key.split("_")[0]
            role = "dev" if role == "test" else role  # the toy corpus's dev set is its test set too
            data[key] = str(toy_corpus[f"{role}_{'src' if value.endswith('.ja') else 'tgt'}"])
    if "tsv" in data:  # English<TAB>Japanese, as the shipped TSV config's columns say
        pairs = zip(toy_corpus["train_tgt"].read_text(encoding="utf-8").splitlines(),
                    toy_corpus["train_src"].read_text(encoding="utf-8").splitlines())
        data["tsv"] = str(tmp_path / "pairs.tsv")
        (tmp_path / "pairs.tsv").write_text("".join(f"{en}\t{ja}\n" for en, ja in pairs), encoding="utf-8")
    path = tmp_path / shipped.name
    path.write_text(to_toml(config), encoding="utf-8")
    tiny = TINY + (["--split.dev", "40", "--split.test", "40"] if "split" in config else [])

    def statuses(*overrides):
        summary = run_pipeline(load_pipeline_config(path, [*tiny, *overrides]))
        return {name: stage["status"] for name, stage in summary["stages"].items()}

    first = statuses()
    assert set(first.values()) == {"ran"} and list(first)[-1] == "evaluate"
    assert set(statuses().values()) == {"skipped"}
    # what a changed setting reruns: the TSV test above and the first test of this file
    assert statuses("--decode.length_penalty", "0.5") == {**{name: "skipped" for name in first}, "evaluate": "ran"}

