"""The random kill campaign: `python cli.py pipeline` killed with SIGKILL at random moments, rerun
until it finishes, and checked against an uninterrupted run (not part of CI; minutes per trial).

    python benchmarks/kill_campaign.py --trials 20            # random moments, on a toy corpus
    python benchmarks/kill_campaign.py --trials 20 --points    # also at the named fault points

Each trial copies nothing: it runs the pipeline (split → tokenize → pretrain → train → evaluate
on a corpus it writes itself) in a fresh run directory, kills it after a random delay — or, with
`--points`, at a random one of the named fault points (`pipeline/faults.py`) — up to `--kills`
times, then lets it finish. It then checks what the reliability issue asks: the command
finished with exit 0; the model's weights and every kept epoch checkpoint equal the
uninterrupted run's bit for bit; every manifest parses and its outputs hash as recorded; no
temporary file is left. It prints the counts and exits 1 if any trial failed a check.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project's packages

import typer  # noqa: E402

from benchmarks.bench import ROOT, command, log, to_toml  # noqa: E402
from pipeline.artifacts import Run  # noqa: E402
from tests.conftest import toy_pairs, write_corpus  # noqa: E402

POINTS = ["write:*", "epoch-end", "backup-saved", "averaged", "before-manifest:train", "swap:*"]
CONFIG = {"split": {"dev": 40, "test": 40}, "tokenize": {"vocab_size": 60}, "pretrain": {"dim": 32, "epochs": 2},
          "model": {"embed_dim": 32, "units": 32, "attention_units": 32, "dropout": 0.2},
          "train": {"epochs": 4, "batch_size": 32, "learning_rate": 0.01, "patience": 10, "keep_checkpoints": 3,
                    "average_checkpoints": 3},
          "decode": {"beam": 2}, "evaluate": {"tokenize": "none"}}


def pipeline(config: Path, kill_after: float | None = None, kill_at: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "NMT_KILL_AT"}
    if kill_at:
        env["NMT_KILL_AT"] = kill_at
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "pipeline", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        return proc.wait()


def fingerprint(run: Path) -> list:
    """The best model's weights and each kept checkpoint's, as bytes."""
    import keras
    import pipeline.model  # noqa: F401 (registers Seq2Seq)

    model = keras.saving.load_model(run / "train" / "model.keras", compile=False)
    out = [w.tobytes() for w in model.get_weights()]
    for path in sorted((run / "train" / "checkpoints").iterdir()):
        model.load_weights(path)
        out += [w.tobytes() for w in model.get_weights()]
    return out


def problems(run: Path) -> list[str]:
    """Stages whose manifest does not parse or whose outputs do not hash as recorded (`Run.verify`,
    as the stages downstream check them); leftover temporaries."""
    found = []
    for stage in ("split", "tokenize", "pretrain", "train", "evaluate"):
        try:
            Run.at(run).verify(stage, list(Run.at(run).manifest(stage)["outputs"]))
        except Exception as e:  # noqa: BLE001 - any failure is what the campaign counts
            found.append(f"{stage}: {getattr(e, 'message', e)}")
    return found + [f"leftover {p.relative_to(run)}" for p in run.rglob(".*") if p.name not in (".lock", ".staging")]


def main(trials: int = typer.Option(10), kills: int = typer.Option(3, help="Most kills per trial."),
         points: bool = typer.Option(False, help="Half the kills at named fault points."),
         seed: int = typer.Option(0)):
    """Kill `python cli.py pipeline` at random moments, rerun it, check it against an uninterrupted run."""
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="kill-campaign-"))
    src, tgt = write_corpus(work, "corpus", toy_pairs(1000, seed=3))

    def config_for(name: str) -> Path:
        path = work / f"{name}.toml"
        path.write_text(to_toml({"run": str(work / name), "data": {"src": str(src), "tgt": str(tgt)}, **CONFIG}),
                        encoding="utf-8")
        return path

    started = time.perf_counter()
    if pipeline(config_for("reference")) != 0:
        log.error("the uninterrupted reference run failed")
        raise typer.Exit(1)
    reference_s = time.perf_counter() - started
    reference = fingerprint(work / "reference")
    counts = {"trials": 0, "kills": 0, "kills at points": 0, "finished": 0, "exact": 0, "failed checks": 0}
    for trial in range(trials):
        config = config_for(f"trial{trial}")
        counts["trials"] += 1
        for _ in range(rng.randint(1, kills)):
            if points and rng.random() < 0.5:
                code = pipeline(config, kill_at=f"{rng.choice(POINTS)}:{rng.randint(1, 4)}")
                counts["kills at points"] += code == -signal.SIGKILL
            else:
                code = pipeline(config, kill_after=rng.uniform(1.0, reference_s))
            counts["kills"] += code == -signal.SIGKILL
            if code == 0:
                break
        code = pipeline(config)
        run = work / f"trial{trial}"
        found = problems(run) if code == 0 else [f"exit {code}"]
        if code == 0:
            counts["finished"] += 1
            if fingerprint(run) == reference:
                counts["exact"] += 1
            else:
                found.append("weights differ from the uninterrupted run's")
        if found:
            counts["failed checks"] += 1
            log.error("trial %d: %s", trial, "; ".join(found))
        shutil.rmtree(run, ignore_errors=True)
    typer.echo(json.dumps({**counts, "reference_s": round(reference_s, 1)}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    if counts["failed checks"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    command(main)
