"""Stage 3: train the encoder-decoder with teacher forcing through `Model.fit`.

Per epoch: masked, label-smoothed cross-entropy normalised by real target tokens; global-norm
gradient clipping; validation loss and greedy dev BLEU; the best model by dev BLEU saved to
`RUN/train/model.keras`; the learning rate lowered when dev BLEU stalls, training stopped when it
stops improving; a CSV history. `BackupAndRestore` makes an interrupted run resumable.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import sys
import time
import warnings
from dataclasses import asdict
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.artifacts import Run, atomic_path, write_json_atomic
from pipeline.average import last_checkpoints, try_average
from pipeline.config import DecodeConfig, ModelConfig, TrainConfig
from pipeline.data import read_parallel
from pipeline.errors import InputError, StageError
from pipeline.model import Seq2Seq, build_model
from pipeline.progress import log
from pipeline.tokenize import BOS, EOS, PAD, SIDES, load_encoded, load_tokenizers
from pipeline.translate import pad

STAGE = "train"
POOL = 100  # batches' worth of pairs sorted by length together (see make_dataset)
DEV_HOLDOUT = 500  # pairs held out of the training data when no dev set is given


def masked_loss(label_smoothing: float):
    """Cross-entropy over real target tokens only, averaged per token (not per sentence)."""

    def loss(y_true, logits):
        mask = keras.ops.cast(keras.ops.not_equal(y_true, PAD), "float32")  # (batch, T)
        log_probs = keras.ops.log_softmax(keras.ops.cast(logits, "float32"), axis=-1)  # (batch, T, vocab)
        nll = -keras.ops.squeeze(keras.ops.take_along_axis(log_probs, y_true[..., None], axis=-1), -1)
        per_token = (1.0 - label_smoothing) * nll - label_smoothing * keras.ops.mean(log_probs, axis=-1)
        return keras.ops.sum(per_token * mask) / keras.ops.maximum(keras.ops.sum(mask), 1.0)

    return loss


def compile_for_training(model: Seq2Seq, config: TrainConfig) -> None:
    """Compile `model` as `train` fits it: Adam with global-norm clipping, the masked loss.

    benchmarks/speed.py times this same training step."""
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, global_clipnorm=config.clip_norm),
        loss=masked_loss(config.label_smoothing),
        jit_compile=False,  # XLA measured slower for this model on CPU
    )


def make_dataset(src: list, tgt: list, batch_size: int, shuffle: bool, seed: int,
                 first_pass: int = 0) -> tf.data.Dataset:
    """Batches of ((src, tgt_in), tgt_out) with little padding, in a new order every epoch.

    src gets </s> appended; tgt_in = <s> y, tgt_out = y </s>. Each pass draws a permutation
    (seeded by `seed` and the pass number), sorts each pool of POOL batches' worth of pairs by
    target then source length, cuts the pools into batches and shuffles the batches: nearly
    every target row of a batch has the batch's length, so the decoder and the softmax, most of
    the work, run on few padded positions. Without `shuffle`, one fixed order. A resumed training
    starts at `first_pass`, so epoch n sees the same batches as in an uninterrupted run.
    """
    src_rows = [np.append(x, EOS).astype(np.int32) for x in src]
    tgt_in_rows = [np.concatenate([[BOS], y]).astype(np.int32) for y in tgt]
    tgt_out_rows = [np.concatenate([y, [EOS]]).astype(np.int32) for y in tgt]
    src_len = np.array([len(x) for x in src_rows])
    tgt_len = np.array([len(y) for y in tgt_out_rows])
    passes = itertools.count(first_pass)

    def batches():
        rng = np.random.default_rng([seed, next(passes)]) if shuffle else None
        for rows in batch_order(src_len, tgt_len, batch_size, rng):
            yield ((pad([src_rows[i] for i in rows]), pad([tgt_in_rows[i] for i in rows])),
                   pad([tgt_out_rows[i] for i in rows]))

    ids = tf.TensorSpec([None, None], tf.int32)
    return tf.data.Dataset.from_generator(batches, output_signature=((ids, ids), ids)).prefetch(2)


def batch_order(src_len: np.ndarray, tgt_len: np.ndarray, batch_size: int,
                rng: np.random.Generator | None) -> list[np.ndarray]:
    """The pair indices of each batch (see `make_dataset`); every pair once."""
    order = rng.permutation(len(src_len)) if rng is not None else np.arange(len(src_len))
    pool = POOL * batch_size
    out = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.lexsort((src_len[chunk], tgt_len[chunk]))]  # by target length, then source
        out += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if rng is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


class DevBleu(keras.callbacks.Callback):
    """Greedy-decodes the dev set after each epoch, logs `val_bleu`, keeps the best model."""

    def __init__(self, translator, dev_src: list[str], dev_ref: list[str], decode_config, tokenize: str,
                 best_path, state_path):
        super().__init__()
        self.translator, self.dev_src, self.dev_ref = translator, dev_src, dev_ref
        self.decode_config, self.tokenize = decode_config, tokenize
        self.best_path, self.state_path = best_path, state_path
        self.best = -1.0
        self.best_epoch = -1

    def on_train_begin(self, logs=None):
        if self.state_path.is_file():  # resuming: remember the best so far
            state = json.loads(self.state_path.read_text())
            self.best, self.best_epoch = state["best_bleu"], state["best_epoch"]

    def on_epoch_end(self, epoch, logs=None):
        from pipeline.bleu import score

        t0 = time.perf_counter()
        hyps = [h.text for h in self.translator.translate(self.dev_src, self.decode_config)]
        logs["val_bleu"] = score(hyps, self.dev_ref, tokenize=self.tokenize)["sacrebleu"]
        logs["dev_decode_s"] = time.perf_counter() - t0
        if logs["val_bleu"] > self.best:
            self.best, self.best_epoch = logs["val_bleu"], epoch
            save_for_inference(self.model, self.best_path)
            write_json_atomic(self.state_path, {"best_bleu": self.best, "best_epoch": epoch})


class Throughput(keras.callbacks.Callback):
    """Target tokens per second of training proper (validation excluded), as `train_tok_per_s`,
    and the wall time since training began (validation included), as `elapsed_s`."""

    def __init__(self, tokens_per_epoch: int, elapsed_before: float = 0.0):
        super().__init__()
        self.tokens, self.elapsed_before = tokens_per_epoch, elapsed_before

    def on_train_begin(self, logs=None):
        self.began = time.perf_counter() - self.elapsed_before

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.train_s = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self.train_s is None:
            self.train_s = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        train_s = self.train_s or time.perf_counter() - self.start
        logs["train_s"] = train_s
        logs["train_tok_per_s"] = self.tokens / train_s
        logs["elapsed_s"] = time.perf_counter() - self.began


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
    """A progress bar over an epoch's batches on stderr (off when stderr is not a terminal)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs, self.bar = epochs, None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm import tqdm

        self.bar = tqdm(desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", file=sys.stderr, leave=False,
                        disable=not sys.stderr.isatty(), dynamic_ncols=True)

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


def train(run: Run, model_config: ModelConfig, config: TrainConfig, dev_src: str | None = None,
          dev_tgt: str | None = None, resume: bool = False, bleu_tokenize: str = "13a") -> dict[str, Any]:
    model_config.validate()
    config.validate()
    processors, tok_manifest = load_tokenizers(run, needed_by="train")
    encoded = load_encoded(run, needed_by="train")
    tokenizer_hashes = {s: tok_manifest["outputs"][f"spm.{s}.model"] for s in SIDES}
    embeddings = _pretrained(run, model_config, config)

    out = run.stage_dir(STAGE)
    backup, state_path = out / "backup", out / "state.json"
    if resume and not backup.is_dir():
        raise StageError(f"nothing to resume in {out}", hint="start it without --resume")
    run.begin(STAGE)
    if not resume:
        shutil.rmtree(backup, ignore_errors=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        for name in ("model.keras", "history.csv", "state.json"):
            (out / name).unlink(missing_ok=True)

    keras.utils.set_random_seed(config.seed)
    src, tgt = filter_length(encoded["src"], encoded["tgt"], config.max_len)
    if dev_src and dev_tgt:
        dev_pairs = list(read_parallel(dev_src, dev_tgt))
        if not dev_pairs:
            raise InputError(f"the dev set {dev_src} is empty")
        dev_raw_src, dev_raw_tgt = [s for s, _ in dev_pairs], [t for _, t in dev_pairs]
        dev_ids = {"src": processors["src"].encode(dev_raw_src), "tgt": processors["tgt"].encode(dev_raw_tgt)}
        dev_ids["src"], dev_ids["tgt"] = filter_length(dev_ids["src"], dev_ids["tgt"], config.max_len)
    elif dev_src or dev_tgt:
        raise InputError("give both --dev-src and --dev-tgt, or neither")
    else:  # hold out the last pairs, decoded back to text for BLEU
        n = min(DEV_HOLDOUT, len(src) // 10)
        if n == 0:
            raise InputError("too few training pairs to hold out a dev set; give --dev-src/--dev-tgt")
        log.info("no dev set given: holding out the last %d training pairs", n)
        dev_ids = {"src": src[-n:], "tgt": tgt[-n:]}
        src, tgt = src[:-n], tgt[:-n]
        dev_raw_src = [processors["src"].decode(s.tolist()) for s in dev_ids["src"]]
        dev_raw_tgt = [processors["tgt"].decode(t.tolist()) for t in dev_ids["tgt"]]

    model = build_model(model_config, processors["src"].get_piece_size(), processors["tgt"].get_piece_size(),
                        precision=config.precision)
    if embeddings is not None:
        model.src_embedding.embeddings.assign(embeddings["src"])
        model.tgt_embedding.embeddings.assign(embeddings["tgt"])
    if config.freeze_embeddings:
        model.src_embedding.trainable = model.tgt_embedding.trainable = False
    compile_for_training(model, config)
    done = _history(out / "history.csv") if resume else []  # the epochs before an interruption
    elapsed_before = float(done[-1]["elapsed_s"]) if done else 0.0
    train_ds = make_dataset(src, tgt, config.batch_size, shuffle=True, seed=config.seed, first_pass=len(done))
    dev_ds = make_dataset(dev_ids["src"], dev_ids["tgt"], config.batch_size, shuffle=False, seed=0)

    from pipeline.translate import Translator  # translate imports this module's load_best_model

    translator = Translator(model, processors["src"], processors["tgt"])
    dev_decode = DecodeConfig(strategy="beam" if config.dev_beam > 1 else "greedy", beam=config.dev_beam)
    tokens_per_epoch = int(sum(len(t) + 1 for t in tgt))
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup)),
        Throughput(tokens_per_epoch, elapsed_before),
        DevBleu(translator, dev_raw_src, dev_raw_tgt, dev_decode, bleu_tokenize, out / "model.keras", state_path),
        keras.callbacks.ReduceLROnPlateau(monitor="val_bleu", mode="max", factor=config.lr_decay,
                                          patience=config.lr_patience, min_delta=0.1,
                                          min_lr=config.learning_rate / 64, verbose=0),
        keras.callbacks.EarlyStopping(monitor="val_bleu", mode="max", patience=config.patience, min_delta=0.1),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=resume),
        EpochCheckpoints(out / "checkpoints", config.keep_checkpoints),
        EpochLog(config.epochs),
        BatchProgress(config.epochs),
    ]
    if config.time_budget:
        callbacks.append(TimeBudget(config.time_budget, elapsed_before))
    log.info("training on %d pairs (%d target tokens an epoch), dev %d pairs, %d parameters",
             len(src), tokens_per_epoch, len(dev_raw_src), model.count_params())
    start = time.perf_counter()
    with warnings.catch_warnings():  # the dataset's length is unknown until it runs out: expected
        warnings.filterwarnings("ignore", message=".*ran out of data")
        history = model.fit(train_ds, validation_data=dev_ds, epochs=config.epochs, callbacks=callbacks,
                            shuffle=False, verbose=0)
    if not (out / "model.keras").is_file():
        raise StageError("training ended before the first epoch finished; no model was saved")

    state = json.loads(state_path.read_text())
    averaged = None
    checkpoints = last_checkpoints(run, config.average_checkpoints) if config.average_checkpoints > 1 else []
    if len(checkpoints) > 1:
        averaged = try_average(model, translator, checkpoints, dev_raw_src, dev_raw_tgt, dev_decode, bleu_tokenize,
                               state["best_bleu"], out / "model.keras")
        if averaged["kept"]:
            state = {**state, "best_bleu": averaged["dev_bleu"], "averaged": len(checkpoints)}
            write_json_atomic(state_path, state)
    wall = time.perf_counter() - start
    h = history.history
    report = {
        "best_dev_bleu": state["best_bleu"],
        "best_epoch": state["best_epoch"] + 1,
        "average": averaged,
        "epochs_run": len(h.get("loss", [])),
        "train_pairs": len(src),
        "dev_pairs": len(dev_raw_src),
        "parameters": model.count_params(),
        "pretrained_embeddings": embeddings is not None,
        "median_train_tok_per_s": float(np.median(h["train_tok_per_s"])) if h.get("train_tok_per_s") else None,
        "wall_s": round(wall, 1),
    }
    run.finish(STAGE, {"model": asdict(model_config), "train": asdict(config), "bleu_tokenize": bleu_tokenize},
               {"dev_src": dev_src, "dev_tgt": dev_tgt} if dev_src else {},
               ["model.keras", "history.csv"],
               extra={"tokenizer": tokenizer_hashes, "report": report})
    return report


def _history(path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


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


def save_for_inference(model: Seq2Seq, path) -> None:
    """Save weights and architecture only (no optimizer state, no compiled loss), atomically; a
    model trained in mixed precision is saved as float32, as translation runs it."""
    clone = Seq2Seq.from_config({k: v for k, v in model.get_config().items() if k != "dtype"})
    clone.build()
    clone.set_weights(model.get_weights())
    with atomic_path(path) as tmp:
        clone.save(tmp)


def load_best_model(run: Run, needed_by: str) -> Seq2Seq:
    """The best model of a finished train stage, after checking it matches the run's tokenizers."""
    manifest = run.verify(STAGE, ["model.keras"], needed_by=needed_by)
    for side in SIDES:
        if manifest.get("tokenizer", {}).get(side) != run.output_hash("tokenize", f"spm.{side}.model"):
            raise StageError(
                f"the model in {run.root} was trained with another tokenizer than the run's current one",
                hint=f"rerun `python cli.py train --run {run.root}`",
            )
    return keras.saving.load_model(run.path(STAGE, "model.keras"), compile=False)
