"""Command-line interface: options in, one call into `pipeline.<stage>`, result out.

Results (translations, JSON reports) go to stdout; logs and progress go to stderr. A user error
is one line on stderr and exit code 1; `--verbose` shows the traceback as well.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

# TensorFlow's C++ log lines are noise on stderr, where batch scripts read our errors; its real
# failures reach us as Python exceptions. Level 3 silences even its ERROR lines (with oneDNN on,
# one says DT_BOOL falls back to Eigen). oneDNN stays on, TensorFlow's default: training ran
# 1.31-1.53x faster with it in alternating processes here (BENCHMARKS.md, "oneDNN").
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TF_FREE_COMMANDS = {"split", "tokenize", "download"}  # those that never load TensorFlow
STARTUP_NOTICES = (b"oneDNN custom operations are on", b"before absl::InitializeLog() is called")

import typer

from pipeline.config import DataConfig as _Data, DecodeConfig as _D, ModelConfig as _M, PretrainConfig as _P
from pipeline.config import SplitConfig as _S, TokenizeConfig as _T, TrainConfig as _Tr
from pipeline.errors import PipelineError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Neural machine translation: [split →] tokenize → pretrain → train → translate → evaluate.",
)
_state = {"verbose": False}

RunOpt = typer.Option(..., "--run", help="Run directory, e.g. saved_models/NAME.")
RunsOpt = typer.Option(..., "--run", help="Run directory; repeat it to ensemble several runs' models.")


@app.callback()
def main(ctx: typer.Context,
         verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug logs.")):
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


def _guard(fn: Callable[[], Any]) -> Any:
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


def _run(path: str):
    """The run directory `--run` names (kept a str: Typer turns an empty Path into `.`)."""
    from pipeline.artifacts import Run

    return Run.at(path)


@app.command()
def split(
    run: str = RunOpt,
    tsv: Optional[Path] = typer.Option(None, help="Tab-separated pairs, e.g. the Tatoeba export."),
    src: Optional[Path] = typer.Option(None, help="Source-language text instead of --tsv, one sentence a line."),
    tgt: Optional[Path] = typer.Option(None, help="Target-language text, line-aligned with --src."),
    src_col: int = typer.Option(_Data.tsv_src_col, help="0-based --tsv column of the source (Tatoeba: 1 = Japanese)."),
    tgt_col: int = typer.Option(_Data.tsv_tgt_col, help="0-based --tsv column of the target (Tatoeba: 0 = English)."),
    dev: int = typer.Option(_S.dev, help="Source sentences held out for dev, with all their translations."),
    test: int = typer.Option(_S.test, help="Source sentences held out for test, with all their translations."),
    seed: int = typer.Option(_S.seed, help="Salts the source-sentence hash that decides each pair's side."),
):
    """Hold out dev and test sets from one corpus file: RUN/split/{train,dev,test}.{src,tgt}."""
    from pipeline.config import SplitConfig
    from pipeline.split import split as stage

    def go():
        return stage(_run(run), SplitConfig(dev=dev, test=test, seed=seed), src=src and str(src),
                     tgt=tgt and str(tgt), tsv=tsv and str(tsv), tsv_src_col=src_col, tsv_tgt_col=tgt_col)

    _print_json(_guard(go))


@app.command()
def tokenize(
    run: str = RunOpt,
    src: Optional[Path] = typer.Option(None, help="Source-language training text, one sentence a line."),
    tgt: Optional[Path] = typer.Option(None, help="Target-language training text, line-aligned with --src."),
    tsv: Optional[Path] = typer.Option(None, help="Tab-separated pairs instead of --src/--tgt."),
    src_col: int = typer.Option(1, help="0-based --tsv column of the source (Tatoeba: 1 = Japanese)."),
    tgt_col: int = typer.Option(0, help="0-based --tsv column of the target (Tatoeba: 0 = English)."),
    src_lang: Optional[str] = typer.Option(None, help="Source language code (default: --src's suffix, else ja)."),
    tgt_lang: Optional[str] = typer.Option(None, help="Target language code (default: --tgt's suffix, else en)."),
    vocab_size: int = typer.Option(_T.vocab_size, help="SentencePiece vocabulary size per language."),
    model_type: str = typer.Option(_T.model_type, help="unigram, bpe or char."),
    character_coverage: Optional[float] = typer.Option(None, help="Default: 0.9995 for ja/zh/ko/th, else 1.0."),
    max_tokens: int = typer.Option(_T.max_tokens, help="Drop pairs with more pieces than this on either side."),
    seed: int = typer.Option(_T.seed),
):
    """Train SentencePiece models for both languages and encode the training pairs."""
    from pipeline.config import TokenizeConfig
    from pipeline.data import guess_lang
    from pipeline import tokenize as stage

    def go():
        config = TokenizeConfig(model_type=model_type, vocab_size=vocab_size,
                                character_coverage=character_coverage, max_tokens=max_tokens, seed=seed)
        return stage.tokenize(
            _run(run), config, src=src and str(src), tgt=tgt and str(tgt), tsv=tsv and str(tsv),
            tsv_src_col=src_col, tsv_tgt_col=tgt_col,
            src_lang=src_lang or guess_lang(src, "ja"), tgt_lang=tgt_lang or guess_lang(tgt, "en"),
        )

    _print_json(_guard(go))


@app.command()
def pretrain(
    run: str = RunOpt,
    dim: int = typer.Option(_P.dim, help="Vector size; must equal train's --embed-dim to be used."),
    window: int = typer.Option(_P.window, help="Largest context distance (sampled per word, as word2vec does)."),
    negatives: int = typer.Option(_P.negatives, help="Negative samples per (centre, context) pair."),
    epochs: int = typer.Option(_P.epochs),
    subsample: float = typer.Option(_P.subsample, help="Down-sampling threshold of frequent pieces; 0 disables."),
    learning_rate: float = typer.Option(_P.learning_rate, help="Start of word2vec's linearly decaying SGD rate."),
    batch_size: int = typer.Option(_P.batch_size, help="About this many (centre, context) pairs per step."),
    extra_src: Optional[Path] = typer.Option(None, help="Extra monolingual source-language text."),
    extra_tgt: Optional[Path] = typer.Option(None, help="Extra monolingual target-language text."),
    seed: int = typer.Option(_P.seed),
):
    """Train word2vec (skip-gram, negative sampling) embeddings of each side's pieces."""
    from pipeline.config import PretrainConfig
    from pipeline.pretrain import pretrain as stage

    def go():
        config = PretrainConfig(dim=dim, window=window, negatives=negatives, epochs=epochs, subsample=subsample,
                                learning_rate=learning_rate, batch_size=batch_size,
                                extra_src=extra_src and str(extra_src), extra_tgt=extra_tgt and str(extra_tgt),
                                seed=seed)
        config.validate()
        return stage(_run(run), config)

    _print_json(_guard(go))


