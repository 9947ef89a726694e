"""Speed and memory of the pipeline beside its peer, JoeyNMT 2.3.0, measured in one run.

    python benchmarks/speed.py                       # train, decode, w2v, stream (about.wall_s: how long)
    python benchmarks/speed.py --only export         # some sections; export and workers only when named
    python benchmarks/speed.py --quick               # a smoke test on tiny sizes
    python benchmarks/speed.py --markdown            # the section for BENCHMARKS.md, on stdout

Each figure is measured in a subprocess of its own (peak RSS from wait4):

    train    target tokens/s of the reference model's training step (train's batches and loop),
             median over intervals of --interval steps after a warm-up; peak RSS
    decode   sentences/s of greedy and beam-5 search on the test set with a trained run (--run),
             median of --repeats passes after a first, tracing one; outputs of batches of 1, 16
             and the default size compared
    w2v      effective words/s of `cli.py pretrain` and of gensim's word2vec (if installed) on the
             same pieces with the same settings
    stream   wall time and peak RSS of `cli.py tokenize`, `pretrain` (one word2vec epoch) and 200
             training steps on the training corpus repeated 1x, 10x, 100x (--scales); with
             --baseline COMMIT, that commit's training steps on the 1x corpus beside them
    export   `cli.py export` of --run, then `cli.py translate` (greedy, beam 5) as whole processes
             beside the SavedModel in `python -I` (benchmarks/exported_model.py): import, load,
             first pass, median of --repeats passes; lines where the outputs differ (expected: 0)
    workers  `cli.py train` for --minutes in one process, then in --workers processes on
             127.0.0.1 (MultiWorkerMirroredStrategy, threads shared out): the chief's target
             tok/s. On one machine the ratio is the cost of sharing the cores and the all-reduce.

A section without its trained run (or gensim) says so and is skipped. Ratios are to JoeyNMT's
figures published for this machine kind (../shared/peer/README.md), or, with --peer-venv, to
JoeyNMT measured in the same run (benchmarks/peer.py). Results: a table on stdout, JSON in
benchmarks/results/speed.json; progress and logs on stderr.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project's packages

import typer  # noqa: E402

from benchmarks import peer, report  # noqa: E402
from benchmarks.bench import (DOWNLOAD_HINT, ROOT, SRC, TGT, Bench, Settings, child, child_env, choose,  # noqa: E402
                              command, json_option, log, write_json)
from cli import Options, settings  # noqa: E402
from pipeline.artifacts import Run  # noqa: E402
from pipeline.config import DecodeConfig  # noqa: E402
from pipeline.errors import ConfigError, InputError, PipelineError  # noqa: E402

SECTIONS = ("train", "decode", "w2v", "stream", "export", "workers")
DEFAULT_SECTIONS = SECTIONS[:4]


# -- the sections ---------------------------------------------------------------------------------

def measure_train(bench: Bench) -> dict[str, Any]:
    """The training step in the first --precision; each other one beside it, under "precisions"."""
    run, (first, *others) = str(bench.stage("tokenize", 1)["run"]), bench.settings.precisions
    spec = _train_spec(bench.settings)
    result = bench.measure("train", {**spec, "run": run, "precision": first})
    if others:
        result["precisions"] = {p: bench.measure("train", {**spec, "run": run, "precision": p}) for p in others}
    return result


def _train_spec(s: Settings, steps: int | None = None) -> dict[str, Any]:
    warmup, interval = (s.warmup, s.interval) if steps is None else (max(1, steps // 10), max(1, steps // 4))
    return {"steps": steps or s.steps, "warmup": warmup, "interval": interval, "batch_size": s.batch_size,
            "model": s.model, "precision": s.precisions[0]}


def _untrained(run: Path, section: str) -> dict[str, str] | None:
    """A skipped section's result when `run` has no finished training."""
    if Run.at(run).has("train"):
        return None
    reason = f"no trained run at {run}: train one (`python cli.py pipeline --config configs/enja.toml`) or pass --run"
    log.warning("%s skipped: %s", section, reason)
    return {"skipped": reason}


def _test_source(bench: Bench) -> Path:
    """The test set's source side, or its first --test-sentences lines."""
    src, n = bench.data / f"test.{SRC}", bench.settings.test_sentences
    if not src.is_file():
        raise InputError(f"no test set at {src}", hint=DOWNLOAD_HINT)
    if n is None:
        return src
    cut = bench.workdir / src.name
    cut.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return cut


def measure_decode(bench: Bench, run: Path) -> dict[str, Any]:
    if skipped := _untrained(run, "decode"):
        return skipped
    s = bench.settings
    spec = {"run": str(run), "src": str(_test_source(bench)), "beam": s.beam, "repeats": s.repeats,
            "batch1_sentences": s.batch1_sentences}
    return {"run": str(run), **bench.measure("decode", spec)}


def measure_w2v(bench: Bench) -> dict[str, Any]:
    pretrained = bench.stage("pretrain", 1)
    project = {side: {k: pretrained["report"][side][k]
                      for k in ("effective_words", "words_per_second", "train_seconds", "compile_seconds")}
               for side in ("src", "tgt")}
    project["both"] = pretrained["report"]["both"]  # the two sides train at once: their wall time together
    result = {"settings": bench.settings.word2vec, "project": project, "process": _usage(pretrained)}
    if importlib.util.find_spec("gensim") is None:
        log.warning("gensim is not installed (`pip install gensim`): comparing with its published figure")
        return {**result, "gensim": {"skipped": "gensim is not installed (`pip install gensim`)"}}
    return {**result, "gensim": bench.measure("gensim", {"run": str(pretrained["run"]),
                                                         "word2vec": bench.settings.word2vec})}


def measure_stream(bench: Bench, baseline: str | None = None) -> dict[str, Any]:
    """tokenize, pretrain and --stream-steps training steps at each scale; with a `baseline`
    commit, its training steps on the 1x corpus too, in a checkout of it beside this one."""
    s = bench.settings
    word2vec, spec = {**s.word2vec, "epochs": s.stream_word2vec_epochs}, _train_spec(s, s.stream_steps)
    rows = []
    for scale in s.scale_factors:
        tokenized, pretrained = bench.stage("tokenize", scale), bench.stage("pretrain", scale, word2vec)
        word2vec_s = pretrained["report"]["both"]["train_seconds"]
        trained = bench.measure("train", {**spec, "run": str(tokenized["run"])})
        rows.append({"scale": scale, "pairs": tokenized["report"]["kept"], "tokenize": _usage(tokenized),
                     "pretrain": {**_usage(pretrained), "word2vec_s": round(word2vec_s, 2)},
                     "train": {**trained["process"], "tok_per_s": round(trained["tok_per_s"], 1)}})
    base = rows[0]
    for row in rows:
        factor = row["pairs"] / base["pairs"]
        for stage, clock in (("tokenize", "wall_s"), ("pretrain", "wall_s"), ("pretrain", "word2vec_s")):
            row[stage][f"{clock}_per_pair_vs_first"] = round(row[stage][clock] / base[stage][clock] / factor, 2)
        for stage in ("tokenize", "pretrain", "train"):
            row[stage]["rss_vs_first"] = round(row[stage]["peak_rss_mib"] / base[stage]["peak_rss_mib"], 2)
    result: dict[str, Any] = {"rows": rows, "word2vec_epochs": s.stream_word2vec_epochs, "train_steps": s.stream_steps}
    if baseline:
        old = Bench(s, bench.data, bench.workdir, root=_checkout(baseline, bench.workdir), name="baseline-")
        measured = old.measure("train", {**spec, "run": str(old.stage("tokenize", 1)["run"])})
        result["baseline"] = {"commit": baseline, "scale": 1, "tok_per_s": round(measured["tok_per_s"], 1),
                              **measured["process"]}
    return result


def _checkout(commit: str, workdir: Path) -> Path:
    """A worktree of `commit` in the scratch folder (git's own, removed with the folder)."""
    folder = workdir / "baseline-checkout"
    if not folder.is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)  # an earlier scratch folder's
        done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"cannot check out --baseline {commit}: {done.stderr.strip().splitlines()[-1]}")
    return folder


