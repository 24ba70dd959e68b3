"""Presets that prove what they hold: checksums and weights that fit the config."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from keras import ops

import keras_m3ae
from conftest import tiny_backbone
from keras_m3ae.training.checkpoints import save_preset_atomically


def _weights(model):
    return [ops.convert_to_numpy(v) for v in model.weights]


@pytest.fixture
def preset(tmp_path):
    backbone = tiny_backbone()
    path = str(tmp_path / "preset")
    backbone.save_to_preset(path)
    return backbone, path


def _edit_config(path, **changes):
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["config"].update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def test_a_saved_preset_loads_the_same_weights_and_records_its_checksums(preset):
    backbone, path = preset
    with open(os.path.join(path, "checksums.json")) as f:
        record = json.load(f)
    assert {"config.json", "model.weights.h5"} <= set(record["files"])
    assert len(record["variables"]) == len(backbone.weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a checksummed preset
        loaded = keras_m3ae.M3AEBackbone.from_preset(path)
    for a, b in zip(_weights(backbone), _weights(loaded)):
        np.testing.assert_array_equal(a, b)


def test_flipped_bits_in_the_weights_are_refused_naming_the_file(preset):
    _, path = preset
    weights = os.path.join(path, "model.weights.h5")
    original = open(weights, "rb").read()
    rng = np.random.default_rng(0)
    for position in rng.integers(0, len(original), 5):
        damaged = bytearray(original)
        damaged[position] ^= 1 << int(rng.integers(8))
        open(weights, "wb").write(bytes(damaged))
        with pytest.raises(ValueError, match=r"model\.weights\.h5 does not match its SHA-256"):
            keras_m3ae.M3AEBackbone.from_preset(path)


def test_an_edited_config_is_refused_by_its_checksum(preset):
    _, path = preset
    _edit_config(path, num_layers=1)
    with pytest.raises(ValueError, match=r"config\.json does not match its SHA-256"):
        keras_m3ae.M3AEBackbone.from_preset(path)
    # The config alone (no weights) is checked too.
    with pytest.raises(ValueError, match=r"config\.json does not match"):
        keras_m3ae.M3AEBackbone.from_preset(path, load_weights=False)


def test_an_override_that_does_not_fit_the_weights_is_refused(preset):
    _, path = preset
    with pytest.raises(ValueError, match=r"holds 12 variable\(s\) the model has no place for, "
                                         r"the first encoder/block_1/"):
        keras_m3ae.M3AEBackbone.from_preset(path, num_layers=1)


@pytest.mark.parametrize("changes, message", [
    ({"num_layers": 1}, r"holds 12 variable\(s\) the model has no place for, the first "
                        r"layers/transformer_stack/blocks/transformer_block_1/"),
    ({"num_layers": 3}, r"the model has 12 variable\(s\) without a saved value, the first "
                        r"layers/transformer_stack/blocks/transformer_block_2/"),
    ({"hidden_dim": 32, "num_heads": 2}, r"is \(32,\) in the model but \(16,\) in "
                                         r"model\.weights\.h5"),
])
def test_a_config_that_does_not_fit_the_weights_is_refused_without_checksums(
        preset, changes, message):
    """An older preset (no checksums.json): the weights file itself is the reference."""
    _, path = preset
    os.remove(os.path.join(path, "checksums.json"))
    _edit_config(path, **changes)
    with pytest.warns(UserWarning, match="no checksums.json"), \
            pytest.raises(ValueError, match=message):
        keras_m3ae.M3AEBackbone.from_preset(path)


def test_a_preset_without_checksums_loads_with_one_warning(preset, tmp_path):
    backbone, path = preset
    old = str(tmp_path / "old")
    shutil.copytree(path, old)
    os.remove(os.path.join(old, "checksums.json"))
    with pytest.warns(UserWarning, match="no checksums.json") as caught:
        first = keras_m3ae.M3AEBackbone.from_preset(old)
        keras_m3ae.M3AEBackbone.from_preset(old)
    assert len([w for w in caught if "checksums" in str(w.message)]) == 1
    for a, b in zip(_weights(backbone), _weights(first)):
        np.testing.assert_array_equal(a, b)


def test_the_atomic_preset_writer_records_checksums(tmp_path):
    backbone = tiny_backbone()
    path = str(tmp_path / "preset")
    save_preset_atomically(backbone, path)
    with open(os.path.join(path, "model.weights.h5"), "r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ValueError, match=r"model\.weights\.h5 does not match"):
        keras_m3ae.M3AEBackbone.from_preset(path)