@app.command()
def train(
    run: str = RunOpt,
    dev_src: Optional[Path] = typer.Option(None, help="Dev source text (default: hold out 500 training pairs)."),
    dev_tgt: Optional[Path] = typer.Option(None, help="Dev target text, line-aligned with --dev-src."),
    epochs: int = typer.Option(_Tr.epochs, help="Most epochs; early stopping may end sooner."),
    batch_size: int = typer.Option(_Tr.batch_size, help="Sentences per batch."),
    embed_dim: int = typer.Option(_M.embed_dim),
    units: int = typer.Option(_M.units, help="RNN units (encoder: per direction; decoder)."),
    cell: str = typer.Option(_M.cell, help="gru or lstm."),
    layers: int = typer.Option(_M.layers, help="Bidirectional encoder layers."),
    dropout: float = typer.Option(_M.dropout),
    learning_rate: float = typer.Option(_Tr.learning_rate),
    label_smoothing: float = typer.Option(_Tr.label_smoothing),
    clip_norm: float = typer.Option(_Tr.clip_norm, help="Global gradient-norm clipping."),
    patience: int = typer.Option(_Tr.patience, help="Epochs without a better dev BLEU before stopping."),
    lr_patience: int = typer.Option(_Tr.lr_patience,
                                    help="Epochs without a better dev BLEU before the learning rate is lowered."),
    time_budget: float = typer.Option(_Tr.time_budget, help="Stop after this many minutes (0: no limit)."),
    keep_checkpoints: int = typer.Option(_Tr.keep_checkpoints,
                                         help="Keep the last N epochs' weights for `average` (0: all)."),
    average_checkpoints: int = typer.Option(_Tr.average_checkpoints,
                                            help="Average the last N epochs at the end if dev BLEU gains (0: off)."),
    tie_embeddings: bool = typer.Option(_M.tie_embeddings, help="Share the target embedding with the output layer."),
    pretrained: bool = typer.Option(_Tr.pretrained, help="Initialise embeddings from the pretrain stage if it ran."),
    freeze_embeddings: bool = typer.Option(_Tr.freeze_embeddings, help="Keep pretrained embeddings fixed."),
    bleu_tokenize: str = typer.Option("13a", help="sacreBLEU tokenisation for the dev BLEU: none, 13a, intl, ..."),
    precision: str = typer.Option(_Tr.precision, help="float32, mixed_float16 (GPU) or mixed_bfloat16."),
    resume: Optional[bool] = typer.Option(
        None, "--resume/--restart",
        help="An interrupted training with the same settings resumes from its last epoch by default; "
             "--resume insists on it, --restart discards it."),
    seed: int = typer.Option(_Tr.seed),
):
    """Train the encoder-decoder with Bahdanau attention; keep the best model by dev BLEU."""
    from pipeline.config import BLEU_TOKENIZERS, ModelConfig, TrainConfig
    from pipeline.errors import ConfigError
    from pipeline.train import train as stage

    def go():
        if bleu_tokenize not in BLEU_TOKENIZERS:  # before training, not at the first dev BLEU
            raise ConfigError(f"--bleu-tokenize must be one of {', '.join(BLEU_TOKENIZERS)}; got {bleu_tokenize!r}")
        model = ModelConfig(cell=cell, embed_dim=embed_dim, units=units, layers=layers, dropout=dropout,
                            tie_embeddings=tie_embeddings)
        config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                             clip_norm=clip_norm, label_smoothing=label_smoothing, patience=patience,
                             lr_patience=lr_patience,
                             pretrained=pretrained, freeze_embeddings=freeze_embeddings,
                             time_budget=time_budget, keep_checkpoints=keep_checkpoints,
                             average_checkpoints=average_checkpoints, precision=precision, seed=seed)
        return stage(_run(run), model, config, dev_src=dev_src and str(dev_src),
                     dev_tgt=dev_tgt and str(dev_tgt), resume=resume, bleu_tokenize=bleu_tokenize)

    _print_json(_guard(go))


