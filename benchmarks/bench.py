"""What benchmarks/speed.py and benchmarks/peer.py share: the settings of a run, and `Bench`, which
runs each measured command as a subprocess and reads its wall time and peak RSS."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.config import PRECISIONS, PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks")
SRC, TGT = "ja", "en"
DOWNLOAD_HINT = "python cli.py download small_parallel_enja --from ../shared/data/small_parallel_enja"
_P = PretrainConfig()
WORD2VEC = {"dim": _P.dim, "window": _P.window, "negatives": _P.negatives, "epochs": _P.epochs,
            "subsample": _P.subsample, "seed": _P.seed}


@dataclass(frozen=True)
class Settings:
    """What one run measures. The defaults are the full benchmark; QUICK shrinks every size."""

    steps: int = 1000  # measured training steps, after the warm-up
    warmup: int = 50
    interval: int = 100  # JoeyNMT logs its tokens/s every 100 steps (rnn_jaen.yaml)
    batch_size: int = 64
    model: dict = field(default_factory=dict)  # ModelConfig overrides; {} is the reference model
    precision: str = "float32"  # the training step's (TrainConfig.precision)
    pairs: Optional[int] = None  # training pairs used; None: all
    test_sentences: Optional[int] = None  # None: all
    repeats: int = 5
    batch1_sentences: int = 50
    beam: int = 5
    scales: tuple = (1, 3, 10)
    word2vec: dict = field(default_factory=lambda: dict(WORD2VEC))
    threads: int = len(os.sched_getaffinity(0))
    quick: bool = False

    def validate(self) -> None:
        for name in ("steps", "interval", "repeats", "threads"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name} must be >= 1; got {getattr(self, name)}")
        if self.warmup < 0:
            raise BenchmarkError(f"--warmup must be >= 0; got {self.warmup}")
        if self.precision not in PRECISIONS:
            raise BenchmarkError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision}")
        if self.steps < self.interval:
            raise BenchmarkError(f"--steps ({self.steps}) must be at least one --interval ({self.interval})")


QUICK = dict(steps=12, warmup=3, interval=4, model=dict(embed_dim=32, units=32, attention_units=32),
             pairs=2000, test_sentences=64, repeats=2, batch1_sentences=8, scales=(1, 2),
             word2vec={**WORD2VEC, "dim": 32, "epochs": 1}, quick=True)


class BenchmarkError(Exception):
    """A one-line reason the benchmark cannot go on, with a hint."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


class Bench:
    """Runs the measured commands as subprocesses of a scratch folder, remembering shared steps."""

    def __init__(self, settings: Settings, data: Path, workdir: Path):
        self.settings, self.data, self.workdir = settings, data, workdir
        self.env = child_env(settings.threads)
        self._stages: dict[tuple[str, int], dict] = {}

    def child(self, argv: list, what: str, env: dict[str, str] | None = None) -> tuple[str, dict[str, float]]:
        """Run argv in the project root; stderr passes through. Returns stdout and the child's
        wall time and peak RSS (of the child and its own children, from wait4)."""
        log.info("%s: %s", what, " ".join(str(a) for a in argv[1:]))
        started = time.perf_counter()
        proc = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE,
                                text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise BenchmarkError(f"{what} failed with exit code {proc.returncode} (its log is above)")
        return out, {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}

    def measure(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        """One `benchmarks/measure.py` body in a fresh process; its figures plus wall and RSS."""
        spec_path, out_path = self.workdir / f"{kind}.spec.json", self.workdir / f"{kind}.out.json"
        spec_path.write_text(json.dumps({**spec, "threads": self.settings.threads}))
        _, usage = self.child([sys.executable, "-m", "benchmarks.measure", kind, spec_path, out_path], kind)
        return {**json.loads(out_path.read_text()), "process": usage}

    def corpus(self, scale: int) -> Path:
        """A folder with train.ja and train.en: the training pairs (or the first --pairs) repeated."""
        if scale == 1 and self.settings.pairs is None:
            return self.data
        folder = self.workdir / f"corpus-{scale}"
        if not folder.is_dir():
            folder.mkdir()
            for lang in (SRC, TGT):
                with open(self.data / f"train.{lang}", encoding="utf-8") as f:
                    lines = f.readlines()[:self.settings.pairs]
                with open(folder / f"train.{lang}", "w", encoding="utf-8") as f:
                    for _ in range(scale):
                        f.writelines(lines)
        return folder

    def stage(self, name: str, scale: int) -> dict[str, Any]:
        """`python cli.py tokenize` or `pretrain` on the corpus at `scale`, run once per benchmark."""
        if (name, scale) in self._stages:
            return self._stages[name, scale]
        run = self.workdir / f"run-{scale}"
        if name == "tokenize":
            corpus = self.corpus(scale)
            args = ["--src", corpus / f"train.{SRC}", "--tgt", corpus / f"train.{TGT}"]
        else:
            self.stage("tokenize", scale)
            args = [x for key, value in self.settings.word2vec.items() for x in (f"--{key}", value)]
        out, usage = self.child([sys.executable, "cli.py", name, "--run", run, *args], f"{name} {scale}x")
        self._stages[name, scale] = {"run": run, "report": json.loads(out), **usage}
        return self._stages[name, scale]


def child_env(threads: int) -> dict[str, str]:
    """The environment of every measured process: TensorFlow as cli.py sets it, thread pools fixed."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["TF_NUM_INTRAOP_THREADS"] = env["TF_NUM_INTEROP_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
