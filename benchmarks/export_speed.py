"""Sentences/s of an exported SavedModel beside `python cli.py translate`, on the same sentences.

    python benchmarks/export_speed.py                     # saved_models/enja on small_parallel_enja's test.ja
    python benchmarks/export_speed.py --run R --input F   # any trained run and source file

It exports the run (`python cli.py export`, into a scratch folder; its wall time is reported),
then measures, each in a fresh process:

    translate  `python cli.py translate --greedy` and `--beam 5`: the process's wall time, as a
               user sees it (start-up, loading, tracing, translating)
    exported   one `python -I` process with only TensorFlow and tensorflow-text: import and load
               times, then `translate_greedy` and `translate_beam` on the same sentences, sorted
               by length into batches of --batch-size as `translate` batches them (the SavedModel
               decodes each batch as given): the first pass (end to end: import + load + first
               pass), and the median of --repeats passes after it (steady rate)

and counts the lines where the two outputs differ (expected: 0). Not run in CI. JSON on stdout,
progress on stderr; without the default run or test set, and without --run/--input, it says so
and exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the project's modules come from ROOT
    sys.path.insert(0, str(ROOT))

import typer  # noqa: E402

from benchmarks.bench import DOWNLOAD_HINT, command  # noqa: E402
from pipeline.errors import ConfigError, InputError, PipelineError  # noqa: E402
from pipeline.config import DecodeConfig  # noqa: E402

log = logging.getLogger("benchmarks")
DEFAULT_RUN = ROOT / "saved_models" / "enja"
DEFAULT_INPUT = ROOT / "data" / "small_parallel_enja" / "test.ja"

# argv: a JSON spec; prints JSON figures. Runs with `python -I` outside the project: no project code.
LOADER = r"""
import json, statistics, sys, time
started = time.perf_counter()
import tensorflow as tf
import tensorflow_text  # noqa: F401
imported = time.perf_counter()
spec = json.load(open(sys.argv[1], encoding="utf-8"))
model = tf.saved_model.load(spec["export"])
loaded = time.perf_counter()
lines, size = spec["lines"], spec["batch_size"]
order = sorted(range(len(lines)), key=lambda i: len(lines[i]))

def translate(signature, extra):
    out = [None] * len(lines)
    for start in range(0, len(order), size):
        batch = order[start:start + size]
        result = model.signatures[signature](sentences=tf.constant([lines[i] for i in batch]), **extra)
        for i, text in zip(batch, result["translations"].numpy()):
            out[i] = text.decode("utf-8")
    return out

figures = {"import_s": imported - started, "load_s": loaded - imported}
for name, signature, beam in spec["searches"]:
    extra = {"beam": tf.constant(beam), "length_penalty": tf.constant(spec["length_penalty"])} if beam else {}
    t = time.perf_counter()
    texts = translate(signature, extra)
    first = time.perf_counter() - t
    seconds = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        translate(signature, extra)
        seconds.append(time.perf_counter() - t)
    figures[name] = {"first_pass_s": first, "steady_s": statistics.median(seconds), "translations": texts}