@app.command()
def average(
    run: str = RunOpt,
    last: int = typer.Option(_Tr.average_checkpoints, help="How many of the last epoch checkpoints to average."),
    dev_src: Optional[Path] = typer.Option(None, help="Dev source (default: the one training used)."),
    dev_tgt: Optional[Path] = typer.Option(None, help="Dev target (default: the one training used)."),
):
    """Average a trained run's last checkpoints; keep the result if its dev BLEU is higher."""
    from pipeline.average import average_run

    _print_json(_guard(lambda: average_run(_run(run), last, dev_src=dev_src and str(dev_src),
                                           dev_tgt=dev_tgt and str(dev_tgt))))


def _decode_config(ctx: typer.Context, greedy: bool, beam: int, sample: bool, temperature: float, top_k: int,
                   length_penalty: float, n_best: int, batch_size: int, max_input_tokens: int, seed: int):
    from pipeline.config import DecodeConfig
    from pipeline.errors import ConfigError

    beam_given = ctx.get_parameter_source("beam").name != "DEFAULT"  # typer's own click: compare by name
    chosen = [name for name, on in (("--greedy", greedy), ("--sample", sample), ("--beam", beam_given)) if on]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} conflict: choose one of --greedy, --sample or --beam")
    strategy = "greedy" if greedy else "sample" if sample else "beam"
    config = DecodeConfig(strategy=strategy, beam=beam, length_penalty=length_penalty, temperature=temperature,
                          top_k=top_k, batch_size=batch_size, n_best=n_best, max_input_tokens=max_input_tokens,
                          seed=seed)
    config.validate()
    return config


