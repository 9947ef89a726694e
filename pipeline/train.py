"""Stage 3: train the encoder-decoder with teacher forcing, on tf.distribute (`pipeline.distribute`).

Per epoch: masked, label-smoothed cross-entropy normalised by real target tokens; global-norm
gradient clipping; validation loss and greedy dev BLEU; the best model by dev BLEU saved to
`RUN/train/model.keras`; the learning rate lowered when dev BLEU stalls, training stopped when it
stops improving; a CSV history. The pairs stream from the tokenize stage's shards
(`pipeline.corpus`), never held in memory; with `subword_alpha` each epoch's are segmented anew
(subword regularisation, `corpus.Resegmenter`). Each epoch ends with a backup from which an
interrupted training resumes exactly (`EpochBackup`); the stage is written in the run's staging
area and swapped in when it has finished (`Run.writing`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import shutil
import time
from dataclasses import asdict
from typing import Any

import keras
import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from pipeline import distribute, faults
from pipeline.artifacts import Declaration, Run, atomic_path, sha256, write_json_atomic, write_text_atomic
from pipeline.average import try_average
from pipeline.checkpoints import BEST, CHECKPOINTS, Backup, epoch_checkpoints, save_for_inference
from pipeline.config import EvaluateConfig, ModelConfig, TrainConfig, with_new_settings
from pipeline.corpus import POOL, EncodedCorpus, Resegmenter, batches, epoch_seed, pool_of
from pipeline.data import read_parallel
from pipeline.errors import InputError, StageError
from pipeline.evaluate import DevSet
from pipeline.model import Seq2Seq, build_model
from pipeline.progress import log
from pipeline.tokenize import load_encoded, load_tokenizers, reading_encoded
from pipeline.translate import Translator
from pipeline.vocab import SIDES

STAGE = "train"
DEV_HOLDOUT = 500  # pairs held out of the training data when no dev set is given


def compile_for_training(model: Seq2Seq, config: TrainConfig) -> None:
    """Give `model` the optimizer `train` steps it with: Adam, fused (the loop clips the gradients
    by their global norm, `pipeline.distribute.Loop`). benchmarks/speed.py times this same step."""
    model.compile(optimizer=distribute.Adam(config.learning_rate), jit_compile=False)
    model.optimizer.build(model.trainable_variables)


class DevBleu(keras.callbacks.Callback):
    """Greedy-decodes the dev set after each epoch, logs `val_bleu`, keeps the best model."""

    def __init__(self, translator, dev: DevSet, decode_config, tokenize: str, best_path, save: bool = True):
        super().__init__()
        self.save = save  # False on the workers of a cluster but its chief
        self.translator, self.dev = translator, dev
        self.decode_config, self.tokenize, self.best_path = decode_config, tokenize, best_path
        self.best = -1.0
        self.best_epoch = -1

    def on_epoch_end(self, epoch, logs=None):
        t0 = time.perf_counter()
        logs["val_bleu"] = self.dev.bleu(self.translator, self.decode_config, self.tokenize)
        logs["dev_decode_s"] = time.perf_counter() - t0
        if logs["val_bleu"] > self.best:
            self.best, self.best_epoch = logs["val_bleu"], epoch
            if self.save:
                save_for_inference(self.model, self.best_path)


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `minutes` of wall time have passed (`elapsed_before` of them before a
    resume); the cut epoch is still validated."""

    def __init__(self, minutes: float, elapsed_before: float = 0.0):
        super().__init__()
        self.seconds, self.elapsed_before = minutes * 60, elapsed_before

    def on_train_begin(self, logs=None):
        self.began = time.perf_counter() - self.elapsed_before

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.began >= self.seconds:
            self.model.stop_training = True


class LearningRateSchedule(keras.callbacks.Callback):
    """Sets the learning rate before each step from the optimizer's step count (so a resumed
    training continues the course): raised linearly from 0 to `peak` over `warmup` steps, then
    either left to ReduceLROnPlateau (`total` None, the plateau schedule) or lowered along a half
    cosine to 0 at step `total` (Loshchilov and Hutter 2017, SGDR without restarts)."""

    def __init__(self, peak: float, warmup: int, total: int | None = None):
        super().__init__()
        self.peak, self.warmup, self.total = peak, warmup, total

    def rate(self, step: int) -> float | None:
        """The rate of 0-based `step`; None where the schedule leaves it as it is."""
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.total is None:
            return self.peak if step == self.warmup else None  # the warm-up's end: the peak exactly
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.peak * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_train_begin(self, logs=None):  # the count a resumed training's optimizer came back with, read once
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_begin(self, batch, logs=None):
        if (rate := self.rate(self.step)) is not None:
            self.model.optimizer.learning_rate = rate
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):  # the history's column, as ReduceLROnPlateau writes it
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class EpochCheckpoints(keras.callbacks.Callback):
    """Saves each epoch's weights as `checkpoints/epoch-NNN.weights.h5`, keeping the last `keep`
    (0: all), for checkpoint averaging (`python cli.py average`)."""

    def __init__(self, directory, keep: int):
        super().__init__()
        self.directory, self.keep = directory, keep

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.directory / f"epoch-{epoch + 1:03d}.weights.h5") as tmp:
            self.model.save_weights(tmp)
        saved = sorted(self.directory.glob("epoch-*.weights.h5"))
        if self.keep:
            for old in saved[:-self.keep]:
                old.unlink()


class BatchProgress(keras.callbacks.Callback):
    """A progress bar over an epoch's batches, with their total and an ETA, on stderr (off when
    stderr is not a terminal: one log line per epoch then, from `EpochLog`)."""

    def __init__(self, epochs: int, batches: int):
        super().__init__()
        self.epochs, self.batches, self.bar = epochs, batches, None

    def on_epoch_begin(self, epoch, logs=None):
        from pipeline.progress import progress

        self.bar = progress(None, desc=f"epoch {epoch + 1}/{self.epochs}", total=self.batches, unit="batch")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and batch % 20 == 0:
            self.bar.set_postfix(loss=f"{float(logs.get('loss', 0.0)):.3f}")

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