def measure_export(bench: Bench, run: Path) -> dict[str, Any]:
    if skipped := _untrained(run, "export"):
        return skipped
    s, src, folder, batch = bench.settings, _test_source(bench), bench.workdir / "export", DecodeConfig.batch_size
    lines = src.read_text(encoding="utf-8").splitlines()
    _, exported = child([sys.executable, "cli.py", "export", "--run", run, "--out", folder, "--beam", s.beam],
                        "export", bench.env)
    searches = {"greedy": ("translate_greedy", 0, ["--greedy"]), f"beam{s.beam}": ("translate_beam", s.beam,
                                                                                  ["--beam", s.beam])}
    spec = bench.workdir / "exported.spec.json"
    spec.write_text(json.dumps({"export": str(folder), "lines": lines, "batch_size": batch, "repeats": s.repeats,
                                "length_penalty": DecodeConfig.length_penalty,
                                "searches": [(name, sig, beam) for name, (sig, beam, _) in searches.items()]}))
    out, loaded = child([sys.executable, "-I", Path(__file__).with_name("exported_model.py"), spec],
                        "exported model", bench.env)
    figures = json.loads(out)
    result = {"run": str(run), "sentences": len(lines), "batch_size": batch, "repeats": s.repeats,
              "export": exported, "exported_process": loaded, "import_s": round(figures["import_s"], 2),
              "load_s": round(figures["load_s"], 2)}
    for name, (_, _, flag) in searches.items():
        output = bench.workdir / f"{name}.txt"
        _, translate = child([sys.executable, "cli.py", "translate", "--run", run, "--input", src, "--output", output,
                              "--batch-size", batch, *flag], f"translate {name}", bench.env)
        mine = figures[name]
        result[name] = {"translate": translate, "first_pass_s": round(mine["first_pass_s"], 2),
                        "steady_s": round(mine["steady_s"], 3),
                        "lines_that_differ": sum(a != b for a, b in zip(mine["translations"], output.read_text(
                            encoding="utf-8").splitlines(), strict=True))}
    return result


