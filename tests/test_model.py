"""The encoder-decoder and its attention: shapes, masking, saving, the shared decoder step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.attention import BahdanauAttention
from pipeline.config import ModelConfig
from pipeline.model import bidirectional_recurrence, build_model
from pipeline.vocab import PAD


def _batch(rng, batch=3, src_len=7, tgt_len=5, src_vocab=50, tgt_vocab=40):
    src = rng.integers(4, src_vocab, (batch, src_len)).astype("int32")
    src[1, 4:] = PAD  # sentence 1 has 4 real tokens, 3 pads
    src[2, 2:] = PAD
    tgt = rng.integers(4, tgt_vocab, (batch, tgt_len)).astype("int32")
    return src, tgt


def test_attention_weights_sum_to_one_over_real_tokens_and_are_zero_on_padding():
    rng = np.random.default_rng(0)
    att = BahdanauAttention(8)
    values = rng.normal(size=(2, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    query = rng.normal(size=(2, 4)).astype("float32")
    keys = att.project_keys(values)
    context, weights = att(query, keys, values, mask)
    weights = np.asarray(weights)
    assert keys.shape == (2, 5, 8)
    assert context.shape == (2, 6) and weights.shape == (2, 5)
    np.testing.assert_allclose(weights.sum(-1), [1.0, 1.0], atol=1e-6)
    assert np.all(weights[0, 3:] == 0.0) and np.all(weights[0, :3] > 0)
    # the context is the weighted sum of the values
    np.testing.assert_allclose(np.asarray(context), np.einsum("bs,bsd->bd", weights, values), atol=1e-5)


def test_attention_ignores_what_padding_holds():
    rng = np.random.default_rng(1)
    att = BahdanauAttention(8)
    values = rng.normal(size=(1, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0]], bool)
    query = rng.normal(size=(1, 4)).astype("float32")
    changed = values.copy()
    changed[0, 3:] = 100.0
    a = att(query, att.project_keys(values), values, mask)[0]
    b = att(query, att.project_keys(changed), changed, mask)[0]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("cell,layers,tied", [("gru", 1, True), ("lstm", 2, False)])
def test_forward_shapes(cell, layers, tied):
    model = build_model(ModelConfig(cell=cell, layers=layers, embed_dim=16, units=12, attention_units=10,
                                    tie_embeddings=tied), src_vocab=50, tgt_vocab=40)
    src, tgt = _batch(np.random.default_rng(0))
    logits = model((src, tgt))
    assert logits.shape == (3, 5, 40)
    encoded, state = model.encode(src)
    assert encoded.values.shape == (3, 7, 24) and encoded.keys.shape == (3, 7, 10)
    assert [s.shape for s in state] == [(3, 12)] * (1 if cell == "gru" else 2)


def test_source_padding_does_not_change_the_output():
    model = build_model(ModelConfig(embed_dim=16, units=12, attention_units=10), 50, 40)
    src, tgt = _batch(np.random.default_rng(0))
    short = model((src[1:2, :4], tgt[1:2]))
    padded = model((src[1:2], tgt[1:2]))  # same sentence with 3 pads
    np.testing.assert_allclose(np.asarray(short), np.asarray(padded), atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_encoder_loop_computes_what_the_keras_layer_does(cell):
    """`bidirectional_recurrence` (the input projections before the loop) gives the outputs, final
    states and gradients of Keras's own Bidirectional layer on the same weights, with padding."""
    model = build_model(ModelConfig(cell=cell, embed_dim=16, units=12, attention_units=10), 50, 40)
    src, _ = _batch(np.random.default_rng(0))
    layer = model.encoder_layers[0]
    x, mask = model.src_embedding(src), src != PAD
    with tf.GradientTape(persistent=True) as tape:
        theirs = layer(x, mask=mask)
        outputs, states = bidirectional_recurrence(cell, layer, x, mask)
        ours = [outputs, *states]
        losses = [sum(tf.reduce_sum(t * t) for t in side) for side in (theirs, ours)]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    for a, b in zip(*(tape.gradient(loss, layer.trainable_weights) for loss in reversed(losses))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_the_encoder_gru_backward_pass_is_tensorflows_gradient():
    """The encoder GRU's written-out backward pass (`pipeline.recurrence.masked_gru`) against
    TensorFlow's differentiation of the same loop, in float64: the weights' and the inputs'
    gradients, with padding."""
    model = build_model(ModelConfig(embed_dim=16, units=12, attention_units=10), 50, 40, precision="float64")
    src, _ = _batch(np.random.default_rng(0))
    layer, mask = model.encoder_layers[0], src != PAD
    weigh = np.random.default_rng(1).normal(size=(3, 7, 24))
    grads = []
    for autodiff in (True, False):
        x = model.src_embedding(src)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs, states = bidirectional_recurrence("gru", layer, x, mask, autodiff=autodiff)
            loss = tf.reduce_sum(outputs * weigh) + sum(tf.reduce_sum(s * s) for s in states)
        grads.append(tape.gradient(loss, [x, *layer.trainable_weights]))
    for ours, theirs in zip(grads[1], grads[0]):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-9, atol=1e-12)


