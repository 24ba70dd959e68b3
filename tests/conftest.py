import atexit
import os
import shutil
import tempfile

# Quiet TensorFlow's C++ logging before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _share_jax_compilations():
    """One XLA compilation per program for the whole run, subprocesses included.

    Many tests build the same tiny model and train it: on JAX each builds and
    compiles an identical train step, and compiling is most of such a test's
    time on a CPU. JAX's persistent cache keys a compiled program by its full
    HLO and compile options, so a hit runs exactly the program a fresh
    compilation would give. The cache lives in a temporary folder for this run
    only (nothing carries over between runs unless JAX_COMPILATION_CACHE_DIR
    is set); set before JAX is imported, and inherited by the subprocesses
    that tests start (examples, multi-device checks) and by pytest-xdist's
    workers (they start after this file has run in the controlling process).

    Several processes write to it at once. JAX 0.10 writes an entry in
    place, without a lock (one is taken only when
    jax_compilation_cache_max_size is set, and then every write scans the
    whole folder: thousands of entries here), so a reader can meet a
    half-written entry. Entries are zlib streams: a truncated one, or one
    mixed from two writers' different bytes, fails to decompress (the
    stream's end and adler32 checksum are checked), and JAX then warns and
    compiles afresh: a collision costs a compilation, never a wrong program.
    """
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        directory = tempfile.mkdtemp(prefix="m3ae_test_xla_cache_")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
    # Also the many small programs of eager ops, which every subprocess
    # would otherwise compile again.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


_share_jax_compilations()

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


class Crash(Exception):
    """Raised by `CrashAt`: a process dying mid-run, in-process."""


class CrashAt(keras.callbacks.Callback):
    """Raises `Crash` at the beginning of the `step`-th training step it sees."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            raise Crash()


def write_safetensors(path, tensors):
    """A float32 safetensors file of `{name: array}` (the format's header + raw bytes)."""
    import json

    header, offset, blobs = {}, 0, []
    for name, value in tensors.items():
        data = np.ascontiguousarray(value, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
