"""Training on tf.distribute: two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy,
one thread each) against one process on the same global batches; a worker killed mid-epoch."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.distribute import loopback_hosts
from tests.conftest import ROOT, TINY_MODEL

TRAIN = ["--epochs", "2", "--batch-size", "32", "--patience", "10", "--no-pretrained", "--average-checkpoints", "0",
         *[f"--{k.replace('_', '-')}={v}" for k, v in TINY_MODEL.items()]]
# dropout 0: dropout masks drawn per replica slice cannot match one process's mask for the whole
# batch, and the comparison below is of the arithmetic, which must agree to float rounding.


@pytest.fixture(scope="module")
def tokenized(toy_corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("dist") / "run"
    _cli(["tokenize", "--run", str(run), "--src", str(toy_corpus["train_src"]), "--tgt",
          str(toy_corpus["train_tgt"]), "--vocab-size", "60"])
    return run


def _cli(args: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=kwargs.pop("check", True), **kwargs)


def _workers(runs: list[Path], dev: list[str], kill_at: dict[int, str] | None = None) -> list[subprocess.Popen]:
    hosts = loopback_hosts(len(runs))
    procs = []
    for index, run in enumerate(runs):
        env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})}
        if kill_at and index in kill_at:
            env["NMT_KILL_AT"] = kill_at[index]
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "train", "--run", str(run),
                                       "--strategy", "multiworker", *TRAIN, *dev],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return procs


def _reports(procs: list[subprocess.Popen], timeout: float = 400) -> list[dict]:
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-3000:]
        reports.append(json.loads(out))
    return reports


def _losses(run: Path) -> list[float]:
    with (run / "train" / "history.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _copies(tokenized: Path, tmp_path: Path, names: list[str]) -> list[Path]:
    copies = [tmp_path / name for name in names]
    for copy in copies:
        shutil.copytree(tokenized, copy)
    return copies


def test_two_workers_train_to_identical_weights_and_the_loss_curve_of_one_process(tokenized, toy_corpus,
                                                                                    tmp_path):
    dev = ["--dev-src", str(toy_corpus["dev_src"]), "--dev-tgt", str(toy_corpus["dev_tgt"])]
    chief_run, worker_run, single_run = _copies(tokenized, tmp_path, ["chief", "worker", "single"])
    chief, worker = _reports(_workers([chief_run, worker_run], dev))
    assert worker["worker"] == "worker 1" and worker["epochs"] == chief["epochs"] == 2
    assert worker["weights_sha256"] == chief["weights_sha256"]
    # the chief writes the run; the other worker leaves its copy as it was
    assert (chief_run / "train" / "model.keras").is_file()
    assert not (worker_run / "train").exists() and not (worker_run / ".staging" / "train").exists()

    single = json.loads(_cli(["train", "--run", str(single_run), "--strategy", "one", *TRAIN, *dev],
                             env={"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}).stdout)
    # the same global batches: the same loss curve, up to the order of float sums across replicas
    assert _losses(chief_run) == pytest.approx(_losses(single_run), rel=2e-3)
    assert chief["best_dev_bleu"] == pytest.approx(single["best_dev_bleu"], abs=1.0)


def test_a_worker_killed_mid_epoch_resumes_with_the_other_from_the_last_backup(tokenized, toy_corpus, tmp_path):
    dev = ["--dev-src", str(toy_corpus["dev_src"]), "--dev-tgt", str(toy_corpus["dev_tgt"])]
    runs = _copies(tokenized, tmp_path, ["chief", "worker"])
    # 1200 pairs in batches of 32: 38 steps an epoch; the 50th step is in the second epoch
    procs = _workers(runs, dev, kill_at={1: "train-batch:50"})
    procs[1].wait(timeout=400)
    assert procs[1].returncode == -signal.SIGKILL
    time.sleep(1)
    procs[0].kill()  # its peer is gone: its collectives would wait, then fail
    procs[0].wait()
    assert all((run / ".staging" / "train" / "backup" / "state.npz").is_file() for run in runs)

    chief, worker = _reports(_workers(runs, dev))
    assert chief["resumed_after_epoch"] == worker["resumed_after_epoch"] == 1
    assert chief["epochs"] == worker["epochs"] == 2
    assert chief["weights_sha256"] == worker["weights_sha256"]


def test_multiworker_needs_a_cluster_and_pipeline_refuses_one(tokenized, tmp_path):
    proc = _cli(["train", "--run", str(tokenized), "--strategy", "multiworker"], check=False,
                env={"TF_CONFIG": ""})
    assert proc.returncode != 0
    assert "error: --strategy multiworker needs TF_CONFIG naming the cluster and this worker" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_devices_says_whether_the_cpu_computes_bfloat16():
    from pipeline.distribute import devices

    amx = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
           "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    assert {k: devices(amx)[k] for k in ("cpu", "avx512", "avx512_bf16", "amx_bf16")} == {
        "cpu": "Intel(R) Xeon(R) Platinum 8481C", "avx512": True, "avx512_bf16": True, "amx_bf16": True}
    avx2 = devices("model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n")
    assert (avx2["cpu"], avx2["avx512_bf16"], avx2["amx_bf16"], avx2["gpus"]) == ("AMD EPYC", False, False, [])


def test_auto_precision_is_bfloat16_only_on_a_cpu_that_computes_it():
    from pipeline.distribute import devices, precision_for

    amx = devices("model name\t: Xeon\nflags\t\t: avx512f amx_bf16\n")
    avx512_bf16 = devices("model name\t: Xeon\nflags\t\t: avx512f avx512_bf16\n")
    avx2 = devices("model name\t: AMD EPYC\nflags\t\t: avx2 fma\n")
    assert [precision_for("auto", d) for d in (amx, avx512_bf16, avx2)] == ["mixed_bfloat16", "mixed_bfloat16",
                                                                              "float32"]
    assert precision_for("auto", {**amx, "gpus": ["/physical_device:GPU:0"]}) == "float32"
    assert [precision_for(p, avx2) for p in ("float32", "mixed_bfloat16")] == ["float32", "mixed_bfloat16"]


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = ["cli.py", *json.loads(sys.argv[1])]
sys.path.insert(0, {root!r})
import cli
cli.app()
"""


def test_mirrored_on_two_devices_of_one_host_follows_the_loss_curve_of_one(tokenized, toy_corpus, tmp_path):
    """MirroredStrategy as on a host with two GPUs, here on the CPU split into two logical
    devices: the global batch is cut in two slices, one per replica, and the gradients summed."""
    dev = ["--dev-src", str(toy_corpus["dev_src"]), "--dev-tgt", str(toy_corpus["dev_tgt"])]
    mirrored_run, single_run = _copies(tokenized, tmp_path, ["mirrored", "single"])
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    args = ["train", "--run", str(mirrored_run), "--strategy", "mirrored", *TRAIN, *dev]
    proc = subprocess.run([sys.executable, "-c", MIRRORED.format(root=str(ROOT)), json.dumps(args)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 replica(s)" in proc.stderr
    _cli(["train", "--run", str(single_run), "--strategy", "one", *TRAIN, *dev], env=env)
    assert _losses(mirrored_run) == pytest.approx(_losses(single_run), rel=2e-3)
