"""Command-line interface: options in, one call into `pipeline.<stage>`, result out.

Results (translations, JSON reports) go to stdout; logs and progress go to stderr. A user error
is one line on stderr and exit code 1; `--verbose` shows the traceback as well.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Optional

# TensorFlow's C++ log lines are noise on stderr, where batch scripts read our errors; its real
# failures reach us as Python exceptions. Level 3 silences even its ERROR lines (with oneDNN on,
# one says DT_BOOL falls back to Eigen). oneDNN is left to TensorFlow's default: on for CPUs with
# AVX512 features, where training ran 1.31-1.53x faster with it, off on AVX2-only ones, where
# turning it on measured no faster on idle cores (BENCHMARKS.md, "oneDNN"); TF_ENABLE_ONEDNN_OPTS
# set by the user wins either way.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TF_FREE_COMMANDS = {"split", "tokenize", "download"}  # those that never load TensorFlow
STARTUP_NOTICES = (b"oneDNN custom operations are on", b"before absl::InitializeLog() is called")

import typer

from pipeline.config import DataConfig, DecodeConfig, EvaluateConfig, ModelConfig, PretrainConfig
from pipeline.config import SplitConfig, TokenizeConfig, TrainConfig
from pipeline.errors import PipelineError

app = typer.Typer(
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: its brackets and braces stay as written
    no_args_is_help=True,
    help="Neural machine translation: [split →] tokenize → pretrain → train → translate → evaluate.",
)
_state = {"verbose": False}

OutputFormat = enum.Enum("OutputFormat", [("text", "text"), ("jsonl", "jsonl")], type=str)  # a real choice
RunOpt = typer.Option(..., "--run", metavar="DIR", help="Run directory, e.g. saved_models/NAME.")
RunsOpt = typer.Option(..., "--run", metavar="DIR", help="Run directory; repeat it to ensemble several runs' models.")


def _print_version(value: bool) -> None:
    if value:
        from pipeline import __version__

        typer.echo(f"nmt-pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def main(ctx: typer.Context,
         verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug logs."),
         version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and exit.")):
    _state["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if ctx.invoked_subcommand not in TF_FREE_COMMANDS:
        _import_tensorflow_quietly()


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr caught at the file-descriptor level, then pass on what it
    wrote except its start-up notices, which are printed before TF_CPP_MIN_LOG_LEVEL is read."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().splitlines(keepends=True):
                if not any(notice in line for notice in STARTUP_NOTICES):
                    sys.stderr.buffer.write(line)
            sys.stderr.flush()


def guard(fn: Callable[[], Any]) -> Any:
    """Run a stage; turn library errors into one line on stderr and exit code 1."""
    try:
        return fn()
    except PipelineError as e:
        if _state["verbose"]:
            raise
        typer.echo(f"error: {e.message}", err=True)
        if e.hint:
            typer.echo(f"hint: {e.hint}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2))


@dataclasses.dataclass(frozen=True)
class Options:
    """Which fields of a config section a command offers as options (all, `only` some, or all but
    `skip`); `prefix` starts their names (train's `--bleu-tokenize` is EvaluateConfig.tokenize)."""

    section: type
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    prefix: str = ""

    def fields(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self.section)
                if (not self.only or f.name in self.only) and f.name not in self.skip]


def settings(**groups: Options) -> Callable:
    """Give a command one option per setting of each config section, named, defaulted and explained
    by the section's field (`pipeline.config.setting`), and call it with the sections built from
    them: `@settings(config=Options(TokenizeConfig))` passes `config: TokenizeConfig`. Adding a
    setting to a section adds its option here, with nothing else to edit."""
    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn).parameters.values() if p.name not in groups]
        generated, owner = [], {}
        for group, options in groups.items():
            kinds = typing.get_type_hints(options.section)
            for f in options.fields():
                name = options.prefix + f.name
                flag = f.metadata.get("cli") or "--" + name.replace("_", "-")
                if kinds[f.name] is bool:
                    flag = f"{flag}/--no-{flag[2:]}"
                kind, default = kinds[f.name], f.default
                if f.metadata.get("choices"):  # a real choice: listed in --help, completed, checked by click
                    kind = enum.Enum(f.name, [(c, c) for c in f.metadata["choices"]], type=str)
                    default = kind(default)
                generated.append(inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                    default=typer.Option(default, flag, help=f.metadata.get("help"))))
                owner[name] = (group, f.name)

        @functools.wraps(fn)
        def command(**kwargs):
            values: dict[str, dict] = {group: {} for group in groups}
            for name, (group, field_name) in owner.items():
                value = kwargs.pop(name)
                values[group][field_name] = value.value if isinstance(value, enum.Enum) else value
            sections = {group: groups[group].section(**values[group]) for group in groups}
            guard(lambda: _validate(sections, flags))
            return fn(**kwargs, **sections)

        flags = {f"{groups[group].section.SECTION}.{field_name}": "--" + name.replace("_", "-")
                 for name, (group, field_name) in owner.items()}

        command.__signature__ = inspect.Signature(own + generated)
        return command

    return decorate


