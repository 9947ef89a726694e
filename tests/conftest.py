"""Fixtures: a toy parallel corpus the tests write themselves, and a tiny trained run on it."""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as cli.py does; oneDNN as TensorFlow decides, as there

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT / ".." / "shared" / "data"
ENJA = SHARED_DATA / "small_parallel_enja"

# A toy "language pair": target words are a fixed dictionary mapping of the source words, in
# reverse order, so a tiny model can learn something in seconds.
SRC_WORDS = "あか あお しろ くろ いぬ ねこ とり さかな やま かわ うみ そら ほし つき はな き".split()
TGT_WORDS = "red blue white black dog cat bird fish mountain river sea sky star moon flower tree".split()
LEXICON = dict(zip(SRC_WORDS, TGT_WORDS))


def toy_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [rng.choice(SRC_WORDS) for _ in range(rng.randint(2, 6))]
        pairs.append((" ".join(words) + " 。", " ".join(LEXICON[w] for w in reversed(words)) + " ."))
    return pairs


def write_corpus(folder: Path, name: str, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    src, tgt = folder / f"{name}.ja", folder / f"{name}.en"
    src.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return src, tgt


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("toy")
    train_src, train_tgt = write_corpus(folder, "train", toy_pairs(1200, seed=1))
    dev_src, dev_tgt = write_corpus(folder, "dev", toy_pairs(40, seed=2))
    return {"train_src": train_src, "train_tgt": train_tgt, "dev_src": dev_src, "dev_tgt": dev_tgt,
            "folder": folder}


TINY_MODEL = dict(embed_dim=32, units=32, attention_units=32, dropout=0.0)


@pytest.fixture(scope="session")
def tiny_run(toy_corpus, tmp_path_factory):
    """A run directory with tokenize and train finished (a tiny model, five epochs, ~40 s)."""
    from pipeline.artifacts import Run
    from pipeline.config import ModelConfig, TokenizeConfig, TrainConfig
    from pipeline.tokenize import tokenize
    from pipeline.train import train

    run = Run.at(tmp_path_factory.mktemp("run") / "tiny")
    tokenize(run, TokenizeConfig(vocab_size=60), src=str(toy_corpus["train_src"]),
             tgt=str(toy_corpus["train_tgt"]), src_lang="ja", tgt_lang="en")
    train(run, ModelConfig(**TINY_MODEL), TrainConfig(epochs=5, batch_size=32, learning_rate=1e-2, seed=7),
          dev_src=str(toy_corpus["dev_src"]), dev_tgt=str(toy_corpus["dev_tgt"]), bleu_tokenize="none")
    return run


def cli_in_process(*args, stdin: str | bytes | None = None, check: bool = True):
    """`python cli.py ARGS` run inside the test process (no interpreter or TensorFlow start-up):
    a CompletedProcess with the exit code, stdout and stderr, as a subprocess would give."""
    import subprocess

    from typer.testing import CliRunner

    import cli

    logs = io.StringIO()  # the log lines a process's stderr would hold, before its error line
    handler = logging.StreamHandler(logs)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        result = CliRunner().invoke(cli.app, [str(a) for a in args], input=stdin)
    finally:
        logging.getLogger().removeHandler(handler)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    proc = subprocess.CompletedProcess(args, result.exit_code, result.stdout, logs.getvalue() + result.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc
