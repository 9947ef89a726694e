"""Training: the masked loss, batching, repeatability, resuming an interrupted run."""

from __future__ import annotations

import contextlib
import csv

import keras
import numpy as np
import pytest

from pipeline import train as train_module
from pipeline.artifacts import Run
from pipeline.config import ModelConfig, TokenizeConfig, TrainConfig
from pipeline.errors import ConfigError, StageError
from pipeline.model import build_model
from pipeline.tokenize import tokenize
from pipeline.vocab import BOS, EOS, PAD
from pipeline.distribute import Loop, devices, precision_for, token_loss
from pipeline.train import compile_for_training, filter_length, train
from tests.conftest import TINY_MODEL, toy_pairs, write_corpus


def _loss(label_smoothing, y, logits) -> float:
    total, tokens = token_loss(y, logits, label_smoothing)
    return float(total) / float(tokens)


def test_loss_ignores_padding_and_averages_over_real_tokens():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 7)).astype("float32")
    y = np.array([[4, 5, 6, PAD], [4, PAD, PAD, PAD]], np.int32)
    loss = _loss(0.0, y, logits)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = [(0, 0), (0, 1), (0, 2), (1, 0)]
    expected = -np.mean([log_probs[b, t, y[b, t]] for b, t in real])
    assert loss == pytest.approx(expected, rel=1e-5)
    assert float(token_loss(y, logits, 0.0)[1]) == 4
    changed = logits.copy()
    changed[0, 3] = 50.0  # whatever the model says at padded positions does not count
    assert _loss(0.0, y, changed) == pytest.approx(loss, rel=1e-6)


def test_label_smoothing_mixes_in_the_uniform_distribution():
    logits = np.zeros((1, 1, 4), np.float32)
    logits[0, 0, 1] = 2.0
    y = np.array([[1]], np.int32)
    log_probs = logits[0, 0] - np.log(np.exp(logits[0, 0]).sum())
    expected = 0.9 * -log_probs[1] + 0.1 * -log_probs.mean()
    assert _loss(0.1, y, logits) == pytest.approx(expected, rel=1e-5)


