"""Split stage: deterministic held-out sets from one corpus file, duplicates kept on one side."""

from __future__ import annotations

import json

import pytest

from pipeline.artifacts import Run, sha256
from pipeline.config import ConfigError, SplitConfig, load_pipeline_config
from pipeline.errors import InputError
from pipeline.split import OUTPUTS, split
from tests.conftest import ROOT, SHARED_DATA, toy_pairs, write_corpus
from tests.test_cli import cli

TATOEBA = SHARED_DATA / "tatoeba_jpn_eng" / "jpn.txt"


def _tsv(folder, pairs, name="pairs.tsv"):
    """Tatoeba's layout: English<TAB>Japanese."""
    path = folder / name
    path.write_text("".join(f"{en}\t{ja}\n" for ja, en in pairs), encoding="utf-8")
    return path


def _read(run: Run, name: str) -> list[tuple[str, str]]:
    sides = [run.path("split", f"{name}.{side}").read_text(encoding="utf-8").splitlines() for side in ("src", "tgt")]
    assert len(sides[0]) == len(sides[1])
    return list(zip(*sides))


@pytest.fixture
def corpus(tmp_path):
    """300 distinct toy pairs, 20 of them repeated (one with extra spaces), and 3 with an empty side."""
    pairs = list(dict.fromkeys(toy_pairs(320, seed=5)))[:300]
    repeated = pairs[:20:2] + pairs[1:20:2]
    repeated[0] = ("  " + repeated[0][0].replace(" ", "\u3000"), repeated[0][1] + "  ")
    extra = repeated + [("", "dog ."), ("いぬ 。", " "), ("", "")]
    return {"pairs": pairs, "tsv": _tsv(tmp_path, pairs[:150] + extra + pairs[150:])}


def test_sizes_counts_and_outputs(corpus, tmp_path):
    run = Run.at(tmp_path / "run")
    report = split(run, SplitConfig(dev=30, test=40), tsv=str(corpus["tsv"]), tsv_src_col=1, tsv_tgt_col=0)
    assert report == {**report, "pairs_read": 323, "dropped_empty": 3, "duplicates": 20, "distinct": 300,
                      "train": 230, "dev": 30, "test": 40}
    assert sorted(_read(run, "train") + _read(run, "dev") + _read(run, "test")) == sorted(corpus["pairs"])
    train = _read(run, "train")  # Japanese source, English target, in corpus order
    assert train == [pair for pair in corpus["pairs"] if pair in set(train)]
    manifest = json.loads(run.path("split", "manifest.json").read_text(encoding="utf-8"))
    assert manifest["stage"] == "split" and sorted(manifest["outputs"]) == sorted(OUTPUTS)
    assert manifest["config"] == {"dev": 30, "test": 40, "seed": 1234, "tsv_columns": {"src": 1, "tgt": 0}}
    assert sorted(p.name for p in run.stage_dir("split").iterdir()) == sorted(OUTPUTS + ["manifest.json"])


def test_no_pair_on_two_sides(corpus, tmp_path):
    run = Run.at(tmp_path / "run")
    split(run, SplitConfig(dev=30, test=40), tsv=str(corpus["tsv"]))
    sets = {name: _read(run, name) for name in ("train", "dev", "test")}
    for name, pairs in sets.items():
        assert len(set(pairs)) == len(pairs), f"a duplicate inside {name}"
    assert not set(sets["train"]) & set(sets["test"])
    assert not set(sets["train"]) & set(sets["dev"])
    assert not set(sets["dev"]) & set(sets["test"])


def test_same_input_same_split_byte_for_byte(corpus, tmp_path):
    runs = [Run.at(tmp_path / name) for name in ("a", "b")]
    for run in runs:
        split(run, SplitConfig(dev=30, test=40, seed=7), tsv=str(corpus["tsv"]))
    for name in OUTPUTS:
        assert runs[0].path("split", name).read_bytes() == runs[1].path("split", name).read_bytes()
    other = Run.at(tmp_path / "other_seed")
    split(other, SplitConfig(dev=30, test=40, seed=8), tsv=str(corpus["tsv"]))
    assert _read(other, "test") != _read(runs[0], "test")


def test_split_depends_on_the_pair_not_on_its_line(corpus, tmp_path):
    """Parallel files in another order, more lines, a larger dev set: the test set barely moves."""
    pairs = corpus["pairs"]
    first = Run.at(tmp_path / "first")
    split(first, SplitConfig(dev=30, test=40), tsv=str(corpus["tsv"]))

    new = [pair for pair in dict.fromkeys(toy_pairs(40, seed=6)) if pair not in set(pairs)][:5]
    assert len(new) == 5
    more = pairs[::-1] + new
    src, tgt = write_corpus(tmp_path, "more", more)
    second = Run.at(tmp_path / "second")
    split(second, SplitConfig(dev=60, test=40), src=str(src), tgt=str(tgt))
    moved = set(_read(first, "test")) - set(_read(second, "test"))
    assert len(moved) <= 5  # at most one old pair pushed out per pair added
    assert len(_read(second, "test")) == 40 and len(_read(second, "dev")) == 60


