"""The peer's side of the benchmark, run by benchmarks/peer.py with the Python of a JoeyNMT 2.3.0
venv (never the project's own; it imports only what that venv has):

    python joeynmt_tasks.py spm DATA OUT THREADS        SentencePiece as ../shared/peer/train_spm.py
    python joeynmt_tasks.py config BASE OUT CHANGES     BASE yaml with CHANGES (JSON) applied
    python joeynmt_tasks.py decode CONFIG SPEC OUT      time greedy and beam search on the test set
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def spm(data: str, out: str, threads: str) -> None:
    """Unigram 4k per side and a JoeyNMT vocabulary file of its pieces, as the peer's figures had."""
    import sentencepiece

    Path(out).mkdir(parents=True, exist_ok=True)
    for lang in ("ja", "en"):
        prefix = Path(out) / f"spm_{lang}"
        sentencepiece.SentencePieceTrainer.train(
            input=str(Path(data) / f"train.{lang}"), model_prefix=str(prefix), vocab_size=4000,
            model_type="unigram", hard_vocab_limit=False, character_coverage=1.0 if lang == "en" else 0.9995,
            num_threads=int(threads), minloglevel=2)
        pieces = [line.split("\t")[0] for line in Path(f"{prefix}.vocab").read_text(encoding="utf-8").splitlines()]
        # JoeyNMT adds its own <unk> <pad> <s> </s>; SentencePiece's three control pieces come first
        (Path(out) / f"joey_vocab_{lang}.txt").write_text("\n".join(pieces[3:]) + "\n", encoding="utf-8")


def config(base: str, out: str, changes: str) -> None:
    """Write BASE with each `section.key` of CHANGES set."""
    import yaml

    cfg = yaml.safe_load(Path(base).read_text(encoding="utf-8"))
    for dotted, value in json.loads(changes).items():
        node = cfg
        *path, key = dotted.split(".")
        for name in path:
            node = node[name]
        node[key] = value
    Path(out).write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")


def decode(config_path: str, spec_path: str, out: str) -> None:
    """Sentences/s of JoeyNMT's `predict` on the test set, greedy and beam, after a first pass."""
    import torch
    from joeynmt.config import load_config, parse_global_args
    from joeynmt.prediction import predict, prepare

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    args = parse_global_args(load_config(Path(config_path)), rank=0, mode="test")
    model, _, _, test_data = prepare(args, rank=0, mode="test")
    test_data.reset_indices(random_subset=-1)
    result = {"sentences": len(test_data), "torch": torch.__version__, "threads": torch.get_num_threads()}
    for name, beam in (("greedy", 1), (f"beam{spec['beam']}", spec["beam"])):
        test_args = args.test._replace(beam_size=beam, batch_size=spec["batch_size"], batch_type="sentence")

        def run():
            started = time.perf_counter()
            hypotheses = predict(model=model, data=test_data, device=args.device, n_gpu=args.n_gpu, rank=0,
                                 compute_loss=False, normalization=args.train.normalization,
                                 num_workers=args.num_workers, args=test_args, autocast=args.autocast)[2]
            return time.perf_counter() - started, hypotheses

        first_s, hypotheses = run()
        seconds = [run()[0] for _ in range(spec["repeats"])]
        result[name] = {"sent_per_s": len(hypotheses) / statistics.median(seconds),
                        "seconds": [round(s, 3) for s in seconds], "first_call_s": round(first_s, 2),
                        "batch_size": spec["batch_size"],
                        "mean_output_words": round(statistics.mean(len(h.split()) for h in hypotheses), 2)}
    Path(out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    {"spm": spm, "config": config, "decode": decode}[sys.argv[1]](*sys.argv[2:])
