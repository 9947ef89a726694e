"""The Python interface: load trained runs, translate lists of strings, score pairs.

    import pipeline

    translator = pipeline.load("saved_models/enja")             # or a list of runs: an ensemble
    for hyp in translator.translate(["彼 は 走 っ た 。"], beam=5):
        print(hyp.text, hyp.score)
    translator.translate(lines, strategy="greedy")               # or "sample", temperature=0.7
    [s.log_prob for s in translator.score([("彼 は 走 っ た 。", "he ran .")])]

`translate` takes any setting of `DecodeConfig` by name (beam, length_penalty, n_best, batch_size,
max_input_tokens, temperature, top_k, seed, ...) and checks it as the command line does. It
returns one `translate.Hypothesis` per line, in order (text, score, log_prob, nbest, and with
`attention=True` the attention weights and pieces); `score` one `score.PairScore` per pair.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

from pipeline.artifacts import Run
from pipeline.config import DecodeConfig
from pipeline.score import PairScore, Scorer
from pipeline.translate import Hypothesis, Translator, load_models


class Model:
    """One trained run, or several ensembled, loaded once for translating and scoring."""

    def __init__(self, runs: list[Run]):
        processors, models = load_models(runs, needed_by="pipeline.load")
        self.runs = runs
        self._translator = Translator.of(processors, models)
        self._scorer = Scorer(models, processors["src"], processors["tgt"])

    def translate(self, lines: Iterable[str], *, attention: bool = False, **settings) -> list[Hypothesis]:
        """Translate `lines` in order (an empty line gives an empty translation). Keyword
        arguments are `DecodeConfig` settings; `strategy` is beam unless given."""
        unknown = set(settings) - {f.name for f in dataclasses.fields(DecodeConfig)}
        if unknown:
            raise TypeError(f"unknown decode setting(s): {', '.join(sorted(unknown))}")
        config = DecodeConfig(**settings)
        config.validate()
        return list(self._translator.translate(list(lines), config, attention=attention))

    def score(self, pairs: Iterable[tuple[str, str]], batch_size: int = DecodeConfig.batch_size,
              max_input_tokens: int = DecodeConfig.max_input_tokens) -> list[PairScore]:
        """log p(target | source) of each (source, target) pair, in order, with per-piece scores."""
        return list(self._scorer.score(list(pairs), batch_size=batch_size, max_tokens=max_input_tokens))


def load(runs: str | Path | Sequence[str | Path]) -> Model:
    """A run directory's trained model, or several runs' models as one ensemble."""
    paths = [runs] if isinstance(runs, (str, Path)) else list(runs)
    return Model([Run.at(path) for path in paths])
