"""The run directory: where each stage writes, atomically, with a manifest the next stage checks.

Layout of `saved_models/NAME/`:

    split/     train.src train.tgt dev.src dev.tgt test.src test.tgt manifest.json (optional stage)
    tokenize/  spm.src.model spm.tgt.model train.src.npy train.tgt.npy ... manifest.json
    pretrain/  emb.src.npy emb.src.txt emb.tgt.npy emb.tgt.txt manifest.json
    train/     model.keras (best by dev BLEU) last.keras history.csv manifest.json
    evaluate/  hypotheses.txt report.json manifest.json

A stage's manifest is written last, so a directory without one is an unfinished stage; a later
stage reads the manifests it depends on and refuses outputs whose hashes no longer match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import StageError

MANIFEST = "manifest.json"

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
    for name in ("numpy", "sentencepiece", "tensorflow", "keras", "nltk", "sacrebleu"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


@dataclass(frozen=True)
class Run:
    """A run directory and the stages inside it."""

    root: Path

    @classmethod
    def at(cls, path: str | Path) -> "Run":
        return cls(Path(path))

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def path(self, stage: str, name: str) -> Path:
        return self.root / stage / name

    def has(self, stage: str) -> bool:
        return (self.stage_dir(stage) / MANIFEST).is_file()

    def begin(self, stage: str) -> Path:
        """Start (or restart) a stage: its old manifest goes first, so it no longer looks finished."""
        d = self.stage_dir(stage)
        d.mkdir(parents=True, exist_ok=True)
        (d / MANIFEST).unlink(missing_ok=True)
        return d

    def finish(
        self,
        stage: str,
        config: dict[str, Any],
        inputs: dict[str, str | Path],
        outputs: list[str],
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a finished stage. `outputs` are file names inside the stage directory."""
        d = self.stage_dir(stage)
        manifest = {
            "stage": stage,
            "config": config,
            "inputs": {k: _describe(Path(v)) for k, v in inputs.items()},
            "outputs": {name: sha256(d / name) for name in outputs},
            "versions": library_versions(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "finished_unix": time.time(),  # later stages compare it: an upstream rerun outdates them
        }
        if extra:
            manifest.update(extra)
        write_json_atomic(d / MANIFEST, manifest)
        return manifest

    def manifest(self, stage: str, needed_by: str | None = None) -> dict[str, Any]:
        """Read a stage's manifest, refusing a stage that never finished."""
        path = self.stage_dir(stage) / MANIFEST
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
