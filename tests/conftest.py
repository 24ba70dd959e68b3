import os

# Quiet TensorFlow's C++ logging before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_m3ae  # noqa: E402


def tiny_backbone(vocabulary_size=50, **kwargs):
    config = dict(
        image_size=16,
        patch_size=4,
        vocabulary_size=vocabulary_size,
        max_text_length=8,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
    )
    config.update(kwargs)
    return keras_m3ae.M3AEBackbone(**config)


def tiny_pretrainer(backbone=None, **kwargs):
    config = dict(decoder_hidden_dim=8, decoder_num_layers=1, decoder_num_heads=2, seed=1)
    config.update(kwargs)
    return keras_m3ae.M3AEPretrainer(backbone or tiny_backbone(), **config)


def tiny_batch(batch_size=4, seed=0, image_size=16, text_length=8, vocabulary_size=50):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, text_length + 1, (batch_size, 1))
    return {
        "images": rng.normal(size=(batch_size, image_size, image_size, 3)).astype("float32"),
        "token_ids": rng.integers(1, vocabulary_size, (batch_size, text_length)).astype("int32"),
        "padding_mask": np.arange(text_length)[None, :] < lengths,
    }


def set_random_weights(model, seed=0, scale=0.2):
    """Deterministic, non-trivial weights (biases and norms included)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        value = rng.normal(size=v.shape) * scale
        if v.path.endswith("gamma"):
            value = 1.0 + value
        v.assign(value.astype("float32"))


@pytest.fixture(autouse=True)
def clear_session():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
