"""The quality benchmark's own plumbing: configs it writes, and the table it renders."""

from __future__ import annotations

import importlib.util
import tomllib

from pipeline.config import PipelineConfig, from_dict
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_every_job_writes_a_valid_pipeline_config(tmp_path):
    for name in quality.JOBS:
        config = quality.job_config(name, tmp_path, budget=40)
        parsed = tomllib.loads(quality.to_toml(config))
        assert parsed == config
        pipeline = from_dict(PipelineConfig, parsed)  # validated as `cli.py pipeline` would
        assert pipeline.train.time_budget == 40 and pipeline.run.startswith(str(tmp_path))
    lstm = from_dict(PipelineConfig, quality.job_config("ja-en, LSTM", tmp_path, None))
    assert lstm.model.cell == "lstm" and lstm.train.time_budget == 0


def test_markdown_table_and_section_update(tmp_path):
    test = {f"beam{b}": {"bleu": 30.0 + b, "sacrebleu": 30.0 + b, "signature": "nrefs:1|tok:none", "chrf": 50.0,
                         "decode_s": 1.0, "sentences_per_s": 500.0} for b in (1, 5)}
    results = {"ja-en": {"test": test, "stage_seconds": {"train": 600.0},
                         "train": {"best_dev_bleu": 33.3, "best_epoch": 7, "epochs_run": 9, "wall_s": 600.0,
                                   "median_train_tok_per_s": 4000.0, "average": {"kept": True}},
                         "dev_curve": [{"epoch": 1, "elapsed_min": 4.0, "dev_bleu": 16.1, "tok_per_s": 4000}]}}
    section = quality.markdown(results)
    assert "| ja-en | 31.0 | 35.0 |  | 50.0 | 33.30 (7) (averaged) | 9 | 10 | 4000 | 500 / 500 |" in section
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n")
    quality.update_benchmarks_md(path, section)
    quality.update_benchmarks_md(path, section.replace("31.0", "32.0"))  # replaced, not appended
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n") and text.count(quality.BEGIN) == 1 and "32.0" in text
