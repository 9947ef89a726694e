"""`export`: the SavedModel, loaded where only TensorFlow and tensorflow-text exist, translates as
`Translator` does; bad input gives one line and leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pipeline import export as export_module
from pipeline.artifacts import Run, sha256
from pipeline.checkpoints import save_for_inference
from pipeline.config import DecodeConfig, TokenizeConfig
from pipeline.tokenize import tokenize
from pipeline.translate import Translator
from tests.conftest import TGT_WORDS, cli_in_process as cli, toy_pairs, write_corpus
from tests.test_ensemble_score import _perturbed

# Options of the single-run export: not the defaults, so the test sees them reach the graph;
# 12 pieces cut some dev lines and the long one below.
SETTINGS = {"beam": 3, "length_penalty": 0.6, "max_input_tokens": 12, "max_len_ratio": 1.5}
EDGE_LINES = ["", " \t ", "\u3000あか\u00a0 いぬ\u2028\u2003。 ", "あか いぬ 。", "\u00a0", "ねこ " * 40 + "。"]

# Run with `python -I` in an empty folder: no project code can be imported, only TensorFlow and
# tensorflow-text. argv: a JSON file of {name: [export dir, signature, kwargs]}; prints the results.
LOADER = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  registers the SentencePiece ops
try:
    import pipeline
    sys.exit("the project's code is importable: " + pipeline.__file__)
except ImportError:
    pass
requests = json.load(open(sys.argv[1], encoding="utf-8"))
loaded, results = {}, {}
for name, (directory, signature, inputs) in requests.items():
    model = loaded.setdefault(directory, tf.saved_model.load(directory))
    args = {k: tf.constant(v, tf.string if k == "sentences" else None) for k, v in inputs.items()}
    out = model.signatures[signature](**args)
    results[name] = {"translations": [t.decode("utf-8") for t in out["translations"].numpy()],
                     "scores": out["scores"].numpy().tolist()}
print(json.dumps(results))
"""


def _dev_lines(toy_corpus) -> list[str]:
    return toy_corpus["dev_src"].read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def twin(tiny_run, tmp_path_factory):
    """A second run with the same tokenizers and other weights: an ensemble that differs from each."""
    run = Run.at(tmp_path_factory.mktemp("twin") / "twin")
    shutil.copytree(tiny_run.root, run.root)
    save_for_inference(_perturbed(Translator.load(tiny_run).model, 0.05, seed=3), run.path("train", "model.keras"))
    manifest_path = run.stage_dir("train") / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["outputs"]["model.keras"] = sha256(run.path("train", "model.keras"))
    manifest_path.write_text(json.dumps(manifest))
    return run


@pytest.fixture(scope="module")
def exported(tiny_run, twin, toy_corpus, tmp_path_factory):
    """Both exports, then every signature call of the tests in one fresh, isolated process."""
    folder = tmp_path_factory.mktemp("exported")
    single, ensemble = folder / "single", folder / "ensemble"
    options = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    report = json.loads(cli("export", "--run", tiny_run.root, "--out", single, *options).stdout)
    cli("export", "--run", tiny_run.root, "--run", twin.root, "--out", ensemble, "--greedy")

    lines = _dev_lines(toy_corpus) + EDGE_LINES
    requests = {
        "default": [str(single), "serving_default", {"sentences": lines}],
        "greedy": [str(single), "translate_greedy", {"sentences": lines}],
        "beam 5": [str(single), "translate_beam", {"sentences": lines, "beam": 5, "length_penalty": 1.0}],
        "beam 1": [str(single), "translate_beam", {"sentences": lines, "beam": 1, "length_penalty": 0.6}],
        "no sentences": [str(single), "serving_default", {"sentences": []}],
        "ensemble greedy": [str(ensemble), "serving_default", {"sentences": _dev_lines(toy_corpus)}],
        "ensemble beam 4": [str(ensemble), "translate_beam",
                            {"sentences": _dev_lines(toy_corpus), "beam": 4, "length_penalty": 1.0}],
    }
    empty = tmp_path_factory.mktemp("elsewhere")
    (empty / "requests.json").write_text(json.dumps(requests), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", LOADER, "requests.json"], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"single": single, "ensemble": ensemble, "report": report, "lines": lines,
            "results": json.loads(proc.stdout)}


def _expected(runs, lines, **settings):
    return list(Translator.load(runs).translate(lines, DecodeConfig(**settings)))


def _assert_same(result, hyps):
    assert result["translations"] == [h.text for h in hyps]
    np.testing.assert_allclose(result["scores"], [h.score for h in hyps], atol=1e-4)


def test_the_exported_model_translates_as_translate_does(exported, tiny_run):
    lines, results = exported["lines"], exported["results"]
    limits = {k: v for k, v in SETTINGS.items() if k in ("max_input_tokens", "max_len_ratio")}
    default = _expected(tiny_run, lines, strategy="beam", **SETTINGS)
    greedy = _expected(tiny_run, lines, strategy="greedy", **limits)
    assert sum(h.cut for h in default) >= 2  # the long line and some dev lines were cut
    assert [h.text for h in default] != [h.text for h in greedy]  # the searches differ here
    _assert_same(results["default"], default)
    _assert_same(results["greedy"], greedy)
    _assert_same(results["beam 1"], greedy)  # beam 1 is greedy search, as in translate
    _assert_same(results["beam 5"], _expected(tiny_run, lines, strategy="beam", beam=5, length_penalty=1.0, **limits))
    assert results["no sentences"] == {"translations": [], "scores": []}