def test_the_decoder_recurrence_backward_pass_is_tensorflows_gradient():
    """The GRU recurrence's written-out backward pass (`pipeline.recurrence`) gives the gradients
    TensorFlow's differentiation of the same steps gives: every weight, the encoder's outputs and
    the inputs, with source padding, for a loss on both the states and the contexts. In float64,
    where the two orders of summation round alike to far below what they are checked to."""
    keras.utils.set_random_seed(3)
    model = build_model(ModelConfig(embed_dim=16, units=12, attention_units=10), 50, 40, precision="float64")
    src, tgt = _batch(np.random.default_rng(0), batch=4, tgt_len=6)
    rng = np.random.default_rng(1)
    for weight in (model.attention.score_vector.kernel, model.attention.query_projection.kernel):
        weight.assign(rng.normal(size=weight.shape) * 2)  # attention far from uniform, as after training
    weigh_h, weigh_c = rng.normal(size=(4, 6, 12)), rng.normal(size=(4, 6, 24))
    results = []
    for autodiff in (True, False):
        with tf.GradientTape() as tape:
            encoded, state = model.encode(src)
            projected = model.decoder_cell.project_inputs(model.tgt_embedding(tgt))
            hidden, contexts = model.recurrence(encoded, state, projected, autodiff=autodiff)
            loss = tf.reduce_sum(hidden * weigh_h) + tf.reduce_sum(contexts * weigh_c)
        results.append((hidden, contexts, tape.gradient(loss, model.trainable_variables)))
    (h_auto, c_auto, g_auto), (h_ours, c_ours, g_ours) = results
    np.testing.assert_allclose(np.asarray(h_ours), np.asarray(h_auto), atol=1e-12)
    np.testing.assert_allclose(np.asarray(c_ours), np.asarray(c_auto), atol=1e-12)
    names = [v.path for v in model.trainable_variables]
    assert [n for n, g in zip(names, g_ours) if g is None] == [n for n, g in zip(names, g_auto) if g is None]
    assert sum(g is not None for g in g_ours) == 19  # all but the readout (kernel, bias) and the output bias
    for name, grad, ours in zip(names, g_auto, g_ours):
        if grad is not None:
            grad, ours = np.asarray(tf.convert_to_tensor(grad)), np.asarray(tf.convert_to_tensor(ours))
            np.testing.assert_allclose(ours, grad, rtol=1e-9, atol=1e-12 * np.abs(grad).max(), err_msg=name)


def test_decode_step_matches_teacher_forcing():
    """One decoder step (used by every search) computes what the training loop computes."""
    model = build_model(ModelConfig(embed_dim=16, units=12, attention_units=10), 50, 40)
    src, tgt = _batch(np.random.default_rng(3))
    logits = model((src, tgt), training=False)
    expected = keras.ops.log_softmax(logits, axis=-1)
    encoded, state = model.encode(src)
    for t in range(tgt.shape[1]):
        log_probs, state, weights = model.decode_step(encoded, state, tgt[:, t])
        np.testing.assert_allclose(np.asarray(log_probs), np.asarray(expected[:, t]), atol=1e-4)
        np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-5)
        assert np.all(np.asarray(weights)[1, 4:] == 0)



def test_decode_step_for_active_rows_only():
    """Search asks for the rows of unfinished sentences only; theirs are unchanged, the rest 0."""
    model = build_model(ModelConfig(embed_dim=16, units=12, attention_units=10), 50, 40)
    src, tgt = _batch(np.random.default_rng(4))
    encoded, state = model.encode(src)
    full, full_state, _ = model.decode_step(encoded, state, tgt[:, 0])
    active = np.array([True, False, True])
    part, part_state, _ = model.decode_step(encoded, state, tgt[:, 0], active)
    np.testing.assert_allclose(np.asarray(part)[active], np.asarray(full)[active], atol=1e-6)
    assert np.all(np.asarray(part)[~active] == 0)
    np.testing.assert_array_equal(np.asarray(part_state[0]), np.asarray(full_state[0]))

