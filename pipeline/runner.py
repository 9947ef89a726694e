"""`python cli.py pipeline --config FILE`: every stage in order, skipping the up-to-date ones.

With a `[split]` section the split stage runs first and the later stages read its files:
train.* for tokenize, dev.* for train's dev BLEU, test.* for evaluate.

A stage is up to date when its manifest records the same settings and the same input files
(by sha256) as this run would use, it finished after the stages before it, and none of them
reran. `force` reruns everything.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any, Callable

from pipeline.artifacts import Declaration, Run, sha256
from pipeline.config import DataConfig, PipelineConfig, with_new_settings
from pipeline.data import guess_lang
from pipeline.errors import ConfigError
from pipeline.progress import log


def run_pipeline(config: PipelineConfig, force: bool = False) -> dict[str, Any]:
    from pipeline import distribute, evaluate, pretrain, split, tokenize, train

    config.validate()
    if config.train.strategy == "multiworker" or (config.train.strategy == "auto" and distribute.cluster()):
        raise ConfigError("`pipeline` trains on one machine; a cluster trains with `python cli.py train` on each "
                          "worker", hint="see \"When one machine is not enough\" in the README")
    run, corpus = Run.at(config.run), config.data
    src_lang = corpus.src_lang or guess_lang(corpus.src, "ja")
    tgt_lang = corpus.tgt_lang or guess_lang(corpus.tgt, "en")
    columns = (corpus.tsv_src_col, corpus.tsv_tgt_col)
    stages: list[tuple[str, Declaration, Callable[[], Any]]] = []
    data = corpus
    if config.split.enabled:
        stages.append(("split", split.declare(config.split, corpus.src, corpus.tgt, corpus.tsv, *columns),
                       lambda: split.split(run, config.split, src=corpus.src, tgt=corpus.tgt, tsv=corpus.tsv,
                                           tsv_src_col=columns[0], tsv_tgt_col=columns[1])))
        data = _split_data(run, config)
    stages += [
        ("tokenize", tokenize.declare(config.tokenize, data.src, data.tgt, data.tsv, *columns, src_lang, tgt_lang),
         lambda: tokenize.tokenize(run, config.tokenize, src=data.src, tgt=data.tgt, tsv=data.tsv,
                                   tsv_src_col=columns[0], tsv_tgt_col=columns[1], src_lang=src_lang,
                                   tgt_lang=tgt_lang)),
        ("pretrain", pretrain.declare(config.pretrain), lambda: pretrain.pretrain(run, config.pretrain)),
        ("train", train.declare(config.model, config.train, config.evaluate.tokenize, data.dev_src, data.dev_tgt),
         lambda: train.train(run, config.model, config.train, dev_src=data.dev_src, dev_tgt=data.dev_tgt,
                             bleu_tokenize=config.evaluate.tokenize)),
    ]
    if data.test_src and data.test_tgt:
        stages.append(("evaluate", evaluate.declare(config.decode, config.evaluate, data.test_src, data.test_tgt),
                       lambda: evaluate.evaluate(run, data.test_src, data.test_tgt, config.decode, config.evaluate)))

    summary: dict[str, Any] = {"run": str(run.root), "stages": {}}
    upstream_reran, upstream_finished = force, 0.0
    for name, declared, go in stages:
        if not upstream_reran and _up_to_date(run, name, declared, upstream_finished):
            upstream_finished = run.manifest(name).get("finished_unix", 0.0)
            log.info("%s: up to date, skipped (use --force to rerun)", name)
            summary["stages"][name] = {"status": "skipped", "report": run.manifest(name).get("report")}
            continue
        log.info("%s: running", name)
        start = time.perf_counter()
        report = go()
        summary["stages"][name] = {"status": "ran", "seconds": round(time.perf_counter() - start, 1),
                                   "report": _brief(report)}
        upstream_reran = True
    return summary


def _split_data(run: Run, config: PipelineConfig) -> DataConfig:
    """The corpus as the later stages see it once the split stage has run: its files in RUN/split/."""
    def path(name: str) -> str:
        return str(run.path("split", name))

    data = replace(config.data, tsv=None, src=path("train.src"), tgt=path("train.tgt"))
    if config.split.dev:
        data = replace(data, dev_src=path("dev.src"), dev_tgt=path("dev.tgt"))
    if config.split.test:
        data = replace(data, test_src=path("test.src"), test_tgt=path("test.tgt"))
    return data


def _up_to_date(run: Run, stage: str, declared: Declaration, upstream_finished: float) -> bool:
    """Same settings, same input files, and finished after the stages before it (which a stage
    rerun by hand, or `cli.py average`, can change behind the pipeline's back)."""
    if not run.has(stage):
        return False
    manifest = run.manifest(stage)
    settings = _jsonable(declared.settings)
    if with_new_settings(manifest.get("config") or {}, settings, stage) != settings:
        return False
    if manifest.get("finished_unix", 0.0) < upstream_finished:
        return False
    recorded = manifest.get("inputs", {})
    given = {key: path for key, path in declared.inputs.items() if path is not None}
    for key, path in given.items():
        try:
            if recorded.get(key, {}).get("sha256") != sha256(path):
                return False
        except OSError:
            return False
    return set(recorded) == set(given)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _brief(report: Any) -> Any:
    """Reports without bulky lists (evaluate's hypotheses)."""
    if isinstance(report, dict):
        return {k: v for k, v in report.items() if k != "hypotheses"}
    return report
