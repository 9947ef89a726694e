"""Training throughput of one process against a cluster of worker processes on this machine.

    python benchmarks/workers.py                  # one process, then two workers on 127.0.0.1
    python benchmarks/workers.py --minutes 3 --workers 2 --json out.json

Both train the reference model with `python cli.py train` on copies of one tokenized run of
small_parallel_enja, for the same wall-time budget (`--time-budget`), with the same global
batch; the workers (MultiWorkerMirroredStrategy over gRPC on 127.0.0.1) share this machine's
cores, each with its share of the threads. The figure is `train_tok_per_s`, the target tokens
per second of training proper that the chief records in history.csv (the whole cluster's tokens).
On one machine the workers compete for the same cores and pay for the gradient all-reduce over
loopback, so the ratio measures that overhead, not a speed-up.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the project's modules come from ROOT
    sys.path.insert(0, str(ROOT))

import typer  # noqa: E402

from benchmarks.bench import DOWNLOAD_HINT, SRC, TGT, child, child_env, command, json_option, log, table  # noqa: E402
from pipeline.distribute import loopback_hosts  # noqa: E402
from pipeline.errors import InputError, PipelineError  # noqa: E402


def _tok_per_s(run: Path) -> float:
    with (run / "train" / "history.csv").open() as f:
        return float(next(csv.DictReader(f))["train_tok_per_s"])


def _cluster(runs: list[Path], args: list[str], threads: int) -> list[dict]:
    """`train` on each run, as the workers of one cluster; their reports."""
    hosts = loopback_hosts(len(runs))
    procs = []
    for index, run in enumerate(runs):
        env = {**child_env(threads), "TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                                               "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "cli.py", "train", "--run", str(run),
                                       "--strategy", "multiworker", *args],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True))
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise PipelineError(f"a worker failed with exit code {proc.returncode} (its log is above)")
        reports.append(json.loads(out))
    return reports


def main(
    minutes: float = typer.Option(2.0, help="Training time of each configuration (train --time-budget)."),
    workers: int = typer.Option(2, help="Worker processes of the cluster."),
    threads: int = typer.Option(len(os.sched_getaffinity(0)), help="TensorFlow threads of the one process; "
                                                                  "each worker gets its share."),
    data: Path = typer.Option(ROOT / "data" / "small_parallel_enja", help="Folder with train.ja and train.en."),
    json_path: Optional[Path] = json_option(None),
):
    """Target tokens/s of training in one process and in a cluster of workers on this machine."""
    if not (data / f"train.{SRC}").is_file():
        raise InputError(f"no train.{SRC} in {data}", hint=DOWNLOAD_HINT)
    load = os.getloadavg()
    if load[0] > 0.5:
        log.warning("load average %.1f: other work shares the CPU, figures will be low", load[0])
    args = ["--epochs", "1", "--time-budget", str(minutes), "--no-pretrained", "--average-checkpoints", "0"]
    with tempfile.TemporaryDirectory(prefix="nmt-workers-") as scratch:
        base = Path(scratch) / "run"
        child([sys.executable, "cli.py", "tokenize", "--run", base, "--src", data / f"train.{SRC}",
               "--tgt", data / f"train.{TGT}"], "tokenize", child_env(threads))
        one = Path(scratch) / "one"
        shutil.copytree(base, one)
        started = time.perf_counter()
        child([sys.executable, "cli.py", "train", "--run", one, "--strategy", "one", *args], "one process",
              child_env(threads))
        one_s = time.perf_counter() - started
        runs = [Path(scratch) / f"worker-{i}" for i in range(workers)]
        for run in runs:
            shutil.copytree(base, run)
        started = time.perf_counter()
        reports = _cluster(runs, args, max(1, threads // workers))
        cluster_s = time.perf_counter() - started
        if len({r["weights_sha256"] for r in reports}) != 1:
            raise PipelineError("the workers ended with different weights")
        results = {
            "load_average_start": [round(x, 2) for x in load], "minutes": minutes, "threads": threads,
            "one_process": {"tok_per_s": round(_tok_per_s(one), 1), "wall_s": round(one_s, 1)},
            "cluster": {"workers": workers, "threads_each": max(1, threads // workers),
                        "tok_per_s": round(_tok_per_s(runs[0]), 1), "wall_s": round(cluster_s, 1)},
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        }
    results["ratio"] = round(results["cluster"]["tok_per_s"] / results["one_process"]["tok_per_s"], 2)
    rows = [["one process", f"{threads}", f"{results['one_process']['tok_per_s']:,.0f}", "1.00"],
            [f"{workers} workers on 127.0.0.1", f"{results['cluster']['threads_each']} each",
             f"{results['cluster']['tok_per_s']:,.0f}", f"{results['ratio']:.2f}"]]
    typer.echo("\n".join(table(["training", "threads", "target tok/s", "ratio"], rows)))
    typer.echo(f"load average {load[0]:.2f} at the start, {results['load_average_end'][0]:.2f} at the end; "
               f"{minutes} min of training each")
    if json_path:
        from benchmarks.bench import write_json

        write_json(json_path, results)


if __name__ == "__main__":
    command(main)
