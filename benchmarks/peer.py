"""The peer, JoeyNMT 2.3.0, measured in the same run as the project (`speed.py --peer-venv VENV`).

Its model and training settings are ../shared/peer/rnn_jaen.yaml, with the paths pointed at this
run's corpus and SentencePiece models trained as ../shared/peer/train_spm.py trains them. It trains
for a fixed number of steps, logging tokens/s (target tokens with </s>, without padding) every
`interval` steps as JoeyNMT does; the first interval is left out as a warm-up, the median of the
others is its figure. Its one validation, at the last step, saves the checkpoint that the decoding
figure then times with JoeyNMT's own `predict`. That checkpoint is only `steps` steps old, so each
decoding figure records the mean output length beside the sentences/s.

Setting up such a venv (see ../shared/peer/README.md):

    python -m venv .venv-peer
    .venv-peer/bin/pip install torch==2.13.0 joeynmt==2.3.0 sentencepiece==0.2.0 sacrebleu importlib_metadata
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from benchmarks.bench import ROOT, SRC, TGT, Bench, child
from pipeline.errors import InputError

PEER_DIR = ROOT.parent / "shared" / "peer"
TASKS = Path(__file__).with_name("joeynmt_tasks.py")
TOKENS_PER_SEC = re.compile(r"Step:\s+(\d+),.*Tokens per Sec:\s+(\d+)")
VENV_HINT = f"set one up as {Path(__file__).relative_to(ROOT)} says"


def measure(venv: Path, bench: Bench, sections: list[str], steps: int) -> dict[str, Any]:
    python = venv.resolve() / "bin" / "python"
    if not python.is_file():
        raise InputError(f"no bin/python in {venv}", hint=VENV_HINT)
    base = PEER_DIR / "rnn_jaen.yaml"
    if not base.is_file():
        raise InputError(f"the peer's config {base} is missing")
    interval = bench.settings.interval
    steps = max(2, -(-steps // interval)) * interval  # whole intervals, one of them the warm-up
    folder = bench.workdir / "peer"
    data = _data(bench, folder / "data")
    env = {k: v for k, v in bench.env.items() if k != "PYTHONPATH"}  # none of the project's modules
    env["OMP_NUM_THREADS"] = str(bench.settings.threads)  # torch's thread pool

    child([python, TASKS, "spm", data, folder / "spm", bench.settings.threads], "JoeyNMT's SentencePiece", env)
    config = folder / "rnn_jaen.yaml"
    changes = {
        "model_dir": str(folder / "model"),
        "data.train": str(data / "train"), "data.dev": str(data / "dev"), "data.test": str(data / "test"),
        "training.updates": steps, "training.logging_freq": interval, "training.validation_freq": steps,
        "training.epochs": 10_000, "training.overwrite": True,
    }
    if bench.settings.quick:  # a few steps leave a model that rarely ends a sentence: keep outputs short
        changes["testing.max_output_length"] = 10
    for side, lang in (("src", SRC), ("trg", TGT)):
        changes[f"data.{side}.voc_file"] = str(folder / "spm" / f"joey_vocab_{lang}.txt")
        changes[f"data.{side}.tokenizer_cfg.model_file"] = str(folder / "spm" / f"spm_{lang}.model")
    child([python, TASKS, "config", base, config, json.dumps(changes)], "JoeyNMT's config", env)

    _, usage = child([python, "-m", "joeynmt", "train", config, "--skip-test"], f"JoeyNMT training, {steps} steps", env)
    logged = [(int(step), float(rate)) for step, rate in
              TOKENS_PER_SEC.findall((folder / "model" / "train.log").read_text(encoding="utf-8"))]
    rates = [rate for _, rate in logged[1:]]
    result: dict[str, Any] = {
        "python": str(python),
        "train": {"tok_per_s": statistics.median(rates) if rates else None, "interval_tok_per_s": rates,
                  "steps": steps, "interval_steps": interval, "warmup_steps": interval, "process": usage},
    }
    if "decode" in sections:
        s = bench.settings
        spec = folder / "decode.spec.json"
        spec.write_text(json.dumps({"beam": s.beam, "batch_size": 64, "repeats": s.repeats, "threads": s.threads}))
        out = folder / "decode.out.json"
        _, usage = child([python, TASKS, "decode", config, spec, out], "JoeyNMT decoding", env)
        result["decode"] = {**json.loads(out.read_text()), "checkpoint_steps": steps, "process": usage}
    return result


def _data(bench: Bench, folder: Path) -> Path:
    """train, dev and test as JoeyNMT's plain datasets read them; dev falls back to test."""
    folder.mkdir(parents=True, exist_ok=True)
    train = bench.corpus(1)
    for lang in (SRC, TGT):
        test = bench.data / f"test.{lang}"
        dev = bench.data / f"dev.{lang}"
        if not test.is_file():
            raise InputError(f"the peer needs {test}")
        for name, path in (("train", train / f"train.{lang}"), ("dev", dev if dev.is_file() else test),
                           ("test", test)):
            link = folder / f"{name}.{lang}"
            if not link.exists():
                link.symlink_to(path.resolve())
    return folder
