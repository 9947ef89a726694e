"""What the benchmarks share: one way to run a script (Typer; the pipeline's errors end it as
cli.py ends them), one table renderer and number format, one way to run a measured subprocess, and
the settings and `Bench` of benchmarks/speed.py and benchmarks/peer.py."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import typer

from cli import guard
from pipeline.artifacts import write_json_atomic
from pipeline.config import ModelConfig, PretrainConfig, Section, TrainConfig, setting
from pipeline.errors import ConfigError, PipelineError

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as cli.py sets it, before TensorFlow loads
log = logging.getLogger("benchmarks")
SRC, TGT = "ja", "en"
DOWNLOAD_HINT = "python cli.py download small_parallel_enja --from ../shared/data/small_parallel_enja"


# -- scripts -------------------------------------------------------------------------------------

def command(main: Callable[..., Any]) -> None:
    """Run `main` as a Typer command, logging on stderr; a PipelineError ends it as it ends a
    `cli.py` command (`cli.guard`): `error: ...`, perhaps `hint: ...`, and exit code 1."""

    @functools.wraps(main)
    def guarded(**options):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s",
                            datefmt="%H:%M:%S", stream=sys.stderr)
        return guard(lambda: main(**options))

    typer.run(guarded)


def json_option(default: Optional[Path], stdout: bool = True) -> Any:
    return typer.Option(default, "--json", help="Where the results go as JSON" + (" ('-': stdout)." if stdout else "."))


def write_json(path: Path, results: Any) -> None:
    if str(path) == "-":
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        write_json_atomic(path, results)
        log.info("results written to %s", path)


def to_toml(config: dict[str, Any]) -> str:
    """The flat TOML the pipeline configs use: top-level keys, then one table per section (JSON spells
    a string, a number or a boolean as TOML does)."""
    lines = [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in config.items()
             if not isinstance(v, dict) and v is not None]
    for section, values in config.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]", *(f"{k} = {json.dumps(v, ensure_ascii=False)}"
                                            for k, v in values.items() if v is not None)]
    return "\n".join(lines) + "\n"


def choose(only: str, valid: Sequence[str], what: str) -> list[str]:
    """The names of a comma-separated list. Names may hold commas ("ja-en, LSTM"), so at each place
    the longest run of pieces that spells a valid name is taken."""
    pieces, names, i = only.split(","), [], 0
    while i < len(pieces):
        j = next((j for j in range(len(pieces), i, -1) if ",".join(pieces[i:j]).strip() in valid), None)
        if j is None and pieces[i].strip():
            sep = "; " if any("," in name for name in valid) else ", "
            raise ConfigError(f"unknown {what} {pieces[i].strip()!r}; valid {what}s: {sep.join(valid)}")
        if j is not None:
            names.append(",".join(pieces[i:j]).strip())
        i = j or i + 1
    return names


def table(header: list[str], rows: list[list[str]], markdown: bool = False) -> list[str]:
    """Rows under a header, as a Markdown table or as columns aligned for a terminal."""
    rows = [[str(cell) for cell in row] for row in rows]
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(row) + " |" for row in rows)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def num(x: float | None) -> str:
    """A figure as the tables print it: thousands separated, three significant digits or more."""
    if x is None:
        return "-"
    if isinstance(x, int) or abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def child(argv: list, what: str, env: dict[str, str] | None = None, root: Path = ROOT) -> tuple[str, dict[str, float]]:
    """Run argv in the project root (or another checkout's); stderr passes through. Returns stdout
    and the child's wall time and peak RSS (of the child and its own children, from wait4)."""
    log.info("%s: %s", what, " ".join(str(a) for a in argv[1:]))
    started = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in argv], cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    # `kill` of this script ends its child too (by default SIGTERM ends Python at once, leaving
    # the child, e.g. a training, running on without its parent); Ctrl-C reaches both already.
    # Only the main thread may set a handler: children run from threads (the workers section) keep it
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_signal) if main else None
    try:
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    wall = time.perf_counter() - started
    if (code := os.waitstatus_to_exitcode(status)) != 0:
        raise PipelineError(f"{what} failed with exit code {code} (its log is above)")
    return out, {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


# -- speed.py and peer.py ------------------------------------------------------------------------

WORD2VEC = {k: getattr(PretrainConfig(), k) for k in ("dim", "window", "negatives", "epochs", "subsample", "seed")}


@dataclass(frozen=True)
class Settings(Section):
    """What one speed run measures: each field a `speed.py` option, defined once as the pipeline's
    settings are (`pipeline.config.setting`). The defaults are the full benchmark; --quick shrinks
    every size left at its default to QUICK's."""

    SECTION = "speed"
    steps: int = setting(1000, "Measured training steps after the warm-up.", low=1)
    warmup: int = setting(50, "Training steps before the clock starts.", low=0)
    interval: int = setting(100, "Steps per throughput interval (JoeyNMT logs its tokens/s every 100).", low=1)
    batch_size: int = setting(64, "Sentences per training batch (the reference model's).", low=1)
    precision: str = setting(TrainConfig.precision, "Training precision: auto (train's default), float32, "
                             "mixed_bfloat16, mixed_float16; several, comma-separated, measured one after the "
                             "other (the first is the figure), e.g. auto,float32.")
    pairs: Optional[int] = setting(None, "Training pairs used (default: all).", low=1)
    test_sentences: Optional[int] = setting(None, "Test sentences decoded (default: all).", low=1)
    repeats: int = setting(5, "Timed decoding passes after the first.", low=1)
    batch1_sentences: int = setting(50, "Test sentences also decoded one at a time, outputs compared.", low=1)
    beam: int = setting(5, "Beam size of the beam-search figures.", low=1)
    scales: str = setting("1,10,100", "Corpus repetitions of the stream section, comma-separated.")
    stream_steps: int = setting(200, "Training steps measured at each scale of the stream section.", low=1)
    stream_word2vec_epochs: int = setting(1, "Pretrain's epochs in the stream section.", low=1)
    minutes: float = setting(2.0, "Training time of each configuration of the workers section.", low=0.01)
    workers: int = setting(2, "Worker processes of the workers section's cluster on 127.0.0.1.", low=1)
    threads: int = setting(len(os.sched_getaffinity(0)), "TensorFlow intra- and inter-op threads, gensim workers "
                           "(default: the cores this process may use).", low=1)
    quick: bool = setting(False, "Tiny sizes and a tiny model: a smoke test, not a measurement.")
    model: dict = field(default_factory=dict)  # ModelConfig overrides; {} is the reference model
    word2vec: dict = field(default_factory=lambda: dict(WORD2VEC))

    def check(self) -> None:
        """The sizes that involve several settings; the model, the training step and word2vec as the
        pipeline checks them (`train.precision must be one of ...`)."""
        if self.steps < self.interval and not self.quick:  # with --quick: checked once QUICK's sizes are in
            raise ConfigError(f"speed.steps ({self.steps}) must be at least one speed.interval ({self.interval})")
        if len(set(self.precisions)) != len(self.precisions):
            raise ConfigError(f"speed.precision takes distinct precisions separated by commas; got "
                              f"{self.precision}")
        for precision in self.precisions:
            TrainConfig(batch_size=self.batch_size, precision=precision).validate()
        ModelConfig(**self.model).validate()
        PretrainConfig(**self.word2vec).validate()
        if not all(x.strip().isdigit() and int(x) >= 1 for x in self.scales.split(",")):
            raise ConfigError(f"speed.scales takes whole numbers >= 1 separated by commas; got {self.scales!r}")

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions measured; the first is the figure of record, the others rows beside it."""
        return tuple(p.strip() for p in self.precision.split(","))

    @property
    def scale_factors(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.scales.split(","))

    def quick_sizes(self) -> "Settings":
        """With --quick: QUICK's sizes in place of every default."""
        defaults = Settings()
        return replace(self, **{k: v for k, v in QUICK.items() if getattr(self, k) == getattr(defaults, k)})


QUICK = dict(steps=12, warmup=3, interval=4, model=dict(embed_dim=32, units=32, attention_units=32),
             pairs=2000, test_sentences=64, repeats=2, batch1_sentences=8, scales="1,2", stream_steps=8,
             word2vec={**WORD2VEC, "dim": 32, "epochs": 1}, minutes=0.25)


class Bench:
    """Runs the measured commands as subprocesses of a scratch folder, remembering shared steps.
    `root` is the checkout whose code runs: this one, or an older commit's beside it (speed.py's
    --baseline)."""

    def __init__(self, settings: Settings, data: Path, workdir: Path, root: Path = ROOT, name: str = ""):
        self.settings, self.data, self.workdir, self.root, self.name = settings, data, workdir, root, name
        self.env = child_env(settings.threads, root)
        self._stages: dict[tuple[str, int], dict] = {}

    def measure(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        """One `benchmarks/measure.py` body in a fresh process; its figures plus wall and RSS."""
        stem = f"{self.name}{kind}-{len(list(self.workdir.glob(f'{self.name}{kind}-*.spec.json')))}"
        spec_path, out_path = self.workdir / f"{stem}.spec.json", self.workdir / f"{stem}.out.json"
        spec_path.write_text(json.dumps({**spec, "threads": self.settings.threads}))
        _, usage = child([sys.executable, "-m", "benchmarks.measure", kind, spec_path, out_path],
                         f"{self.name}{kind}", self.env, self.root)
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
                (folder / f"train.{lang}").write_text("".join(lines) * scale, encoding="utf-8")
        return folder

    def stage(self, name: str, scale: int, word2vec: dict | None = None) -> dict[str, Any]:
        """`python cli.py tokenize` or `pretrain` (with `word2vec`'s settings, by default the
        benchmark's) on the corpus at `scale`, run once per benchmark."""
        if (name, scale) not in self._stages:
            run = self.workdir / f"{self.name}run-{scale}"
            if name == "tokenize":
                corpus = self.corpus(scale)
                args = ["--src", corpus / f"train.{SRC}", "--tgt", corpus / f"train.{TGT}"]
            else:
                self.stage("tokenize", scale)
                args = [x for key, value in (word2vec or self.settings.word2vec).items() for x in (f"--{key}", value)]
            out, usage = child([sys.executable, "cli.py", name, "--run", run, *args], f"{self.name}{name} {scale}x",
                               self.env, self.root)
            self._stages[name, scale] = {"run": run, "report": json.loads(out), **usage}
        return self._stages[name, scale]


def child_env(threads: int, root: Path = ROOT) -> dict[str, str]:
    """The environment of every measured process: TensorFlow as cli.py sets it, thread pools fixed."""
    env = dict(os.environ)
    env["TF_NUM_INTRAOP_THREADS"] = env["TF_NUM_INTEROP_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env
