"""The decoder's teacher-forced recurrence for the GRU, with its backward pass written out (BPTT).

Forward, per target position t (`Seq2Seq.recurrence`, the step `attend` + `DecoderCell.step`):

    q_t = s_{t-1} W₂ + b₂                   E_t = tanh(K + q_t)           (batch, src_len, att)
    α_t = softmax(E_t v) over real tokens    c_t = α_t V                   (batch, 2*units)
    x'_t = x_t + c_t W_c                     ρ_t = s_{t-1} W_r + b_r       (batch, 3*units), z | r | h
    z = σ(x'_z + ρ_z)   r = σ(x'_r + ρ_r)   n = tanh(x'_h + r ⊙ ρ_h)    s_t = z ⊙ s_{t-1} + (1 - z) ⊙ n

Differentiating `tf.scan` automatically makes every step add its share of each weight's gradient
(and of K's and V's) into an accumulator, dozens of small ops a step. Here the backward loop
carries only ∂s (and K's sum), and stacks what each step yields: ∂x'_t, ∂ρ_t, ∂q_t, the scores'
gradient and ∂c_t. The weights' gradients are then a few large products over all steps at once,
Σ_t s_{t-1}ᵀ ∂ρ_t = S_prevᵀ ∂P and so on, as cuDNN computes an RNN's. The same numbers as
autodiff's up to rounding (tests/test_model.py).
"""

from __future__ import annotations

