"""Stage 5: translate a test set with the run's best model and score it against references.

Writes `RUN/evaluate/hypotheses.txt` and `report.json` (BLEU from nltk and sacreBLEU on the same
tokens, sacreBLEU's signature, chrF, the decoding settings, timings, the hypotheses). An ensemble
of runs writes to the first run's `evaluate_ensemble/` instead, naming its members.

References come from one file or several, line-aligned with the source (`bleu.read_references`).
With `group_references` each distinct source sentence is translated and scored once, against the
references of every line it is on: a test set cut by the split stage holds a sentence that Tatoeba
translates three ways as three lines, which single-reference BLEU scores as three sentences with
one reference each. hypotheses.txt then has one line per distinct source, in order of first
appearance.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Sequence

from pipeline import bleu
from pipeline.artifacts import Declaration, Run, write_json_atomic, write_text_atomic
from pipeline.config import DecodeConfig, EvaluateConfig
from pipeline.data import read_lines
from pipeline.errors import InputError
from pipeline.progress import log, progress
from pipeline.translate import Translator

STAGE = "evaluate"
ENSEMBLE_STAGE = "evaluate_ensemble"


def evaluate(runs: Run | Sequence[Run], src: str, ref: str | Sequence[str], decode: DecodeConfig,
             config: EvaluateConfig) -> dict[str, Any]:
    decode.validate()
    config.validate()
    runs = [runs] if isinstance(runs, Run) else list(runs)
    run, stage = runs[0], STAGE if len(runs) == 1 else ENSEMBLE_STAGE
    refs = [ref] if isinstance(ref, str) else list(ref)
    sources = list(read_lines(src))
    if not sources:
        raise InputError(f"{src} is empty: nothing to evaluate")
    references = bleu.read_references(refs, len(sources), src)
    if config.group_references:
        sources, references = group_by_source(sources, references)
    with run.lock(stage):  # taken now, not once the test set is translated
        return _evaluate(run, stage, runs, Translator.load(runs, needed_by="evaluate"), sources, references,
                         decode, config, src, refs)


def group_by_source(sources: list[str], references: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """Each distinct source once, in order of first appearance, with the references of all its
    lines (each distinct reference once)."""
    grouped: dict[str, list[str]] = {}
    for source, refs in zip(sources, references):
        mine = grouped.setdefault(source, [])
        mine.extend(r for r in refs if r not in mine)
    return list(grouped), list(grouped.values())


def _evaluate(run: Run, stage: str, runs: list[Run], translator: Translator, sources: list[str],
              references: list[list[str]], decode: DecodeConfig, config: EvaluateConfig, src: str,
              refs: list[str]) -> dict[str, Any]:
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
        "references": {"files": len(refs), "most": max(map(len, references)),
                       "mean": round(sum(map(len, references)) / len(references), 3)},
        "sources_cut": sum(h.cut for h in hyps),  # longer than decode.max_input_tokens pieces
        "decode_s": round(decode_s, 2),
        "sentences_per_s": round(len(sources) / decode_s, 1),
        "src": str(src),
        "ref": refs[0] if len(refs) == 1 else refs,
        "runs": [str(r.root) for r in runs],
        "hypotheses": hypotheses,
    }
    with run.writing(stage) as writer:
        write_text_atomic(writer.dir / "hypotheses.txt", "".join(h + "\n" for h in hypotheses))
        write_json_atomic(writer.dir / "report.json", report)
        writer.finish(declare(decode, config, src, refs), ["hypotheses.txt", "report.json"],
                      extra={"models": {str(r.root): r.output_hash("train", "model.keras") for r in runs}})
    return report


def declare(decode: DecodeConfig, config: EvaluateConfig, src: str, ref: str | Sequence[str]) -> Declaration:
    """The stage's settings and inputs, as its manifest records them (see `Declaration`): `ref`,
    then `ref_2`, `ref_3`, ... for more reference files."""
    refs = [ref] if isinstance(ref, str) else list(ref)
    inputs = {"src": src, **{"ref" if n == 1 else f"ref_{n}": path for n, path in enumerate(refs, 1)}}
    return Declaration({"decode": asdict(decode), "evaluate": asdict(config)}, inputs)


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
