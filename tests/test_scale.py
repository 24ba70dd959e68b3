"""Scale features on every backend: mixed precision, fused attention,
gradient accumulation and clipping with `M3AEPretrainer`."""

import keras
import numpy as np
from keras import ops

import keras_m3ae
from keras_m3ae.layers import MultiHeadSelfAttention

VOCAB = 50
TEXT = 8


def _backbone(dtype=None, num_layers=2):
    return keras_m3ae.M3AEBackbone(
        image_size=16, patch_size=4, vocabulary_size=VOCAB,
        max_text_length=TEXT, hidden_dim=32, num_layers=num_layers, num_heads=4, dtype=dtype,
    )


def _pretrainer(backbone, cls=keras_m3ae.M3AEPretrainer):
    return cls(
        backbone, decoder_hidden_dim=16, decoder_num_layers=1, decoder_num_heads=2, seed=3
    )


def _batch(n, seed=0, full_captions=False):
    rng = np.random.default_rng(seed)
    lengths = np.full(n, TEXT) if full_captions else rng.integers(2, TEXT + 1, size=n)
    return {
        "images": rng.uniform(size=(n, 16, 16, 3)).astype("float32"),
        "token_ids": rng.integers(1, VOCAB, size=(n, TEXT)).astype("int32"),
        "padding_mask": (np.arange(TEXT)[None] < lengths[:, None]).astype("int32"),
    }


def _noise(n, seed=1):
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(size=(n, 16)).astype("float32"),
        rng.uniform(size=(n, TEXT)).astype("float32"),
    )


# --- Mixed precision ---


def test_mixed_bfloat16_backbone_forward_close_to_float32():
    reference = _backbone()
    mixed = _backbone(dtype="mixed_bfloat16")
    mixed.set_weights(reference.get_weights())
    assert all(v.dtype == "float32" for v in mixed.weights)
    assert mixed.encoder.blocks[0].fc1.compute_dtype == "bfloat16"
    x = _batch(2)
    expected = ops.convert_to_numpy(reference(x))
    got = mixed(x)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    got = ops.convert_to_numpy(ops.cast(got, "float32"))
    assert np.all(np.isfinite(got))
    # Outputs are LayerNorm-ed (unit scale): bfloat16 keeps ~2-3 digits.
    assert np.abs(got - expected).max() < 0.1
    assert np.abs(got - expected).mean() < 0.02


