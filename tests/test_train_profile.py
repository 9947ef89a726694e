"""The training profile's arithmetic: its operation counts are the model's own shapes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np

from pipeline.config import ModelConfig
from pipeline.model import build_model
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("train_profile", ROOT / "benchmarks" / "train_profile.py")
train_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_profile)


def _size(*variables) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


def test_operation_counts_match_the_model_weights():
    """A product's multiply-adds per position are its matrix's weights (6 FLOPs each, forward
    and backward), so each part's count is checked against the built model."""
    cell, units, embed, vocab, b, s, t = "lstm", 12, 8, 30, 5, 7, 4
    model = build_model(ModelConfig(cell=cell, embed_dim=embed, units=units, attention_units=units), vocab, vocab)
    work = train_profile.flops(b, s, t, embed, units, units, vocab, 4, 1)
    rnn = [w for w in model.encoder_layers[0].trainable_variables if len(w.shape) == 2]
    per_source = _size(*rnn, model.attention.key_projection.kernel)
    assert work["encoder"] == 6 * (b * s * per_source + b * _size(model.bridge.kernel))
    c = model.decoder_cell
    per_target = _size(model.attention.query_projection.kernel, c.w_context, c.w_recurrent) + s * units + s * 2 * units
    assert work["recurrence"] == 6 * b * t * per_target
    tied = model.tgt_embedding.embeddings  # the vocabulary projection
    assert work["output"] == 6 * b * t * _size(c.w_input, model.readout.kernel, tied)
    assert work["step"] == work["encoder"] + work["recurrence"] + work["output"]


def test_profile_runs_and_reports_every_part(tmp_path):
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_profile.py"), "--batch-size", "4",
                           "--src-len", "5", "--tgt-len", "4", "--vocab", "40", "--embed-dim", "8", "--units", "8",
                           "--attention-units", "8", "--precision", "float32",
                           "--rounds", "1", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert set(figures["parts"]) == {"step", "encoder", "recurrence", "output", "matmul", "peak"}
    assert all(p["ms"] > 0 and p["gflop_per_s"] > 0 for p in figures["parts"].values())
    assert figures["target_tok_per_s"] > 0 and "step:" in proc.stdout
