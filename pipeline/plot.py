"""`python cli.py plot`: training curves and attention heatmaps as PNG files.

    RUN/plots/curves.png          loss and dev loss, and dev BLEU, by epoch (from history.csv)
    RUN/plots/attention-N.png     for each sentence given: which source pieces each target piece
                                  attended to, with the pieces as labels

Japanese labels are drawn with the IPAex Gothic font that the japanize-matplotlib package ships,
not as boxes (SentencePiece's word-start mark ▁ with DejaVu Sans). Matplotlib runs without a
display (Agg).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pipeline.artifacts import Run, atomic_path
from pipeline.config import DecodeConfig
from pipeline.errors import StageError

OUT = "plots"
DPI = 100


def plot(run: Run, sentences: list[str], decode: DecodeConfig) -> dict[str, Any]:
    """Write the curves and one heatmap per sentence under RUN/plots/; return the files' paths."""
    plt = _pyplot()
    history = run.path("train", "history.csv")
    if not history.is_file():
        raise StageError(f"{run.root} has no training history", hint=f"run `python cli.py train --run {run.root}`")
    out = run.root / OUT
    written = {"curves": str(_curves(plt, history, out / "curves.png"))}
    if sentences:
        from pipeline.translate import Translator

        translator = Translator.load(run, needed_by="plot")
        hyps = translator.translate(sentences, decode, attention=True)
        written["attention"] = [str(_heatmap(plt, hyp, out / f"attention-{i}.png"))
                                for i, hyp in enumerate(hyps, 1) if hyp.attention]
    return written


def _curves(plt, history: Path, path: Path) -> Path:
    with history.open(newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(row["epoch"]) + 1 for row in rows]

    def column(name):
        return [float(row[name]) for row in rows if row.get(name)]

    fig, (loss, bleu) = plt.subplots(1, 2, figsize=(10, 4), dpi=DPI)
    loss.plot(epochs, column("loss"), marker="o", label="training loss")
    loss.plot(epochs, column("val_loss"), marker="o", label="dev loss")
    loss.set(xlabel="epoch", ylabel="cross-entropy per token", title="Loss")
    loss.legend()
    bleu.plot(epochs, column("val_bleu"), marker="o", color="tab:green")
    bleu.set(xlabel="epoch", ylabel="BLEU", title="Dev BLEU")
    for axis in (loss, bleu):
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    return _save(plt, fig, path)


def _heatmap(plt, hyp, path: Path) -> Path:
    weights = hyp.attention  # (target pieces, source pieces)
    width = max(4.0, 0.45 * len(hyp.src_pieces) + 2)
    height = max(3.0, 0.4 * len(hyp.tgt_pieces) + 2)
    fig, axis = plt.subplots(figsize=(width, height), dpi=DPI)
    image = axis.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    upright = max(len(piece) for piece in hyp.src_pieces) <= 3  # short pieces (CJK) read best upright
    axis.set_xticks(range(len(hyp.src_pieces)), hyp.src_pieces, rotation=0 if upright else 90)
    axis.set_yticks(range(len(hyp.tgt_pieces)), hyp.tgt_pieces)
    axis.set(xlabel="source pieces", ylabel="target pieces")
    fig.colorbar(image, ax=axis, fraction=0.04)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import japanize_matplotlib  # noqa: F401 (registers IPAex Gothic, which has the Japanese glyphs)
    import matplotlib.pyplot as plt

    # glyph by glyph: IPAex Gothic first, DejaVu Sans for what it lacks (SentencePiece's ▁)
    matplotlib.rcParams["font.family"] = ["IPAexGothic", "DejaVu Sans"]

    return plt
