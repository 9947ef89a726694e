"""Several trained models searched as one (`--run A --run B`).

The ensemble's next-piece distribution is the mean of the members' probabilities, computed in
log space (log Σ p_m − log M), as fairseq and Marian ensemble; the attention shown is the
members' mean. It offers the two methods search needs, `encode` and `decode_step`, with the
members' encodings and states side by side, so `Searcher` decodes an ensemble unchanged.
Members must share the target vocabulary; `Translator.load` checks they share the tokenizers.
"""

from __future__ import annotations

import math

import tensorflow as tf

from pipeline.model import Seq2Seq


class Ensemble:
    def __init__(self, models: list[Seq2Seq]):
        if len({m.tgt_vocab for m in models}) != 1:
            raise ValueError("ensemble members must share the target vocabulary")
        self.models = list(models)
        self.log_m = math.log(len(self.models))

    def encode(self, src):
        encoded, states = zip(*(m.encode(src) for m in self.models))
        return tuple(encoded), tuple(tuple(s) for s in states)

    def decode_step(self, encoded, state, tokens, active=None):
        steps = [m.decode_step(e, s, tokens, active) for m, e, s in zip(self.models, encoded, state)]
        log_probs = tf.reduce_logsumexp(tf.stack([lp for lp, _, _ in steps]), axis=0) - self.log_m
        weights = tf.reduce_mean(tf.stack([w for _, _, w in steps]), axis=0)
        return log_probs, tuple(tuple(s) for _, s, _ in steps), weights

    def log_probs(self, src, tgt_in):
        """Teacher-forced log-probabilities (batch, tgt_len, vocab) of the mean distribution."""
        members = [tf.nn.log_softmax(m((src, tgt_in), training=False), axis=-1) for m in self.models]
        return tf.reduce_logsumexp(tf.stack(members), axis=0) - self.log_m
