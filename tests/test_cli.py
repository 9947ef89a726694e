"""The command line end to end: each command, exit codes, artifacts, stdin/stdout, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ENJA, ROOT, write_corpus, toy_pairs

TINY = ["--embed-dim", "32", "--units", "32", "--batch-size", "32", "--learning-rate", "0.01"]


def cli(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    # cli.py's own TensorFlow settings, as a user gets them
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def test_translate_reads_stdin_and_writes_stdout_line_for_line(tiny_run, toy_corpus):
    lines = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:5]
    text = "\n".join(lines[:2] + [""] + lines[2:]) + "\n"
    proc = cli("translate", "--run", tiny_run.root, "--greedy", stdin=text)
    out = proc.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == 6  # one line out per line in
    assert out[2] == ""  # an empty line stays empty
    assert all(out[i] for i in (0, 1, 3, 4, 5))
    # TensorFlow's C++ lines (oneDNN's start-up notice, its DT_BOOL fallback) stay off stderr
    assert "oneDNN" not in proc.stderr and "0000 00:00" not in proc.stderr, proc.stderr


def test_translate_jsonl_with_nbest_and_attention(tiny_run, toy_corpus, tmp_path):
    src = toy_corpus["dev_src"]
    out = tmp_path / "out.jsonl"
    cli("translate", "--run", tiny_run.root, "-i", src, "-o", out, "--beam", "3", "--n-best", "3",
        "--format", "jsonl", "--attention")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(src.read_text(encoding="utf-8").splitlines())
    row = rows[0]
    assert set(row) >= {"translation", "score", "nbest", "attention", "src_pieces", "tgt_pieces"}
    assert len(row["nbest"]) == 3 and row["nbest"][0]["translation"] == row["translation"]
    assert len(row["attention"]) == len(row["tgt_pieces"])
    assert all(abs(sum(r) - 1) < 1e-3 and len(r) == len(row["src_pieces"]) for r in row["attention"])


def test_evaluate_json_report(tiny_run, toy_corpus):
    proc = cli("evaluate", "--run", tiny_run.root, "--src", toy_corpus["dev_src"], "--ref", toy_corpus["dev_tgt"],
               "--greedy", "--json")
    report = json.loads(proc.stdout)
    assert set(report) >= {"bleu", "sacrebleu", "signature", "hypotheses", "chrf"}
    assert len(report["hypotheses"]) == 40
    assert "tok:none" in report["signature"]
    assert 0 <= report["bleu"] <= 100
    assert (tiny_run.root / "evaluate" / "hypotheses.txt").read_text(encoding="utf-8").count("\n") == 40
    assert json.loads((tiny_run.root / "evaluate" / "manifest.json").read_text())["stage"] == "evaluate"


def test_evaluate_with_several_references_and_with_each_source_grouped(tiny_run, toy_corpus, tmp_path):
    """A test set as split writes one (each source once per translation) scores as the same
    sources given once, with their translations in two reference files."""
    sources = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:10]
    refs = toy_corpus["dev_tgt"].read_text(encoding="utf-8").splitlines()[:10]
    others = [" ".join(reversed(r.split())) for r in refs]  # a second, worse "translation" of each
    files = {name: tmp_path / name for name in ("once.src", "a.ref", "b.ref", "twice.src", "twice.ref")}
    for name, lines in (("once.src", sources), ("a.ref", refs), ("b.ref", others[:9] + [""]),
                        ("twice.src", [s for s in sources for _ in (0, 1)]),
                        ("twice.ref", [r for pair in zip(refs, others[:9] + [refs[9]]) for r in pair])):
        files[name].write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    def evaluate(src, *refs, grouped=False):
        args = [x for ref in refs for x in ("--ref", ref)] + (["--group-references"] if grouped else [])
        return json.loads(cli("evaluate", "--run", tiny_run.root, "--src", src, *args, "--greedy", "--json").stdout)

    two_files = evaluate(files["once.src"], files["a.ref"], files["b.ref"])
    assert two_files["signature"].startswith("nrefs:var") and two_files["references"]["most"] == 2
    grouped = evaluate(files["twice.src"], files["twice.ref"], grouped=True)
    assert grouped["sentences"] == 10 and grouped["hypotheses"] == two_files["hypotheses"]
    assert (grouped["sacrebleu"], grouped["bleu"]) == (two_files["sacrebleu"], two_files["bleu"])
    assert (tiny_run.root / "evaluate" / "hypotheses.txt").read_text(encoding="utf-8").count("\n") == 10
    assert evaluate(files["twice.src"], files["twice.ref"])["sentences"] == 20  # not grouped: line by line
    short = cli("evaluate", "--run", tiny_run.root, "--src", files["twice.src"], "--ref", files["a.ref"], check=False)
    assert short.returncode == 1 and "a.ref has 10 lines but" in short.stderr


def test_the_tiny_model_learned_the_toy_language(tiny_run):
    """Trained 5 epochs on the toy pairs, it must beat a trivial baseline by far."""
    report = json.loads((tiny_run.root / "train" / "manifest.json").read_text())["report"]
    assert report["best_dev_bleu"] > 20


@pytest.mark.parametrize("args,message", [
    (["tokenize", "--run", "{tmp}/r", "--src", "{tmp}/missing.ja", "--tgt", "{tmp}/missing.en"], "file not found"),
    (["tokenize", "--run", "{tmp}/r", "--src", "{tmp}/a.ja", "--tgt", "{tmp}/short.en"],
     "parallel files differ in length"),
    (["tokenize", "--run", "{tmp}/r", "--src", "{tmp}/latin1.ja", "--tgt", "{tmp}/a.en"], "is not valid UTF-8"),
    (["train", "--run", "{tmp}/empty"], "needs the tokenize stage's output"),
    (["translate", "--run", "{tmp}/empty"], "needs the tokenize stage's output"),
])
def test_errors_are_one_line_with_exit_code_1(tmp_path, args, message):
    src, tgt = write_corpus(tmp_path, "a", toy_pairs(30))
    (tmp_path / "short.en").write_text("one line\n", encoding="utf-8")
    (tmp_path / "latin1.ja").write_bytes("café\n".encode("latin-1") * 30)
    proc = cli(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "tokenize" / "manifest.json").exists()


@pytest.mark.parametrize("args,option,choices", [
    (["tokenize", "--src", "a.ja", "--tgt", "a.en", "--model-type", "word2"], "--model-type", "'unigram', 'bpe', 'char'"),
    (["train", "--cell", "rnn"], "--cell", "'gru', 'lstm', 'lstm-peephole'"),
    (["train", "--bleu-tokenize", "bogus"], "--bleu-tokenize", "'none', '13a', 'intl', 'char', 'ja-mecab', 'zh'"),
])
def test_a_value_outside_an_options_choices_is_refused_as_it_is_parsed(tmp_path, args, option, choices):
    proc = cli(*args[:1], "--run", tmp_path / "r", *args[1:], check=False)
    assert proc.returncode == 2  # a usage error, before the command starts
    assert f"Invalid value for '{option}'" in proc.stderr and f"is not one of {choices}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_translate_refuses_a_run_whose_model_is_missing(tiny_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run.root, broken)
    (broken / "train" / "model.keras").unlink()
    proc = cli("translate", "--run", broken, stdin="あか 。\n", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")  # TensorFlow's start-up notices filtered out
    assert "model.keras is missing" in proc.stderr and "python cli.py train" in proc.stderr


@pytest.mark.slow
def test_every_command_on_a_slice_of_the_real_corpus(tmp_path):
    if not ENJA.is_dir():
        pytest.skip(f"{ENJA} is absent: the real corpus is not on this machine")
    src, tgt = tmp_path / "train.ja", tmp_path / "train.en"
    for name, path in (("train.ja", src), ("train.en", tgt)):
        path.write_text("".join((ENJA / name).read_text(encoding="utf-8").splitlines(True)[:1500]), encoding="utf-8")
    run = tmp_path / "run"
    report = json.loads(cli("tokenize", "--run", run, "--src", src, "--tgt", tgt, "--vocab-size", "1000").stdout)
    assert report["kept"] == 1500
    report = json.loads(cli("pretrain", "--run", run, "--dim", "32", "--epochs", "1").stdout)
    assert (run / "pretrain" / "emb.src.npy").is_file()
    cli("train", "--run", run, "--dev-src", ENJA / "dev.ja", "--dev-tgt", ENJA / "dev.en", "--epochs", "1", *TINY)
    test_lines = (ENJA / "test.ja").read_text(encoding="utf-8").splitlines()[:20]
    out = cli("translate", "--run", run, "--greedy", stdin="\n".join(test_lines) + "\n").stdout
    assert out.count("\n") == 20
    ref = tmp_path / "ref.en"
    ref.write_text("\n".join((ENJA / "test.en").read_text(encoding="utf-8").splitlines()[:20]) + "\n")
    hyp_src = tmp_path / "src.ja"
    hyp_src.write_text("\n".join(test_lines) + "\n", encoding="utf-8")
    report = json.loads(cli("evaluate", "--run", run, "--src", hyp_src, "--ref", ref, "--json").stdout)
    assert len(report["hypotheses"]) == 20 and report["signature"].startswith("nrefs:1")


@pytest.mark.slow
def test_download_copies_a_local_copy_with_checksums(tmp_path):
    if not ENJA.is_dir():
        pytest.skip(f"{ENJA} is absent: the real corpus is not on this machine")
    report = json.loads(cli("download", "small_parallel_enja", "--dest", tmp_path / "d", "--from", ENJA).stdout)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(report["files"])
    assert len(report["files"]) == 6


def test_download_of_an_unknown_corpus_fails_cleanly(tmp_path):
    proc = cli("download", "no_such_corpus", "--dest", tmp_path / "d", check=False)
    assert proc.returncode == 1 and "small_parallel_enja" in proc.stderr and "Traceback" not in proc.stderr


def test_translate_is_a_live_filter_answering_each_line_before_the_next_is_sent(tiny_run, toy_corpus):
    """A coprocess: write one line, wait for its translation, ten times, the pipe left open."""
    import select

    lines = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:10]
    expected = cli("translate", "--run", tiny_run.root, "--greedy", stdin="\n".join(lines) + "\n").stdout.splitlines()
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "translate", "--run", str(tiny_run.root),
                             "--greedy"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            cwd=ROOT, env=env, text=True, bufsize=1)
    try:
        for i, line in enumerate(lines):
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 120 if i == 0 else 20)  # the first loads the model
            assert ready, f"no translation of line {i + 1} while the pipe stays open"
            assert proc.stdout.readline().rstrip("\n") == expected[i]
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_format_is_a_choice_too(tmp_path):
    proc = cli("translate", "--run", tmp_path / "r", "--format", "xml", check=False)
    assert proc.returncode == 2 and "'xml' is not one of 'text', 'jsonl'" in proc.stderr