GreedyOpt = typer.Option(False, "--greedy", help="Greedy search.")
BeamOpt = typer.Option(_D.beam, "--beam", help="Beam size (the default strategy).")
SampleOpt = typer.Option(False, "--sample", help="Sample from the model instead of searching.")
TemperatureOpt = typer.Option(_D.temperature, help="Sampling temperature.")
TopKOpt = typer.Option(_D.top_k, help="Sample among the k likeliest pieces (0, or more than the vocabulary: all).")
LengthPenaltyOpt = typer.Option(_D.length_penalty, help="Beam scores are log p / length**alpha.")
DecodeBatchOpt = typer.Option(_D.batch_size, "--batch-size", help="Sentences decoded together.")
MaxInputTokensOpt = typer.Option(_D.max_input_tokens, help="A line longer than this many SentencePiece pieces "
                                 "is cut to them; a warning counts the cut lines.")


@app.command()
def translate(
    ctx: typer.Context,
    run: list[str] = RunsOpt,
    input: Path = typer.Option(Path("-"), "--input", "-i", help="Source text, one sentence a line; - for stdin."),
    output: Path = typer.Option(Path("-"), "--output", "-o", help="Where translations go; - for stdout."),
    greedy: bool = GreedyOpt,
    beam: int = BeamOpt,
    sample: bool = SampleOpt,
    temperature: float = TemperatureOpt,
    top_k: int = TopKOpt,
    length_penalty: float = LengthPenaltyOpt,
    n_best: int = typer.Option(_D.n_best, help="With --format jsonl: the n best hypotheses of the beam."),
    batch_size: int = DecodeBatchOpt,
    max_input_tokens: int = MaxInputTokensOpt,
    format: str = typer.Option("text", "--format", help="text, or jsonl (translation, score, ...)."),
    attention: bool = typer.Option(False, help="With --format jsonl: include attention weights."),
    seed: int = typer.Option(_D.seed, help="Seed for --sample."),
):
    """Translate sentences, one per line, keeping the order; an empty line stays empty."""
    from pipeline.artifacts import atomic_path
    from pipeline.data import read_lines
    from pipeline.errors import ConfigError
    from pipeline.translate import Translator

    def go():
        if format not in ("text", "jsonl"):
            raise ConfigError(f"--format must be text or jsonl; got {format!r}")
        if (attention or n_best > 1) and format != "jsonl":
            raise ConfigError("--attention and --n-best need --format jsonl")
        if str(output) != "-" and output.is_dir():  # found out now, not after translating everything
            raise ConfigError(f"--output {output} is a directory; give a file name")
        config = _decode_config(ctx, greedy, beam, sample, temperature, top_k, length_penalty, n_best, batch_size,
                                max_input_tokens, seed)
        translator = Translator.load([_run(r) for r in run])
        lines = read_lines(input)
        if str(input) != "-":
            lines = list(lines)  # read it all first: a bad file fails before any output
        hyps = translator.translate(lines, config, attention=attention)

        def render(h):
            if format == "text":
                return h.text
            return json.dumps(h.to_json(nbest=n_best > 1, attention=attention), ensure_ascii=False)

        if str(output) == "-":
            for h in hyps:
                sys.stdout.write(render(h) + "\n")
                sys.stdout.flush()
        else:
            with atomic_path(output) as tmp, tmp.open("w", encoding="utf-8") as f:
                for h in hyps:
                    f.write(render(h) + "\n")

    _guard(go)