class EpochLog(keras.callbacks.Callback):
    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        log.info("epoch %d/%d: loss %.3f, dev loss %.3f, dev BLEU %.2f, %.0f tok/s, lr %.2g",
                 epoch + 1, self.epochs, logs.get("loss", float("nan")), logs.get("val_loss", float("nan")),
                 logs.get("val_bleu", float("nan")), logs.get("train_tok_per_s", 0.0),
                 float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


# The counters each stateful callback keeps from epoch to epoch. They are saved with the backup,
# so a resumed training keeps its best model, lowers its learning rate and stops exactly when an
# uninterrupted one would.
CALLBACK_STATE = {
    "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
    "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
    "DevBleu": ("best", "best_epoch"),
}


class EpochBackup(keras.callbacks.Callback):
    """The last callback of each epoch: saves the backup (`checkpoints.Backup`: weights, optimizer,
    random-generator states, the other callbacks' counters, the history), then writes the
    history CSV from it. On a resumed training it first gives the callbacks their counters back."""

    def __init__(self, backup: Backup, history_path, callbacks: list, epochs: int, state: dict | None):
        super().__init__()
        self.backup, self.history_path, self.epochs = backup, history_path, epochs
        self.stateful = [cb for cb in callbacks if type(cb).__name__ in CALLBACK_STATE]
        self.state = state or {"epoch": 0, "done": False, "history": [], "callbacks": {}}

    def on_train_begin(self, logs=None):  # after the callbacks' own on_train_begin reset them
        for cb in self.stateful:
            for name, value in self.state["callbacks"].get(type(cb).__name__, {}).items():
                setattr(cb, name, value)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        self.state = {
            "epoch": epoch + 1,
            "done": bool(self.model.stop_training) or epoch + 1 >= self.epochs,
            "history": self.state["history"] + [row],
            "callbacks": {type(cb).__name__: {name: _plain(getattr(cb, name))
                                              for name in CALLBACK_STATE[type(cb).__name__]}
                          for cb in self.stateful},
        }
        faults.point("epoch-end")
        self.backup.save(self.model, self.state)
        faults.point("backup-saved")
        write_history(self.history_path, self.state["history"])


def train(run: Run, model_config: ModelConfig, config: TrainConfig, dev_src: str | None = None,
          dev_tgt: str | None = None, resume: bool | None = None, bleu_tokenize: str = "13a") -> dict[str, Any]:
    """Run the stage; return its report (also stored in the manifest).

    Everything is read and checked before the run is touched. Training writes into the run's
    staging area (`Run.writing`), swapped in for `RUN/train/` only when it has finished, so a
    failed or interrupted training leaves the previous model translating. An interrupted
    training with the same settings and inputs is resumed (`resume=None`, the default, or
    True, which refuses to start afresh); `resume=False` discards it.
    """
    model_config.validate()
    config.validate()
    EvaluateConfig(tokenize=bleu_tokenize).validate()
    with run.lock(STAGE), reading_encoded(run):  # the lock first: a second writer is told at once
        return _train(run, model_config, config, dev_src, dev_tgt, resume, bleu_tokenize)


def _train(run: Run, model_config: ModelConfig, config: TrainConfig, dev_src: str | None, dev_tgt: str | None,
           resume: bool | None, bleu_tokenize: str) -> dict[str, Any]:
    strategy = distribute.strategy(config.strategy)  # first: a cluster's must start before TensorFlow runs
    chief = distribute.is_chief(strategy)
    hardware = distribute.devices()
    processors, tok_manifest = load_tokenizers(run, needed_by=STAGE)
    data = TrainingData.read(run, processors, config, dev_src, dev_tgt)
    embeddings = _pretrained(run, model_config, config)
    declared = declare(model_config, config, bleu_tokenize, dev_src, dev_tgt)
    precision = declared.settings["train"]["precision"]  # auto's choice for this machine
    if config.precision == "auto":  # said once the inputs have passed their checks, which say nothing else
        log.info("precision auto: %s here", precision)
    if precision == "mixed_bfloat16" and not any(hardware[k] for k in ("gpus", "avx512_bf16", "amx_bf16")):
        log.warning("this CPU has no bfloat16 instructions (AVX512-BF16, AMX-BF16): mixed_bfloat16 converts in "
                    "software here and is likely slower than float32")
    fingerprint = {"settings": _jsonable(declared.settings), "tokenize": tok_manifest["outputs"],
                   "pretrain": run.manifest("pretrain")["outputs"] if embeddings is not None else None,
                   "dev": {k: sha256(v) for k, v in declared.inputs.items() if v}}

    with run.writing(STAGE, resumable=True, resume=resume is not False) as stage:
        backup = Backup(stage.dir / "backup")
        state, values = _resumable(backup, fingerprint, resume, stage.dir)
        if state is None:
            _clear(stage.dir)
            write_json_atomic(stage.dir / "fingerprint.json", fingerprint)
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            model = _build_model(model_config, config, precision, processors, embeddings)
            if state is not None:
                backup.restore(model, values)
                log.info("resuming the interrupted training after epoch %d", state["epoch"])
        translator = Translator(model, processors["src"], processors["tgt"])
        loop = distribute.Loop(strategy, model, config.clip_norm, config.label_smoothing)
        with data.resegmented(processors, config, stage.dir / "segmentations"):
            history = _fit(loop, translator, data, config, bleu_tokenize, stage.dir, backup, state, chief)
        resumed_after = state["epoch"] if state else 0
        if not chief:  # the chief writes the run; this worker's part ends with its backup
            stage.discard()
            final, _ = backup.load()
            return {"worker": distribute.task(strategy), "epochs": final["epoch"], "resumed_after_epoch": resumed_after,
                    "weights_sha256": weights_digest(model)}
        report = _finish(stage, model, translator, data, config, bleu_tokenize, history, backup, declared,
                         tok_manifest, embeddings is not None, resumed_after, precision)
    return report


def declare(model_config: ModelConfig, config: TrainConfig, bleu_tokenize: str, dev_src: str | None,
            dev_tgt: str | None) -> Declaration:
    """The stage's settings and inputs, as its manifest records them (see `Declaration`). A
    precision of `auto` is recorded as what it computes in on this machine: a run trained in
    float32 stays up to date where auto means float32, and a resume cannot switch precision."""
    train = {**asdict(config), "precision": distribute.precision_for(config.precision, distribute.devices())}
    return Declaration({"model": asdict(model_config), "train": train, "bleu_tokenize": bleu_tokenize},
                       {"dev_src": dev_src, "dev_tgt": dev_tgt})


def _resumable(backup: Backup, fingerprint: dict, resume: bool | None, directory) -> tuple:
    """The backup's (state, values) if the training should resume from it, else (None, None)."""
    if resume is False or not backup.exists():
        if resume:
            raise StageError(f"nothing to resume in {directory}", hint="start it without --resume")
        if backup.exists():
            log.warning("discarding the interrupted training in %s (--restart)", directory)
        return None, None
    recorded = _read_json(directory / "fingerprint.json")
    if isinstance(recorded, dict) and isinstance(recorded.get("settings"), dict):  # settings added since: defaults
        recorded = {**recorded, "settings": with_new_settings(recorded["settings"], fingerprint["settings"], STAGE)}
    if recorded != fingerprint:
        if resume:
            raise StageError(f"the interrupted training in {directory} used other settings or inputs "
                             f"({_first_difference(recorded, fingerprint)})",
                             hint="train with the same settings to resume it, or --restart")
        log.warning("the interrupted training in %s used other settings or inputs (%s); starting afresh",
                    directory, _first_difference(recorded, fingerprint))
        return None, None
    return backup.load()


def _build_model(model_config: ModelConfig, config: TrainConfig, precision: str, processors: dict,
                 embeddings: dict[str, np.ndarray] | None) -> Seq2Seq:
    model = build_model(model_config, processors["src"].get_piece_size(), processors["tgt"].get_piece_size(),
                        precision=precision)
    if embeddings is not None:
        model.src_embedding.embeddings.assign(embeddings["src"])
        model.tgt_embedding.embeddings.assign(embeddings["tgt"])
    if config.freeze_embeddings:
        model.src_embedding.trainable = model.tgt_embedding.trainable = False
    compile_for_training(model, config)
    return model


def _fit(loop: distribute.Loop, translator: Translator, data: "TrainingData", config: TrainConfig,
         bleu_tokenize: str, out, backup: Backup, state: dict | None, chief: bool) -> dict[str, list]:
    """Train from the epoch after `state`'s (the first, without one); return this call's history.
    Only the `chief` writes the best model, the epoch checkpoints and TensorBoard's logs."""
    done_before = state["epoch"] if state else 0
    if state and state["done"]:
        log.info("training had finished before the interruption; finishing the stage")
        return {}
    elapsed_before = state["history"][-1]["elapsed_s"] if state else 0.0
    callbacks = [
        DevBleu(translator, data.dev, config.dev_decode, bleu_tokenize, out / BEST, save=chief),
        *_schedule(config, data.batches_per_epoch(config.batch_size)),
        keras.callbacks.EarlyStopping(monitor="val_bleu", mode="max", patience=config.patience, min_delta=0.1),
        EpochLog(config.epochs),
        BatchProgress(config.epochs, data.batches_per_epoch(config.batch_size)),
    ]
    if chief:
        callbacks += [
            EpochCheckpoints(out / CHECKPOINTS, config.keep_checkpoints),
            # loss, dev loss, dev BLEU, learning rate and tokens/s per epoch, for `tensorboard --logdir RUN/train`
            keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, profile_batch=0),
        ]
    if config.time_budget:
        callbacks.append(TimeBudget(config.time_budget, elapsed_before))
    callbacks.append(EpochBackup(backup, out / "history.csv", callbacks, config.epochs, state))
    log.info("training on %d pairs (about %d target tokens an epoch), dev %d pairs, %d parameters, %d replica(s)",
             data.pairs, data.tokens_per_epoch, len(data.dev), loop.model.count_params(), loop.replicas)
    with logging_redirect_tqdm():  # log lines go above the bar, never into it
        return loop.fit(lambda epoch, min_rows: data.batches(epoch, config, min_rows), data.dev_batches(config),
                        epochs=config.epochs, initial_epoch=done_before, callbacks=callbacks,
                        elapsed_before=elapsed_before)