def test_mixed_bfloat16_pretraining_losses_float32_and_close():
    reference = _pretrainer(_backbone())
    mixed = _pretrainer(_backbone(dtype="mixed_bfloat16"))
    mixed.set_weights(reference.get_weights())
    assert mixed.decoder.text_head.compute_dtype == "bfloat16"
    x = _batch(4)
    image_noise, text_noise = _noise(4)
    losses = {}
    for name, model in (("float32", reference), ("mixed", mixed)):
        out = model(x, image_noise=image_noise, text_noise=text_noise)
        losses[name] = model.compute_losses(x, out)
    for key in ("loss", "image_loss", "text_loss"):
        value = losses["mixed"][key]
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        got, want = float(ops.convert_to_numpy(value)), float(ops.convert_to_numpy(losses["float32"][key]))
        assert np.isfinite(got)
        np.testing.assert_allclose(got, want, rtol=2e-2)
    # A few training steps: finite losses, variables and optimizer stay float32.
    mixed.compile(optimizer=keras.optimizers.AdamW(1e-3))
    history = mixed.fit(_batch(8, seed=5), batch_size=4, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(v.dtype == "float32" for v in mixed.trainable_weights)
    assert not np.allclose(mixed.get_weights()[0], reference.get_weights()[0])


# --- Attention: fused fast path == explicit softmax path ---


def test_fused_attention_matches_explicit_path_with_padding_mask():
    attention = MultiHeadSelfAttention(32, 4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 32)).astype("float32")
    mask = np.ones((3, 7), bool)
    mask[0, 5:] = False
    mask[2, 2:] = False
    fast = ops.convert_to_numpy(attention(x, attention_mask=mask))
    explicit, scores = attention(x, attention_mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(fast, ops.convert_to_numpy(explicit), atol=2e-5, rtol=1e-4)
    scores = ops.convert_to_numpy(scores)
    assert scores.shape == (3, 4, 7, 7)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert np.all(scores[0, :, :, 5:] == 0) and np.all(scores[2, :, :, 2:] == 0)
    # Padded keys carry no information into any query.
    x2 = x.copy()
    x2[0, 5:] = 100.0
    x2[2, 2:] = -50.0
    np.testing.assert_allclose(
        ops.convert_to_numpy(attention(x2, attention_mask=mask))[0, :5], fast[0, :5], atol=1e-5
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(attention(x2, attention_mask=mask))[2, :2], fast[2, :2], atol=1e-5
    )
    # Without a mask both paths agree too, and differ from the masked result.
    unmasked = ops.convert_to_numpy(attention(x))
    np.testing.assert_allclose(
        unmasked, ops.convert_to_numpy(attention(x, return_attention_scores=True)[0]), atol=2e-5
    )
    assert np.abs(unmasked[0] - fast[0]).max() > 1e-3


# --- Gradient accumulation and clipping ---


class NoiseFromInputsPretrainer(keras_m3ae.M3AEPretrainer):
    """Masking noise travels with each example, so batching cannot change it."""

    def call(self, inputs, training=False, **kwargs):
        inputs = dict(inputs)
        image_noise = inputs.pop("image_noise")
        text_noise = inputs.pop("text_noise")
        return super().call(
            inputs, training=training, image_noise=image_noise, text_noise=text_noise
        )


def _noisy_data(n):
    # Full captions: every example masks the same number of tokens, so the
    # loss of a batch of 2b is the mean of its two halves' losses.
    data = _batch(n, seed=4, full_captions=True)
    data["image_noise"], data["text_noise"] = _noise(n, seed=9)
    return data


def _one_update(optimizer, data, batch_size, initial, jit_compile="auto"):
    keras.utils.set_random_seed(0)
    model = _pretrainer(_backbone(num_layers=1), cls=NoiseFromInputsPretrainer)
    model.set_weights(initial)
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    model.fit(data, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.get_weights()]


def test_gradient_accumulation_equals_one_large_batch():
    keras.utils.set_random_seed(0)
    initial = _pretrainer(_backbone(num_layers=1)).get_weights()
    data = _noisy_data(8)
    accumulated = _one_update(
        keras.optimizers.SGD(0.5, gradient_accumulation_steps=2), data, 4, initial
    )
    large = _one_update(keras.optimizers.SGD(0.5), data, 8, initial)
    half = _one_update(keras.optimizers.SGD(0.5), {k: v[:4] for k, v in data.items()}, 4, initial)
    moved = max(np.abs(w - i).max() for w, i in zip(large, initial))
    assert moved > 1e-2
    for a, b, i in zip(accumulated, large, initial):
        np.testing.assert_allclose(a - i, b - i, atol=2e-6, rtol=1e-3)
    # ...and not what one small batch would have done.
    assert max(np.abs(h - b).max() for h, b in zip(half, large)) > 1e-3


def test_global_clipnorm_and_clipnorm_scale_the_update():
    keras.utils.set_random_seed(0)
    initial = _pretrainer(_backbone(num_layers=1)).get_weights()
    data = _noisy_data(4)
    plain = _one_update(keras.optimizers.SGD(1.0), data, 4, initial)
    grads = [i - p for i, p in zip(initial, plain)]  # lr 1: update == gradient
    norm = np.sqrt(sum(float(np.sum(g.astype("float64") ** 2)) for g in grads))
    assert norm > 1e-2
    # A Python float: TensorFlow's clipping fails on a numpy float64.
    clipped = _one_update(
        keras.optimizers.SGD(1.0, global_clipnorm=float(norm / 4)), data, 4, initial
    )
    for c, i, g in zip(clipped, initial, grads):
        np.testing.assert_allclose(i - c, g / 4, atol=1e-6, rtol=1e-3)
    # Per-variable clipping: each variable's gradient norm is capped alone.
    limit = float(np.median([np.linalg.norm(g) for g in grads if np.linalg.norm(g) > 0]))
    per_variable = _one_update(
        keras.optimizers.SGD(1.0, clipnorm=limit), data, 4, initial
    )
    for c, i, g in zip(per_variable, initial, grads):
        scale = min(1.0, limit / max(np.linalg.norm(g), 1e-12))
        np.testing.assert_allclose(i - c, g * scale, atol=1e-6, rtol=1e-3)
