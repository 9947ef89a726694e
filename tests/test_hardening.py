"""Hostile input and nonsense settings: bounded work, or one line on stderr and exit code 1."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import marshal
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from pipeline import config as config_module
from pipeline.artifacts import Declaration, Run, sha256
from pipeline.errors import ConfigError, StageError
from tests.conftest import ROOT, cli_in_process as cli, toy_pairs, write_corpus

HOSTILE = ("あか " * 40_000)[:100_000]  # one 100,000-character line


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr of a refused command from its `error: ...` line (logs may come before it): that line,
    maybe `hint: ...`, and nothing else; exit code 1."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    lines = lines[next((i for i, line in enumerate(lines) if line.startswith("error: ")), 0):]
    assert lines[0].startswith("error: ") and len(lines) <= 2, proc.stderr
    assert len(lines) == 1 or lines[1].startswith("hint: "), proc.stderr
    return lines


def cli_stdin_bytes(data: bytes, *args: str) -> subprocess.CompletedProcess:
    """`cli` with stdin given as bytes, which need not be UTF-8."""
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], input=data,
                          capture_output=True, cwd=ROOT, timeout=600)


def copy_run(run: Run, tmp_path) -> Run:
    copy = Run.at(tmp_path / "copy")
    shutil.copytree(run.root, copy.root)
    return copy


def rehash(run: Run, stage: str, name: str) -> None:
    """Record a crafted file's hash in its stage's manifest, as someone crafting a run would."""
    path = run.stage_dir(stage) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["outputs"][name] = sha256(run.path(stage, name))
    path.write_text(json.dumps(manifest))


# -- 1. bounded work per input line -------------------------------------------------------------

def test_a_hostile_line_is_cut_and_translated_quickly_in_its_place(tiny_run, toy_corpus):
    lines = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:4]
    alone = cli("translate", "--run", tiny_run.root, "--greedy", stdin="\n".join(lines) + "\n").stdout.splitlines()
    start = time.perf_counter()
    proc = cli("translate", "--run", tiny_run.root, "--greedy", stdin="\n".join(lines[:2] + [HOSTILE] + lines[2:]) + "\n")
    assert time.perf_counter() - start < 30  # was over 300 s before lines were cut
    out = proc.stdout.splitlines()
    assert len(out) == 5 and out[:2] + out[3:] == alone and out[2]
    assert "WARNING: 1 line(s) longer than 256 pieces were cut" in proc.stderr.splitlines()


def test_encode_line_cuts_pieces_and_characters(tiny_run):
    from pipeline.tokenize import load_tokenizers
    from pipeline.translate import encode_line

    sp = load_tokenizers(tiny_run, "test")[0]["src"]
    assert encode_line(sp, "あか  あお 。", 10) == (sp.encode("あか あお 。"), False)
    ids, cut = encode_line(sp, HOSTILE, 10)
    assert cut and ids == sp.encode(HOSTILE[:160])[:10]


def test_score_cuts_long_sides_and_warns(tiny_run, caplog):
    from pipeline.score import Scorer

    results = list(Scorer.load(tiny_run).score([(HOSTILE, "red " * 30_000), ("あか 。", "red .")]))
    assert len(results[0].pieces) == 256 + 1  # the cut target and </s>
    assert results[1].pieces[-1] == "</s>" and len(results[1].pieces) < 10
    assert "1 line(s) longer than 256 pieces were cut" in caplog.text


def test_evaluate_reports_how_many_sources_were_cut(tiny_run, toy_corpus, tmp_path):
    from pipeline.config import DecodeConfig, EvaluateConfig
    from pipeline.data import normalise_space
    from pipeline.evaluate import evaluate
    from pipeline.tokenize import load_tokenizers

    sp = load_tokenizers(tiny_run, "test")[0]["src"]
    lines = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()
    lengths = [len(sp.encode(normalise_space(line))) for line in lines]
    median = sorted(lengths)[len(lengths) // 2]
    longer = sum(n > median for n in lengths)
    assert 0 < longer < len(lines)
    report = evaluate(copy_run(tiny_run, tmp_path), str(toy_corpus["dev_src"]), str(toy_corpus["dev_tgt"]),
                      DecodeConfig(strategy="greedy", max_input_tokens=median), EvaluateConfig())
    assert report["sources_cut"] == longer and report["decode"]["max_input_tokens"] == median


# -- 2, 3. lines end at \n only; invalid UTF-8 names its line -------------------------------------

def test_input_file_and_stdin_split_lines_alike(tiny_run, tmp_path):
    data = "".join(f"あか {i} 。\n" for i in range(7)).encode() + "あお\rしろ 。\r\n".encode() + "いぬ 。\r".encode()
    path = tmp_path / "nine.ja"
    path.write_bytes(data)
    from_file = cli("translate", "--run", tiny_run.root, "--greedy", "--input", path).stdout
    from_stdin = cli_stdin_bytes(data, "translate", "--run", tiny_run.root, "--greedy")
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_file.count("\n") == from_stdin.stdout.decode().count("\n") == 9


def test_read_lines_strips_line_endings_only(tmp_path, monkeypatch):
    from pipeline.data import read_lines

    data = "a\rb\r\nc\n\nd\r".encode()
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert list(read_lines(path)) == list(read_lines("-")) == ["a\rb", "c", "", "d"]


def test_invalid_utf8_names_its_line_on_stdin_and_in_a_file(tiny_run, tmp_path):
    data = "あか 。\n".encode() * 499 + b"ab\xffcd\n" + "あお 。\n".encode()
    path = tmp_path / "bad.ja"
    path.write_bytes(data)
    proc = cli_stdin_bytes(data, "translate", "--run", tiny_run.root, "--greedy")
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert error_lines(proc)[0] == "error: <stdin> is not valid UTF-8 (line 500, byte 3)" and proc.stdout == ""
    proc = cli("translate", "--run", tiny_run.root, "--greedy", "--input", path, check=False)
    assert error_lines(proc)[0] == f"error: {path} is not valid UTF-8 (line 500, byte 3)"


# -- 4. nonsense settings ---------------------------------------------------------------------

FLOAT_SETTINGS = [(cls, f.name) for cls in (config_module.TokenizeConfig, config_module.PretrainConfig,
                                            config_module.ModelConfig, config_module.TrainConfig,
                                            config_module.DecodeConfig)
                  for f in dataclasses.fields(cls) if "float" in str(f.type)]


@pytest.mark.parametrize("cls,name", FLOAT_SETTINGS, ids=[f"{c.__name__}.{n}" for c, n in FLOAT_SETTINGS])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_setting_must_be_finite(cls, name, value):
    with pytest.raises(ConfigError, match=rf"\.{name} must be a finite number; got {value}$"):
        cls(**{name: value}).validate()


@pytest.mark.parametrize("value", [0.0, 1.0, 5.0, -0.5])
def test_lr_decay_must_be_between_0_and_1(value):
    with pytest.raises(ConfigError, match=rf"^train.lr_decay must be in \(0, 1\); got {value}$"):
        config_module.TrainConfig(lr_decay=value).validate()


@pytest.mark.parametrize("args,message", [
    (["train", "--learning-rate", "nan"], "--learning-rate must be a finite number; got nan"),
    (["pretrain", "--learning-rate", "nan"], "--learning-rate must be a finite number; got nan"),
    (["translate", "--length-penalty", "nan"], "--length-penalty must be a finite number; got nan"),
    (["translate", "--sample", "--temperature", "nan"], "--temperature must be a finite number; got nan"),
    (["train", "--dropout", "nan"], "--dropout must be a finite number; got nan"),
    (["translate", "--max-input-tokens", "0"], "--max-input-tokens must be >= 1; got 0"),
    (["average", "--last", "0"], "averaging needs 2 or more checkpoints; got --last 0"),
    (["average", "--last", "-3"], "averaging needs 2 or more checkpoints; got --last -3"),
    (["translate", "--greedy", "--beam", "3"], "--greedy and --beam conflict: choose one of --greedy, --sample or --beam"),
    (["translate", "--sample", "--beam", "3"], "--sample and --beam conflict: choose one of --greedy, --sample or --beam"),
    (["evaluate", "--src", "x", "--ref", "y", "--greedy", "--beam", "5"],
     "--greedy and --beam conflict: choose one of --greedy, --sample or --beam"),
])
def test_nonsense_settings_are_refused_before_any_work(tmp_path, args, message):
    proc = cli(*args[:1], "--run", tmp_path / "run", *args[1:], check=False)
    assert error_lines(proc)[0] == f"error: {message}"
    assert not (tmp_path / "run").exists()


def test_tokenize_fails_when_no_pair_survives_max_tokens(tmp_path):
    src, tgt = write_corpus(tmp_path, "c", toy_pairs(100))
    proc = cli("tokenize", "--run", tmp_path / "run", "--src", src, "--tgt", tgt, "--vocab-size", "60",
               "--max-tokens", "1", check=False)
    assert error_lines(proc) == ["error: no usable sentence pairs: every pair has more than 1 pieces on a side",
                                 "hint: raise --max-tokens"]
    assert not (tmp_path / "run" / "tokenize" / "manifest.json").exists()


def test_a_top_k_beyond_the_vocabulary_samples_from_all_of_it(tiny_run, toy_corpus):
    from pipeline.config import DecodeConfig
    from pipeline.translate import Translator

    lines = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()[:8]
    translator = Translator.load(tiny_run)

    def sample(top_k):
        return [h.text for h in translator.translate(lines, DecodeConfig(strategy="sample", top_k=top_k, seed=3))]

    assert sample(100_000) == sample(0)


# -- 5. one line where a traceback was ----------------------------------------------------------

def test_translate_output_naming_a_directory_is_refused_up_front(tiny_run, tmp_path):
    proc = cli("translate", "--run", tiny_run.root, "--output", tmp_path, stdin="あか 。\n", check=False)
    assert error_lines(proc) == [f"error: --output {tmp_path} is a directory; give a file name"]


@pytest.mark.parametrize("command", [["tokenize", "--src", "a.ja", "--tgt", "a.en"], ["train"], ["translate"]])
def test_a_run_path_that_is_a_file_is_refused(tmp_path, command):
    path = tmp_path / "file"
    path.write_text("not a run\n")
    proc = cli(command[0], "--run", path, *command[1:], check=False)
    assert error_lines(proc) == [f"error: the run directory {path} is a file",
                                 "hint: give a directory, e.g. saved_models/NAME"]


def test_an_empty_run_path_is_refused_instead_of_the_working_directory(toy_corpus):
    proc = cli("tokenize", "--run", "", "--src", toy_corpus["train_src"], "--tgt", toy_corpus["train_tgt"],
               check=False)
    assert error_lines(proc) == ["error: the run directory is an empty path",
                                 "hint: give one, e.g. --run saved_models/NAME"]
    assert not (ROOT / "tokenize").exists()


@pytest.mark.parametrize("content,message", [
    (None, "error: {path} is a directory, not a text file"),
    (b'[data]\nsrc = 5\ntgt = "b"\n', "error: data.src must be a string, got 5"),
    (b'[data]\nsrc = "a"\ntgt = "b"\n[train]\nlr_decay = 5.0\n', "error: train.lr_decay must be in (0, 1); got 5.0"),
    (b'run = "caf\xe9"\n', "error: {path} is not valid UTF-8 (line 1, byte 11)"),
    (b'run = ""\n[data]\nsrc = "a"\ntgt = "b"\n', "error: the run directory is an empty path"),
])
def test_bad_pipeline_configs_give_one_line(tmp_path, content, message):
    path = tmp_path / "config.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    proc = cli("pipeline", "--config", path, check=False)
    assert error_lines(proc)[0] == message.format(path=path)


def test_config_fields_are_checked_against_their_annotated_types():
    from pipeline.config import DataConfig, TokenizeConfig, from_dict

    assert from_dict(DataConfig, {"src": "a", "tgt": "b"}).src == "a"
    assert from_dict(TokenizeConfig, {"character_coverage": 1}).character_coverage == 1.0
    for cls, values, message in [(DataConfig, {"src": 5, "tgt": "b"}, "src must be a string, got 5"),
                                 (DataConfig, {"tsv": True}, "tsv must be a string, got True"),
                                 (TokenizeConfig, {"character_coverage": "high"}, "must be a number, got 'high'"),
                                 (TokenizeConfig, {"vocab_size": None}, "must be an integer, got None")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(cls, values)


def _rewrite_keras_config(path, config: dict) -> None:
    with zipfile.ZipFile(path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, json.dumps(config) if name == "config.json" else data)


def _lambda_model(path):
    code = base64.b64encode(marshal.dumps((lambda x: x).__code__)).decode()
    function = {"class_name": "__lambda__", "config": {"code": code, "defaults": None, "closure": None}}
    _rewrite_keras_config(path, {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
                                 "config": {"name": "evil", "function": function, "arguments": {}}})


def _unknown_class(path):
    _rewrite_keras_config(path, {"module": "pipeline.model", "class_name": "NoSuchLayer",
                                 "registered_name": "pipeline>NoSuchLayer", "config": {}})


def _truncate(path):
    path.write_bytes(path.read_bytes()[:300])


def _pickled_vectors(run: Run):
    with run.writing("pretrain") as stage:
        np.save(stage.dir / "emb.src.npy", np.array([{"not": "vectors"}], dtype=object), allow_pickle=True)
        stage.finish(Declaration({}, {}), ["emb.src.npy"],
                     extra={"tokenizer": {s: run.output_hash("tokenize", f"spm.{s}.model") for s in ("src", "tgt")}})


CRAFTED = {  # what is crafted, the command that loads it, the start of its error, the stage to rerun
    "lambda layer": (lambda run: _lambda_model(run.path("train", "model.keras")), "translate",
                     "error: {run}/train/model.keras cannot be loaded (ValueError: Requested the deserialization "
                     "of a `Lambda` layer", "train"),
    "unknown class": (lambda run: _unknown_class(run.path("train", "model.keras")), "translate",
                      "error: {run}/train/model.keras cannot be loaded (TypeError: Could not locate class "
                      "'NoSuchLayer'", "train"),
    "truncated keras": (lambda run: _truncate(run.path("train", "model.keras")), "translate",
                        "error: {run}/train/model.keras cannot be loaded (ValueError", "train"),
    "truncated spm": (lambda run: _truncate(run.path("tokenize", "spm.src.model")), "translate",
                      "error: {run}/tokenize/spm.src.model is not a readable SentencePiece model (RuntimeError",
                      "tokenize"),
    "truncated shard": (lambda run: _truncate(run.path("tokenize", "train-00000.tfrecord")), "train",
                        "error: {run}/tokenize/train-00000.tfrecord is not a readable encoded corpus (DataLossError",
                        "tokenize"),
    "pickled npy": (_pickled_vectors, "train",
                    "error: {run}/pretrain/emb.src.npy is not a readable vector file (ValueError: Object arrays "
                    "cannot be loaded when allow_pickle=False)", "pretrain"),
    "truncated checkpoint": (lambda run: _truncate(run.path("train", "checkpoints/epoch-005.weights.h5")), "average",
                             "error: {run}/train/checkpoints/epoch-005.weights.h5 is not a readable checkpoint "
                             "(OSError", "train"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_artifacts_are_refused_naming_the_file_and_the_stage_to_rerun(tiny_run, tmp_path, case):
    craft, command, error, stage = CRAFTED[case]
    run = copy_run(tiny_run, tmp_path)
    craft(run)
    for stage_name, name in (("train", "model.keras"), ("tokenize", "spm.src.model"),
                            ("tokenize", "train-00000.tfrecord")):
        rehash(run, stage_name, name)
    proc = cli(command, "--run", run.root, stdin="あか 。\n", check=False)
    lines = error_lines(proc)
    assert lines[0].startswith(error.format(run=run.root)), lines[0]
    assert lines[1] == f"hint: rerun `python cli.py {stage} --run {run.root}`"


# -- 6. average reads only the dev set it was given or the one training recorded ----------------

def test_average_refuses_a_recorded_dev_set_that_changed(tiny_run, tmp_path):
    from pipeline.average import average_run

    run = copy_run(tiny_run, tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("any readable file\n")
    path = run.stage_dir("train") / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["inputs"]["dev_src"]["path"] = str(other)
    path.write_text(json.dumps(manifest))
    rehash(run, "train", "model.keras")
    with pytest.raises(StageError) as error:
        average_run(run, 2)
    assert error.value.message == f"the dev set file {other} is missing or differs from the one training recorded"
    assert error.value.hint == "give --dev-src and --dev-tgt"
    with pytest.raises(ConfigError, match="give both --dev-src and --dev-tgt, or neither"):
        average_run(run, 2, dev_src=str(other))


# -- fuzzed input -------------------------------------------------------------------------------

def _fuzz_lines(n: int, seed: int) -> list[str]:
    """Random Unicode (any plane, control characters, NUL, separators), long and blank lines."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        kind = rng.integers(6)
        if kind == 0:
            lines.append("")
        elif kind == 1:
            lines.append("".join(chr(c) for c in rng.integers(0, 0x20, rng.integers(1, 30)) if c != 10))
        elif kind == 2:
            lines.append("あか " * int(rng.integers(100, 3000)))
        else:
            codes = rng.integers(1, 0x10FFFF, rng.integers(1, 80))
            lines.append("".join(chr(c) for c in codes if c != 10 and not 0xD800 <= c < 0xE000))
    return lines