def _schedule(config: TrainConfig, batches_per_epoch: int) -> list[keras.callbacks.Callback]:
    """The callbacks that set the learning rate: the warm-up, if any, then the plateau rule
    (ReduceLROnPlateau on dev BLEU) or the cosine's course to the last epoch."""
    cosine = config.lr_schedule == "cosine"
    if cosine and config.time_budget:
        log.warning("the cosine schedule falls to 0 at epoch %d; a time budget may stop the training before "
                    "the rate has fallen (set --epochs to what fits the budget)", config.epochs)
    callbacks = []
    if config.warmup_steps or cosine:
        callbacks.append(LearningRateSchedule(config.learning_rate, config.warmup_steps,
                                              config.epochs * batches_per_epoch if cosine else None))
    if not cosine:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_bleu", mode="max", factor=config.lr_decay, patience=config.lr_patience, min_delta=0.1,
            min_lr=config.learning_rate / 64, verbose=0))
    return callbacks


def weights_digest(model: keras.Model) -> str:
    """sha256 of the model's trainable weights, in order: equal on every worker of a cluster."""
    digest = hashlib.sha256()
    for variable in model.trainable_variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


def _finish(stage, model: Seq2Seq, translator: Translator, data: "TrainingData", config: TrainConfig,
            bleu_tokenize: str, history: dict[str, list], backup: Backup, declared: Declaration,
            tok_manifest: dict, pretrained: bool, resumed_after: int, precision: str) -> dict[str, Any]:
    """Average the last checkpoints if that gains, write state.json, drop the backup, record the stage."""
    out = stage.dir
    digest = weights_digest(model)  # the trained weights, before averaging
    if not (out / BEST).is_file() or not backup.exists():
        raise StageError("training ended before the first epoch finished; no model was saved")
    state, _ = backup.load()
    best = state["callbacks"]["DevBleu"]
    result = {"best_bleu": best["best"], "best_epoch": best["best_epoch"]}
    averaged = None
    checkpoints = epoch_checkpoints(out)[-config.average_checkpoints:] if config.average_checkpoints > 1 else []
    if len(checkpoints) > 1:
        averaged = try_average(model, translator, checkpoints, data.dev, config.dev_decode, bleu_tokenize,
                               result["best_bleu"])
        faults.point("averaged")
        if averaged["kept"]:
            save_for_inference(model, out / BEST)
            result = {**result, "best_bleu": averaged["dev_bleu"], "averaged": len(checkpoints)}
    write_json_atomic(out / "state.json", result)
    rows = state["history"]
    report = {
        "best_dev_bleu": result["best_bleu"],
        "best_epoch": result["best_epoch"] + 1,
        "average": averaged,
        "epochs_run": len(history.get("loss", [])),
        "epochs": state["epoch"],
        "resumed_after_epoch": resumed_after,  # 0: not resumed
        "train_pairs": data.pairs,
        "dev_pairs": len(data.dev),
        "parameters": model.count_params(),
        "pretrained_embeddings": pretrained,
        "median_train_tok_per_s": float(np.median([r["train_tok_per_s"] for r in rows])) if rows else None,
        "wall_s": round(rows[-1]["elapsed_s"], 1) if rows else None,
        "weights_sha256": digest,
        "precision": precision,  # what it computed in (train.precision's choice, where that is auto)
        "devices": distribute.devices(),  # the CPU (bfloat16 instructions or not) and GPUs it trained on
    }
    shutil.rmtree(backup.path.parent)
    (out / "fingerprint.json").unlink()
    faults.point("before-manifest:train")
    tokenizer_hashes = {s: tok_manifest["outputs"][f"spm.{s}.model"] for s in SIDES}
    stage.finish(declared, [BEST, "history.csv"], extra={"tokenizer": tokenizer_hashes, "report": report})
    return report


