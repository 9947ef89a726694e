"""Search strategies over `Seq2Seq.decode_step`: greedy, beam and sampling, batched in the graph.

Every strategy is one `tf.function` with a `tf.while_loop` over output positions, so a batch of
sentences is decoded without a Python call per token. Sentence i may produce at most
`limits[i]` pieces, its `</s>` included; at the last allowed position only `</s>` is possible.
Results do not depend on the batch size: sentences never interact.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from pipeline.model import Seq2Seq
from pipeline.vocab import BOS, EOS, PAD

NEG_INF = -1e9


class SearchResult(NamedTuple):
    tokens: tf.Tensor  # (batch, n, max_len) int32, PAD after </s>; n = 1 or the n-best size
    scores: tf.Tensor  # (batch, n) length-normalised log-probability (= log-probability for greedy)
    log_probs: tf.Tensor  # (batch, n) total log-probability
    attention: tf.Tensor  # (batch, n, max_len, src_len) or (batch, n, 0, 0) when not requested


def _constrain(log_probs, t, limits):
    """Never produce <pad> or <s>; at a sentence's last allowed position, only </s>.

    log_probs (batch, vocab); t the output position; limits (batch,)."""
    ids = tf.range(tf.shape(log_probs)[1])
    banned = (ids == PAD) | (ids == BOS)  # (vocab,)
    log_probs = tf.where(banned[tf.newaxis, :], NEG_INF, log_probs)
    eos_only = tf.where(ids == EOS, 0.0, NEG_INF)  # (vocab,)
    at_limit = tf.expand_dims(t >= limits - 1, 1)  # (batch, 1)
    return tf.where(at_limit, eos_only[tf.newaxis, :], log_probs)


def _repeat(x, k):
    return tf.repeat(x, k, axis=0)


class Searcher:
    """Compiled search functions for one model, or an `Ensemble` (anything with `encode` and
    `decode_step`; encodings and states may be nested structures)."""

    def __init__(self, model: Seq2Seq):
        self.model = model
        self._greedy = tf.function(self._greedy_impl, reduce_retracing=True)
        self._sample = tf.function(self._sample_impl, reduce_retracing=True)
        self._beam = tf.function(self._beam_impl, reduce_retracing=True)

    def greedy(self, src, limits, attention: bool = False) -> SearchResult:
        return self._greedy(src, limits, attention)

    def sample(self, src, limits, temperature: float, top_k: int, seed: int, attention: bool = False):
        return self._sample(src, limits, tf.constant(temperature, tf.float32), top_k, seed, attention)

    def beam(self, src, limits, beam: int, length_penalty: float, n_best: int = 1, attention: bool = False):
        result = self._beam(src, limits, beam, tf.cast(length_penalty, tf.float32), attention)
        return SearchResult(*(x[:, :n_best] for x in result))

    # -- greedy and sampling share one loop --------------------------------------------------

    def _greedy_impl(self, src, limits, attention):
        return self._left_to_right(src, limits, lambda log_probs, t: tf.argmax(log_probs, -1, tf.int32),
                                   attention)

    def _sample_impl(self, src, limits, temperature, top_k, seed, attention):
        def choose(log_probs, t):
            logits = log_probs / temperature
            if top_k > 0:
                kth = tf.math.top_k(logits, top_k).values[:, -1:]
                logits = tf.where(logits < kth, NEG_INF, logits)
            return tf.squeeze(tf.random.stateless_categorical(logits, 1, seed=[seed, t], dtype=tf.int32), 1)

        return self._left_to_right(src, limits, choose, attention)

    def _left_to_right(self, src, limits, choose, attention) -> SearchResult:
        encoded, state = self.model.encode(src)
        batch = tf.shape(src)[0]
        max_len = tf.reduce_max(limits)
        tokens = tf.fill([batch], BOS)
        finished = tf.zeros([batch], tf.bool)
        total = tf.zeros([batch])
        out = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
        weights_out = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        t = tf.constant(0)
        while t < max_len and not tf.reduce_all(finished):
            log_probs, state, weights = self.model.decode_step(encoded, state, tokens, ~finished)
            log_probs = _constrain(log_probs, t, limits)
            chosen = choose(log_probs, t)
            token_lp = tf.gather(log_probs, chosen, batch_dims=1)
            chosen = tf.where(finished, PAD, chosen)
            total += tf.where(finished, 0.0, token_lp)
            out = out.write(t, chosen)
            if attention:
                weights_out = weights_out.write(t, weights)
            finished = finished | (chosen == EOS)
            tokens = chosen
            t += 1
        seq = tf.transpose(out.stack())[:, tf.newaxis, :]  # (batch, 1, steps)
        attn = (tf.transpose(weights_out.stack(), [1, 0, 2])[:, tf.newaxis]  # (batch, 1, steps, src)
                if attention else tf.zeros([batch, 1, 0, 0]))
        scores = total[:, tf.newaxis]
        return SearchResult(seq, scores, scores, attn)

    # -- beam search ---------------------------------------------------------------------------

    def _beam_impl(self, src, limits, k, alpha, attention) -> SearchResult:
        """Beam search with length normalisation score / length**alpha (Wu et al. 2016 use a
        smoothed variant; the plain form is what JoeyNMT's `beam_alpha` does).

        Keeps k alive and k finished hypotheses per sentence, as fairseq does: each step takes
        the 2k best extensions of the alive ones; those among the top k that end in </s> join
        the finished set (ranked by normalised score), and the k best that do not stay alive.

        A sentence is done once it has k finished hypotheses and the best alive one, were it to
        end now, would not beat the worst of them (the stopping rule of Hugging Face's beam
        search; with alpha = 0 it is exact, since log-probabilities only fall as a hypothesis
        grows). Waiting until no alive hypothesis could win at the sentence's length limit, the
        exact rule for alpha > 0, runs most sentences to their limit, about three times the steps,
        for no BLEU on this project's benchmark. A done sentence's finished set is frozen, so its
        result does not depend on the other sentences of its batch. With k = 1 and no length
        penalty this is greedy search.
        """
        model = self.model
        encoded, state = model.encode(src)
        batch = tf.shape(src)[0]
        src_len = tf.shape(src)[1]
        encoded = tf.nest.map_structure(lambda x: _repeat(x, k), encoded)
        state = tf.nest.map_structure(lambda s: _repeat(s, k), state)
        max_len = tf.reduce_max(limits)
        limits_k = _repeat(limits, k)
        att_len = max_len if attention else 0
        att_src = src_len if attention else 0

        alive_seq = tf.zeros([batch, k, max_len], tf.int32)
        alive_att = tf.zeros([batch, k, att_len, att_src])
        # Only the first beam is alive at the start, or every beam would pick the same words.
        alive_lp = tf.tile(tf.concat([[0.0], tf.fill([k - 1], NEG_INF)], 0)[tf.newaxis], [batch, 1])
        fin_seq = tf.zeros([batch, k, max_len], tf.int32)
        fin_att = tf.zeros([batch, k, att_len, att_src])
        fin_score = tf.fill([batch, k], NEG_INF)
        fin_lp = tf.fill([batch, k], NEG_INF)
        tokens = tf.fill([batch * k], BOS)
        done = tf.zeros([batch], tf.bool)

        t = tf.constant(0)
        while t < max_len and not tf.reduce_all(done):
            log_probs, state, weights = model.decode_step(encoded, state, tokens, _repeat(~done, k))
            log_probs = _constrain(log_probs, t, limits_k)
            vocab = tf.shape(log_probs)[1]
            candidates = alive_lp[:, :, tf.newaxis] + tf.reshape(log_probs, [batch, k, vocab])
            top_lp, top_idx = tf.math.top_k(tf.reshape(candidates, [batch, k * vocab]), 2 * k)
            origin = top_idx // vocab  # (batch, 2k) which alive beam each candidate extends
            token = top_idx % vocab
            step = tf.one_hot(t, max_len, dtype=tf.int32)  # (max_len,)
            top_seq = tf.gather(alive_seq, origin, batch_dims=1) + token[:, :, tf.newaxis] * step
            top_att = alive_att
            if attention:
                w = tf.reshape(weights, [batch, k, 1, src_len])
                top_att = tf.gather(alive_att + w * tf.cast(step, tf.float32)[:, tf.newaxis],
                                    origin, batch_dims=1)
            is_eos = token == EOS
            # candidates at -inf (dead beams) must not enter either set
            valid = top_lp > NEG_INF / 2
            in_beam = tf.range(2 * k)[tf.newaxis, :] < k  # </s> counts only within the top k

            # finished: merge the new </s> candidates, keep the k best by normalised score
            length = tf.cast(t + 1, tf.float32)
            joins = is_eos & valid & in_beam & ~done[:, tf.newaxis]
            new_fin = tf.where(joins, top_lp / tf.pow(length, alpha), NEG_INF)
            all_score = tf.concat([fin_score, new_fin], 1)
            fin_score, pick = tf.math.top_k(all_score, k)
            fin_lp = tf.gather(tf.concat([fin_lp, top_lp], 1), pick, batch_dims=1)
            fin_seq = tf.gather(tf.concat([fin_seq, top_seq], 1), pick, batch_dims=1)
            if attention:
                fin_att = tf.ensure_shape(tf.gather(tf.concat([fin_att, top_att], 1), pick, batch_dims=1),
                                          fin_att.shape)

            # alive: the k best candidates that did not end
            alive_lp, pick = tf.math.top_k(tf.where(is_eos | ~valid, NEG_INF, top_lp), k)
            alive_seq = tf.gather(top_seq, pick, batch_dims=1)
            if attention:
                alive_att = tf.ensure_shape(tf.gather(top_att, pick, batch_dims=1), alive_att.shape)
            parent = tf.gather(origin, pick, batch_dims=1)  # (batch, k)
            flat_parent = tf.reshape(parent + tf.range(batch)[:, tf.newaxis] * k, [-1])
            state = tf.nest.map_structure(lambda s: tf.ensure_shape(tf.gather(s, flat_parent), s.shape), state)
            tokens = tf.ensure_shape(tf.reshape(tf.gather(token, pick, batch_dims=1), [-1]), tokens.shape)
            no_alive = alive_lp[:, 0] < NEG_INF / 2  # every hypothesis ended (at the limit at the latest)
            done = done | no_alive | (fin_score[:, -1] >= alive_lp[:, 0] / tf.pow(length, alpha))
            t += 1
        return SearchResult(fin_seq[:, :, :t], fin_score, fin_lp, fin_att[:, :, :t] if attention else fin_att)
