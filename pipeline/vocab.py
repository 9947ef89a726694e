"""Piece ids every module agrees on, and the padding of id sequences into batches.

Every SentencePiece model the tokenize stage trains reserves the same four ids, whatever the
language; a run has one model per side.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

PAD, UNK, BOS, EOS = 0, 1, 2, 3
FIRST_WORD = EOS + 1  # the first id of a real piece: word2vec trains none below it
SIDES = ("src", "tgt")


def pad(sequences: list[list[int]], length: int | None = None) -> np.ndarray:
    """A (batch, length) int32 array of the sequences, right-padded with PAD."""
    length = length or max(len(s) for s in sequences)
    out = np.full((len(sequences), length), PAD, dtype=np.int32)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = s
    return out


def strip(seq: Iterable[int]) -> list[int]:
    """Piece ids up to (not including) the first </s> or padding."""
    out = []
    for token in seq:
        if token in (EOS, PAD):
            break
        out.append(int(token))
    return out