class TrainingData:
    """The training pairs, streamed from the tokenize stage's shards (pairs 0..pairs-1 of the
    corpus), and the dev set, all checked before training starts."""

    def __init__(self, corpus: EncodedCorpus, pairs: int, dev: DevSet):
        self.corpus, self.pairs, self.dev = corpus, pairs, dev
        self.tokens_per_epoch = int(corpus.tokens("tgt") * pairs / max(corpus.pairs, 1)) + pairs  # y </s>
        self.resegmenter: Resegmenter | None = None

    def batches(self, epoch: int, config: TrainConfig, min_rows: int = 1):
        """Epoch `epoch`'s global batches: the same for the same seed and epoch, wherever they are made."""
        seed = epoch_seed(config.seed, epoch)
        corpus = self.resegmenter.epoch(epoch) if self.resegmenter else self.corpus
        pools = corpus.pools(POOL * config.batch_size, seed=seed, end=self.pairs)
        return batches(pools, config.batch_size, config.max_len, seed, min_rows)

    @contextlib.contextmanager
    def resegmented(self, processors: dict, config: TrainConfig, directory):
        """With `config.subword_alpha`, each epoch's pairs segmented anew (see `Resegmenter`) into
        `directory`, removed afterwards."""
        if not config.subword_alpha:
            yield
            return
        log.info("subword regularisation: each epoch's segmentations sampled among the %d best with alpha %g",
                 config.subword_nbest, config.subword_alpha)
        self.resegmenter = Resegmenter(self.corpus, processors, config.subword_alpha, config.subword_nbest,
                                       config.seed, self.pairs, config.epochs, directory)
        try:
            yield
        finally:
            self.resegmenter.close()
            self.resegmenter = None

    def dev_batches(self, config: TrainConfig):
        return batches(pool_of(self.dev.ids["src"], self.dev.ids["tgt"]), config.batch_size, config.max_len)

    def batches_per_epoch(self, batch_size: int) -> int:
        """About how many batches an epoch has (pairs too long are skipped, pools cut apart)."""
        return -(-self.pairs // batch_size)

    @classmethod
    def read(cls, run: Run, processors: dict, config: TrainConfig, dev_src: str | None,
             dev_tgt: str | None) -> "TrainingData":
        corpus = load_encoded(run, needed_by=STAGE)
        pairs = corpus.pairs
        if dev_src and dev_tgt:
            dev_pairs = list(read_parallel(dev_src, dev_tgt))
            if not dev_pairs:
                raise InputError(f"the dev set {dev_src} is empty")
            text = {"src": [s for s, _ in dev_pairs], "tgt": [t for _, t in dev_pairs]}
            ids = {side: processors[side].encode(text[side]) for side in SIDES}
            ids["src"], ids["tgt"] = filter_length(ids["src"], ids["tgt"], config.max_len)
        elif dev_src or dev_tgt:
            raise InputError("give both --dev-src and --dev-tgt, or neither")
        else:  # hold out the last pairs, decoded back to text for BLEU
            n = min(DEV_HOLDOUT, pairs // 10)
            if n == 0:
                raise InputError("too few training pairs to hold out a dev set; give --dev-src/--dev-tgt")
            log.info("no dev set given: holding out the last %d training pairs", n)
            pairs -= n
            held = list(corpus.read(first=pairs))
            ids = dict(zip(SIDES, filter_length([s for s, _ in held], [t for _, t in held], config.max_len)))
            text = {side: [processors[side].decode(x.tolist()) for x in ids[side]] for side in SIDES}
        if not ids["src"]:
            raise InputError(f"no dev pair is shorter than --max-len {config.max_len} on both sides")
        return cls(corpus, pairs, DevSet(text["src"], text["tgt"], ids))


def write_history(path, rows: list[dict]) -> None:
    """history.csv: a row per epoch, `epoch` then the logged values by name."""
    names = ["epoch"] + sorted({k for row in rows for k in row} - {"epoch"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _clear(directory) -> None:
    """Empty a staging directory for a fresh training."""
    for path in directory.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _plain(value):
    """A callback counter as JSON stores it (NumPy scalars become Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value


def _jsonable(obj):
    return json.loads(json.dumps(obj))


def _read_json(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _first_difference(recorded, current, where: str = "") -> str:
    """The first setting or input that differs between two fingerprints, for the message."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        for key in sorted(set(recorded) | set(current)):
            if recorded.get(key) != current.get(key):
                return _first_difference(recorded.get(key), current.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'fingerprint'}: {recorded!r} then, {current!r} now"


def filter_length(src: list, tgt: list, max_len: int) -> tuple[list, list]:
    """The pairs whose sides are both non-empty and shorter than `max_len` pieces, as int32 arrays."""
    keep = [i for i in range(len(src)) if 0 < len(src[i]) < max_len and 0 < len(tgt[i]) < max_len]
    if len(keep) < len(src):
        log.info("skipping %d pair(s) longer than %d pieces", len(src) - len(keep), max_len - 1)
    return [np.asarray(src[i], np.int32) for i in keep], [np.asarray(tgt[i], np.int32) for i in keep]


def _pretrained(run: Run, model_config: ModelConfig, config: TrainConfig) -> dict[str, np.ndarray] | None:
    if not config.pretrained:
        return None
    if not run.has("pretrain"):
        log.info("no pretrain stage in %s: embeddings start random", run.root)
        return None
    from pipeline.pretrain import load_pretrained

    vectors = {side: load_pretrained(run, side) for side in SIDES}
    dim = vectors["src"].shape[1]
    if dim != model_config.embed_dim:
        raise StageError(
            f"the pretrained vectors are {dim}-dimensional but --embed-dim is {model_config.embed_dim}",
            hint=f"rerun `python cli.py pretrain --run {run.root} --dim {model_config.embed_dim}` "
                 "or train with --no-pretrained",
        )
    return vectors
