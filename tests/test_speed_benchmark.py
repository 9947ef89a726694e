"""benchmarks/speed.py: its quick mode end to end on a toy corpus, and the parts it relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import report
from benchmarks.measure import batch_tokens, interval_rates
from pipeline.distribute import devices, precision_for
from pipeline.errors import ConfigError
from pipeline.vocab import PAD
from tests.conftest import ROOT, toy_pairs, write_corpus

SCRIPT = ROOT / "benchmarks" / "speed.py"


def speed(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speed-data")
    write_corpus(folder, "train", toy_pairs(600, seed=11))
    write_corpus(folder, "test", toy_pairs(30, seed=12))
    return folder


def test_quick_mode_measures_every_figure(toy_data, tiny_run, tmp_path):
    out = tmp_path / "speed.json"
    proc = speed("--quick", "--precision", "auto,float32", "--data", toy_data, "--run", tiny_run.root, "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())

    train = results["train"]
    assert train["tok_per_s"] > 0 and len(train["interval_tok_per_s"]) == 3  # 12 steps in intervals of 4
    # train's default precision, then float32 beside it in the same run
    assert (train["precision_setting"], train["precision"]) == ("auto", precision_for("auto", devices()))
    assert list(train["precisions"]) == ["float32"] and train["precisions"]["float32"]["tok_per_s"] > 0
    assert "training in float32, measured after it" in proc.stdout
    assert train["train_pairs"] == 600 and train["batch_size"] == 64
    assert 100 < train["process"]["peak_rss_mib"] < 3 * 1024
    assert train["threads"]["intra_op"] == results["about"]["threads"]["intra_op"] >= 1

    decode = results["decode"]
    assert decode["sentences"] == 30
    for name in ("greedy", "beam5"):
        assert decode[name]["sent_per_s"] > 0 and len(decode[name]["seconds"]) == 2
        # the search promises the same output whatever the batch size
        assert decode[name]["mismatches"] == {"repeats_vs_first": 0, "batch_16_vs_default": 0,
                                              "batch_1_vs_default": 0}

    w2v = results["w2v"]
    for side in ("src", "tgt"):
        assert w2v["project"][side]["words_per_second"] > 0
        assert "skipped" in w2v["gensim"] or w2v["gensim"][side]["words_per_second"] > 0

    rows = results["stream"]["rows"]
    assert [(r["scale"], r["pairs"]) for r in rows] == [(1, 600), (2, 1200)]
    assert all(r[stage]["peak_rss_mib"] > 0 for r in rows for stage in ("tokenize", "pretrain", "train"))
    assert all(r["train"]["tok_per_s"] > 0 for r in rows)

    names = [f["figure"] for f in results["figures"]]
    assert names == ["training throughput", "training throughput, float32", "training peak RSS", "decoding, greedy",
                     "decoding, beam 5",
                     "decoding, outputs differing by batch size (1, 16, 128)", "word2vec, both sides"]
    assert "training throughput" in proc.stdout and "QUICK MODE" in proc.stdout


@pytest.mark.skipif(os.environ.get("CI") == "true", reason="2.5 minutes of a 15-minute CI budget; run it locally")
def test_export_and_workers_sections_in_quick_mode(toy_data, tiny_run, tmp_path):
    pytest.importorskip("tensorflow_text")  # what the exported model needs
    out = tmp_path / "speed.json"
    proc = speed("--quick", "--only", "export,workers", "--data", toy_data, "--run", tiny_run.root, "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["sections"] == ["export", "workers"] and "train" not in results

    export = results["export"]
    assert export["sentences"] == 30 and export["batch_size"] == 128 and export["repeats"] == 2
    assert export["export"]["wall_s"] > 0 and export["import_s"] > 0 and export["load_s"] > 0
    for name in ("greedy", "beam5"):
        assert export[name]["lines_that_differ"] == 0  # the SavedModel writes what translate writes
        assert export[name]["translate"]["wall_s"] > 0 and export[name]["translate"]["peak_rss_mib"] > 100
        assert 0 < export[name]["steady_s"] and 0 < export[name]["first_pass_s"]

    workers = results["workers"]
    one, cluster = workers["one_process"], workers["cluster"]
    assert one["tok_per_s"] > 0 and cluster["tok_per_s"] > 0 and cluster["workers"] == 2
    assert workers["ratio"] == round(cluster["tok_per_s"] / one["tok_per_s"], 2)
    assert cluster["threads_each"] == max(1, one["threads"] // 2) and len(cluster["peak_rss_mib"]) == 2
    assert "| lines that differ" not in proc.stdout and "lines that differ" in proc.stdout
    assert "2 workers on 127.0.0.1 (MultiWorkerMirroredStrategy)" in proc.stdout


def test_decode_and_export_are_skipped_without_a_trained_run(toy_data, tmp_path):
    out = tmp_path / "speed.json"
    proc = speed("--quick", "--only", "decode,export", "--data", toy_data, "--run", tmp_path / "none", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in ("decode", "export"):
        assert results[name]["skipped"].startswith(f"no trained run at {tmp_path / 'none'}")
        assert f"{name}: skipped: no trained run" in proc.stdout


def test_export_and_workers_tables_from_their_figures():
    results = {"about": {"date": "d", "commit": "c", "uncommitted_changes": False, "cpu": "cpu", "cpu_count": 2,
                         "usable_cores": 2, "threads": {"intra_op": 2, "inter_op": 2}, "load_average_start": [0.1]},
               "settings": {}, "figures": [],
               "export": {"run": "R", "sentences": 500, "batch_size": 128, "repeats": 3, "export": {"wall_s": 18.0},
                          "import_s": 4.8, "load_s": 1.1,
                          "greedy": {"translate": {"wall_s": 10.5}, "first_pass_s": 1.55, "steady_s": 0.82,
                                     "lines_that_differ": 0},
                          "beam5": {"translate": {"wall_s": 14.0}, "first_pass_s": 4.0, "steady_s": 2.78,
                                    "lines_that_differ": 2}},
               "workers": {"minutes": 1.5, "one_process": {"tok_per_s": 2804.2, "threads": 2},
                           "cluster": {"workers": 2, "threads_each": 1, "tok_per_s": 1122.0}, "ratio": 0.4}}
    lines = report.render(results, markdown=True).splitlines()
    assert ("| 500 test sentences | `cli.py translate`, whole process | exported, end to end (import + load + first "
            "pass) | exported, steady (median of 3 passes) | lines that differ |") in lines
    assert "| greedy | 47.6 sent/s (10.5 s) | 67.1 sent/s (7.5 s) | 610 sent/s | 0 |" in lines
    assert "| beam 5 | 35.7 sent/s (14.0 s) | 50.5 sent/s (9.9 s) | 180 sent/s | 2 |" in lines
    assert "| one process | 2 | 2,804 | 1.00 |" in lines
    assert "| 2 workers on 127.0.0.1 (MultiWorkerMirroredStrategy) | 1 each | 1,122 | 0.40 |" in lines
    assert any("`python cli.py export` 18.0 s" in line and "import 4.8 s, load 1.1 s" in line for line in lines)
    assert any(line.startswith("- workers: 1.5 min of training each") for line in lines)


def test_a_run_under_load_or_steal_or_quick_is_not_of_record_and_gets_no_markdown_section(tmp_path):
    about = {"date": "d", "commit": "c", "uncommitted_changes": False, "cpu": "cpu", "cpu_count": 2,
             "usable_cores": 2, "threads": {"intra_op": 2, "inter_op": 2}, "load_average_start": [0.3]}
    idle = {"about": about, "settings": {}, "figures": []}
    assert report.not_of_record(idle) is None and "## Speed and memory" in report.render(idle, markdown=True)
    loaded = {**idle, "about": {**about, "load_average_start": [0.62]}}
    assert "NOT A RUN OF RECORD: the load average was 0.62 at the start, above 0.5" in report.render(loaded)
    with pytest.raises(ConfigError, match="not a run of record, no Markdown section: the load average was 0.62"):
        report.render(loaded, markdown=True)
    stolen = {**idle, "about": {**about, "cpu_times_start": {"total": 1000, "steal": 100},
                                "cpu_times_end": {"total": 3000, "steal": 700}}}
    assert "30% of the CPU time stolen by the hypervisor" in report.render(stolen)
    assert "NOT A RUN OF RECORD: the hypervisor gave 30% of the CPU time to other guests" in report.render(stolen)
    quick = {**idle, "settings": {"quick": True}}
    with pytest.raises(ConfigError, match="a --quick run is a smoke test"):
        report.render(quick, markdown=True)
    saved = tmp_path / "speed.json"  # an earlier run's JSON is judged by its own start
    saved.write_text(json.dumps(loaded))
    proc = speed("--from-json", saved, "--markdown")
    assert proc.returncode == 1 and proc.stderr.startswith("error: not a run of record, no Markdown section")


def test_an_unknown_section_or_a_missing_corpus_is_one_line_and_exit_code_1(toy_data, tmp_path):
    proc = speed("--only", "train,speed", "--data", toy_data)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: unknown section 'speed'; valid sections: train, decode, w2v, stream, "
                                   "export, workers")
    for precision, message in (("float32,float32", "--precision takes distinct precisions separated by commas; "
                                                    "got float32,float32"),
                               ("float32,bf16", "train.precision must be one of auto, float32, mixed_float16, "
                                                "mixed_bfloat16; got 'bf16'")):
        proc = speed("--only", "train", "--precision", precision, "--data", toy_data)
        assert (proc.returncode, proc.stderr.strip()) == (1, f"error: {message}")
    proc = speed("--only", "train", "--data", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-2:] == [
        f"error: no train.ja in {tmp_path}",
        "hint: python cli.py download small_parallel_enja --from ../shared/data/small_parallel_enja"]


def test_interval_rates_skip_the_warmup_and_a_last_short_interval():
    times = [0.0, 5.0, 6.0, 7.0, 9.0, 10.0, 11.0]  # step 1 (tracing) takes 5 s
    tokens = [100, 10, 10, 40, 10, 10]
    assert interval_rates(times, tokens, warmup=1, interval=2) == [20 / 2, 50 / 3]


def test_token_counts_replay_the_batches_the_loop_sees(tmp_path):
    from pipeline.config import TrainConfig
    from pipeline.corpus import EncodedCorpus, ShardWriter
    from pipeline.train import TrainingData

    rng = np.random.default_rng(0)
    writer = ShardWriter(tmp_path)
    tgt = [rng.integers(4, 50, n).tolist() for n in rng.integers(1, 20, 100)]
    for t, n in zip(tgt, rng.integers(1, 20, 100)):
        writer.add(rng.integers(4, 50, n).tolist(), t)
    writer.close()
    corpus = EncodedCorpus(tmp_path)
    data, config = TrainingData(corpus, corpus.pairs, dev=None), TrainConfig(batch_size=16, seed=3)

    def batches():  # as benchmarks/measure.py makes them: train's own, repeated past the first epoch
        return data.batches(0, config).repeat()

    first = [y for _, y in batches().take(20).as_numpy_iterator()]
    second = [y for _, y in batches().take(20).as_numpy_iterator()]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    counts = batch_tokens(batches(), 20)
    assert counts == [int((y != PAD).sum()) for y in first]
    epoch = len(list(data.batches(0, config)))
    assert sum(counts[:epoch]) == sum(len(t) + 1 for t in tgt)  # every target piece and its </s>, once


def test_figures_compare_with_the_published_peer_unless_it_was_measured():
    results = {
        "settings": {"beam": 5},
        "train": {"tok_per_s": 3928.0, "process": {"peak_rss_mib": 1536.0}},
        "decode": {"greedy": {"sent_per_s": 828.0, "mismatches": {"a": 0, "b": 1}},
                   "beam5": {"sent_per_s": 136.0, "mismatches": {"a": 0, "b": 0}}},
        "w2v": {"project": {s: {"effective_words": 200_000, "words_per_second": 200_000} for s in ("src", "tgt")},
                "gensim": {"skipped": "gensim is not installed"}},
    }
    rows = {r["figure"]: r for r in report.figures(results)}
    assert rows["training throughput"]["ratio"] == pytest.approx(2.0) and rows["training throughput"]["met"]
    assert rows["training throughput"]["peer_source"] == report.PUBLISHED_LABEL
    assert rows["training peak RSS"]["value"] == 1.5 and rows["training peak RSS"]["met"]
    assert rows["decoding, greedy"]["ratio"] == pytest.approx(2.0)
    assert rows["decoding, beam 5"]["ratio"] == pytest.approx(2.0) and not rows["decoding, beam 5"]["met"]
    assert rows["decoding, outputs differing by batch size (1, 16, 64)"]["value"] == 1
    assert rows["word2vec, both sides"]["ratio"] == pytest.approx(0.5)

    results["peer"] = {"train": {"tok_per_s": 1964.0 * 4, "process": {"peak_rss_mib": 768.0}}}
    rows = {r["figure"]: r for r in report.figures(results)}
    assert rows["training throughput"]["ratio"] == pytest.approx(0.5)
    assert rows["training throughput"]["peer_source"] == "JoeyNMT, this run"
    assert rows["training peak RSS"]["ratio"] == pytest.approx(2.0)


def test_decoding_speed_is_compared_only_between_models_writing_similar_lengths():
    ours = {"greedy": {"sent_per_s": 600.0, "mean_output_words": 8.0, "mismatches": {"a": 0}},
            "beam5": {"sent_per_s": 100.0, "mean_output_words": 8.0, "mismatches": {"a": 0}}}
    babbling = {"decode": {"greedy": {"sent_per_s": 80.0, "mean_output_words": 61.0},
                           "beam5": {"sent_per_s": 26.0, "mean_output_words": 10.0}}}
    rows = {r["figure"]: r for r in report.figures({"decode": ours, "peer": babbling})}
    greedy, beam = rows["decoding, greedy"], rows["decoding, beam 5"]
    assert greedy["peer"] == report.PUBLISHED["greedy_sent_per_s"]  # 61 vs 8 words: not comparable
    assert greedy["peer_source"] == report.PUBLISHED_LABEL
    assert beam["peer"] == 26.0 and beam["peer_source"] == "JoeyNMT, this run"  # 10 vs 8: comparable
