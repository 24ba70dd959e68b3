"""Bad input to the converters: a clear error naming the file, nothing run.

Each payload would create a sentinel file if it ran; the tests check that
loading fails with a `CheckpointError` that names the file and the problem,
and that the sentinel does not exist afterwards.
"""

import argparse
import os
import pickle
import shutil

import numpy as np
import pytest

import keras_m3ae
from keras_m3ae.convert import CheckpointError
from keras_m3ae.convert import safe_pickle

DATA = os.path.join(os.path.dirname(__file__), "data", "convert")


def _reference_params():
    """The tiny reference M3AE's variant and parameter tree, as plain data."""
    data = safe_pickle.load_pickle(os.path.join(DATA, "m3ae_tiny.pkl"))
    return dict(data["variant"]), data["state"].state["params"]["params"]


def _write(path, obj, dump=pickle.dump):
    with open(path, "wb") as f:
        dump(obj, f)
    return str(path)


def _load_fails(path, match, **overrides):
    with pytest.raises(CheckpointError, match=match) as info:
        keras_m3ae.convert.load_checkpoint(str(path), **overrides)
    assert str(path) in str(info.value)
    return str(info.value)


class _Call:
    """Pickles as `callee(*args)`: what a malicious file does."""

    def __init__(self, callee, *args):
        self.callee, self.args = callee, args

    def __reduce__(self):
        return self.callee, self.args


def _respell(payload, old, new):
    """Rewrites numpy's module spelling inside a pickle (protocols 2 and 5)."""
    if payload[1] < 4:  # GLOBAL opcodes: text lines, no length prefix
        return payload.replace(old.encode() + b".", new.encode() + b".")
    # SHORT_BINUNICODE strings carry a length byte; the FRAME its total size.
    out, shrink = payload, 0
    for module in ("multiarray", "numeric"):
        before, after = f"{old}.{module}".encode(), f"{new}.{module}".encode()
        count = out.count(bytes([0x8C, len(before)]) + before)
        out = out.replace(bytes([0x8C, len(before)]) + before, bytes([0x8C, len(after)]) + after)
        shrink += count * (len(before) - len(after))
    assert out[2] == 0x95  # one FRAME
    size = int.from_bytes(out[3:11], "little") - shrink
    return out[:3] + size.to_bytes(8, "little") + out[11:]


@pytest.mark.backend_independent  # no Keras model is built
@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("spelling", ["numpy.core", "numpy._core"])
def test_restricted_unpickler_rebuilds_numpy_both_spellings(tmp_path, protocol, spelling):
    array = np.arange(6, dtype="float32").reshape(2, 3)
    payload = pickle.dumps({"a": array, "f": np.asfortranarray(array), "s": np.float32(1.5)},
                           protocol=protocol)
    native = "numpy._core" if b"numpy._core" in payload else "numpy.core"
    if spelling != native:
        payload = _respell(payload, native, spelling)
    assert spelling.encode() + b"." in payload
    path = tmp_path / "arrays.pkl"
    path.write_bytes(payload)
    data = safe_pickle.load_pickle(str(path))
    np.testing.assert_array_equal(data["a"], array)
    np.testing.assert_array_equal(data["f"], array)
    assert data["s"] == np.float32(1.5)


@pytest.mark.backend_independent  # no Keras model is built
def test_object_arrays_refused(tmp_path):
    path = _write(tmp_path / "objects.pkl", np.array([1, "x"], dtype=object))
    with pytest.raises(safe_pickle.UnsafePickleError, match="object"):
        safe_pickle.load_pickle(path)


@pytest.mark.backend_independent  # no Keras model is built
def test_unknown_kind(tmp_path):
    path = tmp_path / "weights.dat"
    path.write_text("this is not a checkpoint")
    _load_fails(path, "unknown kind of file")
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    _load_fails(empty, "empty")
    _load_fails(tmp_path / "missing.pkl", "no such file")
    (tmp_path / "dir").mkdir()
    _load_fails(tmp_path / "dir", "neither a Hugging Face ViTMAE directory")


