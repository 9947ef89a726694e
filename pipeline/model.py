"""The encoder-decoder: a bidirectional RNN encoder and an RNN decoder with Bahdanau attention.

Decoder step t (Bahdanau et al. 2015, with a Luong-style readout):

    c_t, α_t = attention(s_{t-1}, h)                 context from the previous decoder state
    s_t      = RNN(s_{t-1}, [E y_{t-1}; c_t])        the context is fed into the cell
    o_t      = tanh(W_o [s_t; c_t; E y_{t-1}])       readout, embed_dim wide
    p(y_t)   = softmax(E_out o_t + b)                E_out = E (tied) or its own matrix

Training runs the recurrence with teacher forcing in one `tf.scan`; everything that does not
depend on s_{t-1} (the embedding half of the cell's input projection, the attention keys, the
readout and the vocabulary projection) is computed for all positions at once outside the loop.
The encoder's loop, `bidirectional_recurrence`, likewise projects its inputs before the loop.
`decode_step` is the same recurrence for one step, used by greedy, beam and sampling search.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import keras
import tensorflow as tf
from keras import ops

from pipeline.attention import BahdanauAttention, attend
from pipeline.config import ModelConfig
from pipeline.recurrence import gru_attention_recurrence, gru_gates, masked_gru
from pipeline.vocab import PAD


class Encoded(NamedTuple):
    """What the decoder needs from the encoder, per source sentence."""

    keys: tf.Tensor  # (batch, src_len, att_units)  W₁ h_j, projected once
    values: tf.Tensor  # (batch, src_len, 2*units)  h_j
    mask: tf.Tensor  # (batch, src_len) bool, True on real tokens


def peephole_lstm(z, c_prev, peephole):
    """One LSTM step with peephole connections (Gers and Schmidhuber 2000): the input and forget
    gates also see the previous cell state, the output gate the new one.

        i = σ(z_i + p_i ⊙ c_{t-1})   f = σ(z_f + p_f ⊙ c_{t-1})   c_t = f ⊙ c_{t-1} + i ⊙ tanh(z_g)
        o = σ(z_o + p_o ⊙ c_t)       h_t = o ⊙ tanh(c_t)

    z (batch, 4*units): the gates' pre-activations W x + U h_{t-1} + b, in the order i, f, g, o;
    c_prev (batch, units); peephole (3, units): p_i, p_f, p_o. Returns (h_t, c_t)."""
    z_i, z_f, z_g, z_o = ops.split(z, 4, axis=-1)
    peephole = _as(peephole, z)
    i = ops.sigmoid(z_i + peephole[0] * c_prev)
    f = ops.sigmoid(z_f + peephole[1] * c_prev)
    c = f * c_prev + i * ops.tanh(z_g)
    o = ops.sigmoid(z_o + peephole[2] * c)
    return o * ops.tanh(c), c


@keras.saving.register_keras_serializable(package="pipeline")
class PeepholeLSTMCell(keras.layers.Layer):
    """The encoder's LSTM cell with peephole connections, for `keras.layers.RNN` (Keras's own LSTM
    has none). Forget-gate bias 1; peepholes start at 0, a plain LSTM."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = [units, units]
        self.output_size = units

    def build(self, input_shape):
        u = self.units
        self.kernel = self.add_weight((input_shape[-1], 4 * u), initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight((u, 4 * u), initializer="orthogonal", name="recurrent_kernel")
        self.bias = self.add_weight((4 * u,), initializer="zeros", name="bias")
        self.bias.assign(ops.concatenate([ops.zeros(u), ops.ones(u), ops.zeros(2 * u)]))
        self.peephole = self.add_weight((3, u), initializer="zeros", name="peephole")
        self.built = True

    def call(self, inputs, states, training=False):
        """inputs (batch, input_dim), states [h, c] (batch, units) each -> h_t, [h_t, c_t]."""
        h, c = states
        z = ops.matmul(inputs, self.kernel) + ops.matmul(h, self.recurrent_kernel) + self.bias
        h, c = peephole_lstm(z, c, self.peephole)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="pipeline")