@app.command()
def evaluate(
    ctx: typer.Context,
    run: list[str] = RunsOpt,
    src: Path = typer.Option(..., help="Test source text."),
    ref: Path = typer.Option(..., help="Reference translations, line-aligned with --src."),
    tokenize: str = typer.Option("none", help="BLEU tokenisation: none (pre-tokenised data) or 13a (raw text), ..."),
    greedy: bool = GreedyOpt,
    beam: int = BeamOpt,
    length_penalty: float = LengthPenaltyOpt,
    batch_size: int = DecodeBatchOpt,
    max_input_tokens: int = MaxInputTokensOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the whole report (with hypotheses) as JSON."),
):
    """Translate a test set and score it: BLEU (nltk and sacreBLEU, same tokens) and chrF."""
    from pipeline.config import EvaluateConfig
    from pipeline.evaluate import evaluate as stage

    def go():
        config = _decode_config(ctx, greedy, beam, False, 1.0, 0, length_penalty, 1, batch_size, max_input_tokens, 0)
        return stage([_run(r) for r in run], str(src), str(ref), config, EvaluateConfig(tokenize=tokenize))

    report = _guard(go)
    if as_json:
        _print_json(report)
    else:
        typer.echo(f"BLEU {report['bleu']:.2f} (nltk)  {report['sacrebleu']:.2f} (sacreBLEU {report['signature']})"
                   f"  chrF {report['chrf']:.2f}")


@app.command()
def score(
    run: list[str] = RunsOpt,
    src: Path = typer.Option(..., help="Source sentences, one a line."),
    tgt: Path = typer.Option(..., help="Target sentences to score, line-aligned with --src."),
    format: str = typer.Option("text", "--format",
                               help="text: one log-probability a line; jsonl: with per-piece scores."),
    batch_size: int = DecodeBatchOpt,
    max_input_tokens: int = MaxInputTokensOpt,
):
    """Log-probability of each target sentence given its source under the model (or ensemble)."""
    from pipeline.config import DecodeConfig
    from pipeline.data import read_parallel
    from pipeline.errors import ConfigError
    from pipeline.score import Scorer

    def go():
        if format not in ("text", "jsonl"):
            raise ConfigError(f"--format must be text or jsonl; got {format!r}")
        DecodeConfig(batch_size=batch_size, max_input_tokens=max_input_tokens).validate()
        scorer = Scorer.load([_run(r) for r in run])
        pairs = list(read_parallel(src, tgt))  # a bad file fails before any output
        for result in scorer.score(pairs, batch_size=batch_size, max_tokens=max_input_tokens):
            line = (f"{result.log_prob:.4f}" if format == "text"
                    else json.dumps(result.to_json(), ensure_ascii=False))
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    _guard(go)


@app.command()
def download(
    corpus: str = typer.Argument("small_parallel_enja", help="Which corpus."),
    dest: Optional[Path] = typer.Option(None, help="Folder to fill (default: data/CORPUS)."),
    from_dir: Optional[Path] = typer.Option(None, "--from", help="Copy from a local folder instead."),
    base_url: Optional[str] = typer.Option(None, help="Fetch from this URL prefix instead (a mirror)."),
):
    """Fetch a known corpus, each file checked against its pinned sha256."""
    from pipeline.download import download as stage

    _print_json(_guard(lambda: stage(corpus, dest or Path("data") / corpus, base_url=base_url,
                                     source_dir=from_dir)))


@app.command()
def pipeline(
    config: Path = typer.Option(..., "--config", help="TOML file with [data], [tokenize], [train], ... sections."),
    force: bool = typer.Option(False, help="Rerun every stage, even those that are up to date."),
):
    """Run every stage from one config file, skipping those whose inputs and settings are unchanged."""
    from pipeline.config import load_pipeline_config
    from pipeline.runner import run_pipeline

    _print_json(_guard(lambda: run_pipeline(load_pipeline_config(config), force=force)))


if __name__ == "__main__":
    app()
