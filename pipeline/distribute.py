"""Training on tf.distribute: the strategy, and the one training loop every strategy runs.

`--strategy` picks one device (TensorFlow's default strategy), `mirrored` (every GPU of this
machine) or `multiworker` (the machines that TF_CONFIG names, each with its own copy of the run
directory); `auto` takes `multiworker` when TF_CONFIG names a cluster, `mirrored` when this
machine has several GPUs, else one device.

The loop (`Loop.fit`) is ours, not Keras's `fit`, because Keras 3's `fit` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585); it drives the same Keras callbacks
`fit` would (dev BLEU, checkpoints, backup, early stopping, the learning-rate schedule), so one
path serves every strategy. Each global batch is cut into one slice per replica; the loss is
summed over a slice's target tokens and divided by the tokens of the whole global batch, and the
gradients are summed over replicas and clipped by their global norm before the optimizer steps,
so N replicas compute the step that one process computes on the same global batch.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import keras
import tensorflow as tf

from pipeline import faults
from pipeline.config import STRATEGIES
from pipeline.errors import ConfigError
from pipeline.vocab import PAD

_made: dict[str, tf.distribute.Strategy] = {}


def cluster() -> dict[str, list]:
    """The cluster TF_CONFIG names ({} when it names none)."""
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    except (ValueError, AttributeError):
        raise ConfigError("TF_CONFIG is not a JSON object with a \"cluster\"",
                          hint='e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                               '"task": {"type": "worker", "index": 0}}') from None


def strategy(name: str) -> tf.distribute.Strategy:
    """The strategy `name` stands for, made once per process. MultiWorkerMirroredStrategy must be
    made before TensorFlow runs anything, so `pipeline` asks for it before its first stage."""
    if name not in _made:
        _made[name] = _make(name)
    return _made[name]


def _make(name: str) -> tf.distribute.Strategy:
    workers = sum(len(cluster().get(role, [])) for role in ("chief", "worker"))
    if name == "auto":
        gpus = len(tf.config.list_physical_devices("GPU"))
        name = "multiworker" if workers > 1 else "mirrored" if gpus > 1 else "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":  # this host's GPUs; without GPUs, its CPU devices (one, unless split into logical ones)
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name != "multiworker":
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if not workers:
        raise ConfigError("--strategy multiworker needs TF_CONFIG naming the cluster and this worker",
                          hint="see \"When one machine is not enough\" in the README")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        raise ConfigError(f"cannot start the multi-worker strategy ({e})",
                          hint="run `train` on its own in a fresh process") from None


def is_chief(strat: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs: always, but for the workers of a cluster
    other than its chief (the `chief` task, or worker 0 when there is none)."""
    resolver = getattr(strat, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster()


def loopback_hosts(n: int) -> list[str]:
    """`127.0.0.1:PORT` for n ports free now: a cluster of n workers on this machine (the tests'
    and the workers section of benchmarks/speed.py)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    hosts = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    return hosts


def task(strat: tf.distribute.Strategy) -> str:
    """This process's task in its cluster, e.g. `worker 1` (`one` outside a cluster)."""
    resolver = getattr(strat, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "one"
    return f"{resolver.task_type} {resolver.task_id}"


def devices(cpuinfo: str | None = None) -> dict[str, Any]:
    """What training runs on, for the manifest: the CPU's model, whether it computes bfloat16
    natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags: `--precision mixed_bfloat16`
    can only pay off there; elsewhere bfloat16 is converted in software), and the GPUs."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name"), "cores": os.cpu_count(),
            "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "gpus": [gpu.name for gpu in tf.config.list_physical_devices("GPU")]}


def precision_for(setting: str, hardware: dict[str, Any]) -> str:
    """The precision training computes in: `setting` (train.precision) itself, or for `auto`
    mixed_bfloat16 where the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16, `devices`)
    and no GPU trains, float32 elsewhere (mixed precision on GPUs is not measured here)."""
    if setting != "auto":
        return setting
    native = not hardware["gpus"] and (hardware["avx512_bf16"] or hardware["amx_bf16"])
    return "mixed_bfloat16" if native else "float32"


@keras.saving.register_keras_serializable(package="pipeline")
class Adam(keras.optimizers.Adam):
    """Keras's Adam, each variable's update one fused kernel (TensorFlow's ResourceApplyAdam, the
    same equations: m, v and the bias-corrected step) instead of Keras's dozen small ops each:
    6.7 ms a step for the 4.2M parameters of the default model, where Keras's takes 23 (2 cores).
    The moment variables are Keras's own, so checkpoints and backups are unchanged."""

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(variable, tf.Variable) or self.amsgrad:  # another backend, or AMSGrad
            return super().update_step(gradient, variable, learning_rate)
        index, dtype = self._get_variable_index(variable), variable.dtype
        step = tf.cast(self.iterations + 1, dtype)

        def cast(x):
            return tf.cast(x, dtype)

        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle, v=self._velocities[index].value.handle,
            beta1_power=tf.pow(cast(self.beta_1), step), beta2_power=tf.pow(cast(self.beta_2), step),
            lr=cast(learning_rate), beta1=cast(self.beta_1), beta2=cast(self.beta_2), epsilon=cast(self.epsilon),
            grad=cast(gradient))


