"""The run directory: where each stage writes, atomically, with a manifest the next stage checks.

Layout of `saved_models/NAME/`:

    split/     train.src train.tgt dev.src dev.tgt test.src test.tgt manifest.json (optional stage)
    tokenize/  spm.src.model spm.tgt.model (and .vocab) train.json train-NNNNN.tfrecord manifest.json
    pretrain/  emb.src.npy emb.src.txt emb.tgt.npy emb.tgt.txt manifest.json
    train/     model.keras (best by dev BLEU) history.csv state.json checkpoints/ tensorboard/ manifest.json
    evaluate/  hypotheses.txt report.json manifest.json
    plots/     curves.png attention-N.png (`cli.py plot`; not a stage, no manifest)
    .staging/  stages being written (train's holds backup/ of an interrupted training, and the
               segmentations/ of subword regularisation while it trains)
    .lock      held by the one command writing to the run

A stage writes into `.staging/STAGE/` and its manifest last; only then is the directory swapped
in for `STAGE/`, so a failed or interrupted stage leaves the previous output as it was, and a
directory without a manifest is never taken for a finished stage. A later stage reads the
manifests it depends on and refuses outputs whose hashes no longer match.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from pipeline import faults
from pipeline.errors import ConfigError, StageError

MANIFEST = "manifest.json"
STAGING = ".staging"  # stages being written, inside the run directory
OLD = ".old"  # suffix of a stage directory parked during a swap
LOCK = ".lock"

# Which command produces each stage, for "run X first" hints.
STAGE_COMMAND = {
    "split": "python cli.py split",
    "tokenize": "python cli.py tokenize",
    "pretrain": "python cli.py pretrain",
    "train": "python cli.py train",
    "evaluate": "python cli.py evaluate",
}


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the whole extension (".weights.h5", ".keras"): Keras picks the format from it
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp's 0600 would make shared run directories unreadable
    try:
        yield tmp_path
        faults.point(f"write:{path.name}")
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("numpy", "sentencepiece", "tensorflow", "tensorflow_text", "keras", "nltk", "sacrebleu"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


class Declaration(NamedTuple):
    """What a stage's result depends on: its settings and the user's input files. The stage records
    it in its manifest; `pipeline` compares it with the manifest to skip an up-to-date stage. Each
    stage module's `declare` makes it, so the two never disagree."""

    settings: dict[str, Any]
    inputs: dict[str, str | None]  # name -> path; None: not given


def run_directory(path: str | Path) -> Path:
    """`path` as a run directory, refusing an empty path (the working directory) and a file."""
    if not str(path).strip():
        raise ConfigError("the run directory is an empty path", hint="give one, e.g. --run saved_models/NAME")
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"the run directory {path} is a file", hint="give a directory, e.g. saved_models/NAME")
    return Path(path)


@dataclass(frozen=True)
class Run:
    """A run directory and the stages inside it."""

    root: Path

    @classmethod
    def at(cls, path: str | Path) -> "Run":
        return cls(run_directory(path))

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def staging_dir(self, stage: str) -> Path:
        return self.root / STAGING / stage

    def path(self, stage: str, name: str) -> Path:
        return self.root / stage / name

    def has(self, stage: str) -> bool:
        return (self.stage_dir(stage) / MANIFEST).is_file()

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the run's lock: one command writes to a run at a time (see `RunLock`)."""
        with RunLock(self.root, command):
            _recover(self)
            yield

    def _recover_unlocked(self) -> None:
        """Repair a swap a killed writer left halfway, unless a writer is at work (it will)."""
        try:
            with self.lock("recover"):
                pass
        except (StageError, OSError):  # busy, or a run we may only read
            pass

    @contextlib.contextmanager
    def writing(self, stage: str, from_current: bool = False, resumable: bool = False,
                resume: bool = False) -> Iterator["StageWriter"]:
        """Write `stage` under the run's lock into `.staging/STAGE/`, swapped in for `STAGE/` when
        the block calls `finish` and ends without error (or removed, if it calls `discard`).

        The staging directory starts empty, or as a copy of the current stage (`from_current`,
        for a change to a finished stage), or as an interrupted attempt left it (`resume`, with
        its temporary files removed). A block that fails leaves `STAGE/` untouched; its staging
        directory is removed, unless the stage is `resumable` (train keeps its backup there).
        """
        with self.lock(stage):
            staging = self.staging_dir(stage)
            if resume and staging.is_dir():
                remove_temporary_files(staging)
            else:
                shutil.rmtree(staging, ignore_errors=True)
                if from_current and self.stage_dir(stage).is_dir():
                    _link_tree(self.stage_dir(stage), staging)
                staging.mkdir(parents=True, exist_ok=True)
            (staging / MANIFEST).unlink(missing_ok=True)
            writer = StageWriter(self, stage, staging)
            try:
                yield writer
            except BaseException:
                if not resumable:
                    shutil.rmtree(staging, ignore_errors=True)
                raise
            if writer.discarded:
                shutil.rmtree(staging, ignore_errors=True)
                return
            if writer.manifest is None:
                raise RuntimeError(f"the {stage} stage ended without calling finish()")
            _swap_in(self, stage)

    def manifest(self, stage: str, needed_by: str | None = None) -> dict[str, Any]:
        """Read a stage's manifest, refusing a stage that never finished."""
        path = self.stage_dir(stage) / MANIFEST
        if not path.is_file() and self.staging_dir(stage + OLD).exists():
            self._recover_unlocked()
        if not path.is_file():
            who = f"`{needed_by}` needs" if needed_by else "missing"
            raise StageError(
                f"{who} the {stage} stage's output in {self.root}, which is not there",
                hint=f"run `{STAGE_COMMAND.get(stage, stage)} --run {self.root}` first",
            )
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise StageError(
                f"the {stage} manifest in {self.root} is unreadable ({e})",
                hint=f"rerun `{STAGE_COMMAND.get(stage, stage)} --run {self.root}`",
            ) from None

    def verify(self, stage: str, names: list[str], needed_by: str | None = None) -> dict[str, Any]:
        """Check that the named outputs of `stage` exist and still hash as recorded."""
        manifest = self.manifest(stage, needed_by)
        rerun = f"rerun `{STAGE_COMMAND.get(stage, stage)} --run {self.root}`"
        for name in names:
            path = self.path(stage, name)
            recorded = manifest["outputs"].get(name)
            if not path.is_file() or recorded is None:
                raise StageError(f"{path} is missing", hint=rerun)
            if sha256(path) != recorded:
                raise StageError(f"{path} changed since the {stage} stage wrote it", hint=rerun)
        return manifest

    def output_hash(self, stage: str, name: str) -> str:
        return self.manifest(stage)["outputs"][name]