def test_fuzzed_lines_among_real_ones_translate_in_order_and_leave_the_real_ones_unchanged(tiny_run, toy_corpus):
    from pipeline.config import DecodeConfig
    from pipeline.translate import Translator

    real = toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()
    fuzz = _fuzz_lines(1200, seed=5)
    mixed = [line for pair in zip(fuzz[::30], real) for line in pair] + fuzz
    translator = Translator.load(tiny_run)
    config = DecodeConfig(strategy="greedy")
    out = [h.text for h in translator.translate(mixed, config)]
    assert len(out) == len(mixed)
    alone = [h.text for h in translator.translate(real, config)]
    assert out[1:2 * len(real):2] == alone  # each real sentence translated as it is alone
    assert all(out[i] == "" for i, line in enumerate(mixed) if not line.strip())


def test_fuzzed_bytes_on_stdin_give_one_output_line_per_input_line(tiny_run):
    lines = [line.encode("utf-8") for line in _fuzz_lines(300, seed=7)]
    data = b"\r\n".join(lines[:100]) + b"\r\n" + b"\n".join(lines[100:]) + b"\n"  # CRLF and LF mixed
    proc = cli_stdin_bytes(data, "translate", "--run", tiny_run.root, "--greedy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(b"\n") == len(lines) and b"Traceback" not in proc.stderr


# -- translation jobs split across machines -----------------------------------------------------

def test_shards_of_a_file_concatenate_to_the_unsharded_translation(tiny_run, toy_corpus, tmp_path):
    src = toy_corpus["dev_src"]  # 40 lines: blocks of 13, 13, 14
    whole = cli("translate", "--run", tiny_run.root, "-i", src, "--beam", "3").stdout
    parts = [cli("translate", "--run", tiny_run.root, "-i", src, "--beam", "3", "--shard", f"{k}/3").stdout
             for k in (1, 2, 3)]
    assert [part.count("\n") for part in parts] == [13, 13, 14]
    assert "".join(parts) == whole
    for bad in ("0/3", "4/3", "x"):
        assert error_lines(cli("translate", "--run", tiny_run.root, "-i", src, "--shard", bad, check=False))[0] == (
            f"error: --shard must be K/N with 1 <= K <= N, e.g. 2/8; got '{bad}'")


def test_a_missing_corpus_file_hints_download_and_pretrain_prints_a_brief_report(tmp_path, toy_corpus,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the corpus is not, whether or not this checkout has downloaded it
    proc = cli("tokenize", "--run", tmp_path / "run", "--src", "data/small_parallel_enja/train.ja",
               "--tgt", "data/small_parallel_enja/train.en", check=False)
    assert error_lines(proc) == ["error: file not found: data/small_parallel_enja/train.ja",
                                 "hint: fetch it first: `python cli.py download small_parallel_enja`"]
    cli("tokenize", "--run", tmp_path / "run", "--src", toy_corpus["train_src"], "--tgt", toy_corpus["train_tgt"],
        "--vocab-size", "60")
    brief = json.loads(cli("pretrain", "--run", tmp_path / "run", "--dim", "8", "--epochs", "1").stdout)
    assert set(brief) == {"src", "tgt", "both"} and "neighbours" not in brief["src"] and brief["src"]["words_per_second"] > 0
    assert brief["both"]["effective_words"] == brief["src"]["effective_words"] + brief["tgt"]["effective_words"]
    full = json.loads(cli("pretrain", "--run", tmp_path / "run", "--dim", "8", "--epochs", "1", "--details").stdout)
    assert full["src"]["neighbours"]
