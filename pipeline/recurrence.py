"""The GRU loops of training, with their backward passes written out (BPTT): the decoder's
teacher-forced recurrence with attention, and each direction of the encoder (`masked_gru`).

Forward, per target position t (`Seq2Seq.recurrence`, the step `attend` + `DecoderCell.step`):

    q_t = s_{t-1} W₂ + b₂                   E_t = tanh(K + q_t)           (batch, src_len, att)
    α_t = softmax(E_t v) over real tokens    c_t = α_t V                   (batch, 2*units)
    x'_t = x_t + c_t W_c                     ρ_t = s_{t-1} W_r + b_r       (batch, 3*units), z | r | h
    z = σ(x'_z + ρ_z)   r = σ(x'_r + ρ_r)   n = tanh(x'_h + r ⊙ ρ_h)    s_t = z ⊙ s_{t-1} + (1 - z) ⊙ n

Differentiating `tf.scan` automatically makes every step add its share of each weight's gradient
(and of K's and V's) into an accumulator, dozens of small ops a step. Here the forward loop keeps
only s_t, c_t and α_t; the backward pass first recomputes the gates and energies of all steps at
once (large products), then runs a loop that carries only ∂s and stacks what each step yields:
∂x'_t, ∂ρ_t, ∂q_t, the scores' gradient and ∂c_t. The weights', K's and V's gradients are then a
few large products over all steps, Σ_t s_{t-1}ᵀ ∂ρ_t = S_prevᵀ ∂P and so on, as cuDNN computes an
RNN's. The same numbers as autodiff's up to rounding (tests/test_model.py).
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.attention import padding_score


def gru_attention_recurrence(x, keys, values, mask, h0, attention_weights, cell_weights):
    """x (T, batch, 3*units) time-major projected inputs; keys (batch, S, att), values (batch, S,
    2*units), mask (batch, S) bool; h0 (batch, units); attention_weights (W₂, b₂, v) and
    cell_weights (W_c, W_r, b_r) as `step_weights` gives them. Returns s_1..s_T (T, batch, units)
    and c_1..c_T (T, batch, 2*units)."""
    w2, b2, v = attention_weights
    w_context, w_recurrent, b_recurrent = cell_weights
    return _recurrence(x, keys, values, mask, h0, w2, b2, v, w_context, w_recurrent, b_recurrent)


@tf.custom_gradient
def _recurrence(x, keys, values, mask, h0, w2, b2, v, w_context, w_recurrent, b_recurrent):
    masked = tf.cast(padding_score(keys.dtype), keys.dtype)

    def step(carry, x_t):
        h = carry[0]
        energy = tf.tanh(keys + (tf.matmul(h, w2) + b2)[:, None, :])  # (batch, S, att)
        scores = tf.where(mask, tf.squeeze(tf.matmul(energy, v), -1), masked)  # (batch, S)
        alpha = tf.nn.softmax(scores, axis=-1)
        context = tf.squeeze(tf.matmul(alpha[:, None, :], values), 1)  # (batch, 1, S) @ V -> (batch, 2*units)
        z, _, n, _ = gru_gates(x_t + tf.matmul(context, w_context), tf.matmul(h, w_recurrent) + b_recurrent)
        return z * h + (1.0 - z) * n, context, alpha

    first = (h0, tf.zeros_like(values[:, 0, :]), tf.zeros_like(keys[:, :, 0]))  # the shapes of a step's outputs
    hidden, contexts, alpha = tf.scan(step, x, initializer=first)

    def grad(d_hidden, d_contexts):
        # what the steps computed on the way, recomputed for all of them at once: large products
        # instead of stacking each step's intermediates
        h_prev = tf.concat([h0[None], hidden[:-1]], 0)  # s_0..s_{T-1}
        energy = tf.tanh(keys + (_times(h_prev, w2) + b2)[:, :, None, :])  # (T, batch, S, att)
        slope = 1.0 - energy * energy  # tanh'
        z, r, n, r_h = gru_gates(x + _times(contexts, w_context), _times(h_prev, w_recurrent) + b_recurrent)
        v_row = v[:, 0]

        def back(carry, inputs):
            dh_out, dc_out, h, z_t, r_t, n_t, rh_t, alpha_t, slope_t = inputs
            dh = dh_out + carry[0]  # ∂s_t
            d_xc, d_rho, dh_prev = _gru_backward(dh, h, z_t, r_t, n_t, rh_t, w_recurrent)
            dc = dc_out + tf.matmul(d_xc, w_context, transpose_b=True)  # ∂c_t (batch, 2*units)
            d_alpha = tf.squeeze(tf.matmul(values, dc[:, :, None]), -1)  # (batch, S)
            d_scores = alpha_t * (d_alpha - tf.reduce_sum(alpha_t * d_alpha, -1, keepdims=True))
            dq = tf.squeeze(tf.matmul(d_scores[:, None, :], slope_t), 1) * v_row  # Σ_j ∂E_tj: (batch, att)
            return dh_prev + tf.matmul(dq, w2, transpose_b=True), d_xc, d_rho, dq, d_scores, dc

        d_hidden = tf.zeros_like(hidden) if d_hidden is None else d_hidden
        d_contexts = tf.zeros_like(contexts) if d_contexts is None else d_contexts
        steps = (d_hidden, d_contexts, h_prev, z, r, n, r_h, alpha, slope)
        initial = (tf.zeros_like(h0), tf.zeros_like(x[0]), tf.zeros_like(x[0]), tf.zeros_like(keys[:, 0, :]),
                   tf.zeros_like(keys[:, :, 0]), tf.zeros_like(values[:, 0, :]))  # the shapes of a step's outputs
        dh, d_x, d_rho, dq, d_scores, dc = tf.scan(back, steps, initializer=initial, reverse=True)
        d_keys = tf.reduce_sum(d_scores[..., None] * slope, 0) * v_row  # Σ_t ∂E_t: (batch, S, att)
        d_values = tf.matmul(tf.transpose(alpha, [1, 2, 0]), tf.transpose(dc, [1, 0, 2]))  # Σ_t α_tᵀ ∂c_t
        return (d_x, d_keys, d_values, None, dh[0], _summed_product(h_prev, dq), tf.reduce_sum(dq, [0, 1]),
                _summed_product(energy, d_scores[..., None]), _summed_product(contexts, d_x),
                _summed_product(h_prev, d_rho), tf.reduce_sum(d_rho, [0, 1]))

    return (hidden, contexts), grad


def masked_gru(x, real, h0, w_recurrent, b_recurrent):
    """One direction of the encoder's GRU (Keras's reset-after GRU, as `bidirectional_recurrence`
    runs it), its backward pass written out as the decoder's is.

    x (T, batch, 3*units) time-major inputs already projected (W x_t + b); real (T, batch, 1) bool,
    False on padding, where the state stays as it was; h0 (batch, units); w_recurrent (units,
    3*units), b_recurrent (3*units,). Returns the states s_1..s_T (T, batch, units)."""
    return _masked_gru(x, real, h0, w_recurrent, b_recurrent)


@tf.custom_gradient
def _masked_gru(x, real, h0, w_recurrent, b_recurrent):
    def step(h, inputs):
        x_t, real_t = inputs
        z, _, n, _ = gru_gates(x_t, tf.matmul(h, w_recurrent) + b_recurrent)
        return tf.where(real_t, z * h + (1.0 - z) * n, h)

    hidden = tf.scan(step, (x, real), initializer=h0)

    def grad(d_hidden):
        h_prev = tf.concat([h0[None], hidden[:-1]], 0)  # s_0..s_{T-1}
        z, r, n, r_h = gru_gates(x, _times(h_prev, w_recurrent) + b_recurrent)  # every step's, recomputed at once

        def back(carry, inputs):
            dh_out, h, real_t, z_t, r_t, n_t, rh_t = inputs
            dh = dh_out + carry[0]  # ∂s_t
            dg = tf.where(real_t, dh, tf.zeros_like(dh))  # what reaches the gates: nothing on padding
            d_x, d_rho, dh_prev = _gru_backward(dg, h, z_t, r_t, n_t, rh_t, w_recurrent)
            return dh_prev + tf.where(real_t, tf.zeros_like(dh), dh), d_x, d_rho  # padding passes ∂s on

        initial = (tf.zeros_like(h0), tf.zeros_like(x[0]), tf.zeros_like(x[0]))
        dh, d_x, d_rho = tf.scan(back, (d_hidden, h_prev, real, z, r, n, r_h), initializer=initial, reverse=True)
        return d_x, None, dh[0], _summed_product(h_prev, d_rho), tf.reduce_sum(d_rho, [0, 1])

    return hidden, grad


def gru_gates(x, rho):
    """Keras's reset-after GRU on projected inputs x and recurrent terms ρ = s W_r + b_r, (...,
    3*units) each in the order z, r, h: the gates z and r, the candidate n and ρ_h."""
    x_z, x_r, x_h = tf.split(x, 3, axis=-1)
    r_z, r_r, r_h = tf.split(rho, 3, axis=-1)
    z, r = tf.sigmoid(x_z + r_z), tf.sigmoid(x_r + r_r)
    return z, r, tf.tanh(x_h + r * r_h), r_h


def _gru_backward(dh, h, z, r, n, r_h, w_recurrent):
    """One step of the GRU's backward pass: from ∂s_t (dh) and the step's s_{t-1} (h), gates and
    ρ_h, the gradients of its projected input x_t and of ρ_t (batch, 3*units each), and the part
    of ∂s_{t-1} that flows through the cell: s_t = z ⊙ s_{t-1} + (1 - z) ⊙ n."""
    dz = dh * (h - n) * z * (1.0 - z)
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dr = dn * r_h * r * (1.0 - r)
    d_rho = tf.concat([dz, dr, dn * r], -1)
    return tf.concat([dz, dr, dn], -1), d_rho, dh * z + tf.matmul(d_rho, w_recurrent, transpose_b=True)


def _times(a, w):
    """a (T, batch, m) @ w (m, k) as one product over all steps: (T, batch, k)."""
    shape = tf.shape(a)
    return tf.reshape(tf.matmul(tf.reshape(a, [-1, shape[-1]]), w), tf.concat([shape[:-1], tf.shape(w)[-1:]], 0))


def _summed_product(a, b):
    """Σ over all steps and rows of a_iᵀ b_i: a (..., m), b (..., k) -> (m, k)."""
    return tf.matmul(tf.reshape(a, [-1, tf.shape(a)[-1]]), tf.reshape(b, [-1, tf.shape(b)[-1]]), transpose_a=True)
