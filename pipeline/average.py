"""Checkpoint averaging: the mean of the last epochs' weights, kept if it beats the best epoch.

Averaging the parameters of the last few checkpoints smooths out the noise of the final updates
(Junczys-Dowmunt et al. 2016; Vaswani et al. 2017 average the last 5-20). The train stage does it
at its end (`average_checkpoints`); `python cli.py average` does it afterwards for a finished
run. Either way the averaged model replaces `train/model.keras` only if its dev BLEU, measured as
the per-epoch dev BLEU is, is higher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import Declaration, Run, write_json_atomic
from pipeline.checkpoints import BEST, epoch_checkpoints, save_for_inference
from pipeline.config import DecodeConfig, TrainConfig, from_dict
from pipeline.data import read_parallel
from pipeline.errors import StageError
from pipeline.evaluate import DevSet
from pipeline.model import Seq2Seq
from pipeline.progress import log

STAGE = "train"


def mean_weights(model: Seq2Seq, paths: list[Path]) -> list[np.ndarray]:
    """The element-wise mean of the weights saved at `paths` for a model shaped like `model`."""
    scratch = Seq2Seq.from_config(model.get_config())
    scratch.build()
    total = None
    for path in paths:
        scratch.load_weights(path)
        weights = [w.astype(np.float64) for w in scratch.get_weights()]
        total = weights if total is None else [a + b for a, b in zip(total, weights)]
    return [(t / len(paths)).astype(np.float32) for t in total]


def try_average(model: Seq2Seq, translator, paths: list[Path], dev: DevSet, decode: DecodeConfig, tokenize: str,
                best_bleu: float) -> dict[str, Any]:
    """Set `model` (the translator's) to the mean of `paths` and measure its BLEU on `dev`;
    `kept` says whether it beats `best_bleu` (the caller then saves it)."""
    model.set_weights(mean_weights(model, paths))
    bleu = dev.bleu(translator, decode, tokenize)
    kept = bleu > best_bleu
    log.info("average of the last %d checkpoints: dev BLEU %.2f vs best epoch %.2f; %s", len(paths), bleu,
             best_bleu, "kept" if kept else "not kept")
    return {"checkpoints": [p.name for p in paths], "dev_bleu": bleu, "best_epoch_dev_bleu": best_bleu,
            "kept": kept}


def average_run(run: Run, last: int, dev_src: str | None = None, dev_tgt: str | None = None) -> dict[str, Any]:
    """Average a finished run's last `last` checkpoints (`python cli.py average`). The dev set is the
    one given, else the one training recorded, if its files still hash as recorded."""
    import h5py

    from pipeline.artifacts import STAGE_COMMAND, sha256
    from pipeline.errors import ConfigError, first_line
    from pipeline.translate import Translator

    if last < 2:
        raise ConfigError(f"averaging needs 2 or more checkpoints; got --last {last}")
    if bool(dev_src) != bool(dev_tgt):
        raise ConfigError("give both --dev-src and --dev-tgt, or neither")
    manifest = run.verify(STAGE, [BEST], needed_by="average")
    paths = epoch_checkpoints(run.stage_dir(STAGE))[-last:]
    if len(paths) < 2:
        raise StageError(f"{run.root} has {len(paths)} epoch checkpoint(s); averaging needs 2 or more",
                         hint="train with --keep-checkpoints N (N >= 2)")
    for path in paths:  # not in the manifest: check each opens before any work
        try:
            h5py.File(path, "r").close()
        except OSError as e:
            raise StageError(f"{path} is not a readable checkpoint ({first_line(e)})",
                             hint=f"rerun `{STAGE_COMMAND[STAGE]} --run {run.root}`") from None
    recorded = manifest.get("inputs", {})
    if not dev_src:
        if not {"dev_src", "dev_tgt"} <= set(recorded):
            raise StageError(f"{run.root} was trained on a held-out part of its training data",
                             hint="give --dev-src and --dev-tgt")
        for entry in (recorded["dev_src"], recorded["dev_tgt"]):
            if not Path(entry["path"]).is_file() or sha256(entry["path"]) != entry.get("sha256"):
                raise StageError(f"the dev set file {entry['path']} is missing or differs from the one "
                                 "training recorded", hint="give --dev-src and --dev-tgt")
        dev_src, dev_tgt = recorded["dev_src"]["path"], recorded["dev_tgt"]["path"]
    pairs = list(read_parallel(dev_src, dev_tgt))
    dev = DevSet([s for s, _ in pairs], [t for _, t in pairs])
    translator = Translator.load(run, needed_by="average")
    state = json.loads(run.path(STAGE, "state.json").read_text())
    decode = from_dict(TrainConfig, manifest["config"]["train"]).dev_decode
    result = try_average(translator.model, translator, paths, dev, decode, manifest["config"]["bleu_tokenize"],
                         state["best_bleu"])
    if result["kept"]:
        with run.writing(STAGE, from_current=True) as stage:
            save_for_inference(translator.model, stage.dir / BEST)
            write_json_atomic(stage.dir / "state.json",
                              {**state, "best_bleu": result["dev_bleu"], "averaged": len(paths)})
            report = {**manifest.get("report", {}), "average": result, "best_dev_bleu": result["dev_bleu"]}
            stage.finish(Declaration(manifest["config"], {k: v["path"] for k, v in recorded.items()}),
                         list(manifest["outputs"]), extra={"tokenizer": manifest["tokenizer"], "report": report})
    return result
