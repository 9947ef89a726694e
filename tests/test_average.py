"""Checkpoint averaging, at the end of training and afterwards (`python cli.py average`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.artifacts import Run
from pipeline.average import average_run, mean_weights
from pipeline.checkpoints import epoch_checkpoints
from pipeline.config import ModelConfig, TrainConfig
from pipeline.errors import ConfigError, StageError
from pipeline.model import Seq2Seq
from pipeline.train import train
from pipeline.translate import Translator
from tests.conftest import TINY_MODEL
from tests.test_train import _tokenized


def _weights(path, like: Seq2Seq) -> list[np.ndarray]:
    model = Seq2Seq.from_config(like.get_config())
    model.build()
    model.load_weights(path)
    return model.get_weights()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_corpus):
    tmp = tmp_path_factory.mktemp("avg")
    run = _tokenized(tmp, toy_corpus)
    report = train(run, ModelConfig(**TINY_MODEL),
                   TrainConfig(epochs=3, batch_size=64, patience=10, keep_checkpoints=3, average_checkpoints=3),
                   dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]), bleu_tokenize="none")
    return run, report


def test_training_ends_by_trying_the_average_of_the_last_checkpoints(trained):
    run, report = trained
    average = report["average"]
    assert average["checkpoints"] == ["epoch-001.weights.h5", "epoch-002.weights.h5", "epoch-003.weights.h5"]
    assert average["kept"] == (average["dev_bleu"] > average["best_epoch_dev_bleu"])
    assert report["best_dev_bleu"] == max(average["dev_bleu"], average["best_epoch_dev_bleu"])


def test_mean_weights_is_the_elementwise_mean(trained):
    run, _ = trained
    model = Translator.load(run).model
    paths = epoch_checkpoints(run.stage_dir("train"))[-2:]
    expected = [(a + b) / 2 for a, b in zip(*(_weights(p, model) for p in paths))]
    for got, want in zip(mean_weights(model, paths), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_average_command_replaces_the_model_only_when_dev_bleu_improves(trained, tmp_path):
    run = Run.at(tmp_path / "copy")
    shutil.copytree(trained[0].root, run.root)
    state_path = run.path("train", "state.json")
    state = json.loads(state_path.read_text())
    before = run.path("train", "model.keras").read_bytes()

    state_path.write_text(json.dumps({**state, "best_bleu": 1000.0}))  # unbeatable: keep the old model
    assert not average_run(run, 2)["kept"]
    assert run.path("train", "model.keras").read_bytes() == before

    state_path.write_text(json.dumps({**state, "best_bleu": -1.0}))  # anything beats it: replace
    result = average_run(run, 2)
    assert result["kept"]
    model = Translator.load(run).model  # the manifest was updated: the new file verifies
    for got, want in zip(model.get_weights(), mean_weights(model, epoch_checkpoints(run.stage_dir("train"))[-2:])):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert json.loads(state_path.read_text())["best_bleu"] == result["dev_bleu"]


def test_average_needs_checkpoints_and_a_consistent_config(trained, tmp_path):
    run = Run.at(tmp_path / "bare")
    shutil.copytree(trained[0].root, run.root)
    shutil.rmtree(run.stage_dir("train") / "checkpoints")
    with pytest.raises(StageError, match="averaging needs 2"):
        average_run(run, 5)
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        TrainConfig(keep_checkpoints=2, average_checkpoints=5).validate()
