"""The measurements behind benchmarks/speed.py, each run in a process of its own:

    python -m benchmarks.measure KIND SPEC.json OUT.json

KIND is `train`, `decode` or `gensim`; SPEC holds its settings; the figures go to OUT.json. A
fresh process per measurement keeps its peak RSS its own and lets the thread settings apply
before TensorFlow starts. Everything timed goes through the project's own code: train's
`TrainingData.batches`, `compile_for_training` and the training loop (`pipeline.distribute.Loop`)
for training, `Translator.translate` for decoding.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import typer

from benchmarks.bench import command, write_json
from pipeline.errors import ConfigError
from pipeline.progress import log
from pipeline.vocab import FIRST_WORD, PAD

NEEDED_BY = "benchmarks/speed.py"


def interval_rates(times: list[float], tokens: list[int], warmup: int, interval: int) -> list[float]:
    """Tokens per second over consecutive intervals of `interval` steps, after `warmup` steps.

    times[0] is when training began and times[i] when step i ended; tokens[i - 1] is step i's
    token count. A last, shorter interval is left out.
    """
    rates = []
    for start in range(warmup, len(tokens) - interval + 1, interval):
        end = start + interval
        rates.append(sum(tokens[start:end]) / (times[end] - times[start]))
    return rates


def set_threads(threads: int) -> dict[str, int]:
    """Both TensorFlow thread pools to `threads`, before any op runs; returns what TF reports."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}


# -- training ------------------------------------------------------------------------------------