def _validate(sections: dict[str, Any], flags: dict[str, str]) -> None:
    """Check the sections a command's options built, naming the options (not the TOML keys) in
    what is wrong. Settings the command does not offer keep their defaults, which are valid."""
    from pipeline.errors import ConfigError

    for section in sections.values():
        try:
            section.validate()
        except ConfigError as e:
            message = e.message
            for key, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
                message = message.replace(key, flag)
            raise ConfigError(message, hint=e.hint) from None


def _run(path: str):
    """The run directory `--run` names (kept a str: Typer turns an empty Path into `.`)."""
    from pipeline.artifacts import Run

    return Run.at(path)


@app.command()
@settings(config=Options(SplitConfig), data=Options(DataConfig, only=("tsv", "src", "tgt", "tsv_src_col",
                                                                         "tsv_tgt_col")))
def split(run: str = RunOpt, *, config: SplitConfig, data: DataConfig):
    """Hold out dev and test sets from one corpus file: RUN/split/{train,dev,test}.{src,tgt}."""
    from pipeline.split import split as stage

    _print_json(guard(lambda: stage(_run(run), config, src=data.src, tgt=data.tgt, tsv=data.tsv,
                                     tsv_src_col=data.tsv_src_col, tsv_tgt_col=data.tsv_tgt_col)))


@app.command()
@settings(config=Options(TokenizeConfig), data=Options(DataConfig, only=("src", "tgt", "tsv", "tsv_src_col",
                                                                            "tsv_tgt_col", "src_lang", "tgt_lang")))
def tokenize(run: str = RunOpt, *, config: TokenizeConfig, data: DataConfig):
    """Train SentencePiece models for both languages and encode the training pairs."""
    from pipeline import tokenize as stage
    from pipeline.data import guess_lang

    _print_json(guard(lambda: stage.tokenize(
        _run(run), config, src=data.src, tgt=data.tgt, tsv=data.tsv, tsv_src_col=data.tsv_src_col,
        tsv_tgt_col=data.tsv_tgt_col, src_lang=data.src_lang or guess_lang(data.src, "ja"),
        tgt_lang=data.tgt_lang or guess_lang(data.tgt, "en"))))


@app.command()
@settings(config=Options(PretrainConfig))
def pretrain(
    run: str = RunOpt,
    details: bool = typer.Option(False, help="Also print each side's nearest neighbours of frequent pieces "
                                              "(always in RUN/pretrain/manifest.json)."),
    *, config: PretrainConfig,
):
    """Train word2vec (skip-gram, negative sampling) embeddings of each side's pieces."""
    from pipeline.pretrain import pretrain as stage

    report = guard(lambda: stage(_run(run), config))
    if not details:
        report = {side: {k: v for k, v in part.items() if k != "neighbours"} for side, part in report.items()}
    _print_json(report)


@app.command()
@settings(model=Options(ModelConfig), config=Options(TrainConfig),
          data=Options(DataConfig, only=("dev_src", "dev_tgt")), bleu=Options(EvaluateConfig, prefix="bleu_"))
def train(
    run: str = RunOpt,
    resume: Optional[bool] = typer.Option(
        None, "--resume/--restart",
        help="An interrupted training with the same settings resumes from its last epoch by default; "
             "--resume insists on it, --restart discards it."),
    *, model: ModelConfig, config: TrainConfig, data: DataConfig, bleu: EvaluateConfig,
):
    """Train the encoder-decoder with Bahdanau attention; keep the best model by dev BLEU."""
    from pipeline.train import train as stage

    _print_json(guard(lambda: stage(_run(run), model, config, dev_src=data.dev_src, dev_tgt=data.dev_tgt,
                                     resume=resume, bleu_tokenize=bleu.tokenize)))