@pytest.mark.backend_independent  # no Keras model is built
def test_truncated_files(tmp_path):
    for name in ("m3ae_tiny.pkl", "mae_official_tiny.pth"):
        if name.endswith(".pth"):
            pytest.importorskip("torch")
        data = open(os.path.join(DATA, name), "rb").read()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        _load_fails(path, "cannot be read", num_heads=4, decoder_num_heads=2)
    hf = tmp_path / "hf"
    shutil.copytree(os.path.join(DATA, "vitmae_hf_tiny"), hf)
    tensors = hf / "model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-1000])
    _load_fails(hf, "model.safetensors: truncated")


def test_shapes_contradicting_config(tmp_path):
    variant, params = _reference_params()
    variant["m3ae.emb_dim"] = 64
    path = _write(tmp_path / "model.pkl", {"step": 0, "variant": variant,
                                           "state": {"params": {"params": params}}})
    _load_fails(path, "shape .* contradicts its config")
    hf = tmp_path / "hf"
    shutil.copytree(os.path.join(DATA, "vitmae_hf_tiny"), hf)
    config = (hf / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3')
    (hf / "config.json").write_text(config)
    _load_fails(hf, "no tensor for backbone/encoder/block_2")


@pytest.mark.backend_independent  # no Keras model is built
def test_os_system_payload_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({"step": 0, "variant": {}, "state": _Call(os.system, f"touch {sentinel}")})
    # The payload is real: plain pickle would run it.
    pickle.loads(payload)
    assert sentinel.exists()
    sentinel.unlink()
    path = tmp_path / "model.pkl"
    path.write_bytes(payload)
    message = _load_fails(path, "unsafe pickle, nothing was run")
    assert "system" in message
    assert not sentinel.exists()


@pytest.mark.backend_independent  # no Keras model is built
def test_exec_leaf_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    variant, params = _reference_params()
    params["cls_token"] = _Call(exec, f"open({str(sentinel)!r}, 'w').write('x')")
    path = _write(tmp_path / "model.pkl", {"step": 0, "variant": variant,
                                           "state": {"params": {"params": params}}})
    message = _load_fails(path, "unsafe pickle")
    assert "exec" in message
    assert not sentinel.exists()


@pytest.mark.backend_independent  # no Keras model is built
def test_cloudpickle_by_value_function_refused(tmp_path):
    cloudpickle = pytest.importorskip("cloudpickle")
    sentinel = str(tmp_path / "pwned")

    def payload():  # a local function: cloudpickle stores its code by value
        open(sentinel, "w").write("x")

    variant, params = _reference_params()
    # Called on load (what an attack does) ...
    called = _write(tmp_path / "called.pkl", {"step": 0, "variant": variant,
                                              "state": _Call(payload)}, cloudpickle.dump)
    _load_fails(called, "calls a function whose code is stored in the file")
    # ... or merely stored in place of a weight.
    params["cls_token"] = payload
    stored = _write(tmp_path / "stored.pkl", {"step": 0, "variant": variant,
                                              "state": {"params": {"params": params}}},
                    cloudpickle.dump)
    _load_fails(stored, "cls_token is a function whose code is stored in the file")
    assert not os.path.exists(sentinel)


@pytest.mark.backend_independent  # no Keras model is built
def test_payload_in_pth_args_refused(tmp_path):
    torch = pytest.importorskip("torch")
    sentinel = tmp_path / "pwned"
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(os.path.join(DATA, "mae_official_tiny.pth"), weights_only=True)
    checkpoint["args"] = _Call(os.system, f"touch {sentinel}")
    path = tmp_path / "checkpoint-1.pth"
    torch.save(checkpoint, path)
    message = _load_fails(path, "unsafe checkpoint, nothing was run", num_heads=4,
                          decoder_num_heads=2)
    assert "system" in message
    assert not sentinel.exists()


@pytest.mark.backend_independent  # no Keras model is built
def test_missing_head_count_is_explained():
    pytest.importorskip("torch")
    message = _load_fails(os.path.join(DATA, "mae_official_tiny.pth"), "num_heads")
    assert "width 32" in message


@pytest.mark.backend_independent  # no Keras model is built
def test_dangerous_globals_refused_anywhere(tmp_path):
    import subprocess

    for callee in (subprocess.Popen, eval, __import__):
        path = _write(tmp_path / "x.pkl", {"variant": {}, "state": _Call(callee, "true")})
        _load_fails(path, "unsafe pickle")