def test_a_step_of_the_loop_is_adams_step_on_the_clipped_gradient_of_the_token_loss():
    import tensorflow as tf

    config = TrainConfig(learning_rate=3e-3, clip_norm=0.5, label_smoothing=0.0)
    model = build_model(ModelConfig(**TINY_MODEL), 20, 20)
    compile_for_training(model, config)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-3)
    src = np.array([[5, 6, EOS], [7, EOS, PAD]], np.int32)
    tgt_in = np.array([[BOS, 8, 9], [BOS, 10, PAD]], np.int32)
    tgt_out = np.array([[8, 9, EOS], [10, EOS, PAD]], np.int32)
    reference = build_model(ModelConfig(**TINY_MODEL), 20, 20)
    reference.set_weights(model.get_weights())
    with tf.GradientTape() as tape:
        loss = token_loss(tgt_out, reference((src, tgt_in), training=True), 0.0)
        loss = loss[0] / loss[1]
    grads = tape.gradient(loss, reference.trainable_variables)
    keras.optimizers.Adam(3e-3, global_clipnorm=0.5).apply(grads, reference.trainable_variables)

    loop = Loop(tf.distribute.get_strategy(), model, config.clip_norm, config.label_smoothing)
    batch = tf.data.Dataset.from_tensors(((src, tgt_in), tgt_out))
    history = loop.fit(lambda epoch, min_rows: batch, batch, epochs=1, initial_epoch=0, callbacks=[])
    assert history["loss"][0] == pytest.approx(float(loss), rel=1e-5)
    for after, expected in zip(model.trainable_variables, reference.trainable_variables, strict=True):
        np.testing.assert_allclose(after.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_pairs_with_an_empty_or_too_long_side_are_skipped():
    src = [[4], [], [4] * 4, [4] * 5, [4, 5]]
    tgt = [[6], [6], [6], [6], [6] * 5]
    kept_src, kept_tgt = filter_length(src, tgt, max_len=5)
    assert [s.tolist() for s in kept_src] == [[4], [4] * 4]
    assert [t.tolist() for t in kept_tgt] == [[6], [6]]
    assert kept_src[0].dtype == np.int32


def _tokenized(tmp_path, toy_corpus) -> Run:
    run = Run.at(tmp_path / "run")
    src, tgt = write_corpus(tmp_path, "small", toy_pairs(300, seed=5))
    tokenize(run, TokenizeConfig(vocab_size=60), src=str(src), tgt=str(tgt))
    return run


@contextlib.contextmanager
def _interrupted_at_epoch(number: int, monkeypatch):
    """Training raises KeyboardInterrupt as epoch `number` (from 0) begins, within the block."""
    original = train_module.EpochLog.on_epoch_begin

    def interrupt(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == number:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module.EpochLog, "on_epoch_begin", interrupt)
    try:
        yield
    finally:
        monkeypatch.setattr(train_module.EpochLog, "on_epoch_begin", original)


def test_same_seed_same_weights(tmp_path, toy_corpus):
    run = _tokenized(tmp_path, toy_corpus)
    weights = []
    for _ in range(2):
        train(run, ModelConfig(**TINY_MODEL), TrainConfig(epochs=1, batch_size=64, seed=3),
              dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]))
        model = keras.saving.load_model(run.path("train", "model.keras"), compile=False)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, toy_corpus, monkeypatch):
    run = _tokenized(tmp_path, toy_corpus)
    config = TrainConfig(epochs=3, batch_size=64, patience=10)
    dev = dict(dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]))
    with _interrupted_at_epoch(2, monkeypatch), pytest.raises(KeyboardInterrupt):
        train(run, ModelConfig(**TINY_MODEL), config, **dev)
    assert not run.has("train")  # an interrupted stage does not look finished

    report = train(run, ModelConfig(**TINY_MODEL), config, resume=True, **dev)
    assert run.has("train")
    with open(run.path("train", "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert report["epochs_run"] == 1  # only the third epoch ran after resuming
    elapsed = [float(row["elapsed_s"]) for row in rows]
    assert elapsed[2] > elapsed[1] > elapsed[0]  # the clock goes on from before the interruption


def test_resume_without_an_interrupted_run_is_an_error(tmp_path, toy_corpus):
    run = _tokenized(tmp_path, toy_corpus)
    with pytest.raises(StageError, match="nothing to resume"):
        train(run, ModelConfig(**TINY_MODEL), TrainConfig(epochs=1), resume=True)


def test_each_epoch_is_checkpointed_keeping_the_last_n(tmp_path, toy_corpus):
    run = _tokenized(tmp_path, toy_corpus)
    train(run, ModelConfig(**TINY_MODEL), TrainConfig(epochs=3, batch_size=64, patience=10, keep_checkpoints=2, average_checkpoints=2),
          dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]))
    kept = sorted(p.name for p in run.stage_dir("train").joinpath("checkpoints").iterdir())
    assert kept == ["epoch-002.weights.h5", "epoch-003.weights.h5"]
    with open(run.path("train", "history.csv")) as f:
        elapsed = [float(row["elapsed_s"]) for row in csv.DictReader(f)]
    assert len(elapsed) == 3 and elapsed == sorted(elapsed) and elapsed[0] > 0


def test_a_time_budget_stops_training_within_the_first_epoch(tmp_path, toy_corpus):
    run = _tokenized(tmp_path, toy_corpus)
    report = train(run, ModelConfig(**TINY_MODEL), TrainConfig(epochs=5, batch_size=8, time_budget=1e-6,
                                                               precision="auto"),
                   dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]))
    assert report["epochs_run"] == 1
    assert run.path("train", "model.keras").is_file()  # the cut epoch was still validated and saved
    # auto's choice for this machine is in the report and in the manifest's settings, which the
    # pipeline's up-to-date check compares: a float32 run stays up to date where auto means float32
    assert report["precision"] == precision_for("auto", devices())
    assert run.manifest("train")["config"]["train"]["precision"] == report["precision"]