@app.command()
def average(
    run: str = RunOpt,
    last: int = typer.Option(TrainConfig.average_checkpoints, help="How many of the last epoch checkpoints to "
                                                                   "average."),
    dev_src: Optional[str] = typer.Option(None, help="Dev source (default: the one training used)."),
    dev_tgt: Optional[str] = typer.Option(None, help="Dev target (default: the one training used)."),
):
    """Average a trained run's last checkpoints; keep the result if its dev BLEU is higher."""
    from pipeline.average import average_run

    _print_json(guard(lambda: average_run(_run(run), last, dev_src=dev_src, dev_tgt=dev_tgt)))


def _strategy(ctx: typer.Context, decode: DecodeConfig, greedy: bool, sample: bool) -> DecodeConfig:
    """The decode settings with the search that --greedy, --sample or (by default) --beam chose."""
    from pipeline.errors import ConfigError

    beam_given = ctx.get_parameter_source("beam").name != "DEFAULT"  # typer's own click: compare by name
    chosen = [name for name, on in (("--greedy", greedy), ("--sample", sample), ("--beam", beam_given)) if on]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} conflict: choose one of --greedy, --sample or --beam")
    decode = dataclasses.replace(decode, strategy="greedy" if greedy else "sample" if sample else "beam")
    decode.validate()
    return decode


GreedyOpt = typer.Option(False, "--greedy", help="Greedy search.")
SampleOpt = typer.Option(False, "--sample", help="Sample from the model instead of searching.")


@app.command()
@settings(decode=Options(DecodeConfig, skip=("strategy",)))
def translate(
    ctx: typer.Context,
    run: list[str] = RunsOpt,
    input: Path = typer.Option(Path("-"), "--input", "-i", help="Source text, one sentence a line; - for stdin."),
    output: Path = typer.Option(Path("-"), "--output", "-o", help="Where translations go; - for stdout."),
    greedy: bool = GreedyOpt,
    sample: bool = SampleOpt,
    format: OutputFormat = typer.Option("text", "--format", help="text, or jsonl (translation, score, ...)."),
    attention: bool = typer.Option(False, help="With --format jsonl: include attention weights."),
    shard: Optional[str] = typer.Option(None, help="K/N: translate only the K-th of N equal blocks of --input's "
                                                   "lines; the N outputs, concatenated, are the whole output."),
    *, decode: DecodeConfig,
):
    """Translate sentences, one per line, keeping the order; an empty line stays empty."""
    from pipeline.artifacts import atomic_path
    from pipeline.data import read_lines, shard_of, stdin_batches
    from pipeline.errors import ConfigError
    from pipeline.progress import progress
    from pipeline.translate import CHUNK, Translator

    def go():
        if (attention or decode.n_best > 1) and format.value != "jsonl":
            raise ConfigError("--attention and --n-best need --format jsonl")
        if str(output) != "-" and output.is_dir():  # found out now, not after translating everything
            raise ConfigError(f"--output {output} is a directory; give a file name")
        config = _strategy(ctx, decode, greedy, sample)
        translator = Translator.load([_run(r) for r in run])
        if str(input) == "-" and not shard:  # a live filter: each batch of what has arrived, at once
            hyps = translator.translate_batches(stdin_batches(CHUNK), config, attention=attention)
        else:
            lines = list(read_lines(input))  # read it all first: a bad file fails before any output
            if shard:
                lines = shard_of(lines, shard, str(input))
            hyps = progress(translator.translate(lines, config, attention=attention), "translating",
                            total=len(lines), unit="sent")

        def render(h):
            if format.value == "text":
                return h.text
            return json.dumps(h.to_json(nbest=config.n_best > 1, attention=attention), ensure_ascii=False)

        if str(output) == "-":
            for h in hyps:
                sys.stdout.write(render(h) + "\n")
                sys.stdout.flush()
        else:
            with atomic_path(output) as tmp, tmp.open("w", encoding="utf-8") as f:
                for h in hyps:
                    f.write(render(h) + "\n")

    guard(go)


@app.command()
@settings(decode=Options(DecodeConfig, only=("beam", "length_penalty", "max_len_ratio", "batch_size",
                                             "max_input_tokens")),
          config=Options(EvaluateConfig))
