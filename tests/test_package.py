"""The package: `pip install .` and `-e .` give the `nmt` command; the README's Python example runs."""

from __future__ import annotations

import re
import subprocess
import sys
import venv

import pytest

from tests.conftest import ROOT


def _venv(path):
    """A virtual environment that sees this interpreter's packages (TensorFlow is not reinstalled)."""
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    return path / "bin"


def test_pip_install_and_install_e_give_the_nmt_command_with_version_and_help(tmp_path):
    from pipeline import __version__

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for editable in (False, True):  # one after the other: both build in the checkout
        bin_dir = _venv(tmp_path / f"venv{int(editable)}")
        target = ["-e", str(ROOT)] if editable else [str(ROOT)]
        install = subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install",
                                  "-q", "--no-deps", "--no-build-isolation", *target],
                                 capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert install.returncode == 0, install.stderr
        version = subprocess.run([bin_dir / "nmt", "--version"], capture_output=True, text=True, cwd=elsewhere)
        assert version.returncode == 0 and version.stdout == f"nmt-pipeline {__version__}\n"
        helped = subprocess.run([bin_dir / "nmt", "tokenize", "--help"], capture_output=True, text=True,
                                cwd=elsewhere)
        assert helped.returncode == 0 and "--vocab-size" in helped.stdout
        where = subprocess.run([bin_dir / "python", "-c", "import pipeline, cli; print(pipeline.__file__)"],
                               capture_output=True, text=True, cwd=elsewhere)
        assert (str(ROOT) in where.stdout) == editable  # installed: a copy in site-packages


def test_the_readme_python_example_runs_as_written(tiny_run, capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(line[4:] for line in section.splitlines() if line.startswith("    "))
    assert 'pipeline.load("saved_models/enja")' in code
    exec(code.replace("saved_models/enja", str(tiny_run.root)), {})  # the toy run stands in for enja
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4  # two hypotheses, a greedy translation, a log-probability
    assert printed[1].startswith(" 0.0 [")  # the empty line: an empty translation
    assert float(printed[3]) < 0


def test_translate_refuses_unknown_and_bad_settings(tiny_run):
    import pipeline
    from pipeline.errors import ConfigError

    translator = pipeline.load(tiny_run.root)
    with pytest.raises(TypeError, match="unknown decode setting"):
        translator.translate(["x"], beams=5)
    with pytest.raises(ConfigError, match=re.escape("decode.beam must be >= 1; got 0")):
        translator.translate(["x"], beam=0)


def _pipeline_imports(source: str) -> set[str]:
    """The pipeline modules a module's source imports, function-local imports included."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return found


def test_the_pipeline_modules_import_one_another_without_a_cycle():
    """A cycle hidden in a function-local import is still one: each module's dependencies must come
    first in some order (config -> data -> download -> artifacts -> config was one)."""
    import graphlib

    graph = {path.stem: _pipeline_imports(path.read_text(encoding="utf-8")) - {path.stem}
             for path in (ROOT / "pipeline").glob("*.py")}
    assert "checkpoints" in graph["translate"]  # a function-local import is seen
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle in pipeline/: {' imports '.join(reversed(e.args[1]))}")  # graphlib: dependency first