def train(spec: dict[str, Any]) -> dict[str, Any]:
    """Target tokens per second of the training loop on the run's tokenized pairs, per interval
    of steps.

    Tokens are counted as JoeyNMT counts them: target pieces with </s>, without padding. The
    count of each step comes from a second copy of the same seeded dataset, which yields the
    same batches in the same order (tests/test_speed_benchmark.py checks that it does).
    """
    threads = set_threads(spec["threads"])
    import keras
    import tensorflow as tf

    from pipeline.artifacts import Run
    from pipeline.config import ModelConfig, TrainConfig
    from pipeline.distribute import Loop, devices, precision_for
    from pipeline.model import build_model
    from pipeline.tokenize import load_encoded, load_tokenizers
    from pipeline.train import TrainingData, compile_for_training

    run = Run.at(spec["run"])
    model_config = ModelConfig(**spec["model"])
    setting = spec.get("precision", TrainConfig.precision)
    config = TrainConfig(batch_size=spec["batch_size"], precision=precision_for(setting, devices()))  # auto resolved
    processors, _ = load_tokenizers(run, needed_by=NEEDED_BY)
    corpus = load_encoded(run, needed_by=NEEDED_BY)
    keras.utils.set_random_seed(config.seed)  # as `train` does
    model = build_model(model_config, processors["src"].get_piece_size(), processors["tgt"].get_piece_size(),
                        precision=config.precision)
    compile_for_training(model, config)
    warmup, steps, interval = spec["warmup"], spec["steps"], spec["interval"]

    data = TrainingData(corpus, corpus.pairs, dev=None)

    def batches(epoch=0, min_rows=1):  # `train`'s own, repeated past the first epoch
        return data.batches(epoch, config, min_rows).repeat().take(warmup + steps)

    class StepClock(keras.callbacks.Callback):
        """`times[0]`: when training began; `times[i]`: when step i ended."""

        def on_train_begin(self, logs=None):
            self.times = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    tokens = batch_tokens(batches(), warmup + steps)
    clock = StepClock()
    log.info("training %s steps (%d warm-up), %d parameters", f"{warmup + steps:,}", warmup,
             model.count_params())
    loop = Loop(tf.distribute.get_strategy(), model, config.clip_norm, config.label_smoothing)
    loop.fit(batches, batches().take(0), epochs=1, initial_epoch=0, callbacks=[clock])
    times = clock.times
    rates = interval_rates(times, tokens, warmup, interval)
    measured_s = times[-1] - times[warmup]
    return {"tok_per_s": statistics.median(rates) if rates else None,
            "interval_tok_per_s": [round(r, 1) for r in rates], "mean_tok_per_s": sum(tokens[warmup:]) / measured_s,
            "steps": steps, "warmup_steps": warmup, "interval_steps": interval, "measured_s": round(measured_s, 2),
            "first_step_s": round(times[1] - times[0], 2),  # tracing the training step included
            "tokens_per_step": round(float(np.mean(tokens)), 1), "batch_size": config.batch_size,
            "train_pairs": corpus.pairs, "vocab": {side: processors[side].get_piece_size() for side in processors},
            "parameters": model.count_params(), "model": spec["model"], "precision": config.precision,
            "precision_setting": setting,
            "threads": threads, "onednn": bool(onednn_enabled())}


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (TF_ENABLE_ONEDNN_OPTS, or the CPU)."""
    from tensorflow.python.util import _pywrap_util_port

    return _pywrap_util_port.IsMklEnabled()


def batch_tokens(dataset, steps: int) -> list[int]:
    """Target tokens (</s> included, padding not) in each of the first `steps` batches."""
    return [int(np.count_nonzero(y != PAD)) for _, y in dataset.take(steps).as_numpy_iterator()]


# -- decoding ------------------------------------------------------------------------------------

def decode(spec: dict[str, Any]) -> dict[str, Any]:
    """Sentences per second of greedy and beam search on `spec["src"]`, and whether the output
    is the same for batches of 1, 16 and the default size."""
    threads = set_threads(spec["threads"])
    from pipeline.artifacts import Run
    from pipeline.config import DecodeConfig
    from pipeline.data import read_lines
    from pipeline.translate import Translator

    started = time.perf_counter()
    translator = Translator.load(Run.at(spec["run"]), needed_by=NEEDED_BY)
    lines = list(read_lines(spec["src"]))
    result: dict[str, Any] = {"sentences": len(lines), "load_s": round(time.perf_counter() - started, 2),
                              "threads": threads}
    for name, config in (("greedy", DecodeConfig(strategy="greedy")),
                         (f"beam{spec['beam']}", DecodeConfig(strategy="beam", beam=spec["beam"]))):
        log.info("decoding %d sentences, %s, %d repetitions", len(lines), name, spec["repeats"])
        result[name] = _decode(translator, lines, config, spec["repeats"], spec["batch1_sentences"])
    return result


def _decode(translator, lines: list[str], config, repeats: int, batch1_sentences: int) -> dict[str, Any]:
    def texts(sentences, batch_size):
        return [h.text for h in translator.translate(sentences, replace(config, batch_size=batch_size))]

    started = time.perf_counter()
    reference = texts(lines, config.batch_size)  # the first call traces the search functions
    first_call_s = time.perf_counter() - started
    seconds, unstable = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        again = texts(lines, config.batch_size)
        seconds.append(time.perf_counter() - started)
        unstable += _mismatches(again, reference)
    subset = lines[:batch1_sentences]
    return {"sent_per_s": len(lines) / statistics.median(seconds), "seconds": [round(s, 3) for s in seconds],
            "first_call_s": round(first_call_s, 2), "batch_size": config.batch_size,
            "mean_output_words": round(float(np.mean([len(t.split()) for t in reference])), 2),
            "mismatches": {"repeats_vs_first": unstable,
                           "batch_16_vs_default": _mismatches(texts(lines, 16), reference),
                           "batch_1_vs_default": _mismatches(texts(subset, 1), reference[:len(subset)])},
            "batch_1_sentences": len(subset)}


def _mismatches(a: list[str], b: list[str]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


# -- gensim's word2vec, the peer of the pretrain stage ---------------------------------------------

def gensim(spec: dict[str, Any]) -> dict[str, Any]:
    """gensim's skip-gram on each side's pieces in the run's encoded corpus, with the pretrain settings.

    Its effective words (those kept by down-sampling, over all epochs) are what the pretrain
    stage reports as effective words too.
    """
    import gensim as gensim_module
    from gensim.models import Word2Vec

    from pipeline.artifacts import Run
    from pipeline.tokenize import load_encoded

    w2v = spec["word2vec"]
    pairs = list(load_encoded(Run.at(spec["run"]), needed_by=NEEDED_BY).read())
    result: dict[str, Any] = {"version": gensim_module.__version__, "workers": spec["threads"]}
    for number, side in enumerate(("src", "tgt")):
        sentences = [[str(i) for i in pair[number].tolist() if i >= FIRST_WORD] for pair in pairs]
        model = Word2Vec(sg=1, vector_size=w2v["dim"], window=w2v["window"], negative=w2v["negatives"],
                         sample=w2v["subsample"], min_count=1, workers=spec["threads"], epochs=w2v["epochs"],
                         seed=w2v["seed"])
        started = time.perf_counter()
        model.build_vocab(sentences)
        built = time.perf_counter()
        effective, raw = model.train(sentences, total_examples=model.corpus_count, epochs=model.epochs)
        finished = time.perf_counter()
        result[side] = {"effective_words": int(effective), "raw_words": int(raw), "vocab": len(model.wv),
                        "build_vocab_s": round(built - started, 2), "train_seconds": round(finished - built, 2),
                        "words_per_second": round(effective / (finished - built))}
        log.info("gensim %s: %s effective words/s", side, f"{result[side]['words_per_second']:,}")
    return result


KINDS = {"train": train, "decode": decode, "gensim": gensim}


def main(kind: str = typer.Argument(..., help=f"One of {', '.join(KINDS)}."), spec: Path = typer.Argument(...),
         out: Path = typer.Argument(...)):
    """Measure KIND with the settings in the JSON file SPEC; write the figures to OUT."""
    logging.getLogger("gensim").setLevel(logging.WARNING)  # it logs every phase at INFO
    if kind not in KINDS:
        raise ConfigError(f"unknown measurement {kind!r}; valid: {', '.join(KINDS)}")
    write_json(out, KINDS[kind](json.loads(spec.read_text())))


if __name__ == "__main__":
    command(main)
