"""Progress bars and logging on stderr, quiet when stderr is not a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

log = logging.getLogger("pipeline")
T = TypeVar("T")


def progress(iterable: Iterable[T] | None, desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm bar on stderr over `iterable` (None: updated by hand), shown only on a terminal."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True)