# mixed_float16 (loss scaling, Keras wraps the optimizer) is for GPUs: on this CPU its float16
# kernels are emulated, about 15x slower than bfloat16, too slow for the suite
@pytest.mark.parametrize("precision", ["mixed_bfloat16"])
def test_mixed_precision_trains_and_saves_a_float32_model(tmp_path, toy_corpus, precision):
    run = Run.at(tmp_path / "run")
    tokenize(run, TokenizeConfig(vocab_size=60), src=str(toy_corpus["train_src"]), tgt=str(toy_corpus["train_tgt"]))
    report = train(run, ModelConfig(**TINY_MODEL),
                   TrainConfig(epochs=3, batch_size=32, learning_rate=1e-2, patience=10, precision=precision),
                   dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]), bleu_tokenize="none")
    with open(run.path("train", "history.csv")) as f:
        rows = list(csv.DictReader(f))
    losses = [float(row["val_loss"]) for row in rows]
    assert all(np.isfinite(float(row["loss"])) for row in rows)
    assert losses[-1] < 0.6 * losses[0]  # it learns (float32: 2.78 -> 1.12), through bfloat16 / loss-scaled float16 gradients
    assert (report["epochs_run"], report["precision"]) == (3, precision)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    model = keras.saving.load_model(run.path("train", "model.keras"), compile=False)
    assert {w.dtype for w in model.weights} == {"float32"}
    assert model.dtype_policy.name == model.decoder_cell.dtype_policy.name == "float32"


def test_an_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="train.precision"):
        TrainConfig(precision="float16").validate()


def test_the_learning_rate_waits_lr_patience_epochs_before_it_falls(tmp_path, toy_corpus, monkeypatch):
    seen = {}

    class Recording(keras.callbacks.ReduceLROnPlateau):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            seen.update(kwargs)

    monkeypatch.setattr(train_module.keras.callbacks, "ReduceLROnPlateau", Recording)
    run = _tokenized(tmp_path, toy_corpus)
    train(run, ModelConfig(**TINY_MODEL), TrainConfig(epochs=1, batch_size=64, lr_patience=3),
          dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]))
    assert seen["patience"] == 3 and seen["monitor"] == "val_bleu"
    with pytest.raises(ConfigError, match="lr_patience"):
        TrainConfig(lr_patience=0).validate()


def test_tensorboard_gets_the_curves(tmp_path, toy_corpus):
    run = _tokenized(tmp_path, toy_corpus)
    train(run, ModelConfig(**TINY_MODEL), TrainConfig(epochs=2, batch_size=16, patience=10),
          dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]))

    import tensorflow as tf

    tags = {}
    for side in ("train", "validation"):
        for path in (run.stage_dir("train") / "tensorboard" / side).iterdir():
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    tags.setdefault(side, set()).add(value.tag)
    assert {"epoch_loss", "epoch_learning_rate", "epoch_train_tok_per_s"} <= tags["train"]
    assert {"epoch_loss", "epoch_bleu"} <= tags["validation"]  # dev loss and dev BLEU