def evaluate(
    ctx: typer.Context,
    run: list[str] = RunsOpt,
    src: Path = typer.Option(..., help="Test source text."),
    ref: list[Path] = typer.Option(..., metavar="FILE",
                                   help="Reference translations, line-aligned with --src; --ref again for more "
                                        "references of the same lines (an empty line: none there)."),
    greedy: bool = GreedyOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the whole report (with hypotheses) as JSON."),
    *, decode: DecodeConfig, config: EvaluateConfig,
):
    """Translate a test set and score it: BLEU (nltk and sacreBLEU, same tokens) and chrF."""
    from pipeline.evaluate import evaluate as stage, tokenization_of

    def go():
        runs = [_run(r) for r in run]
        chosen = config
        if ctx.get_parameter_source("tokenize").name == "DEFAULT":  # as the run's dev BLEU was computed
            chosen = dataclasses.replace(config, tokenize=tokenization_of(runs[0], config.tokenize))
        return stage(runs, str(src), [str(r) for r in ref], _strategy(ctx, decode, greedy, False), chosen)

    report = guard(go)
    if as_json:
        _print_json(report)
    else:
        typer.echo(f"BLEU {report['bleu']:.2f} (nltk)  {report['sacrebleu']:.2f} (sacreBLEU {report['signature']})"
                   f"  chrF {report['chrf']:.2f}  ({report['sentences']} sentences)")


@app.command()
@settings(decode=Options(DecodeConfig, only=("batch_size", "max_input_tokens")))
def score(
    run: list[str] = RunsOpt,
    src: Path = typer.Option(..., help="Source sentences, one a line."),
    tgt: Path = typer.Option(..., help="Target sentences to score, line-aligned with --src."),
    format: OutputFormat = typer.Option("text", "--format",
                                        help="text: one log-probability a line; jsonl: with per-piece scores."),
    *, decode: DecodeConfig,
):
    """Log-probability of each target sentence given its source under the model (or ensemble)."""
    from pipeline.data import read_parallel
    from pipeline.progress import progress
    from pipeline.score import Scorer

    def go():
        decode.validate()
        scorer = Scorer.load([_run(r) for r in run])
        pairs = list(read_parallel(src, tgt))  # a bad file fails before any output
        scores = scorer.score(pairs, batch_size=decode.batch_size, max_tokens=decode.max_input_tokens)
        for result in progress(scores, "scoring", total=len(pairs), unit="pair"):
            line = (f"{result.log_prob:.4f}" if format.value == "text"
                    else json.dumps(result.to_json(), ensure_ascii=False))
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    guard(go)


@app.command()
@settings(decode=Options(DecodeConfig, only=("beam", "length_penalty")))
def plot(
    run: str = RunOpt,
    sentence: list[str] = typer.Option([], "--sentence", "-s",
                                       help="A source sentence whose attention to draw; repeat for more."),
    *, decode: DecodeConfig,
):
    """Draw the training curves, and the attention of given sentences, as PNGs in RUN/plots/."""
    from pipeline.plot import plot as stage

    _print_json(guard(lambda: stage(_run(run), sentence, decode)))


@app.command()
@settings(decode=Options(DecodeConfig, only=("beam", "length_penalty", "max_len_ratio", "max_input_tokens")))
def export(
    ctx: typer.Context,
    run: list[str] = RunsOpt,
    out: str = typer.Option(..., "--out", help="Directory for the SavedModel; it must not exist, or be empty."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy search by default (serving_default)."),
    *, decode: DecodeConfig,
):
    """Write a TensorFlow SavedModel that translates raw text (tokenizers, model, search in one graph)."""
    from pipeline.export import export as stage

    _print_json(guard(lambda: stage([_run(r) for r in run], out, _strategy(ctx, decode, greedy, False))))


@app.command()
def download(
    corpus: str = typer.Argument("small_parallel_enja", help="Which corpus."),
    dest: Optional[Path] = typer.Option(None, help="Folder to fill (default: data/CORPUS)."),
    from_dir: Optional[Path] = typer.Option(None, "--from", help="Copy from a local folder instead."),
    base_url: Optional[str] = typer.Option(None, help="Fetch from this URL prefix instead (a mirror)."),
):
    """Fetch a known corpus, each file checked against its pinned sha256."""
    from pipeline.download import download as stage

    _print_json(guard(lambda: stage(corpus, dest or Path("data") / corpus, base_url=base_url,
                                     source_dir=from_dir)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pipeline(
    ctx: typer.Context,
    config: Path = typer.Option(..., "--config", help="TOML file with data, tokenize, train, ... sections."),
    force: bool = typer.Option(False, help="Rerun every stage, even those that are up to date."),
):
    """Run every stage from one config file, skipping those whose inputs and settings are unchanged.

    Any setting can be overridden after the options, as --SECTION.KEY VALUE (e.g. --train.epochs 3
    --model.cell lstm --run saved_models/lstm)."""
    from pipeline.config import load_pipeline_config
    from pipeline.runner import run_pipeline

    _print_json(guard(lambda: run_pipeline(load_pipeline_config(config, ctx.args), force=force)))


if __name__ == "__main__":
    app()
