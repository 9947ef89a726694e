"""Nothing lost, whatever happens: kill -9 at scripted points, failed commands, a second writer.

A training killed anywhere (inside a checkpoint write, between the backup and the history,
during the final averaging, between the renames of the stage swap) and rerun with the same
command ends with the weights of an uninterrupted training, bit for bit, dropout included. A
failed command leaves the previous model translating. `benchmarks/kill_campaign.py` kills at
random points many more times.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from pipeline.artifacts import Run, RunLock
from pipeline.config import DecodeConfig, TokenizeConfig
import pipeline.model  # noqa: F401 (registers Seq2Seq, the class model.keras names)
from pipeline.tokenize import tokenize
from pipeline.translate import Translator
from tests.conftest import ROOT, toy_pairs, write_corpus

# dropout on, so that an unsaved random-generator state would show; averaging on, so that the
# end of the stage has work to interrupt
TRAIN = ["--epochs", "3", "--batch-size", "64", "--embed-dim", "16", "--units", "16", "--dropout", "0.2",
         "--learning-rate", "0.01", "--keep-checkpoints", "2", "--average-checkpoints", "2", "--patience", "10",
         "--seed", "5"]


def cli(*args, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NMT_KILL_AT"}
    if kill_at:
        env["NMT_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    src, tgt = write_corpus(folder, "train", toy_pairs(400, seed=11))
    dev_src, dev_tgt = write_corpus(folder, "dev", toy_pairs(30, seed=12))
    tokenized = Run.at(folder / "tokenized")
    tokenize(tokenized, TokenizeConfig(vocab_size=60), src=str(src), tgt=str(tgt), src_lang="ja", tgt_lang="en")
    return {"tokenized": tokenized.root, "src": src, "tgt": tgt, "dev": ["--dev-src", dev_src, "--dev-tgt", dev_tgt]}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted training: the weights every interrupted one must end with."""
    run = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(corpus["tokenized"], run)
    proc = cli("train", "--run", run, *corpus["dev"], *TRAIN)
    assert proc.returncode == 0, proc.stderr
    return run


def _weights(run) -> list[np.ndarray]:
    """The best model's weights, then each kept epoch checkpoint's."""
    model = keras.saving.load_model(run / "train" / "model.keras", compile=False)
    weights = model.get_weights()
    for path in sorted((run / "train" / "checkpoints").iterdir()):
        model.load_weights(path)
        weights += model.get_weights()
    return weights


def _history(run) -> list[dict]:
    with open(run / "train" / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in csv.DictReader(f)]


def test_a_training_killed_again_and_again_ends_with_the_uninterrupted_weights(corpus, reference, tmp_path):
    """Killed five times, each rerun of the same command resuming what the last one left."""
    run = tmp_path / "run"
    shutil.copytree(corpus["tokenized"], run)
    for kill_at in [
        "write:state.npz:1",  # inside epoch 1's backup write, before its rename: nothing to resume
        "backup-saved:1",  # between epoch 1's backup and its history row
        "epoch-end:1",  # epoch 2's best model and checkpoint written, its backup not
        "averaged",  # during the final checkpoint averaging
        "before-manifest:train",  # the backup removed, the manifest not yet written
    ]:
        killed = cli("train", "--run", run, *corpus["dev"], *TRAIN, kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
        assert not (run / "train").exists()
    again = cli("train", "--run", run, *corpus["dev"], *TRAIN)
    assert again.returncode == 0, again.stderr
    for got, want in zip(_weights(run), _weights(reference), strict=True):
        np.testing.assert_array_equal(got, want)
    assert _history(run) == _history(reference)
    leftovers = [p.relative_to(run) for p in run.rglob(".*") if p.name not in (".lock", ".staging")]
    assert leftovers == []  # no temporary file of the killed writes is left
    assert not any((run / ".staging").iterdir())


@pytest.mark.parametrize("new_one_finished", [True, False])
def test_a_swap_killed_halfway_is_repaired_by_the_next_reader(new_one_finished, reference, tmp_path):
    """The state a kill between the swap's two renames leaves (`swap:train` in the campaign):
    the old stage parked in .staging/train.old, the new one in .staging/train, no train/."""
    run = Run.at(tmp_path / "run")
    shutil.copytree(reference, run.root)
    shutil.copytree(run.stage_dir("train"), run.staging_dir("train"))
    if not new_one_finished:
        (run.staging_dir("train") / "manifest.json").unlink()
    os.replace(run.stage_dir("train"), run.staging_dir("train.old"))

    assert Translator.load(run).translate(["あか いぬ 。"], DecodeConfig(strategy="greedy"))  # it translates
    assert run.has("train") and not run.staging_dir("train.old").exists()
    assert run.staging_dir("train").exists() == (not new_one_finished)  # an unfinished one stays for a resume


@pytest.mark.parametrize("bad", [
    ["--dev-src", "missing.ja", "--dev-tgt", "missing.en"],
    ["--dev-src", "missing.ja"],
    ["--lr-decay", "5"],
    ["--units", "0"],
])
def test_a_failed_train_leaves_the_trained_model_as_it_was(bad, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = {p.name: p.read_bytes() for p in (run / "train").iterdir() if p.is_file()}
    proc = cli("train", "--run", run, *TRAIN, *bad)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in (run / "train").iterdir() if p.is_file()} == before


def test_a_failed_tokenize_leaves_the_tokenizer_as_it_was(corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(corpus["tokenized"], run)
    before = {p.name: p.read_bytes() for p in (run / "tokenize").iterdir()}
    proc = cli("tokenize", "--run", run, "--src", tmp_path / "missing.ja", "--tgt", corpus["tgt"])
    assert proc.returncode == 1 and "file not found" in proc.stderr
    assert {p.name: p.read_bytes() for p in (run / "tokenize").iterdir()} == before


def test_a_second_writer_is_refused_in_one_line_naming_the_first(corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(corpus["tokenized"], run)
    with RunLock(run, "train"):
        proc = cli("train", "--run", run, *corpus["dev"], *TRAIN)
    assert proc.returncode == 1
    first, *rest = proc.stderr.splitlines()
    assert first.startswith(f"error: {run} is in use by `train` (pid {os.getpid()} on ")
    assert rest == ["hint: wait for it to finish, or use another --run"]


def test_resume_refuses_an_interrupted_training_with_other_settings(corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(corpus["tokenized"], run)
    assert cli("train", "--run", run, *corpus["dev"], *TRAIN, kill_at="backup-saved:1").returncode == -signal.SIGKILL
    proc = cli("train", "--run", run, *corpus["dev"], *TRAIN, "--units", "32", "--resume")
    assert proc.returncode == 1
    assert "used other settings or inputs (settings.model.units: 16 then, 32 now)" in proc.stderr
    assert (run / ".staging" / "train" / "backup" / "state.npz").is_file()  # kept for a resume