def test_saved_model_reloads_identically(tmp_path):
    model = build_model(ModelConfig(cell="lstm", embed_dim=16, units=12, attention_units=10), 50, 40)
    src, tgt = _batch(np.random.default_rng(0))
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_array_equal(np.asarray(model((src, tgt))), np.asarray(again((src, tgt))))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _peephole_step(z, c_prev, p):
    """Gers and Schmidhuber's peephole LSTM step, by hand: gates i, f, g, o in that order."""
    z_i, z_f, z_g, z_o = np.split(z, 4, axis=-1)
    i, f = _sigmoid(z_i + p[0] * c_prev), _sigmoid(z_f + p[1] * c_prev)
    c = f * c_prev + i * np.tanh(z_g)
    return _sigmoid(z_o + p[2] * c) * np.tanh(c), c


def test_the_peephole_lstm_cells_compute_one_step_as_by_hand():
    from pipeline.model import DecoderCell, PeepholeLSTMCell

    rng = np.random.default_rng(3)
    units, batch = 4, 2
    encoder = PeepholeLSTMCell(units)
    encoder.build((batch, 5))
    decoder = DecoderCell("lstm-peephole", units)
    decoder.build(6, 3)
    for layer in (encoder, decoder):  # peepholes start at 0: give them values that show
        for w in layer.weights:
            w.assign(rng.normal(size=w.shape).astype("float32"))
    x, h, c = (rng.normal(size=s).astype("float32") for s in ((batch, 5), (batch, units), (batch, units)))
    got_h, (_, got_c) = encoder(x, [h, c])
    z = x @ encoder.kernel.numpy() + h @ encoder.recurrent_kernel.numpy() + encoder.bias.numpy()
    want_h, want_c = _peephole_step(z, c, encoder.peephole.numpy())
    np.testing.assert_allclose(got_h, want_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-5, atol=1e-6)

    embedded, context = rng.normal(size=(batch, 6)).astype("float32"), rng.normal(size=(batch, 3)).astype("float32")
    got_h, got_c = decoder(decoder.project_inputs(embedded), context, (h, c))
    z = (embedded @ decoder.w_input.numpy() + decoder.b_input.numpy() + context @ decoder.w_context.numpy()
         + h @ decoder.w_recurrent.numpy() + decoder.b_recurrent.numpy())
    want_h, want_c = _peephole_step(z, c, decoder.peephole.numpy())
    np.testing.assert_allclose(got_h, want_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-5, atol=1e-6)


def test_a_peephole_lstm_model_trains_a_step_and_reloads(tmp_path):
    import keras

    from pipeline.checkpoints import save_for_inference

    model = build_model(ModelConfig(cell="lstm-peephole", embed_dim=8, units=8, attention_units=8), 20, 20)
    src = np.array([[5, 6, 3], [7, 3, 0]], np.int32)
    assert model((src, src)).shape == (2, 3, 20)
    peepholes = [w for w in model.weights if w.path.endswith("/peephole")]
    assert len(peepholes) == 3  # forward and backward encoder, decoder
    save_for_inference(model, tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(again((src, src)), model((src, src)), rtol=1e-6)


def test_word_dropout_zeroes_whole_words_in_training_only_and_survives_saving(tmp_path):
    config = ModelConfig(embed_dim=8, units=8, attention_units=8, dropout=0.0, word_dropout=0.5)
    model = build_model(config, 30, 30)
    embedded = model.src_embedding(np.full((64, 10), 7))
    dropped = model._drop_words(embedded, training=True).numpy()
    kept = np.abs(dropped).sum(-1) != 0  # (64, 10): a whole word is kept or dropped
    assert 0.35 < kept.mean() < 0.65
    np.testing.assert_allclose(dropped[kept], 2 * embedded.numpy()[kept], rtol=1e-6)  # inverted dropout
    np.testing.assert_array_equal(model._drop_words(embedded, training=False), embedded)
    path = tmp_path / "model.keras"
    model.save(path)
    assert keras.saving.load_model(path, compile=False).word_dropout_rate == 0.5
    # off (the default): no layer, so the model's variables are those of models saved before it existed
    assert len(build_model(ModelConfig(**{**vars(config), "word_dropout": 0.0}), 30, 30).variables) == len(
        model.variables) - 1