def token_loss(target, logits, label_smoothing: float):
    """(summed label-smoothed cross-entropy over real target tokens, their count)."""
    mask = tf.cast(tf.not_equal(target, PAD), tf.float32)
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    nll = -tf.squeeze(tf.gather(log_probs, target[..., None], batch_dims=2), -1)
    per_token = (1.0 - label_smoothing) * nll - label_smoothing * tf.reduce_mean(log_probs, axis=-1)
    return tf.reduce_sum(per_token * mask), tf.reduce_sum(mask)


class Loop:
    """Trains `model` (built and compiled under `strat.scope()`) with `strat`."""

    def __init__(self, strat: tf.distribute.Strategy, model: keras.Model, clip_norm: float,
                 label_smoothing: float):
        self.strategy, self.model = strat, model
        self.clip_norm, self.label_smoothing = clip_norm, label_smoothing
        self.replicas = strat.num_replicas_in_sync
        self._step = None  # see `_traced_step`
        ids = tf.TensorSpec([None, None], tf.int32)
        self._eval = tf.function(self._eval_step, input_signature=[(ids, ids), ids])

    def per_replica(self, make_batches: Callable[[int], tf.data.Dataset]):
        """A distributed dataset from `make_batches(min_rows)`, which gives global batches: each
        is cut into one slice per replica, every worker reading the same batches."""
        replicas = self.replicas

        def dataset_fn(context: tf.distribute.InputContext):
            batches = make_batches(replicas)
            if replicas == 1:
                return batches
            local = replicas // context.num_input_pipelines
            first = context.input_pipeline_id * local

            def slices(inputs, target):
                rows = tf.shape(target, out_type=tf.int64)[0]

                def take(j):
                    lo, hi = (first + j) * rows // replicas, (first + j + 1) * rows // replicas
                    return (inputs[0][lo:hi], inputs[1][lo:hi]), target[lo:hi]

                return tf.data.Dataset.range(local).map(take)

            return batches.flat_map(slices)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _traced_step(self, spec):
        """The distributed step, traced once for batches of `spec`: their shapes vary, and a
        trace per shape would cost more than the steps."""
        if self._step is None:
            self._step = tf.function(self._distributed_step, input_signature=[spec, tf.TensorSpec([], tf.int32)])
        return self._step

    def step(self, batch) -> tuple[tf.Tensor, tf.Tensor]:
        """One training step on a plain batch ((src, tgt_in), tgt_out), with one replica (the
        benchmarks' way in); returns the summed loss and the target tokens."""
        spec = tf.nest.map_structure(lambda t: tf.TensorSpec([None] * len(t.shape), t.dtype), batch)
        total, tokens, _ = self._traced_step(spec)(batch, tf.constant(0))
        return total, tokens

    def _replica_step(self, inputs, target, stop):
        context = tf.distribute.get_replica_context()
        optimizer = self.model.optimizer
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(inputs, training=True)
            total, tokens = token_loss(target, logits, self.label_smoothing)
            # one collective: the global batch's target tokens, and how many replicas ask to stop
            counts = context.all_reduce("sum", tf.stack([tokens, tf.cast(stop, tf.float32)]))
            loss = total / tf.maximum(counts[0], 1.0)
            scaled = optimizer.scale_loss(loss)
        # Dense: an embedding's IndexedSlices repeat a row for each occurrence of its piece, and
        # Adam would square them one by one, not their sum.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
        if self.replicas > 1:  # summed here, to clip the global batch's gradient as one process would
            grads = context.all_reduce("sum", grads)
        scale = getattr(optimizer, "dynamic_scale", None)  # mixed_float16's loss scale
        grads, _ = tf.clip_by_global_norm(grads, self.clip_norm * (1.0 if scale is None else scale))
        if self.replicas > 1:  # the optimizer sums over replicas once more
            grads = [g / self.replicas for g in grads]
        optimizer.apply(grads, variables)
        return total, tokens, counts[1]

    def _distributed_step(self, batch, stop):
        (inputs, target) = batch
        total, tokens, stop = self.strategy.run(self._replica_step, args=(inputs, target, stop))
        reduce = self.strategy.reduce
        return reduce("sum", total, axis=None), reduce("sum", tokens, axis=None), reduce("mean", stop, axis=None)

    def _eval_step(self, inputs, target):  # (batch, length) shapes vary: one trace for all
        return token_loss(target, self.model(inputs, training=False), self.label_smoothing)

    def evaluate(self, batches: tf.data.Dataset) -> float:
        """The loss per target token over `batches`, computed locally (no collectives)."""
        total = tokens = 0.0
        for inputs, target in batches:
            t, n = self._eval(inputs, target)
            total, tokens = total + float(t), tokens + float(n)
        return total / max(tokens, 1.0)

    def fit(self, make_batches: Callable[[int, int], tf.data.Dataset], dev_batches: tf.data.Dataset,
            epochs: int, initial_epoch: int, callbacks: list, elapsed_before: float = 0.0) -> dict[str, list]:
        """Train epochs initial_epoch..epochs-1 (fewer if a callback stops it), each on the global
        batches `make_batches(epoch, min_rows)`; return the logs by name, a list per epoch (as
        Keras's History). Per epoch the logs hold `loss` and `val_loss` (per target token),
        `train_s` and `train_tok_per_s` (training proper) and `elapsed_s` (since training began,
        validation included, `elapsed_before` of it before a resume), then the callbacks' own."""
        model = self.model
        callbacks = keras.callbacks.CallbackList(callbacks, model=model)
        model.stop_training = False
        history: dict[str, list] = {}
        began = time.perf_counter() - elapsed_before
        callbacks.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callbacks.on_epoch_begin(epoch)
            started = time.perf_counter()
            logs = self._train_epoch(self.per_replica(lambda min_rows: make_batches(epoch, min_rows)), callbacks)
            logs["train_s"] = time.perf_counter() - started
            logs["train_tok_per_s"] = logs.pop("tokens") / logs["train_s"]
            logs["val_loss"] = self.evaluate(dev_batches)
            logs["elapsed_s"] = time.perf_counter() - began
            callbacks.on_epoch_end(epoch, logs)
            for name, value in logs.items():
                history.setdefault(name, []).append(value)
            if model.stop_training:
                break
        callbacks.on_train_end()
        return history

    def _train_epoch(self, batches, callbacks) -> dict[str, Any]:
        iterator = iter(batches)
        train_step = self._traced_step(batches.element_spec)
        total = tokens = 0.0
        step = 0
        while True:
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            callbacks.on_train_batch_begin(step)
            t, n, stop = train_step(batch.get_value(), tf.constant(int(self.model.stop_training)))
            total, tokens = total + float(t), tokens + float(n)
            faults.point("train-batch")
            callbacks.on_train_batch_end(step, {"loss": total / max(tokens, 1.0)})
            step += 1
            if int(stop):  # any worker's callback asked (the time budget): all stop at this step
                self.model.stop_training = True
                break
        return {"loss": total / max(tokens, 1.0), "tokens": tokens}