class DecoderCell(keras.layers.Layer):
    """A GRU, LSTM or peephole LSTM cell whose input is [E y_{t-1}; c_t].

    The embedding half of the input projection, `project_inputs`, is applied to all target
    positions at once; each step adds only the context's projection and the recurrent term.
    The GRU is the reset-after variant (as in cuDNN and Keras).
    """

    def __init__(self, cell: str, units: int, **kwargs):
        super().__init__(**kwargs)
        self.cell, self.units = cell, units
        self.gates = 3 if cell == "gru" else 4

    def build(self, embed_dim: int, context_dim: int):
        width = self.gates * self.units
        self.w_input = self.add_weight((embed_dim, width), initializer="glorot_uniform", name="w_input")
        self.w_context = self.add_weight((context_dim, width), initializer="glorot_uniform", name="w_context")
        self.w_recurrent = self.add_weight((self.units, width), initializer="orthogonal", name="w_recurrent")
        bias_init = "zeros"
        self.b_input = self.add_weight((width,), initializer=bias_init, name="b_input")
        self.b_recurrent = self.add_weight((width,), initializer=bias_init, name="b_recurrent")
        if self.cell != "gru":  # forget-gate bias 1 (Jozefowicz et al. 2015)
            self.b_recurrent.assign(ops.concatenate([ops.zeros(self.units), ops.ones(self.units),
                                                     ops.zeros(2 * self.units)]))
        if self.cell == "lstm-peephole":  # p_i, p_f, p_o; 0 at first: a plain LSTM
            self.peephole = self.add_weight((3, self.units), initializer="zeros", name="peephole")
        self.built = True

    def initial_state(self, h0):
        return (h0,) if self.cell == "gru" else (h0, ops.zeros_like(h0))

    def project_inputs(self, embedded):
        """(..., embed_dim) -> (..., gates*units)."""
        return ops.matmul(embedded, _as(self.w_input, embedded)) + _as(self.b_input, embedded)

    def step_weights(self, dtype) -> tuple:
        """The weights each step reads, in the compute `dtype` (see `BahdanauAttention.step_weights`)."""
        names = ("w_context", "w_recurrent", "b_recurrent") + (("peephole",) if self.cell == "lstm-peephole" else ())
        return tuple(ops.cast(getattr(self, name), dtype) for name in names)

    def call(self, projected_input, context, state):
        return self.step(projected_input, context, state, self.step_weights(projected_input.dtype))

    def step(self, projected_input, context, state, weights):
        """projected_input (batch, gates*units), context (batch, context_dim), state: tuple of
        (batch, units) tensors, weights from `step_weights`. Returns the new state tuple; its first
        element is s_t."""
        w_context, w_recurrent, b_recurrent, *peephole = weights
        x = projected_input + ops.matmul(context, w_context)
        h = state[0]
        recurrent = ops.matmul(h, w_recurrent) + b_recurrent
        if self.cell == "gru":
            return _gru_gates(x, recurrent, h)
        if self.cell == "lstm-peephole":
            return peephole_lstm(x + recurrent, state[1], peephole[0])
        return _lstm_gates(x + recurrent, state[1])

    def get_config(self):
        return {**super().get_config(), "cell": self.cell, "units": self.units}


