"""Stage 5: translate a test set with the run's best model and score it against references.

Writes `RUN/evaluate/hypotheses.txt` and `report.json` (BLEU from nltk and sacreBLEU on the same
tokens, sacreBLEU's signature, chrF, the decoding settings, timings, the hypotheses). An ensemble
of runs writes to the first run's `evaluate_ensemble/` instead, naming its members.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Sequence

from pipeline import bleu
from pipeline.artifacts import Declaration, Run, write_json_atomic, write_text_atomic
from pipeline.config import DecodeConfig, EvaluateConfig
from pipeline.data import read_parallel
from pipeline.errors import InputError
from pipeline.progress import log, progress
from pipeline.translate import Translator

STAGE = "evaluate"
ENSEMBLE_STAGE = "evaluate_ensemble"


def evaluate(runs: Run | Sequence[Run], src: str, ref: str, decode: DecodeConfig,
             config: EvaluateConfig) -> dict[str, Any]:
    decode.validate()
    config.validate()
    runs = [runs] if isinstance(runs, Run) else list(runs)
    run, stage = runs[0], STAGE if len(runs) == 1 else ENSEMBLE_STAGE
    pairs = list(read_parallel(src, ref))
    if not pairs:
        raise InputError(f"{src} is empty: nothing to evaluate")
    sources, references = [s for s, _ in pairs], [r for _, r in pairs]
    with run.lock(stage):  # taken now, not once the test set is translated
        return _evaluate(run, stage, runs, Translator.load(runs, needed_by="evaluate"), sources, references,
                         decode, config, src, ref)


def _evaluate(run: Run, stage: str, runs: list[Run], translator: Translator, sources: list[str],
              references: list[str], decode: DecodeConfig, config: EvaluateConfig, src: str,
              ref: str) -> dict[str, Any]:
    start = time.perf_counter()
    hyps = list(progress(translator.translate(sources, decode), "translating", total=len(sources), unit="sent"))
    hypotheses = [h.text for h in hyps]
    decode_s = time.perf_counter() - start
    scores = bleu.score(hypotheses, references, tokenize=config.tokenize)

    report = {
        "bleu": round(scores["bleu"], 2),
        "sacrebleu": round(scores["sacrebleu"], 2),
        "signature": scores["signature"],
        "chrf": round(scores["chrf"], 2),
        "tokenize": config.tokenize,
        "scores": scores,
        "decode": asdict(decode),
        "sentences": len(sources),
        "sources_cut": sum(h.cut for h in hyps),  # longer than decode.max_input_tokens pieces
        "decode_s": round(decode_s, 2),
        "sentences_per_s": round(len(sources) / decode_s, 1),
        "src": str(src),
        "ref": str(ref),
        "runs": [str(r.root) for r in runs],
        "hypotheses": hypotheses,
    }
    with run.writing(stage) as writer:
        write_text_atomic(writer.dir / "hypotheses.txt", "".join(h + "\n" for h in hypotheses))
        write_json_atomic(writer.dir / "report.json", report)
        writer.finish(declare(decode, config, src, ref), ["hypotheses.txt", "report.json"],
                      extra={"models": {str(r.root): r.output_hash("train", "model.keras") for r in runs}})
    return report


def declare(decode: DecodeConfig, config: EvaluateConfig, src: str, ref: str) -> Declaration:
    """The stage's settings and inputs, as its manifest records them (see `Declaration`)."""
    return Declaration({"decode": asdict(decode), "evaluate": asdict(config)}, {"src": src, "ref": ref})


def tokenization_of(run: Run, default: str) -> str:
    """The BLEU tokenisation the run's training scored its dev set with (`default` if unknown)."""
    recorded = run.manifest("train").get("config", {}).get("bleu_tokenize", default) if run.has("train") else default
    log.info("BLEU tokenisation: %s (the training's; --tokenize to change it)", recorded)
    return recorded


class DevSet:
    """A dev set: raw text for BLEU, and piece ids for the dev loss where training needs them.
    Training scores each epoch on it, and checkpoint averaging the average."""

    def __init__(self, src_text: list[str], ref_text: list[str], ids: dict[str, list] | None = None):
        self.src_text, self.ref_text, self.ids = src_text, ref_text, ids

    def __len__(self) -> int:
        return len(self.src_text)

    def bleu(self, translator: Translator, decode: DecodeConfig, tokenize: str) -> float:
        hyps = [h.text for h in translator.translate(self.src_text, decode)]
        return bleu.score(hyps, self.ref_text, tokenize=tokenize)["sacrebleu"]