def test_subword_regularisation_trains_on_sampled_segmentations_and_resumes_exactly(tmp_path, toy_corpus,
                                                                                    monkeypatch):
    """The same seed gives the same segmentations per epoch: a resumed training ends with the
    weights of an uninterrupted one."""
    run = _tokenized(tmp_path, toy_corpus)
    dev = dict(dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]))
    sampled = TrainConfig(epochs=2, batch_size=64, patience=10, average_checkpoints=0, subword_alpha=0.1)

    def weights(config, **options):
        train(run, ModelConfig(**TINY_MODEL), config, **dev, **options)
        assert not any(run.root.rglob("segmentations"))  # the epochs' corpora are gone
        return keras.saving.load_model(run.path("train", "model.keras"), compile=False).get_weights()

    uninterrupted = weights(sampled)
    with _interrupted_at_epoch(1, monkeypatch), pytest.raises(KeyboardInterrupt):
        train(run, ModelConfig(**TINY_MODEL), sampled, resume=False, **dev)
    for a, b in zip(weights(sampled, resume=True), uninterrupted, strict=True):
        np.testing.assert_array_equal(a, b)
    # that the sampled segmentations differ from the best one: tests/test_corpus.py


@pytest.mark.parametrize("nbest", [-1, 0, 1])
def test_subword_nbest_must_allow_a_reproducible_choice(nbest):
    with pytest.raises(ConfigError, match="train.subword_nbest must be at least 2 .* not reproducible"):
        TrainConfig(subword_alpha=0.1, subword_nbest=nbest).validate()
    TrainConfig(subword_alpha=0.0, subword_nbest=nbest).validate()  # unused without subword_alpha


def test_the_schedules_course_warm_up_then_plateau_or_cosine():
    warm = train_module.LearningRateSchedule(1e-3, warmup=4)
    assert [warm.rate(s) for s in range(6)] == [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, None]  # then ReduceLROnPlateau's
    cosine = train_module.LearningRateSchedule(1e-3, warmup=2, total=12)
    rates = [cosine.rate(s) for s in range(14)]
    assert rates[:3] == [5e-4, 1e-3, 1e-3] and rates[7] == pytest.approx(5e-4) and rates[12] == rates[13] == 0.0
    assert all(a > b for a, b in zip(rates[2:12], rates[3:12]))
    plateau = [type(cb).__name__ for cb in train_module._schedule(TrainConfig(), 10)]
    assert plateau == ["ReduceLROnPlateau"]  # the default: no warm-up, no per-step callback
    assert [type(cb).__name__ for cb in train_module._schedule(TrainConfig(lr_schedule="cosine"), 10)] == [
        "LearningRateSchedule"]


def test_a_cosine_course_cut_by_a_time_budget_is_warned_of(caplog):
    train_module._schedule(TrainConfig(lr_schedule="cosine", epochs=20, time_budget=40), 10)
    assert "falls to 0 at epoch 20; a time budget may stop the training" in caplog.text
    caplog.clear()
    train_module._schedule(TrainConfig(time_budget=40), 10)  # the plateau rule has no course to cut
    train_module._schedule(TrainConfig(lr_schedule="cosine"), 10)
    assert "time budget" not in caplog.text


def test_a_cosine_schedule_with_warm_up_trains_and_resumes_on_its_course(tmp_path, toy_corpus, monkeypatch):
    """The rate comes from the optimizer's step count, which the backup keeps: a resumed training
    ends with the weights of an uninterrupted one, its rate at the cosine's end."""
    run = _tokenized(tmp_path, toy_corpus)
    dev = dict(dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]))
    config = TrainConfig(epochs=2, batch_size=64, patience=10, average_checkpoints=0, lr_schedule="cosine",
                         warmup_steps=3, learning_rate=0.01)

    def weights(**options):
        train(run, ModelConfig(**TINY_MODEL), config, **dev, **options)
        return keras.saving.load_model(run.path("train", "model.keras"), compile=False).get_weights()

    uninterrupted = weights()
    with open(run.path("train", "history.csv")) as f:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    assert rates[0] < 0.01 and rates[1] < 0.001  # the last step's rate: near the cosine's 0
    with _interrupted_at_epoch(1, monkeypatch), pytest.raises(KeyboardInterrupt):
        train(run, ModelConfig(**TINY_MODEL), config, resume=False, **dev)
    for a, b in zip(weights(resume=True), uninterrupted, strict=True):
        np.testing.assert_array_equal(a, b)
