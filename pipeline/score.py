"""`python cli.py score`: log p(target | source) under a trained model, per pair and per piece.

The decoder is a conditional language model; teacher forcing gives the probability of a given
translation in one pass. Uses: rerank an n-best list, flag pairs of a corpus that the model finds
unlikely (misalignments), compare systems. With several runs, the ensemble's mean distribution
is scored. Scores are natural-log probabilities of the SentencePiece pieces, `</s>` included.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from pipeline.artifacts import Run
from pipeline.config import DecodeConfig
from pipeline.ensemble import Ensemble
from pipeline.translate import CHUNK, encode_line, load_models, warn_cut
from pipeline.vocab import BOS, EOS, PAD, pad


@dataclass
class PairScore:
    log_prob: float  # sum over the target's pieces and </s>
    pieces: list[str]  # the target pieces, then "</s>"
    piece_log_probs: list[float]

    def to_json(self) -> dict:
        n = len(self.pieces)
        return {"log_prob": round(self.log_prob, 4), "tokens": n,
                "mean_log_prob": round(self.log_prob / n, 4),
                "pieces": self.pieces, "piece_log_probs": [round(x, 4) for x in self.piece_log_probs]}


class Scorer:
    def __init__(self, models: list, sp_src, sp_tgt):
        self.sp_src, self.sp_tgt = sp_src, sp_tgt
        ensemble = Ensemble(models)

        @tf.function(reduce_retracing=True)
        def token_log_probs(src, tgt_in, tgt_out):
            log_probs = ensemble.log_probs(src, tgt_in)  # (batch, T, vocab)
            picked = tf.gather(log_probs, tgt_out, batch_dims=2)  # (batch, T)
            return tf.where(tgt_out == PAD, 0.0, picked)

        self._token_log_probs = token_log_probs

    @classmethod
    def load(cls, runs: Run | Sequence[Run], needed_by: str = "score") -> "Scorer":
        processors, models = load_models(runs, needed_by)
        return cls(models, processors["src"], processors["tgt"])

    def score(self, pairs: Iterable[tuple[str, str]], batch_size: int = 64,
              max_tokens: int = DecodeConfig.max_input_tokens) -> Iterator[PairScore]:
        """Scores in input order. An empty source is scored as the bare </s> it encodes to. A side
        longer than `max_tokens` pieces is cut to them (and the pair counted in a warning)."""
        pairs = iter(pairs)
        cut = 0
        while chunk := list(itertools.islice(pairs, CHUNK)):
            encoded = [(encode_line(self.sp_src, s, max_tokens), encode_line(self.sp_tgt, t, max_tokens))
                       for s, t in chunk]
            src = [s_ids + [EOS] for (s_ids, _), _ in encoded]
            tgt = [t_ids for _, (t_ids, _) in encoded]
            cut += sum(s_cut or t_cut for (_, s_cut), (_, t_cut) in encoded)
            results: list[PairScore | None] = [None] * len(chunk)
            order = sorted(range(len(chunk)), key=lambda i: (len(src[i]), len(tgt[i])))
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                tgt_in = pad([[BOS] + tgt[i] for i in batch])
                tgt_out = pad([tgt[i] + [EOS] for i in batch])
                lp = self._token_log_probs(pad([src[i] for i in batch]), tgt_in, tgt_out).numpy()
                for row, i in enumerate(batch):
                    n = len(tgt[i]) + 1
                    values = lp[row, :n].astype(np.float64)
                    pieces = [self.sp_tgt.id_to_piece(j) for j in tgt[i]] + ["</s>"]
                    results[i] = PairScore(float(values.sum()), pieces, values.tolist())
            yield from results
        warn_cut(cut, max_tokens)
