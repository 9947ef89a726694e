"""`python cli.py export`: a run's translator (or an ensemble's) as one TensorFlow SavedModel.

Raw source strings in, translations and scores out, everything inside the graph: both
SentencePiece models (tensorflow-text's `SentencepieceTokenizer`), the encoder-decoder and this
project's search (`Searcher`). The preprocessing is `Translator`'s, op for op:

    whitespace runs -> one space, ends stripped        (`data.normalise_space`: str.split's set)
    cut to max_input_tokens * 16 characters, encoded,  (`translate.encode_line`)
    cut to max_input_tokens pieces, </s> appended
    empty source -> empty translation, score 0         (never searched, as in `Translator`)
    at most int(max_len_ratio * source pieces) + 10    (`Translator._translate_batch`)
    output pieces, up to the first </s> or pad, decoded

A batch is decoded as it is given (`Translator` sorts a file by length first; sentences never
interact, so the translations are the same). Invalid UTF-8 bytes become U+FFFD (the CLI refuses
such a file instead).

Signatures, each returning {"translations": string (batch,), "scores": float32 (batch,)}, the
score as `translate --format jsonl` gives it (length-normalised under beam search):

    serving_default(sentences)                         the search chosen at export
    translate_greedy(sentences)                        greedy search
    translate_beam(sentences, beam, length_penalty)    int32 and float32 scalars; beam < 2: greedy

`translate_beam` is also the loaded object's `translate(sentences, beam, length_penalty)`. The
three share one traced graph, in which a `tf.cond` picks beam or greedy search.

The export directory gets a `manifest.json` like a run's stages: the runs' model and tokenizer
files with their hashes, the settings, the library versions. It is written into a hidden sibling
directory and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import tensorflow as tf

from pipeline.artifacts import Declaration, Run, write_manifest
from pipeline.config import DecodeConfig
from pipeline.ensemble import Ensemble
from pipeline.errors import ConfigError, PipelineError, first_line
from pipeline.progress import log
from pipeline.search import Searcher
from pipeline.translate import MAX_PIECE_CHARS, load_models
from pipeline.vocab import EOS, PAD, SIDES

STAGE = "export"
# What str.split() splits at (Python's whitespace: ASCII, U+0085, U+00A0, U+3000, ...), as an RE2
# class; RE2's own \s is ASCII only.
WHITESPACE_RUN = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in map(chr, range(sys.maxunicode + 1))
                               if c.isspace()) + "]+"
SENTENCES = tf.TensorSpec([None], tf.string, name="sentences")


class ExportedTranslator(tf.Module):
    """The translator as a `tf.Module`: tokenizers, models and search, with its signatures."""

    def __init__(self, models: list, src_spm: bytes, tgt_spm: bytes, config: DecodeConfig):
        """One model, or several searched as an `Ensemble`; the SentencePiece models' bytes."""
        super().__init__(name="translator")
        import tensorflow_text as text

        self.members = list(models)  # the Keras models: tracked, so their weights are saved
        # Distinct names, or the reloaded model may decode with the source side's model
        # (tensorflow/text issue 1304: the resources are shared by node name).
        self.src_tokenizer = text.SentencepieceTokenizer(model=src_spm, name="src_tokenizer")
        self.tgt_tokenizer = text.SentencepieceTokenizer(model=tgt_spm, name="tgt_tokenizer")
        self._searcher = Searcher(models[0] if len(models) == 1 else Ensemble(models))
        self._max_input_tokens = config.max_input_tokens
        self._max_len_ratio = config.max_len_ratio
        self.default_beam = config.beam if config.strategy == "beam" else 1
        self.default_penalty = config.length_penalty
        self.translate = tf.function(self._translate, input_signature=[
            SENTENCES, tf.TensorSpec([], tf.int32, name="beam"), tf.TensorSpec([], tf.float32, name="length_penalty")])

    def signatures(self) -> dict[str, Any]:
        def default(sentences):
            return self.translate(sentences, tf.constant(self.default_beam), tf.constant(self.default_penalty))

        def greedy(sentences):
            return self.translate(sentences, tf.constant(1), tf.constant(0.0))

        return {
            "serving_default": tf.function(default, input_signature=[SENTENCES]).get_concrete_function(),
            "translate_greedy": tf.function(greedy, input_signature=[SENTENCES]).get_concrete_function(),
            "translate_beam": self.translate.get_concrete_function(),
        }

    def _translate(self, sentences, beam, length_penalty):
        """sentences (batch,) string -> {"translations": (batch,) string, "scores": (batch,) float32}.
        Beam search of width `beam` with `length_penalty`, or greedy search for a beam below 2."""
        ids = self._encode(sentences)  # ragged (batch, pieces)
        lengths = ids.row_lengths()
        rows = tf.where(lengths > 0)[:, 0]  # the sentences to search: not empty
        batch = tf.shape(sentences)[0]
        n = tf.size(rows)

        def search():
            src_ids = tf.gather(ids, rows)
            eos = tf.RaggedTensor.from_tensor(tf.fill([n, 1], EOS))
            src_ids = tf.concat([src_ids, eos], axis=1)
            src = src_ids.to_tensor(default_value=PAD)  # (n, src_len) int32
            source_len = tf.cast(src_ids.row_lengths(), tf.float64)  # </s> included, as Translator counts
            limits = tf.cast(tf.floor(self._max_len_ratio * source_len), tf.int32) + 10  # (n,)
            result = tf.cond(beam > 1,
                             lambda: self._searcher.beam(src, limits, beam, length_penalty),
                             lambda: self._searcher.greedy(src, limits))
            return self._decode(result.tokens[:, 0]), result.scores[:, 0]

        def nothing():
            return tf.zeros([0], tf.string), tf.zeros([0], tf.float32)

        found, scores = tf.cond(n > 0, search, nothing)
        where = rows[:, tf.newaxis]
        return {"translations": tf.tensor_scatter_nd_update(tf.fill([batch], ""), where, found),
                "scores": tf.tensor_scatter_nd_update(tf.zeros([batch], tf.float32), where, scores)}

    def _encode(self, sentences):
        """`translate.encode_line` in the graph: (batch,) string -> ragged (batch, pieces) int32."""
        text = tf.strings.unicode_transcode(sentences, "UTF-8", "UTF-8", errors="replace")
        text = tf.strings.strip(tf.strings.regex_replace(text, WHITESPACE_RUN, " "))
        text = tf.strings.substr(text, 0, self._max_input_tokens * MAX_PIECE_CHARS, unit="UTF8_CHAR")
        ids = self.src_tokenizer.tokenize(text)
        return ids[:, :self._max_input_tokens]

    def _decode(self, tokens):
        """(n, steps) int32, </s> then pad at the end -> (n,) string of the pieces before </s>."""
        real = tf.cast((tokens != EOS) & (tokens != PAD), tf.int32)
        lengths = tf.reduce_sum(tf.math.cumprod(real, axis=1), axis=1)  # up to the first </s> or pad
        return self.tgt_tokenizer.detokenize(tf.RaggedTensor.from_tensor(tokens, lengths=lengths))