def measure_workers(bench: Bench) -> dict[str, Any]:
    from pipeline.distribute import loopback_hosts  # imports TensorFlow, which this process needs nowhere else

    s = bench.settings
    tokenized, each = bench.stage("tokenize", 1)["run"], max(1, s.threads // s.workers)
    args = ["--epochs", 1, "--time-budget", s.minutes, "--no-pretrained", "--average-checkpoints", 0,
            "--batch-size", s.batch_size, "--precision", s.precisions[0],
            *(x for key, value in s.model.items() for x in (f"--{key.replace('_', '-')}", value))]

    def train(name: str, threads: int, cluster: dict | None = None) -> dict[str, Any]:
        run = bench.workdir / name
        shutil.copytree(tokenized, run)
        env = {**child_env(threads), **({"TF_CONFIG": json.dumps(cluster)} if cluster else {})}
        out, usage = child([sys.executable, "cli.py", "train", "--run", run, "--strategy",
                            "multiworker" if cluster else "one", *args], name, env)
        return {"history": run / "train" / "history.csv", "weights": json.loads(out)["weights_sha256"], **usage}

    def tok_per_s(trained: dict[str, Any]) -> float:  # what the chief's history.csv records
        with trained["history"].open() as f:
            return round(float(next(csv.DictReader(f))["train_tok_per_s"]), 1)

    one, hosts = train("workers-one", s.threads), loopback_hosts(s.workers)
    with ThreadPoolExecutor(s.workers) as pool:
        cluster = list(pool.map(lambda i: train(f"workers-{i}", each, {"cluster": {"worker": hosts}, "task": {
            "type": "worker", "index": i}}), range(s.workers)))
    if len({worker["weights"] for worker in cluster}) != 1:
        raise PipelineError("the workers ended with different weights")
    one = {"tok_per_s": tok_per_s(one), "threads": s.threads, **_usage(one)}
    chief = tok_per_s(cluster[0])
    return {"minutes": s.minutes, "one_process": one, "cluster": {"workers": s.workers, "threads_each": each,
            "tok_per_s": chief, "wall_s": max(w["wall_s"] for w in cluster),
            "peak_rss_mib": [w["peak_rss_mib"] for w in cluster]}, "ratio": round(chief / one["tok_per_s"], 2)}


def _usage(stage: dict[str, Any]) -> dict[str, float]:
    return {"wall_s": stage["wall_s"], "peak_rss_mib": stage["peak_rss_mib"]}


# -- the command ----------------------------------------------------------------------------------

def benchmark(settings: Settings, sections: list[str], data: Path, run: Path, workdir: Path,
              peer_venv: Path | None, peer_steps: int, baseline: str | None = None) -> dict[str, Any]:
    for name in (f"train.{SRC}", f"train.{TGT}") if sections != ["export"] else ():  # export needs test.ja alone
        if not (data / name).is_file():
            raise InputError(f"no {name} in {data}", hint=DOWNLOAD_HINT)
    bench = Bench(settings, data, workdir)
    results: dict[str, Any] = {"about": report.about(settings.threads, bench.env), "settings": asdict(settings),
                               "sections": sections}
    started = time.perf_counter()
    measures = {"train": measure_train, "decode": lambda b: measure_decode(b, run), "w2v": measure_w2v,
                "stream": lambda b: measure_stream(b, baseline), "export": lambda b: measure_export(b, run),
                "workers": measure_workers, "peer": lambda b: peer.measure(peer_venv, b, sections, peer_steps)}
    for name in sections + (["peer"] if peer_venv else []):
        try:
            results[name] = measures[name](bench)
        except PipelineError as e:  # the other sections go on
            log.error("%s: %s", name, e.message)
            results[name] = {"error": e.message}
    results["about"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["about"]["cpu_times_end"] = report.cpu_times()
    results["about"]["wall_s"] = round(time.perf_counter() - started, 1)
    results["figures"] = report.figures(results)
    return results


@settings(s=Options(Settings, skip=("model", "word2vec")))
def main(
    only: str = typer.Option(",".join(DEFAULT_SECTIONS), help=f"Comma-separated sections: {', '.join(SECTIONS)}."),
    baseline: Optional[str] = typer.Option(None, help="A commit whose training steps the stream section measures "
                                                      "too, in a worktree of it: old and new side by side."),
    data: Path = typer.Option(ROOT / "data" / "small_parallel_enja", help="Folder with train.ja, train.en, test.ja."),
    run: Path = typer.Option(ROOT / "saved_models" / "enja", help="A trained run for decode and export."),
    json_path: Path = json_option(ROOT / "benchmarks" / "results" / "speed.json"),
    markdown: bool = typer.Option(False, help="Print the Markdown section for BENCHMARKS.md instead of the table."),
    from_json: Optional[Path] = typer.Option(None, help="Print the report of an earlier run; measure nothing."),
    peer_venv: Optional[Path] = typer.Option(None, help="A venv with JoeyNMT 2.3.0: measure the peer in this run."),
    peer_steps: Optional[int] = typer.Option(None, help="Training steps of the peer with --peer-venv "
                                                        "(default 600; --quick: 12)."),
    workdir: Optional[Path] = typer.Option(None, help="Scratch folder, kept afterwards (default: a temporary one)."),
    *, s: Settings,
):
    """Measure training, decoding, word2vec, streaming, export and multi-worker speed and memory beside JoeyNMT."""
    if from_json:
        results = json.loads(from_json.read_text(encoding="utf-8"))
        results["figures"] = report.figures(results)  # with the report's current rules
    else:
        sections = [name for name in SECTIONS if name in choose(only, SECTIONS, "section")]
        if s.quick:
            s = s.quick_sizes()
            s.validate()
            log.warning("quick mode: a smoke test on tiny sizes; its figures say nothing about speed")
        if peer_steps is None:
            peer_steps = 3 * s.interval if s.quick else 600
        if (load := os.getloadavg()[0]) > report.RECORD_LOAD:
            log.warning("load average %.2f on %d cores: other work shares the CPU; the figures will be low and "
                        "not a run of record (no --markdown section)", load, os.cpu_count())
            if markdown:
                raise ConfigError(f"the load average is {load:.2f}, above {report.RECORD_LOAD}: not measuring a "
                                  "run of record", hint="wait for an idle machine (`uptime`), or drop --markdown")
        with tempfile.TemporaryDirectory(prefix="nmt-speed-") as scratch:
            folder = Path(workdir or scratch).resolve()
            folder.mkdir(parents=True, exist_ok=True)
            results = benchmark(s, sections, data.resolve(), run.resolve(), folder, peer_venv, peer_steps, baseline)
        write_json(json_path, results)
    typer.echo(report.render(results, markdown))
    if any("error" in results.get(name, {}) for name in SECTIONS + ("peer",)):
        raise typer.Exit(1)


if __name__ == "__main__":
    command(main)
