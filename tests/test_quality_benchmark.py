"""The quality benchmark's own plumbing: the jobs it runs, and the table it renders."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, StageError
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_every_job_is_a_shipped_config_with_overrides_the_pipeline_takes(tmp_path):
    for name in [*quality.JOBS, *quality.DISTILLED]:
        args = quality.job_args(name, tmp_path, budget=40)
        assert args[0] == "--config" and (ROOT / "configs") in Path(args[1]).parents
        pipeline = quality.job_config(name, tmp_path, budget=40)  # validated as `cli.py pipeline` does
        assert pipeline.train.time_budget == 40 and pipeline.run.startswith(str(tmp_path))
    lstm = quality.job_config("ja-en, LSTM", tmp_path)
    assert lstm.model.cell == "lstm" and lstm.train.time_budget == 0 and lstm.model.units == 256
    cosine = quality.job_config("tatoeba ja-en, dropout 0.3, cosine schedule", tmp_path)
    assert cosine.train.lr_schedule == "cosine" and cosine.train.patience == 25  # a later override wins
    assert quality.job_config("ja-en, random embeddings", tmp_path).train.pretrained is False
    # a shipped config holds only what differs from the defaults: the job has them filled in
    assert quality.job_config("tatoeba ja-en", tmp_path).evaluate.tokenize == "13a"
    for name, members in quality.ENSEMBLES.items():  # each ensemble's members are trained by jobs
        assert set(members) <= set(quality.JOBS), name


def test_markdown_table_and_section_update(tmp_path):
    test = {f"beam{b}": {"bleu": 30.0 + b, "sacrebleu": 30.0 + b, "signature": "nrefs:1|tok:none", "chrf": 50.0,
                         "decode_s": 1.0, "sentences_per_s": 500.0} for b in (1, 5)}
    results = {"ja-en": {"test": test, "stage_seconds": {"train": 600.0},
                         "train": {"best_dev_bleu": 33.3, "best_epoch": 7, "epochs_run": 9, "wall_s": 600.0,
                                   "median_train_tok_per_s": 4000.0, "average": {"kept": True}},
                         "dev_curve": [{"epoch": 1, "elapsed_min": 4.0, "dev_bleu": 16.1, "tok_per_s": 4000}]}}
    section = quality.markdown(results)
    assert "| ja-en | 31.0 | 35.0 |  | 50.0 | 33.30 (7) (averaged) | 9 | 10 | 4,000 | 500 / 500 |" in section
    assert "ja-en, dev BLEU (greedy) by epoch (minutes since training began): 16.1 (4′)" in section
    by_beam = {"ja-en": {**results["ja-en"], "dev_beam": 5}}  # the curve says which search it measured
    assert "ja-en, dev BLEU (beam 5) by epoch" in quality.markdown(by_beam)
    grouped = {f"beam{b}": {**test[f"beam{b}"], "sacrebleu": 40.0 + b, "signature": "nrefs:var|tok:13a",
                            "sentences": 500} for b in (1, 5)}
    tatoeba = {**results["ja-en"], "test": {b: {**t, "sentences": 812} for b, t in test.items()},
               "test_grouped": grouped}
    assert ("tatoeba ja-en with every reference of a source sentence (`evaluate --group-references`): 45.0 beam 5, "
            "41.0 greedy on 500 distinct sources (`nrefs:var|tok:13a`), against 35.0 beam 5 line by line, one "
            "reference each, on 812 lines.") in quality.markdown({"tatoeba ja-en": tatoeba})
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n")
    quality.update_benchmarks_md(path, section)
    quality.update_benchmarks_md(path, section.replace("31.0", "32.0"))  # replaced, not appended
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n") and text.count(quality.BEGIN) == 1 and "32.0" in text


def test_epoch_cap_is_an_ablation_run_of_its_own(tmp_path):
    pipeline = quality.job_config("ja-en, LSTM", tmp_path, epochs=4)
    assert pipeline.train.epochs == 4 and pipeline.train.average_checkpoints == 0
    assert pipeline.run != quality.job_config("ja-en, LSTM", tmp_path).run  # never resumes the full run
    assert quality.label("ja-en, LSTM", 4) == "ja-en, LSTM, 4 epochs" and quality.label("ja-en", None) == "ja-en"


def test_ablation_table_puts_the_default_first_epochs_above_the_rows():
    test = {f"beam{b}": {"bleu": 20.0 + b, "sacrebleu": 20.0 + b, "signature": "nrefs:1|tok:none", "chrf": 50.0,
                         "decode_s": 1.0, "sentences_per_s": 500.0} for b in (1, 5)}
    default = {"epochs": 2, "epoch": 2, "dev_bleu": 21.6, "curve": [16.1, 21.6],
               **{f"beam{b}": {"bleu": 25.0 + b, "sacrebleu": 25.0 + b} for b in (1, 5, 10)}}
    results = {
        "ja-en": {"test": test, "stage_seconds": {}, "at_epochs": default,
                  "train": {"best_dev_bleu": 39.0, "best_epoch": 19, "epochs_run": 20, "wall_s": 60.0,
                            "median_train_tok_per_s": 3000.0}, "dev_curve": []},
        "ja-en, LSTM, 2 epochs": {"test": test, "stage_seconds": {}, "epochs_cap": 2,
                                  "train": {"best_dev_bleu": 12.5, "best_epoch": 2, "epochs_run": 2, "wall_s": 6.0,
                                            "median_train_tok_per_s": 2000.0},
                                  "dev_curve": [{"epoch": 1, "elapsed_min": 1.0, "dev_bleu": 3.0, "tok_per_s": 1},
                                                {"epoch": 2, "elapsed_min": 2.0, "dev_bleu": 12.5, "tok_per_s": 1}]},
    }
    section = quality.markdown(results)
    assert "Ablations, each trained for 2 epochs" in section
    lines = section.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| default (ja-en"))
    assert lines[first].endswith("| 26.0 | 30.0 | 35.0 | 21.6 (2) | 16.1, 21.6 |")
    assert lines[first + 1] == "| ja-en, LSTM | 21.0 | 25.0 |  | 12.50 (2) | 3.0, 12.5 |"
    assert "| ja-en, LSTM, 2 epochs |" not in section  # not in the table of full runs


def test_job_list_with_commas_inside_names():
    assert quality.choose("en-ja,ja-en, LSTM, ja-en, 2 encoder layers", quality.ALL_JOBS, "job") == [
        "en-ja", "ja-en, LSTM", "ja-en, 2 encoder layers"]
    with pytest.raises(ConfigError, match="unknown job 'GRU'; valid jobs: ja-en; en-ja;"):
        quality.choose("ja-en, GRU", quality.ALL_JOBS, "job")


def test_ensemble_job_needs_its_members_and_renders_a_row(tmp_path):
    assert quality.choose("en-ja, seed 2,en-ja, ensemble of 2 seeds", quality.ALL_JOBS, "job") == [
        "en-ja, seed 2", "en-ja, ensemble of 2 seeds"]
    members = quality.ENSEMBLES["en-ja, ensemble of 2 seeds"]
    runs = [quality.job_config(m, tmp_path) for m in members]
    assert runs[0].run != runs[1].run and runs[0].train.seed != runs[1].train.seed
    assert runs[0].tokenize == runs[1].tokenize  # same SentencePiece models, so they can be ensembled
    with pytest.raises(StageError, match="needs the run of job 'en-ja' .*; train that job first"):
        quality.run_ensemble("en-ja, ensemble of 2 seeds", tmp_path, {})
    test = {f"beam{b}": {"bleu": 40.0 + b, "sacrebleu": 40.0 + b, "signature": "nrefs:1|tok:none", "chrf": 39.0,
                         "decode_s": 1.0, "sentences_per_s": 100.0} for b in (1, 5)}
    section = quality.markdown({"en-ja, ensemble of 2 seeds": {"members": members, "epochs_cap": None,
                                                               "test": test, "train_min": 120.0}})
    assert "| en-ja, ensemble of 2 seeds (en-ja + en-ja, seed 2) | 41.0 | 45.0 |  | 39.0 |  |  | 120 (members) |" \
        in section


def test_a_distilled_job_trains_its_student_on_the_teacher_ensembles_translations(tmp_path, tiny_run, toy_corpus):
    from tests.conftest import cli_in_process

    name = "en-ja, 512 wide, distilled from the 512-wide ensemble"
    teacher, student = quality.DISTILLED[name]
    assert teacher in quality.ENSEMBLES and student in quality.JOBS
    config, student_config = quality.job_config(name, tmp_path), quality.job_config(student, tmp_path)
    targets = tmp_path / "en_ja_512_wide_ensemble_of_2_seeds.train.ja"  # the language stays the file's suffix
    assert config.data == replace(student_config.data, tgt=str(targets))
    assert replace(config, data=None, run=None) == replace(student_config, data=None, run=None)
    assert config.run != student_config.run
    assert quality.job_config(name, tmp_path, epochs=4).data.tgt == str(targets)  # one full teacher
    with pytest.raises(StageError, match="needs the run of job .*; train that job first"):
        quality.teacher_translations(name, tmp_path, config)
    for member in quality.ENSEMBLES[teacher]:  # the teacher's members: two copies of one trained run
        shutil.copytree(tiny_run.root, quality.job_config(member, tmp_path).run)
    config = replace(config, data=replace(config.data, src=str(toy_corpus["dev_src"])))
    quality.teacher_translations(name, tmp_path, config)
    single = cli_in_process("translate", "--run", tiny_run.root, "-i", toy_corpus["dev_src"], "--beam", "5").stdout
    assert targets.read_text(encoding="utf-8") == single  # an ensemble of one model twice is that model
    targets.write_text("kept\n", encoding="utf-8")
    quality.teacher_translations(name, tmp_path, config)  # made once: a rerun reuses them
    assert targets.read_text(encoding="utf-8") == "kept\n"


def test_results_of_two_benchmarks_side_by_side_are_merged_not_overwritten(tmp_path):
    path = tmp_path / "results" / "quality.json"
    first = {"en-ja": {"test": {"beam5": {"sacrebleu": 39.0}}}}
    assert quality.save_results(path, {}) == {}  # a missing file reads as empty, and is created
    quality.save_results(path, first)  # one process finishes its job
    both = quality.save_results(path, {"en-ja, seed 2": {"test": {"beam5": {"sacrebleu": 38.0}}}})  # the other
    assert set(both) == {"en-ja", "en-ja, seed 2"}
    assert quality.save_results(path, {"en-ja": {"test": {}}})["en-ja"] == {"test": {}}  # a rerun replaces its own key
    assert json.loads(path.read_text())["en-ja, seed 2"]["test"]["beam5"]["sacrebleu"] == 38.0
    assert not path.with_name("quality.json.tmp").exists()


def test_killing_a_benchmark_ends_the_pipeline_it_runs(tmp_path):
    """`kill` (SIGTERM) of quality.py while its child trains: the child ends too, rather than
    training on without a parent (and beside the next run)."""
    pid = tmp_path / "pid"
    sleeper = f"import os, time; open({str(pid)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from benchmarks.bench import child; "
                               f"child([sys.executable, '-c', {sleeper!r}], 'sleeper')"], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not (pid.exists() and pid.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(pid.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(grandchild, 0)  # ended and reaped