def test_every_translation_of_a_source_lands_on_its_side(tmp_path):
    """Two translations of one sentence: both in test, or neither, so training never saw the source."""
    pairs = toy_pairs(200, seed=9)
    pairs = list(dict.fromkeys(pairs + [(s, t.upper()) for s, t in pairs]))
    run = Run.at(tmp_path / "run")
    report = split(run, SplitConfig(test=50), tsv=str(_tsv(tmp_path, pairs)))
    test, train = _read(run, "test"), _read(run, "train")
    assert report["src_seen_in_train"] == {"dev": 0, "test": 0}
    assert not {s for s, _ in train} & {s for s, _ in test}
    assert len({s for s, _ in test}) == 50 and len(test) == 100  # each source with both translations


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(tsv_src_col=3, tsv_tgt_col=0), InputError,
     "{tsv} line 1 has 2 tab-separated column(s); need at least 4 (columns 3 and 0)"),
    (dict(tsv_src_col=-1, tsv_tgt_col=0), InputError,
     "TSV columns count from 0; got source column -1, target column 0"),
    (dict(config=SplitConfig(dev=150, test=150)), InputError,
     "the corpus has 300 distinct source sentence(s); holding out 150 for dev and 150 for test would leave "
     "none for training"),
    (dict(config=SplitConfig()), ConfigError,
     "nothing to hold out: give a dev or a test size above 0 (--dev N, --test N)"),
    (dict(config=SplitConfig(dev=-1, test=5)), ConfigError, "split.dev must be >= 0; got -1"),
])
def test_bad_input_is_refused_with_a_clear_message(corpus, tmp_path, kwargs, error, message):
    config = kwargs.pop("config", SplitConfig(dev=10, test=10))
    run = Run.at(tmp_path / "run")
    with pytest.raises(error) as raised:
        split(run, config, tsv=str(corpus["tsv"]), **kwargs)
    assert raised.value.message == message.format(tsv=corpus["tsv"])
    assert not run.has("split")