import tensorflow as tf


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
    masked = tf.cast(-1e9, keys.dtype)

    def step(carry, x_t):
        h = carry[0]
        energy = tf.tanh(keys + (tf.matmul(h, w2) + b2)[:, None, :])  # (batch, S, att)
        scores = tf.where(mask, tf.squeeze(tf.matmul(energy, v), -1), masked)  # (batch, S)
        alpha = tf.nn.softmax(scores, axis=-1)
        context = tf.squeeze(tf.matmul(alpha[:, None, :], values), 1)  # (batch, 1, S) @ V -> (batch, 2*units)
        xc = x_t + tf.matmul(context, w_context)
        rho = tf.matmul(h, w_recurrent) + b_recurrent
        x_z, x_r, x_h = tf.split(xc, 3, axis=-1)
        r_z, r_r, r_h = tf.split(rho, 3, axis=-1)
        z, r = tf.sigmoid(x_z + r_z), tf.sigmoid(x_r + r_r)
        n = tf.tanh(x_h + r * r_h)
        return z * h + (1.0 - z) * n, context, z, r, n, r_h, alpha, energy

    batch, att = tf.shape(h0)[0], tf.shape(w2)[1]
    like_h = tf.zeros_like(h0)
    first = (h0, tf.zeros_like(values[:, 0, :]), like_h, like_h, like_h, like_h, tf.zeros_like(keys[:, :, 0]),
             tf.zeros_like(keys))  # the shapes of a step's outputs
    hidden, contexts, z, r, n, r_h, alpha, energy = tf.scan(step, x, initializer=first)

    def grad(d_hidden, d_contexts):
        h_prev = tf.concat([h0[None], hidden[:-1]], 0)  # s_0..s_{T-1}
        slope = 1.0 - energy * energy  # tanh' of every step's energies, (T, batch, S, att), in one op
        v_row = v[:, 0]

        def back(carry, inputs):
            dh_next = carry[0]
            dh_out, dc_out, h, z_t, r_t, n_t, rh_t, alpha_t, slope_t = inputs
            dh = dh_out + dh_next  # ∂s_t
            dz = dh * (h - n_t) * z_t * (1.0 - z_t)
            dn = dh * (1.0 - z_t) * (1.0 - n_t * n_t)
            dr = dn * rh_t * r_t * (1.0 - r_t)
            d_xc = tf.concat([dz, dr, dn], -1)  # ∂x'_t
            d_rho = tf.concat([dz, dr, dn * r_t], -1)  # ∂ρ_t
            dc = dc_out + tf.matmul(d_xc, w_context, transpose_b=True)  # ∂c_t (batch, 2*units)
            d_alpha = tf.squeeze(tf.matmul(values, dc[:, :, None]), -1)  # (batch, S)
            d_scores = alpha_t * (d_alpha - tf.reduce_sum(alpha_t * d_alpha, -1, keepdims=True))
            dq = tf.squeeze(tf.matmul(d_scores[:, None, :], slope_t), 1) * v_row  # Σ_j ∂E_tj: (batch, att)
            dh_prev = dh * z_t + tf.matmul(d_rho, w_recurrent, transpose_b=True) + tf.matmul(dq, w2, transpose_b=True)
            return dh_prev, d_xc, d_rho, dq, d_scores, dc

        d_hidden = tf.zeros_like(hidden) if d_hidden is None else d_hidden
        d_contexts = tf.zeros_like(contexts) if d_contexts is None else d_contexts
        steps = (d_hidden, d_contexts, h_prev, z, r, n, r_h, alpha, slope)
        initial = (like_h, tf.zeros_like(x[0]), tf.zeros_like(x[0]), tf.zeros([batch, att], x.dtype),
                   tf.zeros_like(keys[:, :, 0]), tf.zeros_like(values[:, 0, :]))
        dh, d_x, d_rho, dq, d_scores, dc = tf.scan(back, steps, initializer=initial, reverse=True)

        def summed_product(a, b):  # Σ over steps and rows of a_iᵀ b_i: (..., m), (..., k) -> (m, k)
            return tf.matmul(tf.reshape(a, [-1, tf.shape(a)[-1]]), tf.reshape(b, [-1, tf.shape(b)[-1]]),
                             transpose_a=True)

        d_keys = tf.reduce_sum(d_scores[..., None] * slope, 0) * v_row  # Σ_t ∂E_t: (batch, S, att)
        d_values = tf.matmul(tf.transpose(alpha, [1, 2, 0]), tf.transpose(dc, [1, 0, 2]))  # Σ_t α_tᵀ ∂c_t
        return (d_x, d_keys, d_values, None, dh[0], summed_product(h_prev, dq), tf.reduce_sum(dq, [0, 1]),
                summed_product(energy, d_scores[..., None]), summed_product(contexts, d_x),
                summed_product(h_prev, d_rho), tf.reduce_sum(d_rho, [0, 1]))

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
    def step(carry, inputs):
        h = carry[0]
        x_t, real_t = inputs
        x_z, x_r, x_h = tf.split(x_t, 3, axis=-1)
        r_z, r_r, r_h = tf.split(tf.matmul(h, w_recurrent) + b_recurrent, 3, axis=-1)
        z, r = tf.sigmoid(x_z + r_z), tf.sigmoid(x_r + r_r)
        n = tf.tanh(x_h + r * r_h)
        return tf.where(real_t, z * h + (1.0 - z) * n, h), z, r, n, r_h

    like_h = tf.zeros_like(h0)
    hidden, z, r, n, r_h = tf.scan(step, (x, real), initializer=(h0, like_h, like_h, like_h, like_h))

    def grad(d_hidden):
        h_prev = tf.concat([h0[None], hidden[:-1]], 0)  # s_0..s_{T-1}

        def back(carry, inputs):
            dh_out, h, real_t, z_t, r_t, n_t, rh_t = inputs
            dh = dh_out + carry[0]  # ∂s_t
            dg = tf.where(real_t, dh, tf.zeros_like(dh))  # what reaches the gates: nothing on padding
            dz = dg * (h - n_t) * z_t * (1.0 - z_t)
            dn = dg * (1.0 - z_t) * (1.0 - n_t * n_t)
            dr = dn * rh_t * r_t * (1.0 - r_t)
            d_rho = tf.concat([dz, dr, dn * r_t], -1)
            dh_prev = dh * tf.where(real_t, z_t, tf.ones_like(z_t)) + tf.matmul(d_rho, w_recurrent, transpose_b=True)
            return dh_prev, tf.concat([dz, dr, dn], -1), d_rho

        initial = (like_h, tf.zeros_like(x[0]), tf.zeros_like(x[0]))
        dh, d_x, d_rho = tf.scan(back, (d_hidden, h_prev, real, z, r, n, r_h), initializer=initial, reverse=True)
        d_w = tf.matmul(tf.reshape(h_prev, [-1, tf.shape(h0)[-1]]), tf.reshape(d_rho, [-1, tf.shape(x)[-1]]),
                        transpose_a=True)  # Σ_t s_{t-1}ᵀ ∂ρ_t
        return d_x, None, dh[0], d_w, tf.reduce_sum(d_rho, [0, 1])

    return hidden, grad