print(json.dumps(figures))
"""


def measure(run: Path, source: Path, beam: int, batch_size: int, repeats: int, workdir: Path) -> dict[str, Any]:
    lines = source.read_text(encoding="utf-8").splitlines()
    n = len(lines)
    export_dir = workdir / "export"
    started = time.perf_counter()
    _child([sys.executable, "cli.py", "export", "--run", run, "--out", export_dir, "--beam", beam], "export")
    result: dict[str, Any] = {"run": str(run), "input": str(source), "sentences": n, "beam": beam,
                              "batch_size": batch_size, "export_s": round(time.perf_counter() - started, 2)}
    searches = [("greedy", "translate_greedy", 0), (f"beam{beam}", "translate_beam", beam)]
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"export": str(export_dir), "lines": lines, "batch_size": batch_size,
                                "repeats": repeats, "searches": searches,
                                "length_penalty": DecodeConfig.length_penalty}), encoding="utf-8")
    log.info("exported model: %d sentences, greedy and beam %d, %d passes after the first", n, beam, repeats)
    exported = json.loads(_child([sys.executable, "-I", "-c", LOADER, spec], "exported model", cwd=workdir,
                                 shown="python -I -c LOADER spec.json"))
    result["exported"] = {"import_s": round(exported["import_s"], 2), "load_s": round(exported["load_s"], 2)}
    for name, _, _ in searches:
        flag = ["--greedy"] if name == "greedy" else ["--beam", beam]
        output = workdir / f"{name}.txt"
        started = time.perf_counter()
        _child([sys.executable, "cli.py", "translate", "--run", run, "--input", source, "--output", output,
                "--batch-size", batch_size, *flag], f"translate {name}")
        wall = time.perf_counter() - started
        figures = exported[name]
        end_to_end = exported["import_s"] + exported["load_s"] + figures["first_pass_s"]
        result[name] = {
            "translate": {"process_s": round(wall, 2), "sent_per_s": round(n / wall, 1)},
            "exported": {"end_to_end_s": round(end_to_end, 2), "sent_per_s": round(n / end_to_end, 1),
                         "first_pass_s": round(figures["first_pass_s"], 2),
                         "steady_s": round(figures["steady_s"], 2),
                         "steady_sent_per_s": round(n / figures["steady_s"], 1)},
            "lines_that_differ": sum(a != b for a, b in zip(figures["translations"],
                                                            output.read_text(encoding="utf-8").splitlines(),
                                                            strict=True)),
        }
        log.info("%s: translate %.1f sent/s (whole process); exported %.1f sent/s end to end, %.1f steady; "
                 "%d lines differ", name, result[name]["translate"]["sent_per_s"],
                 result[name]["exported"]["sent_per_s"], result[name]["exported"]["steady_sent_per_s"],
                 result[name]["lines_that_differ"])
    return result


def _child(argv: list, what: str, cwd: Path = ROOT, shown: str | None = None) -> str:
    """Run argv (stderr passes through; TensorFlow's C++ start-up lines off, as cli.py has them);
    its stdout, or PipelineError if it fails."""
    log.info("%s: %s", what, shown or " ".join(str(a) for a in argv[1:]))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"{what} failed with exit code {proc.returncode} (its log is above)")
    return proc.stdout


def main(
    run: Optional[Path] = typer.Option(None, help=f"A trained run (default: {DEFAULT_RUN.relative_to(ROOT)})."),
    input: Optional[Path] = typer.Option(None, "--input", help="Source sentences, one a line "
                                                               f"(default: {DEFAULT_INPUT.relative_to(ROOT)})."),
    beam: int = typer.Option(5, help="Beam size of the beam-search measurement."),
    batch_size: int = typer.Option(DecodeConfig.batch_size, help="Sentences per call of the exported model."),
    repeats: int = typer.Option(3, help="Timed passes of the exported model after the first."),
    workdir: Optional[Path] = typer.Option(None, help="Scratch folder, kept afterwards (default: a temporary one)."),
):
    """Sentences/s of the exported SavedModel beside `python cli.py translate`, greedy and beam."""
    run_path, source = (run or DEFAULT_RUN).resolve(), (input or DEFAULT_INPUT).resolve()
    if run is None and not (run_path / "train" / "manifest.json").is_file():
        typer.echo(f"skipped: no trained run at {run_path}; train one (`python cli.py pipeline --config "
                   "configs/enja.toml`) or pass --run", err=True)
        return
    if input is None and not source.is_file():
        typer.echo(f"skipped: no test set at {source} ({DOWNLOAD_HINT}), or pass --input", err=True)
        return
    if beam < 2 or batch_size < 1 or repeats < 1:
        raise ConfigError("--beam must be >= 2, --batch-size and --repeats >= 1")
    if not source.is_file():
        raise InputError(f"no such file: {source}")
    with tempfile.TemporaryDirectory(prefix="export_speed.") as scratch:
        folder = workdir.resolve() if workdir else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        result = measure(run_path, source, beam, batch_size, repeats, folder)
    typer.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    command(main)