def test_cli_prints_the_report_and_fails_in_one_line(corpus, tmp_path):
    proc = cli("split", "--run", tmp_path / "run", "--tsv", corpus["tsv"], "--src-col", "1", "--tgt-col", "0",
               "--dev", "30", "--test", "40")
    assert json.loads(proc.stdout) == {**json.loads(proc.stdout), "train": 230, "dev": 30, "test": 40}
    assert (tmp_path / "run" / "split" / "test.src").read_text(encoding="utf-8").count("\n") == 40

    proc = cli("split", "--run", tmp_path / "bad", "--tsv", corpus["tsv"], "--src-col", "2", "--test", "5",
               check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == (
        f"error: {corpus['tsv']} line 1 has 2 tab-separated column(s); need at least 3 (columns 2 and 0)")


def test_cli_reads_parallel_files(tmp_path):
    src, tgt = write_corpus(tmp_path, "c", toy_pairs(100, seed=3))
    report = json.loads(cli("split", "--run", tmp_path / "run", "--src", src, "--tgt", tgt, "--test", "10").stdout)
    assert report["test"] == 10 and report["dev"] == 0 and report["train"] == report["distinct"] - 10


@pytest.mark.parametrize("text,message", [
    ('[split]\ndev = -3\n', "split.dev must be >= 0; got -3"),
    ('[split]\ntests = 3\n', "unknown config key split.tests; valid keys: dev, seed, test"),
    ('[data]\ntsv = "a.tsv"\ntest_src = "t.ja"\ntest_tgt = "t.en"\n[split]\ntest = 3\n',
     "split.test and data.test_src both give a test set; choose one"),
])
def test_split_config_is_validated(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_pipeline_config(path)
    assert error.value.message == message


def _pipeline_config(tmp_path, tsv, seed: int = 1234):
    return load_pipeline_config(_write(tmp_path / "split.toml", f"""
run = "{tmp_path / 'run'}"
[data]
tsv = "{tsv}"
src_lang = "ja"
tgt_lang = "en"
[split]
dev = 30
test = 40
seed = {seed}
[tokenize]
vocab_size = 60
[pretrain]
dim = 16
epochs = 1
[model]
embed_dim = 16
units = 16
attention_units = 16
[train]
epochs = 1
[decode]
beam = 2
[evaluate]
tokenize = "13a"
"""))


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def fake_stages(monkeypatch):
    """The stages after split, replaced by recorders of their arguments (they write no manifest)."""
    calls = {}

    def recorder(name):
        def stage(*args, **kwargs):
            calls[name] = (args, kwargs)
            return {}
        return stage

    for module, name in (("tokenize", "tokenize"), ("pretrain", "pretrain"), ("train", "train"),
                         ("evaluate", "evaluate")):
        monkeypatch.setattr(f"pipeline.{module}.{name}", recorder(name))
    return calls


def test_runner_feeds_the_split_to_the_later_stages_and_skips_it_when_up_to_date(corpus, tmp_path, fake_stages):
    from pipeline.runner import run_pipeline

    first = run_pipeline(_pipeline_config(tmp_path, corpus["tsv"]))
    assert list(first["stages"]) == ["split", "tokenize", "pretrain", "train", "evaluate"]
    assert first["stages"]["split"]["status"] == "ran"
    assert first["stages"]["split"]["report"]["test"] == 40
    split_dir = tmp_path / "run" / "split"
    tok = fake_stages["tokenize"][1]
    assert (tok["src"], tok["tgt"], tok["tsv"]) == (str(split_dir / "train.src"), str(split_dir / "train.tgt"), None)
    assert (tok["src_lang"], tok["tgt_lang"]) == ("ja", "en")
    train = fake_stages["train"][1]
    assert (train["dev_src"], train["dev_tgt"]) == (str(split_dir / "dev.src"), str(split_dir / "dev.tgt"))
    assert fake_stages["evaluate"][0][1:3] == (str(split_dir / "test.src"), str(split_dir / "test.tgt"))

    fake_stages.clear()
    again = run_pipeline(_pipeline_config(tmp_path, corpus["tsv"]))
    assert again["stages"]["split"] == {"status": "skipped", "report": first["stages"]["split"]["report"]}
    assert "tokenize" in fake_stages  # the fakes wrote no manifest, so the later stages run again

    assert run_pipeline(_pipeline_config(tmp_path, corpus["tsv"], seed=5))["stages"]["split"]["status"] == "ran"
    with corpus["tsv"].open("a", encoding="utf-8") as f:
        f.write("A new pair.\t新しい 。\n")
    assert run_pipeline(_pipeline_config(tmp_path, corpus["tsv"], seed=5))["stages"]["split"]["status"] == "ran"


def test_pipeline_end_to_end_on_a_split_corpus(tmp_path):
    from pipeline.runner import run_pipeline

    tsv = _tsv(tmp_path, toy_pairs(600, seed=11))
    first = run_pipeline(_pipeline_config(tmp_path, tsv))
    assert {name: stage["status"] for name, stage in first["stages"].items()} == {
        "split": "ran", "tokenize": "ran", "pretrain": "ran", "train": "ran", "evaluate": "ran"}
    distinct = first["stages"]["split"]["report"]["distinct"]
    assert first["stages"]["tokenize"]["report"]["kept"] == distinct - 70
    assert first["stages"]["train"]["report"]["dev_pairs"] == 30
    evaluation = first["stages"]["evaluate"]["report"]
    assert evaluation["sentences"] == 40 and "tok:13a" in evaluation["signature"]

    again = run_pipeline(_pipeline_config(tmp_path, tsv))
    assert [stage["status"] for stage in again["stages"].values()] == ["skipped"] * 5


def test_shipped_tatoeba_config():
    config = load_pipeline_config(ROOT / "configs" / "tatoeba_jaen.toml")
    assert config.data.tsv == "data/tatoeba_jpn_eng/jpn.txt"
    assert (config.data.tsv_src_col, config.data.tsv_tgt_col) == (1, 0)
    assert (config.data.src_lang, config.data.tgt_lang) == ("ja", "en")
    assert (config.split.dev, config.split.test) == (500, 500)
    assert config.evaluate.tokenize == "13a"
    enja = load_pipeline_config(ROOT / "configs" / "enja.toml")
    for section in ("tokenize", "pretrain", "model", "train", "decode"):
        assert getattr(config, section) == getattr(enja, section), section


@pytest.mark.slow
def test_real_tatoeba_file(tmp_path):
    if not TATOEBA.is_file():
        pytest.skip(f"{TATOEBA} is absent: the real corpus is not on this machine")
    run = Run.at(tmp_path / "run")
    report = split(run, SplitConfig(dev=500, test=500), tsv=str(TATOEBA), tsv_src_col=1, tsv_tgt_col=0)
    assert report == {**report, "pairs_read": 41649, "dropped_empty": 0, "duplicates": 10, "distinct": 41639,
                      "sources": 35065, "train": 40419, "dev": 603, "test": 617,
                      "src_seen_in_train": {"dev": 0, "test": 0}}
    # recorded once: a split that changes with the machine, Python or hash seed fails here
    assert sha256(run.path("split", "test.src")) == "51b3a6f694ee24a95500a9782899f912b23417a329cf263dfba5ceb0fa549c21"
    assert sha256(run.path("split", "test.tgt")) == "2ae343a11925a331d87a6ee807a985b13961971b8708cffadbd98d61add19069"
    assert sha256(run.path("split", "dev.tgt")) == "f6795b1598297a8704e78c612f1344b5ed89eda78d9fd899e88524b8d1dfa4df"
    train, test = set(_read(run, "train")), set(_read(run, "test"))
    assert len(train) == 40419 and len(test) == 617 and not {s for s, _ in train} & {s for s, _ in test}
    assert all(any("\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff" for c in s)  # Japanese source
               for s, _ in _read(run, "test"))
