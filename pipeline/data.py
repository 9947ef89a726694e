"""Reading corpora: plain parallel files or a TSV, streamed, strict UTF-8, one-line errors."""

from __future__ import annotations

import os
import re
import select
import sys
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, TypeVar

from pipeline.errors import ConfigError, InputError

T = TypeVar("T")


def read_lines(path: str | Path) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file without their line endings. `-` reads stdin.

    Lines end at `\n` only (a `\r` before it, or at the end of the file, is dropped), and each
    line is decoded on its own, so stdin and files split alike and an error names its line.
    """
    if str(path) == "-":
        yield from _lines(sys.stdin.buffer, "<stdin>")
        return
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}", hint=_download_hint(path))
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a text file")
    try:
        f = path.open("rb")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    with f:
        yield from _lines(f, str(path))


def _download_hint(path: Path) -> str | None:
    """For a missing file of a corpus `download` knows (data/small_parallel_enja/train.ja, say)."""
    from pipeline.download import CORPORA

    known = [part for part in path.parts if part in CORPORA]
    return f"fetch it first: `python cli.py download {known[-1]}`" if known else None


def _lines(stream: BinaryIO, name: str) -> Iterator[str]:
    for number, raw in enumerate(stream, 1):
        yield _decode(raw, name, number)


def _decode(raw: bytes, name: str, number: int) -> str:
    try:
        return raw.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError as e:  # byte counts from 1 within the line, as the line number does
        raise InputError(
            f"{name} is not valid UTF-8 (line {number}, byte {e.start + 1})",
            hint="convert it first, e.g. `iconv -f SHIFT_JIS -t UTF-8`",
        ) from None


def stdin_batches(size: int) -> Iterator[list[str]]:
    """Stdin's lines in batches, each given as soon as no more input is waiting: a line typed at a
    terminal, or sent by a coprocess, is translated at once, while a fast pipe still fills batches
    of `size` (fairseq-interactive's buffer works so). Lines are split and decoded as `read_lines`
    does."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's captured stdin)
        yield from batched(_lines(sys.stdin.buffer, "<stdin>"), size)
        return
    pending, number, batch = b"", 0, []
    while True:
        if batch and not select.select([fd], [], [], 0)[0]:  # nothing more waiting: go
            yield batch
            batch = []
            continue
        data = os.read(fd, 1 << 16)  # blocks only while nothing is waiting to be translated
        if not data:
            if pending:
                batch.append(_decode(pending, "<stdin>", number + 1))
            if batch:
                yield batch
            return
        *complete, pending = (pending + data).split(b"\n")
        for raw in complete:
            number += 1
            batch.append(_decode(raw, "<stdin>", number))
        while len(batch) >= size:
            yield batch[:size]
            batch = batch[size:]


def read_parallel(src: str | Path, tgt: str | Path) -> Iterator[tuple[str, str]]:
    """Yield (source, target) line pairs, refusing files of different lengths."""
    yield from _zip_strict(read_lines(src), read_lines(tgt), src, tgt)


def read_corpus(src: str | None, tgt: str | None, tsv: str | None, tsv_src_col: int = 1,
                tsv_tgt_col: int = 0) -> Iterator[tuple[str, str]]:
    """The pairs of a corpus given as a TSV file or as two parallel files (`corpus_inputs` names
    the files, for a stage's manifest)."""
    if tsv:
        return read_tsv(tsv, tsv_src_col, tsv_tgt_col)
    if src and tgt:
        return read_parallel(src, tgt)
    raise InputError("give either --tsv FILE or both --src and --tgt")


def corpus_inputs(src: str | None, tgt: str | None, tsv: str | None) -> dict[str, str | None]:
    """The files a corpus is read from, by role: the TSV file, or the two parallel files."""
    return {"tsv": tsv} if tsv else {"src": src, "tgt": tgt}


def _zip_strict(a: Iterable[str], b: Iterable[str], a_name, b_name) -> Iterator[tuple[str, str]]:
    a_it, b_it = iter(a), iter(b)
    n = 0
    while True:
        x = next(a_it, None)
        y = next(b_it, None)
        if x is None and y is None:
            return
        if x is None or y is None:
            a_count = n + (x is not None) + sum(1 for _ in a_it)
            b_count = n + (y is not None) + sum(1 for _ in b_it)
            raise InputError(
                f"parallel files differ in length: {a_name} has {a_count} lines, "
                f"{b_name} has {b_count}"
            )
        n += 1
        yield x, y


def read_tsv(path: str | Path, src_col: int, tgt_col: int) -> Iterator[tuple[str, str]]:
    """Yield (source, target) pairs from tab-separated columns (0-based)."""
    if min(src_col, tgt_col) < 0:
        raise InputError(f"TSV columns count from 0; got source column {src_col}, target column {tgt_col}")
    if src_col == tgt_col:
        raise InputError(f"source and target are both TSV column {src_col}; give two different columns")
    needed = max(src_col, tgt_col) + 1
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            yield "", ""
            continue
        cols = line.split("\t")
        if len(cols) < needed:
            raise InputError(
                f"{path} line {number} has {len(cols)} tab-separated column(s); "
                f"need at least {needed} (columns {src_col} and {tgt_col})"
            )
        yield cols[src_col].strip(), cols[tgt_col].strip()


def shard_of(lines: list[str], shard: str, name: str) -> list[str]:
    """Block K of N (`shard` = "K/N", K from 1) of `lines`: lines[(K-1)*n//N : K*n//N]. The N
    blocks, in order, are the lines, so N jobs' outputs concatenate to the one job's output."""
    match = re.fullmatch(r"(\d+)/(\d+)", shard.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"--shard must be K/N with 1 <= K <= N, e.g. 2/8; got {shard!r}")
    if name == "-":
        raise ConfigError("--shard needs --input FILE: it counts the lines first")
    k, n = int(match[1]), int(match[2])
    return lines[(k - 1) * len(lines) // n: k * len(lines) // n]


def normalise_space(text: str) -> str:
    """Runs of whitespace (tabs, Unicode spaces and line separators included) become one space."""
    return " ".join(text.split())


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last one shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# Suffixes of two or three letters that name a file's role or format, not its language.
_NOT_LANGUAGES = {"src", "tgt", "txt", "tsv"}


def guess_lang(path: str | Path | None, fallback: str) -> str:
    """`train.ja` -> `ja`; `train.src`, `jpn.txt` or no short suffix at all give `fallback`."""
    if path is None:
        return fallback
    suffix = Path(str(path)).suffix.lstrip(".")
    if suffix.lower() in _NOT_LANGUAGES:
        return fallback
    return suffix if 2 <= len(suffix) <= 3 and suffix.isalpha() else fallback
