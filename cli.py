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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ banner is noise on stderr

import typer

from pipeline.errors import PipelineError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Neural machine translation: tokenize → pretrain → train → translate → evaluate.",
)
_state = {"verbose": False}

RunOpt = typer.Option(..., "--run", help="Run directory, e.g. saved_models/NAME.")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug logs.")):
    _state["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )


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


@app.command()
def tokenize(
    run: Path = RunOpt,
    src: Optional[Path] = typer.Option(None, help="Source-language training text, one sentence a line."),
    tgt: Optional[Path] = typer.Option(None, help="Target-language training text, line-aligned with --src."),
    tsv: Optional[Path] = typer.Option(None, help="Tab-separated pairs instead of --src/--tgt."),
    src_col: int = typer.Option(1, help="0-based --tsv column of the source (Tatoeba: 1 = Japanese)."),
    tgt_col: int = typer.Option(0, help="0-based --tsv column of the target (Tatoeba: 0 = English)."),
    src_lang: Optional[str] = typer.Option(None, help="Source language code (default: --src's suffix, else ja)."),
    tgt_lang: Optional[str] = typer.Option(None, help="Target language code (default: --tgt's suffix, else en)."),
    vocab_size: int = typer.Option(4000, help="SentencePiece vocabulary size per language."),
    model_type: str = typer.Option("unigram", help="unigram, bpe or char."),
    character_coverage: Optional[float] = typer.Option(None, help="Default: 0.9995 for ja/zh/ko/th, else 1.0."),
    max_tokens: int = typer.Option(100, help="Drop pairs with more pieces than this on either side."),
    seed: int = typer.Option(1234),
):
    """Train SentencePiece models for both languages and encode the training pairs."""
    from pipeline.config import TokenizeConfig
    from pipeline.data import guess_lang
    from pipeline.artifacts import Run
    from pipeline import tokenize as stage

    def go():
        config = TokenizeConfig(model_type=model_type, vocab_size=vocab_size,
                                character_coverage=character_coverage, max_tokens=max_tokens, seed=seed)
        return stage.tokenize(
            Run.at(run), config, src=src and str(src), tgt=tgt and str(tgt), tsv=tsv and str(tsv),
            tsv_src_col=src_col, tsv_tgt_col=tgt_col,
            src_lang=src_lang or guess_lang(src, "ja"), tgt_lang=tgt_lang or guess_lang(tgt, "en"),
        )

    _print_json(_guard(go))


if __name__ == "__main__":
    app()
