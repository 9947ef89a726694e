"""Where a training step's time goes, part by part, against the arithmetic it has to do.

    python benchmarks/train_profile.py                  # the reference model (issue 4), batches of 64
    python benchmarks/train_profile.py --json -         # the figures as JSON on stdout
    python benchmarks/train_profile.py --units 512 --precision float32   # train's options, as train has them

One process times, alternating round by round, forward and backward passes of:

    step        the whole training step as `cli.py train` runs it (`pipeline.distribute.Loop`: the
                masked loss, Adam, clipping)
    encoder     embeddings, the bidirectional RNN, the bridge and the attention keys
    recurrence  the decoder's step-by-step part: attention and cell over the target positions
    output      the rest of the decoder: target embeddings, the cell's input projection, readout,
                vocabulary projection and the loss
    matmul      one product of the vocabulary projection's shape, forward only
    peak        a product of two 1024 x 1024 matrices: about the best rate this machine reaches,
                the ceiling for everything else

For each part it prints milliseconds a step (median), the floating-point operations the part must
do (2 per multiply-add, forward and backward counted as 3 forward passes) and the rate reached.
The batch is random token ids of fixed lengths (the corpus's typical ones by default): the
figures are about shapes, not data. From them: how many target tokens a second the step would
reach if every part ran at the peak rate, the bound that arithmetic alone sets.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project's packages

import typer  # noqa: E402

from benchmarks.bench import command, json_option, log, table, write_json  # noqa: E402
from cli import Options, settings  # noqa: E402
from pipeline.config import ModelConfig, TrainConfig  # noqa: E402


def flops(b: int, s: int, t: int, embed: int, units: int, att: int, vocab: int, gates: int,
          layers: int) -> dict[str, float]:
    """Floating-point operations of one training step, by part: 2 per multiply-add of the
    matrix products (elementwise work is left out), times 3 for forward and backward."""
    gu = gates * units
    encoder = sum(2 * ((embed if i == 0 else 2 * units) * gu + units * gu) for i in range(layers)) * b * s
    encoder += b * s * 2 * units * att + b * 2 * units * units  # keys, bridge
    recurrence = b * t * (units * att + s * att + s * 2 * units + 2 * units * gu + units * gu)
    output = b * t * (embed * gu + (3 * units + embed) * embed + embed * vocab)
    parts = {"encoder": encoder, "recurrence": recurrence, "output": output}
    parts = {k: 6.0 * v for k, v in parts.items()}
    parts["step"] = sum(parts.values())
    parts["matmul"] = 2.0 * b * t * embed * vocab
    parts["peak"] = 2.0 * 1024 ** 3
    return parts


@settings(config=Options(ModelConfig, only=("cell", "embed_dim", "units", "attention_units", "layers")),
          train=Options(TrainConfig, only=("batch_size", "precision")))
def main(
    src_len: int = typer.Option(16, help="Source pieces a sentence, </s> included (ja-en batches: 15.9 on average)."),
    tgt_len: int = typer.Option(11, help="Target pieces a sentence, <s> included (ja-en batches: 10.7)."),
    vocab: int = typer.Option(4000),
    rounds: int = typer.Option(7, help="Timed rounds, after one untimed."),
    repeats: int = typer.Option(10, help="Calls of each part a round."),
    json_path: Optional[Path] = json_option(None),
    *, config: ModelConfig, train: TrainConfig,
):
    """Where a training step's time goes, part by part, against the arithmetic it has to do."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.distribute import Loop, devices, precision_for, token_loss
    from pipeline.model import build_model
    from pipeline.train import compile_for_training

    keras.utils.set_random_seed(1)
    embed, units, cell = config.embed_dim, config.units, config.cell
    precision = precision_for(train.precision, devices())  # auto resolved as train resolves it
    train = replace(train, precision=precision)
    model = build_model(config, vocab, vocab, precision=precision)
    compile_for_training(model, train)
    loop = Loop(tf.distribute.get_strategy(), model, train.clip_norm, train.label_smoothing)
    rng = np.random.default_rng(1)
    b, s, t = train.batch_size, src_len, tgt_len
    src = tf.constant(rng.integers(4, vocab, (b, s)), tf.int32)
    tgt_in = tf.constant(rng.integers(4, vocab, (b, t)), tf.int32)
    tgt_out = tf.constant(rng.integers(4, vocab, (b, t)), tf.int32)
    encoded, state = model.encode(src)
    encoded = tf.nest.map_structure(tf.identity, encoded)
    state = tuple(tf.identity(x) for x in state)
    projected = model.decoder_cell.project_inputs(model.tgt_embedding(tgt_in))
    hidden, contexts = model.recurrence(encoded, state, projected)

    def grad_of(fn, sources):
        """Gradients of fn() with respect to the sources (Keras variables or tensors)."""
        sources = [getattr(x, "value", x) for x in sources]  # a Keras variable's tf.Variable

        @tf.function
        def run():
            with tf.GradientTape() as tape:
                tape.watch([x for x in sources if not isinstance(x, tf.Variable)])
                total = fn()
            return tape.gradient(total, sources)
        return run

    encoder_vars = [v for layer in (model.src_embedding, *model.encoder_layers, model.bridge,
                                    model.attention.key_projection) for v in layer.trainable_variables]
    recurrence_vars = [*model.attention.query_projection.trainable_variables,
                       *model.attention.score_vector.trainable_variables,
                       *model.decoder_cell.trainable_variables]
    output_vars = [model.tgt_embedding.embeddings, model.decoder_cell.w_input, model.decoder_cell.b_input,
                   *model.readout.trainable_variables, model.output_bias]

    def encoder():
        e, st = model.encode(src, training=True)
        return tf.reduce_sum(e.keys) + tf.reduce_sum(e.values) + sum(tf.reduce_sum(x) for x in st)

    def recurrence():
        h, c = model.recurrence(encoded, state, projected)
        return tf.reduce_sum(h) + tf.reduce_sum(c)

    def output():  # the output layer, as decode_teacher_forced applies it after the recurrence
        embedded = model.dropout(model.tgt_embedding(tgt_in), training=True)
        proj = model.decoder_cell.project_inputs(embedded)
        logits = model.output_logits(hidden, contexts, embedded, training=True)
        total, tokens = token_loss(tgt_out, logits, train.label_smoothing)
        return total / tokens + 1e-9 * tf.cast(tf.reduce_sum(proj), total.dtype)

    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    weight = tf.constant(rng.standard_normal((embed, vocab)), dtype)
    rows = tf.constant(rng.standard_normal((b * t, embed)), dtype)
    square = tf.constant(rng.standard_normal((1024, 1024)), dtype)
    parts = {
        "step": lambda: loop.step(((src, tgt_in), tgt_out)),
        "encoder": grad_of(encoder, encoder_vars),
        "recurrence": grad_of(recurrence, [*recurrence_vars, *encoded, *state, projected]),
        "output": grad_of(output, [*output_vars, hidden, contexts]),
        "matmul": tf.function(lambda: tf.matmul(rows, weight)),
        "peak": tf.function(lambda: tf.matmul(square, square)),
    }
    times: dict[str, list[float]] = {name: [] for name in parts}
    for round_ in range(rounds + 1):
        for name, fn in parts.items():
            start = time.perf_counter()
            for _ in range(repeats):
                result = fn()
            tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, result)
            if round_:  # the first round traces
                times[name].append((time.perf_counter() - start) / repeats)
        log.info("round %d/%d", round_, rounds)

    work = flops(b, s, t, embed, units, config.attention_units, vocab, 3 if cell == "gru" else 4, config.layers)
    ms = {name: statistics.median(v) * 1000 for name, v in times.items()}
    peak = max(work[n] / ms[n] / 1e6 for n in ("matmul", "peak"))  # GFLOP/s
    figures = {
        "shape": {"batch": b, "src_len": s, "tgt_len": t, "vocab": vocab, "embed": embed, "units": units,
                  "cell": cell, "precision": precision},
        "parts": {name: {"ms": round(ms[name], 2), "gflop": round(work[name] / 1e9, 6),
                         "gflop_per_s": round(work[name] / ms[name] / 1e6, 3),
                         "runs_ms": [round(x * 1000, 2) for x in times[name]]} for name in parts},
        "target_tok_per_s": round(b * t / ms["step"] * 1000),
        "arithmetic_bound_tok_per_s": round(b * t / (work["step"] / peak / 1e6) * 1000),
        "parts_sum_ms": round(ms["encoder"] + ms["recurrence"] + ms["output"], 2),
    }
    print(f"batch {b} x source {s} x target {t} pieces, vocab {vocab}, embed {embed}, "
          f"{cell} {units}, {precision}; medians of {rounds} rounds of {repeats} calls")
    rows = [[name, f"{p['ms']:.2f}", f"{ms[name] / ms['step']:.0%}" if name in ("encoder", "recurrence", "output")
             else "", f"{p['gflop']:.3f}", f"{p['gflop_per_s']:.1f}"] for name, p in figures["parts"].items()]
    print("\n".join(table(["part", "ms", "share", "GFLOP", "GFLOP/s"], rows)))
    print(f"step: {figures['target_tok_per_s']:,} target tok/s; at {peak:.0f} GFLOP/s throughout: "
          f"{figures['arithmetic_bound_tok_per_s']:,}")
    if json_path:
        write_json(json_path, figures)


if __name__ == "__main__":
    command(main)