def export(runs: Run | Sequence[Run], out: str | Path, config: DecodeConfig) -> dict[str, Any]:
    """Write the SavedModel of one run's best model, or of several runs' as an ensemble, to `out`
    (which must not exist, or be empty). Returns the report that is also in its manifest."""
    config.validate()
    runs = [runs] if isinstance(runs, Run) else list(runs)
    out = _check_out(out)
    _check_text_ops()
    _, models = load_models(runs, STAGE)
    tokenizers = {side: runs[0].path("tokenize", f"spm.{side}.model").read_bytes() for side in SIDES}
    module = ExportedTranslator(models, tokenizers["src"], tokenizers["tgt"], config)

    log.info("tracing and saving the %s to %s", "model" if len(runs) == 1 else f"ensemble of {len(runs)}", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with _quiet_tensorflow():
            tf.saved_model.save(module, str(staging), signatures=module.signatures())
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        report = {"out": str(out), "runs": [str(r.root) for r in runs],
                  "signatures": ["serving_default", "translate_greedy", "translate_beam"],
                  "serving_default": {"beam": module.default_beam, "length_penalty": module.default_penalty}}
        write_manifest(staging, STAGE, declare(runs, config), files, extra={"report": report})
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from a server running as another user
        _rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def declare(runs: list[Run], config: DecodeConfig) -> Declaration:
    """What the export depends on: the decode settings it bakes in, and each run's best model and
    tokenizers (the manifest records their hashes)."""
    settings = {k: v for k, v in asdict(config).items()
                if k in ("strategy", "beam", "length_penalty", "max_len_ratio", "max_input_tokens")}
    inputs = {}
    for i, run in enumerate(runs):
        inputs[f"run{i}/train/model.keras"] = str(run.path("train", "model.keras"))
        for side in SIDES:
            inputs[f"run{i}/tokenize/spm.{side}.model"] = str(run.path("tokenize", f"spm.{side}.model"))
    return Declaration(settings, inputs)


def _check_out(path: str | Path) -> Path:
    if not str(path).strip():  # Path("") would be the working directory
        raise ConfigError("--out is an empty path", hint="give a new directory, e.g. exported/enja")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file", hint="give a new directory")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty", hint="give a new directory, or remove it first")
    return out


def _check_text_ops() -> None:
    try:
        import tensorflow_text  # noqa: F401
    except ImportError as e:
        raise PipelineError(f"export needs tensorflow-text ({first_line(e)})",
                            hint="pip install --no-deps -r requirements-export.txt") from None


@contextlib.contextmanager
def _quiet_tensorflow() -> Iterator[None]:
    """Keep TensorFlow's INFO lines about saving (renamed function inputs, the staging path) off
    stderr; its warnings still show."""
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _rename(staging: Path, out: Path) -> None:
    """Move the finished export onto `out` (a missing or empty directory) in one rename."""
    try:
        os.replace(staging, out)
    except OSError as e:  # out filled up or became a file since it was checked
        raise ConfigError(f"--out {out} cannot be replaced ({e.strerror})", hint="give a new directory") from None

