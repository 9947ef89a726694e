"""The model files of a run: the best model, for inference, and the backup a training resumes from.

    train/model.keras          the best model by dev BLEU: architecture and float32 weights, no
                               optimizer; `load_best_model` reads it for translate, evaluate,
                               score and average
    train/checkpoints/         each of the last epochs' weights, for checkpoint averaging
    .staging/train/backup/state.npz
                               everything an interrupted training needs to go on exactly as if
                               it had not stopped, in one file written atomically: every variable
                               of the model (the dropout layers' random-generator state
                               included) and of the optimizer (moments, step count, learning
                               rate), and the training's state as JSON (epochs done, history,
                               the callbacks' counters, the clock). A kill at any moment leaves
                               the previous epoch's backup or this epoch's, never a mix.

Translation imports this module, never the training code.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.artifacts import STAGE_COMMAND, Run, atomic_path
from pipeline.errors import StageError, first_line
from pipeline.model import Seq2Seq
from pipeline.vocab import SIDES

STAGE = "train"
BEST = "model.keras"
CHECKPOINTS = "checkpoints"


def save_for_inference(model: Seq2Seq, path: str | Path) -> None:
    """Save weights and architecture only (no optimizer state, no compiled loss), atomically; a
    model trained in mixed precision is saved as float32, as translation runs it."""
    clone = Seq2Seq.from_config({k: v for k, v in model.get_config().items() if k != "dtype"})
    clone.build()
    clone.set_weights(model.get_weights())
    with atomic_path(path) as tmp:
        clone.save(tmp)


def load_best_model(run: Run, needed_by: str) -> Seq2Seq:
    """The best model of a finished train stage, after checking it matches the run's tokenizers."""
    manifest = run.verify(STAGE, [BEST], needed_by=needed_by)
    for side in SIDES:
        if manifest.get("tokenizer", {}).get(side) != run.output_hash("tokenize", f"spm.{side}.model"):
            raise StageError(
                f"the model in {run.root} was trained with another tokenizer than the run's current one",
                hint=f"rerun `python cli.py train --run {run.root}`",
            )
    path = run.path(STAGE, BEST)
    rerun = f"rerun `{STAGE_COMMAND[STAGE]} --run {run.root}`"
    try:
        model = keras.saving.load_model(path, compile=False)  # safe mode: no Lambda layers, no pickles
    except Exception as e:  # Keras raises ValueError, TypeError, OSError, ... for a bad file
        raise StageError(f"{path} cannot be loaded ({first_line(e)})", hint=rerun) from None
    if not isinstance(model, Seq2Seq):
        raise StageError(f"{path} holds a {type(model).__name__}, not this project's Seq2Seq model", hint=rerun)
    return model


def epoch_checkpoints(directory: Path) -> list[Path]:
    """The epoch checkpoints in a train stage directory, oldest first."""
    return sorted((directory / CHECKPOINTS).glob("epoch-*.weights.h5"))


class Backup:
    """The resumable state of a training, in `directory/state.npz`."""

    FILE = "state.npz"

    def __init__(self, directory: Path):
        self.path = Path(directory) / self.FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, model: keras.Model, state: dict[str, Any]) -> None:
        arrays = {f"v{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(_variables(model))}
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.savez(f, state=np.array(json.dumps(state)), **arrays)

    def load(self) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The saved state and variables; StageError if the file cannot be read."""
        try:
            with np.load(self.path, allow_pickle=False) as z:
                state = json.loads(str(z["state"]))
                values = [z[name] for name in sorted(k for k in z.files if k != "state")]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise StageError(f"the training backup {self.path} is unreadable ({e})",
                             hint="train with --restart to start over") from None
        return state, values

    def restore(self, model: keras.Model, values: list[np.ndarray]) -> None:
        """Set the model's and its optimizer's variables to the saved values."""
        variables = _variables(model)
        shapes = [tuple(v.shape) for v in variables]
        if shapes != [np.shape(x) for x in values]:
            raise StageError(f"the training backup {self.path} was made by a model of other settings",
                             hint="train with the settings it was started with, or --restart")
        for variable, value in zip(variables, values):
            variable.assign(value)


def _variables(model: keras.Model) -> list:
    """The model's variables (weights and random-generator states), then the optimizer's."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return list(model.variables) + list(model.optimizer.variables)