@keras.saving.register_keras_serializable(package="pipeline")
class Seq2Seq(keras.Model):
    def __init__(self, src_vocab: int, tgt_vocab: int, cell: str = "gru", embed_dim: int = 256,
                 units: int = 256, layers: int = 1, attention_units: int = 256, dropout: float = 0.2,
                 tie_embeddings: bool = True, word_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.cell_type, self.embed_dim, self.units, self.num_layers = cell, embed_dim, units, layers
        self.attention_units, self.dropout_rate, self.tie_embeddings = attention_units, dropout, tie_embeddings
        self.word_dropout_rate = word_dropout

        self.src_embedding = keras.layers.Embedding(src_vocab, embed_dim, name="src_embedding")
        self.tgt_embedding = keras.layers.Embedding(tgt_vocab, embed_dim, name="tgt_embedding")
        self.encoder_layers = [
            keras.layers.Bidirectional(_encoder_rnn(cell, units), name=f"encoder_{i}") for i in range(layers)
        ]
        self.bridge = keras.layers.Dense(units, activation="tanh", name="bridge")
        self.attention = BahdanauAttention(attention_units, name="attention")
        self.decoder_cell = DecoderCell(cell, units, name="decoder_cell")
        self.readout = keras.layers.Dense(embed_dim, activation="tanh", name="readout")
        self.output_projection = (None if tie_embeddings
                                  else keras.layers.Dense(tgt_vocab, use_bias=False, name="output_projection"))
        self.dropout = keras.layers.Dropout(dropout)
        # a word's whole embedding, one draw per (sentence, position); no layer (and no random
        # generator among the model's variables) when off, so models saved before it load as they were
        self.word_dropout = (keras.layers.Dropout(word_dropout, noise_shape=(None, None, 1), name="word_dropout")
                             if word_dropout else None)

    def build(self, input_shape=None):
        # One forward pass on a dummy batch creates every weight, so `keras.saving.load_model`
        # can rebuild the model from its config before loading the weights.
        self.built = True
        src = ops.ones((1, 2), dtype="int32")
        self((src, src))

    def build_sublayers(self):
        if not self.decoder_cell.built:
            self.decoder_cell.build(self.embed_dim, 2 * self.units)
            self.attention.build((None, self.units), (None, None, 2 * self.units))
            self.output_bias = self.add_weight((self.tgt_vocab,), initializer="zeros", name="output_bias")

    # -- encoder ---------------------------------------------------------------------------------

    def encode(self, src, training=False):
        """src (batch, src_len) int ids, 0 = padding -> (Encoded, initial decoder state)."""
        self.build_sublayers()
        mask = ops.not_equal(src, PAD)  # (batch, src_len)
        x = self.dropout(self._drop_words(self.src_embedding(src), training), training=training)
        for i, layer in enumerate(self.encoder_layers):
            if i > 0:
                x = self.dropout(x, training=training)
            if self.cell_type == "lstm-peephole" or not layer.built or tf.config.list_logical_devices("GPU"):
                outputs = layer(x, mask=mask, training=training)  # builds the layer; cuDNN on a GPU
                x, states = outputs[0], outputs[1:]
            else:
                x, states = bidirectional_recurrence(self.cell_type, layer, x, mask)
        # states: [h_fwd, h_bwd] (GRU) or [h_fwd, c_fwd, h_bwd, c_bwd] (LSTM)
        h_fwd, h_bwd = states[0], states[len(states) // 2]
        h0 = self.bridge(ops.concatenate([h_fwd, h_bwd], axis=-1))  # s_0 = tanh(W_s [→h; ←h])
        keys = self.attention.project_keys(x)
        return Encoded(keys, x, mask), self.decoder_cell.initial_state(h0)

    def _drop_words(self, embedded, training):
        """(batch, T, E) with whole words zeroed in training (word dropout), when it is on."""
        return embedded if self.word_dropout is None else self.word_dropout(embedded, training=training)

    # -- decoder ---------------------------------------------------------------------------------

    def _logits(self, readout):
        """(..., embed_dim) -> (..., tgt_vocab)."""
        bias = _as(self.output_bias, readout)
        if self.output_projection is None:
            return ops.matmul(readout, ops.transpose(_as(self.tgt_embedding.embeddings, readout))) + bias
        return self.output_projection(readout) + bias

    def _readout(self, state_h, context, embedded, training=False):
        o = self.readout(ops.concatenate([state_h, context, embedded], axis=-1))
        return self.dropout(o, training=training)

    def decode_teacher_forced(self, encoded: Encoded, state, tgt_in, training=False):
        """tgt_in (batch, tgt_len) = <s> y_1 … y_{n-1} -> logits (batch, tgt_len, tgt_vocab)."""
        embedded = self.dropout(self._drop_words(self.tgt_embedding(tgt_in), training), training=training)
        hidden, contexts = self.recurrence(encoded, state, self.decoder_cell.project_inputs(embedded))
        return self.output_logits(hidden, contexts, embedded, training)

    def output_logits(self, hidden, contexts, embedded, training=False):
        """The output layer of teacher forcing: s_1..s_T (batch, T, units), c_1..c_T (batch, T,
        2*units) and E y_0..y_{T-1} (batch, T, E) -> logits (batch, T, tgt_vocab)."""
        return self._logits(self._readout(hidden, contexts, embedded, training))

    def recurrence(self, encoded: Encoded, state, projected, autodiff: bool = False):
        """The part of teacher forcing that runs step by step: attention and cell over the target
        positions. projected (batch, T, gates*units) -> s_1..s_T (batch, T, units) and the
        contexts c_1..c_T (batch, T, 2*units). The GRU's backward pass is written out
        (`pipeline.recurrence`); the LSTMs' (or with `autodiff`, the GRU's) is TensorFlow's
        differentiation of the same steps."""
        attention_weights = self.attention.step_weights(projected.dtype)  # cast once, outside the loop
        cell_weights = self.decoder_cell.step_weights(projected.dtype)
        time_major = tf.transpose(projected, [1, 0, 2])  # (T, batch, gates*units)
        if self.cell_type == "gru" and not autodiff:
            hidden, contexts = gru_attention_recurrence(time_major, encoded.keys, encoded.values, encoded.mask,
                                                        state[0], attention_weights, cell_weights)
            return tf.transpose(hidden, [1, 0, 2]), tf.transpose(contexts, [1, 0, 2])

        def step(carry, x_t):
            state, _ = carry
            context, _ = attend(state[0], encoded.keys, encoded.values, encoded.mask, attention_weights)
            return self.decoder_cell.step(x_t, context, state, cell_weights), context

        context0 = ops.zeros_like(encoded.values[:, 0, :])  # (batch, 2*units)
        states, contexts = tf.scan(step, time_major, initializer=(tuple(state), context0))
        return tf.transpose(states[0], [1, 0, 2]), tf.transpose(contexts, [1, 0, 2])

    def decode_step(self, encoded: Encoded, state, tokens, active=None):
        """One inference step. tokens (batch,) = y_{t-1}; state: tuple of (batch, units).

        Returns log-probabilities (batch, tgt_vocab), the new state and the attention
        weights (batch, src_len) used for this step. With `active` (batch,) bool, the vocabulary
        projection, the step's largest cost, is computed for the active rows only; the others'
        log-probabilities are 0 (search has no use for the rows of finished sentences).
        Log-probabilities and weights are float32 whatever the compute precision.
        """
        embedded = self.tgt_embedding(tokens)  # (batch, E)
        context, weights = self.attention(state[0], encoded.keys, encoded.values, encoded.mask)
        state = self.decoder_cell(self.decoder_cell.project_inputs(embedded), context, state)
        readout = self._readout(state[0], context, embedded)  # (batch, E)
        weights = ops.cast(weights, "float32")
        if active is None:
            return ops.log_softmax(ops.cast(self._logits(readout), "float32"), axis=-1), state, weights
        rows = tf.where(active)  # (n, 1)
        log_probs = tf.nn.log_softmax(tf.cast(self._logits(tf.gather_nd(readout, rows)), tf.float32), axis=-1)
        return tf.scatter_nd(rows, log_probs, [tf.shape(readout)[0], self.tgt_vocab]), state, weights

    def call(self, inputs, training=False):
        """inputs = (src (batch, src_len), tgt_in (batch, tgt_len)) -> logits (batch, tgt_len, vocab)."""
        src, tgt_in = inputs
        encoded, state = self.encode(src, training=training)
        return self.decode_teacher_forced(encoded, state, tgt_in, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "src_vocab": self.src_vocab, "tgt_vocab": self.tgt_vocab, "cell": self.cell_type,
            "embed_dim": self.embed_dim, "units": self.units, "layers": self.num_layers,
            "attention_units": self.attention_units, "dropout": self.dropout_rate,
            "tie_embeddings": self.tie_embeddings, "word_dropout": self.word_dropout_rate,
        }


def bidirectional_recurrence(cell: str, layer, x, mask, autodiff: bool = False):
    """A Bidirectional Keras GRU or LSTM layer on its own weights: what `layer(x, mask=mask)`
    computes, with the input projections W x_t + b of every time step done before the loop.

    Keras's CPU loop (cuDNN takes over on a GPU) multiplies each step's input inside the loop,
    T small matmuls forward and again backward; here they are one matmul over (batch·T,
    input_dim) per direction, as the decoder does, and each step is left with U h_{t-1}.

    x (batch, T, input_dim), mask (batch, T) bool -> outputs (batch, T, 2*units), the forward
    outputs before the backward ones, and the final states [h_fwd(, c_fwd), h_bwd(, c_bwd)], as
    Keras returns them. On padding the state stays as it was and the output is 0; the backward
    direction runs over the reversed padded sequence, as Keras's `go_backwards` does. The GRU's
    backward pass is written out (`pipeline.recurrence.masked_gru`) unless `autodiff`.
    """
    real = ops.transpose(ops.cast(mask, "bool"), (1, 0))[:, :, None]  # (T, batch, 1)
    outputs, states = [], []
    for rnn, backwards in ((layer.forward_layer, False), (layer.backward_layer, True)):
        weights = rnn.cell
        if cell == "gru":  # reset-after, Keras's default: the bias is (input, recurrent)
            input_bias, recurrent_bias = weights.bias[0], _as(weights.bias[1], x)
        else:
            input_bias, recurrent_bias = weights.bias, 0.0
        projected = ops.matmul(x, _as(weights.kernel, x)) + _as(input_bias, x)
        time_major, real_in_order = ops.transpose(projected, (1, 0, 2)), real  # (T, batch, gates*units)
        if backwards:
            time_major, real_in_order = ops.flip(time_major, 0), ops.flip(real, 0)
        recurrent_kernel = _as(weights.recurrent_kernel, x)

        def step(state, inputs, recurrent_kernel=recurrent_kernel, recurrent_bias=recurrent_bias):
            x_t, real_t = inputs
            recurrent = ops.matmul(state[0], recurrent_kernel) + recurrent_bias
            new = _gru_gates(x_t, recurrent, state[0]) if cell == "gru" else _lstm_gates(x_t + recurrent, state[1])
            return [ops.where(real_t, n, old) for n, old in zip(new, state)]

        zeros = ops.zeros((ops.shape(x)[0], weights.units), dtype=x.dtype)
        if cell == "gru" and not autodiff:  # its backward pass written out
            steps = [masked_gru(time_major, real_in_order, zeros, recurrent_kernel, recurrent_bias)]
        else:
            initial = [zeros] if cell == "gru" else [zeros, zeros]
            steps = tf.scan(step, (time_major, real_in_order), initializer=initial)  # each (T, batch, units)
        out = ops.where(real_in_order, steps[0], ops.zeros_like(steps[0]))
        outputs.append(ops.flip(out, 0) if backwards else out)
        states += [s[-1] for s in steps]
    return ops.transpose(ops.concatenate(outputs, axis=-1), (1, 0, 2)), states


def _gru_gates(x, recurrent, h):
    """Keras's reset-after GRU step: x and recurrent (..., 3*units) in the order z, r, h."""
    z, _, n, _ = gru_gates(x, recurrent)
    return (z * h + (1.0 - z) * n,)  # Keras's convention: z keeps the old state


def _lstm_gates(z, c):
    """Keras's LSTM: z (..., 4*units) in the order i, f, g, o."""
    i, f, g, o = ops.split(z, 4, axis=-1)
    c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
    return (ops.sigmoid(o) * ops.tanh(c), c)


def _encoder_rnn(cell: str, units: int) -> keras.layers.Layer:
    """One direction of an encoder layer. The GRU and LSTM layers hold the weights; on a CPU
    `bidirectional_recurrence` runs them, on a GPU Keras does (with cuDNN)."""
    if cell == "lstm-peephole":
        return keras.layers.RNN(PeepholeLSTMCell(units), return_sequences=True, return_state=True)
    rnn = keras.layers.GRU if cell == "gru" else keras.layers.LSTM
    return rnn(units, return_sequences=True, return_state=True)


def _as(variable, like):
    """`variable` in the dtype of the tensor `like`: the compute dtype under mixed precision,
    where variables stay float32 (a no-op in float32)."""
    return ops.cast(variable, like.dtype)


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers created inside compute in `name` ("float32", "mixed_float16", "mixed_bfloat16");
    Keras's global policy is restored afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(config: ModelConfig, src_vocab: int, tgt_vocab: int, precision: str = "float32") -> Seq2Seq:
    """The model, its weights created; under a mixed `precision` its layers compute in float16 or
    bfloat16 while the weights stay float32 (Micikevicius et al. 2018)."""
    config.validate()
    with dtype_policy(precision):
        model = Seq2Seq(src_vocab, tgt_vocab, cell=config.cell, embed_dim=config.embed_dim, units=config.units,
                        layers=config.layers, attention_units=config.attention_units, dropout=config.dropout,
                        tie_embeddings=config.tie_embeddings, word_dropout=config.word_dropout)
        model.build()
    return model
