"""`python cli.py plot`: the curves and attention heatmaps are PNGs with the pieces as labels."""

from __future__ import annotations

import json
import struct

from pipeline import plot as plot_module
from pipeline.config import DecodeConfig
from tests.conftest import cli_in_process


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_curves_and_attention_with_the_pieces_as_labels(tiny_run, monkeypatch):
    figures = []
    save = plot_module._save

    def keep(plt, fig, path):
        figures.append([[label.get_text() for label in axis.get_xticklabels()] + ["|"] +
                        [label.get_text() for label in axis.get_yticklabels()] for axis in fig.axes[:1]][0])
        return save(plt, fig, path)

    monkeypatch.setattr(plot_module, "_save", keep)
    written = json.loads(cli_in_process("plot", "--run", tiny_run.root, "-s", "あか いぬ 。", "-s", "そら 。").stdout)
    assert _png_size(tiny_run.root / "plots" / "curves.png") == (1000, 400)
    assert len(written["attention"]) == 2
    from pipeline.translate import Translator

    hyp = next(Translator.load(tiny_run).translate(["あか いぬ 。"], DecodeConfig(), attention=True))
    assert figures[1] == hyp.src_pieces + ["|"] + hyp.tgt_pieces  # labelled with the pieces, Japanese included
    assert any("あ" in piece for piece in hyp.src_pieces)
    width, height = _png_size(tiny_run.root / "plots" / "attention-1.png")
    assert width >= 400 and height >= 300


def test_plot_needs_a_trained_run(tmp_path):
    proc = cli_in_process("plot", "--run", tmp_path / "nothing", check=False)
    assert proc.returncode == 1 and "has no training history" in proc.stderr
