"""Bahdanau (additive) attention, Bahdanau, Cho & Bengio (2015), appendix A.1.2.

    e_tj = vᵀ tanh(W₂ s_{t-1} + W₁ h_j)        (score, their v_aᵀ tanh(W_a s_{i-1} + U_a h_j))
    α_tj = softmax_j(e_tj) over real source tokens
    c_t  = Σ_j α_tj h_j

W₁ h_j does not depend on the decoder step, so `project_keys` computes it once per source
sentence; each step only projects the query.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pipeline")
class BahdanauAttention(keras.layers.Layer):
    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.key_projection = keras.layers.Dense(units, use_bias=False, name="W1")
        self.query_projection = keras.layers.Dense(units, use_bias=True, name="W2")
        self.score_vector = keras.layers.Dense(1, use_bias=False, name="v")

    def build(self, query_shape, values_shape):
        for layer, shape in ((self.key_projection, values_shape), (self.query_projection, query_shape),
                             (self.score_vector, (None, None, self.units))):
            if not layer.built:  # project_keys may have built W1 already
                layer.build(shape)
        self.built = True

    def project_keys(self, values):
        """W₁ h_j for every source position: (batch, src_len, 2*units) -> (batch, src_len, att_units)."""
        return self.key_projection(values)

    def step_weights(self, dtype) -> tuple:
        """W₂, its bias and v in the compute `dtype`, for a loop that calls `attend` at every
        step: under mixed precision a variable is cast where it is read, so read once, not per step."""
        return tuple(ops.cast(w, dtype) for w in (self.query_projection.kernel, self.query_projection.bias,
                                                  self.score_vector.kernel))

    def call(self, query, keys, values, mask):
        """One decoder step's attention; see `attend`."""
        return attend(query, keys, values, mask, self.step_weights(keys.dtype))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def padding_score(dtype) -> float:
    """The score that gives a padding position no weight: -1e9, or -3e4 in float16 (max 65504)."""
    return -3e4 if keras.backend.standardize_dtype(dtype) == "float16" else -1e9


def attend(query, keys, values, mask, weights):
    """One decoder step's attention.

    query:   (batch, dec_units)           s_{t-1}
    keys:    (batch, src_len, att_units)  W₁ h_j from `project_keys`
    values:  (batch, src_len, enc_dim)    h_j
    mask:    (batch, src_len) bool        True on real source tokens
    weights: W₂ (dec_units, att_units), its bias (att_units,) and v (att_units, 1), from `step_weights`
    returns context (batch, enc_dim) and weights (batch, src_len), zero on padding.
    """
    w2, b2, v = weights
    projected_query = ops.expand_dims(ops.matmul(query, w2) + b2, 1)  # (batch, 1, att_units)
    scores = ops.squeeze(ops.matmul(ops.tanh(keys + projected_query), v), -1)  # (batch, src_len)
    scores = ops.where(mask, scores, ops.full_like(scores, padding_score(scores.dtype)))
    alphas = ops.softmax(scores, axis=-1)
    context = ops.squeeze(ops.matmul(ops.expand_dims(alphas, 1), values), 1)  # (batch, 1, src_len) @ values
    return context, alphas