def test_empty_and_whitespace_lines_give_empty_translations(exported):
    translations = exported["results"]["default"]["translations"]
    edge = dict(zip(EDGE_LINES, translations[-len(EDGE_LINES):]))
    assert edge[""] == edge[" \t "] == edge["\u00a0"] == ""
    assert edge["\u3000あか\u00a0 いぬ\u2028\u2003。 "] == edge["あか いぬ 。"] != ""  # as str.split has it


def test_the_reloaded_model_writes_the_target_language(exported):
    """tensorflow/text issue 1304: two SentencepieceTokenizers without distinct names reload with
    one model for both sides: the target pieces are decoded with the source model (this model then
fails, its source vocabulary being the smaller; a larger one would write Japanese)."""
    written = "".join(exported["results"]["greedy"]["translations"])
    assert written and set(written) <= set("".join(TGT_WORDS) + " .")  # English letters, not kana


def test_an_ensemble_exports_as_one_model(exported, tiny_run, twin, toy_corpus):
    lines, results = _dev_lines(toy_corpus), exported["results"]
    ensemble_greedy = _expected([tiny_run, twin], lines, strategy="greedy")
    _assert_same(results["ensemble greedy"], ensemble_greedy)
    _assert_same(results["ensemble beam 4"], _expected([tiny_run, twin], lines, strategy="beam", beam=4))
    assert [h.text for h in ensemble_greedy] != [h.text for h in _expected(tiny_run, lines, strategy="greedy")]


def test_the_export_has_a_manifest_of_its_inputs_and_files(exported, tiny_run, twin):
    manifest = json.loads((exported["single"] / "manifest.json").read_text())
    assert manifest["stage"] == "export"
    assert {k: manifest["config"][k] for k in SETTINGS} == SETTINGS and manifest["config"]["strategy"] == "beam"
    assert manifest["inputs"]["run0/train/model.keras"]["sha256"] == tiny_run.output_hash("train", "model.keras")
    for side in ("src", "tgt"):
        assert (manifest["inputs"][f"run0/tokenize/spm.{side}.model"]["sha256"]
                == tiny_run.output_hash("tokenize", f"spm.{side}.model"))
    assert manifest["outputs"]["saved_model.pb"] == sha256(exported["single"] / "saved_model.pb")
    assert any(name.startswith("variables/") for name in manifest["outputs"])
    assert manifest["report"] == exported["report"]
    assert exported["report"]["serving_default"] == {"beam": 3, "length_penalty": 0.6}
    ensemble = json.loads((exported["ensemble"] / "manifest.json").read_text())
    assert ensemble["inputs"]["run1/train/model.keras"]["sha256"] == twin.output_hash("train", "model.keras")
    assert ensemble["report"]["serving_default"]["beam"] == 1  # --greedy


# -- bad input: one line, exit 1, nothing written -----------------------------------------------

def _refused(tmp_path, *args) -> str:
    proc = cli("export", *args, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert len(lines) - error <= 2 and all(line.startswith("hint: ") for line in lines[error + 1:]), proc.stderr
    assert not [p for p in tmp_path.rglob("*.partial")]  # no half-written export left behind
    return lines[error]


def test_a_run_that_is_not_trained_is_refused(tiny_run, tmp_path):
    untrained = tmp_path / "untrained"
    shutil.copytree(tiny_run.root, untrained, ignore=shutil.ignore_patterns("train"))
    line = _refused(tmp_path, "--run", untrained, "--out", tmp_path / "out")
    assert line == f"error: `export` needs the train stage's output in {untrained}, which is not there"
    assert not (tmp_path / "out").exists()


def test_an_ensemble_of_runs_with_different_vocabularies_is_refused(tiny_run, tmp_path):
    other = Run.at(tmp_path / "other")
    src, tgt = write_corpus(tmp_path, "x", toy_pairs(300, seed=9))
    tokenize(other, TokenizeConfig(vocab_size=50), src=str(src), tgt=str(tgt))
    line = _refused(tmp_path, "--run", tiny_run.root, "--run", other.root, "--out", tmp_path / "out")
    assert line.startswith(f"error: {other.root} and {tiny_run.root} have different SentencePiece models")
    assert not (tmp_path / "out").exists()


def test_an_existing_non_empty_out_is_refused_and_left_alone(tiny_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _refused(tmp_path, "--run", tiny_run.root, "--out", out) == f"error: --out {out} exists and is not empty"
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert _refused(tmp_path, "--run", tiny_run.root, "--out", tmp_path / "file") == \
        f"error: --out {tmp_path / 'file'} is a file"


def test_a_failed_save_leaves_nothing_behind(tiny_run, tmp_path, monkeypatch):
    def fail(module, directory, signatures=None):
        open(os.path.join(directory, "saved_model.pb"), "wb").close()  # some of it written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module.tf.saved_model, "save", fail)
    with pytest.raises(OSError, match="No space left"):
        export_module.export(tiny_run, tmp_path / "out", DecodeConfig())
    assert list(tmp_path.iterdir()) == []
