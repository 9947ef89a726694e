"""Each setting is defined once: every surface (CLI option, TOML key, code default) comes from it."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
import typer

import cli
from pipeline.config import (DataConfig, DecodeConfig, EvaluateConfig, ModelConfig, PipelineConfig, PretrainConfig,
                             Section, SplitConfig, TokenizeConfig, TrainConfig, from_dict, load_pipeline_config,
                             with_new_settings)
from pipeline.errors import ConfigError
from tests.conftest import ROOT

SECTIONS = [SplitConfig, TokenizeConfig, PretrainConfig, ModelConfig, TrainConfig, DecodeConfig, EvaluateConfig,
            DataConfig]
# the commands whose options set each section's fields
COMMANDS = {"split": {"split"}, "tokenize": {"tokenize"}, "pretrain": {"pretrain"}, "model": {"train"},
            "train": {"train", "average"}, "decode": {"translate", "evaluate", "score", "export", "plot"},
            "evaluate": {"evaluate", "train"}, "data": {"split", "tokenize", "train"}}
# settings the CLI reaches by other means than an option of their own
REACHED_OTHERWISE = {
    ("decode", "strategy"): "--greedy, --sample or (the default) --beam",
    ("data", "test_src"): "evaluate --src",
    ("data", "test_tgt"): "evaluate --ref",
}


def _cli_options() -> dict[str, list]:
    """Every option of every command: the option's flag -> [(command, default), ...]."""
    group = typer.main.get_command(cli.app)
    found: dict[str, list] = {}
    for name, command in group.commands.items():
        for param in command.params:
            for flag in param.opts:
                found.setdefault(flag, []).append((name, param.default))
    return found


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.SECTION)
def test_every_setting_is_a_cli_option_and_a_toml_key_with_one_default(section):
    options = _cli_options()
    required = {"tsv": "pairs.tsv"} if section is DataConfig else {}  # data needs a corpus
    from_toml = from_dict(section, required)
    for f in dataclasses.fields(section):
        assert f.metadata.get("help"), f"{section.SECTION}.{f.name} has no help text"
        if f.name not in required:  # TOML: the same default
            assert getattr(from_toml, f.name) == f.default
        if (section.SECTION, f.name) in REACHED_OTHERWISE:
            continue
        flag = f.metadata.get("cli") or "--" + f.name.replace("_", "-")
        prefixed = [flag] + [f"--{p}-{flag[2:]}" for p in ("bleu",)]
        offered = [(command, default) for candidate in prefixed for command, default in options.get(candidate, [])
                   if command in COMMANDS[section.SECTION]]
        assert offered, f"{section.SECTION}.{f.name} has no command-line option"
        for command, default in offered:
            if command != "average":  # --last: how many checkpoints, defaulting to train's setting
                assert default == f.default, (section.SECTION, f.name, command, default)


@dataclasses.dataclass(frozen=True)
class Extended(EvaluateConfig):
    new_knob: int = dataclasses.field(default=7, metadata={"help": "A new setting.", "cli": None})


def test_adding_a_setting_adds_its_option():
    app = typer.Typer()

    @app.command()
    @cli.settings(config=cli.Options(Extended))
    def command(*, config: Extended):
        print(config.new_knob, config.tokenize)

    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["--new-knob", "9", "--tokenize", "none"])
    assert result.exit_code == 0 and result.output.split() == ["9", "none"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_hold_only_what_differs_from_the_defaults(path):
    values = tomllib.loads(path.read_text(encoding="utf-8"))
    load_pipeline_config(path)  # valid
    defaults = PipelineConfig()
    for section, table in values.items():
        if not isinstance(table, dict):
            continue
        for key, value in table.items():
            assert value != getattr(getattr(defaults, section), key), f"{path.name}: [{section}] {key} is the default"


def test_overrides_on_the_command_line_win_over_the_file_and_are_validated(tmp_path):
    path = ROOT / "configs" / "enja.toml"
    config = load_pipeline_config(path, ["--train.epochs", "3", "--model.cell=lstm", "--run", "elsewhere"])
    assert (config.train.epochs, config.model.cell, config.run) == (3, "lstm", "elsewhere")
    with pytest.raises(ConfigError, match="model.cell must be one of gru, lstm, lstm-peephole; got 'rnn'"):
        load_pipeline_config(path, ["--model.cell", "rnn"])
    with pytest.raises(ConfigError, match="unknown config key train.epoch"):
        load_pipeline_config(path, ["--train.epoch", "3"])


def test_sections_check_their_fields_from_the_definitions():
    assert all(issubclass(s, Section) for s in SECTIONS)
    with pytest.raises(ConfigError, match=r"^train.label_smoothing must be in \[0, 1\); got 1.0$"):
        TrainConfig(label_smoothing=1.0).validate()
    with pytest.raises(ConfigError, match=r"^decode.temperature must be > 0; got 0.0$"):
        DecodeConfig(temperature=0.0).validate()


def test_a_setting_added_since_a_stage_was_recorded_counts_there_at_its_default():
    """Nested sections by their key (train's manifest holds [model] and [train]); a setting that
    the record lacks matches only its default."""
    current = {"model": dataclasses.asdict(ModelConfig()), "train": dataclasses.asdict(TrainConfig()),
               "bleu_tokenize": "13a"}
    recorded = {**current, "train": {k: v for k, v in current["train"].items() if k != "warmup_steps"}}
    assert with_new_settings(recorded, current, "train") == current
    changed = {**current, "train": {**current["train"], "warmup_steps": 100}}
    assert with_new_settings(recorded, changed, "train") != changed
    tokenize = {**dataclasses.asdict(TokenizeConfig()), "languages": {"src": "ja", "tgt": "en"}}
    older = {k: v for k, v in tokenize.items() if k != "max_tokens"}
    assert with_new_settings(older, tokenize, "tokenize") == tokenize
    assert with_new_settings({**older, "vocab_size": 8}, tokenize, "tokenize") != tokenize  # a real difference stays
