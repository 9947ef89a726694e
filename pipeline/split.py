"""Stage 0 (optional): cut dev and test sets out of a corpus that comes as one file.

Outputs in `RUN/split/`: `train.src train.tgt dev.src dev.tgt test.src test.tgt`, UTF-8, one
sentence a line, whitespace runs folded to one space (as tokenize does).

Which side a pair lands on depends on its source sentence alone: the key is the sha256 of the
seed and the source text; the `test` distinct source sentences with the smallest keys, with all
their translations, are the test set, and the next `dev` the dev set. So a sentence translated
several times (Tatoeba has many) never has one translation in training and another in test,
which would inflate BLEU; the split is the same on any machine and Python version; exact
duplicate pairs are written once, and counted; adding lines to the corpus moves at most one old
sentence across each boundary per sentence added; changing `dev` leaves the test set as it was.
Each file keeps the corpus order. The corpus is held in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any, Iterable

from pipeline.artifacts import Declaration, Run, atomic_path
from pipeline.config import SplitConfig
from pipeline.data import corpus_inputs, normalise_space, read_corpus
from pipeline.errors import ConfigError, InputError
from pipeline.progress import log, progress
from pipeline.vocab import SIDES

STAGE = "split"
SETS = ("train", "dev", "test")
OUTPUTS = [f"{name}.{side}" for name in SETS for side in SIDES]

Pair = tuple[str, str]


def split(
    run: Run,
    config: SplitConfig,
    src: str | None = None,
    tgt: str | None = None,
    tsv: str | None = None,
    tsv_src_col: int = 1,
    tsv_tgt_col: int = 0,
) -> dict[str, Any]:
    """Run the stage; return its report (also stored in the manifest)."""
    config.validate()
    if not config.enabled:
        raise ConfigError("nothing to hold out: give a dev or a test size above 0 (--dev N, --test N)")
    pairs = read_corpus(src, tgt, tsv, tsv_src_col, tsv_tgt_col)

    distinct, counts = _distinct_pairs(pairs)
    held_out = config.dev + config.test
    if held_out >= counts["sources"]:
        raise InputError(
            f"the corpus has {counts['sources']} distinct source sentence(s); holding out {config.dev} for dev "
            f"and {config.test} for test would leave none for training"
        )
    sets = assign(distinct, config)

    report: dict[str, Any] = {
        **counts,
        **{name: len(sets[name]) for name in SETS},
        "src_seen_in_train": _sources_seen_in_train(sets),
    }
    if counts["dropped_empty"]:
        log.warning("dropped %d pair(s) with an empty side", counts["dropped_empty"])
    if counts["duplicates"]:
        log.info("%d duplicate pair(s) written once", counts["duplicates"])
    with run.writing(STAGE) as stage:
        for name in SETS:
            for i, side in enumerate(SIDES):
                with atomic_path(stage.dir / f"{name}.{side}") as tmp:
                    tmp.write_text("".join(pair[i] + "\n" for pair in sets[name]), encoding="utf-8")
        stage.finish(declare(config, src, tgt, tsv, tsv_src_col, tsv_tgt_col), OUTPUTS, extra={"report": report})
    return report


def declare(config: SplitConfig, src: str | None, tgt: str | None, tsv: str | None, tsv_src_col: int,
            tsv_tgt_col: int) -> Declaration:
    """The stage's settings and inputs, as its manifest records them (see `Declaration`)."""
    columns = {"src": tsv_src_col, "tgt": tsv_tgt_col} if tsv else None
    return Declaration({**asdict(config), "tsv_columns": columns}, corpus_inputs(src, tgt, tsv))


def assign(pairs: list[Pair], config: SplitConfig) -> dict[str, list[Pair]]:
    """Distinct pairs -> {"train", "dev", "test"}: the sources with the smallest keys are test, the
    next dev; every translation of a source goes where the source goes."""
    sources = sorted({s for s, _ in pairs}, key=lambda s: (source_key(s, config.seed), s))
    test = set(sources[:config.test])
    dev = set(sources[config.test:config.test + config.dev])
    sets: dict[str, list[Pair]] = {name: [] for name in SETS}
    for pair in pairs:  # corpus order within each set
        sets["test" if pair[0] in test else "dev" if pair[0] in dev else "train"].append(pair)
    return sets


def source_key(source: str, seed: int) -> bytes:
    """A stable key of the source text: the same on every machine, unlike Python's hash()."""
    return hashlib.sha256(f"{seed}\t{source}".encode("utf-8")).digest()


def _distinct_pairs(pairs: Iterable[Pair]) -> tuple[list[Pair], dict[str, int]]:
    """Whitespace-normalised pairs, each once, in corpus order; empty sides dropped."""
    seen: dict[Pair, None] = {}  # a dict keeps the corpus order
    counts = {"pairs_read": 0, "dropped_empty": 0, "duplicates": 0}
    for s, t in progress(pairs, "reading", unit="pairs"):
        counts["pairs_read"] += 1
        pair = (normalise_space(s), normalise_space(t))
        if not pair[0] or not pair[1]:
            counts["dropped_empty"] += 1
        elif pair in seen:
            counts["duplicates"] += 1
        else:
            seen[pair] = None
    counts["distinct"] = len(seen)
    counts["sources"] = len({s for s, _ in seen})
    return list(seen), counts


def _sources_seen_in_train(sets: dict[str, list[Pair]]) -> dict[str, int]:
    """Held-out pairs whose source sentence is also a training source: 0 by construction, reported
    so that anyone reading the split's manifest can see it."""
    train_sources = {s for s, _ in sets["train"]}
    return {name: sum(s in train_sources for s, _ in sets[name]) for name in ("dev", "test")}