def _describe(path: Path) -> dict[str, Any]:
    if path.is_file():
        return {"path": str(path), "sha256": sha256(path), "bytes": path.stat().st_size}
    return {"path": str(path)}


class StageWriter:
    """A stage being written: its staging directory and, once `finish` is called, its manifest."""

    def __init__(self, run: Run, stage: str, directory: Path):
        self.run, self.stage, self.dir = run, stage, directory
        self.manifest: dict[str, Any] | None = None
        self.discarded = False

    def discard(self) -> None:
        """End the block without recording the stage: its staging directory is removed and the
        current stage stays as it is (a worker of a cluster other than its chief)."""
        self.discarded = True

    def finish(self, declared: Declaration, outputs: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record the stage as finished: the manifest, written last. `outputs` are file names
        inside the stage directory."""
        self.manifest = write_manifest(self.dir, self.stage, declared, outputs, extra)
        return self.manifest


def write_manifest(directory: Path, stage: str, declared: Declaration, outputs: list[str],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `directory/manifest.json`: the stage, its declared settings and inputs (hashed), its
    `outputs` (paths relative to `directory`, hashed), library versions and time."""
    manifest = {
        "stage": stage,
        "config": declared.settings,
        "inputs": {k: _describe(Path(v)) for k, v in declared.inputs.items() if v is not None},
        "outputs": {name: sha256(directory / name) for name in outputs},
        "versions": library_versions(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished_unix": time.time(),  # later stages compare it: an upstream rerun outdates them
    }
    if extra:
        manifest.update(extra)
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


class RunLock:
    """An exclusive `flock` on `RUN/.lock`, naming its holder (pid, host, command, time) inside.

    The kernel drops the lock when its process dies, however it dies, so a lock left by a killed
    command is stale by construction and the next command takes it. Reentrant within a process
    (`pipeline` runs the stages in one process). A second process gets a StageError naming the
    holder. `flock` is not shared across hosts on every network file system: run one writer per
    run directory there.
    """

    _held: dict[Path, list] = {}  # resolved path -> [open file, depth]

    def __init__(self, root: Path, command: str):
        self.root, self.command = root, command

    def __enter__(self) -> "RunLock":
        self.root.mkdir(parents=True, exist_ok=True)
        path = (self.root / LOCK).resolve()
        held = self._held.get(path)
        if held:
            held[1] += 1
            return self
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StageError(f"{self.root} is in use by {holder}",
                             hint="wait for it to finish, or use another --run") from None
        f.seek(0)
        f.truncate()
        f.write(f"`{self.command}` (pid {os.getpid()} on {socket.gethostname()}, "
                f"since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        self._held[path] = [f, 1]
        return self

    def __exit__(self, *exc) -> None:
        path = (self.root / LOCK).resolve()
        held = self._held[path]
        held[1] -= 1
        if held[1] == 0:
            del self._held[path]
            held[0].truncate(0)
            held[0].close()  # closing releases the flock


def remove_temporary_files(directory: Path) -> list[Path]:
    """Delete the hidden files under `directory`: what writes killed before their rename left."""
    removed = []
    for path in sorted(directory.rglob(".*")):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def _swap_in(run: Run, stage: str) -> None:
    """Replace STAGE/ by the finished .staging/STAGE/. The old directory is parked as
    .staging/STAGE.old between two renames, so a kill at any point is repaired by `_recover`."""
    current, staging, old = run.stage_dir(stage), run.staging_dir(stage), run.staging_dir(stage + OLD)
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        os.replace(current, old)
    faults.point(f"swap:{stage}")
    os.replace(staging, current)
    shutil.rmtree(old, ignore_errors=True)


def _recover(run: Run) -> None:
    """Finish or undo a swap that a killed process left halfway (see `_swap_in`)."""
    staging_root = run.root / STAGING
    if not staging_root.is_dir():
        return
    for old in staging_root.glob("*" + OLD):
        stage = old.name[:-len(OLD)]
        current, staging = run.stage_dir(stage), run.staging_dir(stage)
        if not current.exists():
            if (staging / MANIFEST).is_file():
                os.replace(staging, current)  # the new one was ready: complete the swap
            else:
                os.replace(old, current)  # put the last good one back
                continue
        shutil.rmtree(old, ignore_errors=True)


def _link_tree(source: Path, dest: Path) -> None:
    """Copy a directory tree as hard links (files are only ever replaced, never edited in place)."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link)
