"""M3AEImageClassifier: protocols, presets, interpolation, preprocessing."""

import json
import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest

import keras_m3ae
from conftest import tiny_backbone
from conftest import tiny_batch
from keras_m3ae.models import M3AEImageClassifier
from keras_m3ae.models import M3AEImageConverter

DEPTH = 3
CONFIG = dict(
    image_size=32,
    patch_size=8,
    vocabulary_size=50,
    max_text_length=8,
    hidden_dim=32,
    num_layers=DEPTH,
    num_heads=4,
)


@pytest.fixture(scope="module")
def backbone_preset(tmp_path_factory):
    keras.utils.set_random_seed(0)
    path = str(tmp_path_factory.mktemp("backbone"))
    keras_m3ae.M3AEBackbone(**CONFIG).save_to_preset(path)
    return path


def _images(n=8, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("float32")


def _ids(variables):
    return {id(v) for v in variables}


@pytest.mark.parametrize("blocks", [0, 2, None])
def test_trainable_weights_per_protocol(backbone_preset, blocks):
    clf = M3AEImageClassifier.from_preset(backbone_preset, num_classes=5, fine_tune_blocks=blocks)
    bb = clf.backbone
    expected = list(clf.output_dense.weights)
    if blocks is None:
        text = _ids(bb.token_embedding.weights + bb.text_position_type.weights)
        expected += [v for v in bb.weights if id(v) not in text]
    elif blocks:
        for block in bb.encoder.blocks[-blocks:]:
            expected += block.weights
        expected += bb.encoder.norm.weights
    assert _ids(clf.trainable_weights) == _ids(expected)
    # Text parameters are never trained for images.
    assert not _ids(bb.token_embedding.weights) & _ids(clf.trainable_weights)


def test_linear_probe_head_is_batchnorm_without_affine(backbone_preset):
    clf = M3AEImageClassifier.from_preset(backbone_preset, num_classes=5, fine_tune_blocks=0)
    norm = clf.head_norm
    assert isinstance(norm, keras.layers.BatchNormalization)
    assert (norm.center, norm.scale, norm.epsilon) == (False, False, 1e-6)
    assert norm.trainable_weights == [] and len(norm.non_trainable_weights) == 2
    # In inference the head is (x - moving_mean) / sqrt(moving_var + eps) -> Dense.
    x = clf.preprocessor(_images(4))
    features = keras.ops.convert_to_numpy(clf.image_features(x))
    norm.moving_mean.assign(np.full(32, 0.5, "float32"))
    norm.moving_variance.assign(np.full(32, 4.0, "float32"))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in clf.output_dense.weights)
    expected = (features - 0.5) / np.sqrt(4.0 + 1e-6) @ kernel + bias
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clf(x)), expected, rtol=1e-4, atol=1e-5)
    fine = M3AEImageClassifier.from_preset(backbone_preset, num_classes=5)
    assert fine.head_norm is None


@pytest.mark.parametrize("blocks", [0, 1])
def test_frozen_weights_do_not_move_during_fit(backbone_preset, blocks):
    clf = M3AEImageClassifier.from_preset(backbone_preset, num_classes=3, fine_tune_blocks=blocks)
    clf.compile(base_learning_rate=0.5 if blocks == 0 else 1e-2)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in clf.weights}
    trainable = {v.path for v in clf.trainable_weights}
    x, y = _images(8), np.arange(8) % 3
    history = clf.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for v in clf.weights:
        after = keras.ops.convert_to_numpy(v)
        if v.path in trainable:
            assert not np.allclose(after, before[v.path]), v.path
        elif "moving" not in v.path:
            np.testing.assert_array_equal(after, before[v.path], err_msg=v.path)
    # BatchNorm statistics do follow the (frozen) features.
    if blocks == 0:
        assert not np.allclose(keras.ops.convert_to_numpy(clf.head_norm.moving_mean), 0)


def test_fit_on_arrays_reshuffles_every_epoch_without_warnings(backbone_preset):
    # keras-hub's `Task.fit` batches arrays in order and Keras then ignores
    # `shuffle=True` (with a warning): every epoch saw the same batches.
    import warnings

    x, y = _images(12), np.arange(12) % 3

    def trained(**fit_kwargs):
        keras.utils.set_random_seed(3)
        clf = M3AEImageClassifier.from_preset(backbone_preset, num_classes=3,
                                              fine_tune_blocks=1)
        clf.compile(base_learning_rate=1e-2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = clf.fit(x, y, batch_size=4, epochs=2, verbose=0, **fit_kwargs)
        assert not [w for w in caught if "shuffle" in str(w.message)]
        return clf, history

    shuffled, _ = trained()
    again, _ = trained()
    in_order, _ = trained(shuffle=False)
    weights = [keras.ops.convert_to_numpy(v) for v in shuffled.trainable_weights]
    for a, b in zip(weights, again.trainable_weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))  # seeded
    assert any(not np.allclose(a, keras.ops.convert_to_numpy(b))
               for a, b in zip(weights, in_order.trainable_weights))
    # `validation_split` holds out the last samples, before shuffling.
    clf, history = trained(validation_split=0.25)
    held_out = clf.evaluate(x[9:], y[9:], verbose=0, return_dict=True)
    np.testing.assert_allclose(history.history["val_loss"][-1], held_out["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="empty training or validation set"):
        clf.fit(x, y, validation_split=0.95, verbose=0)


def test_full_fine_tuning_fit_learns(backbone_preset):
    keras.utils.set_random_seed(1)
    clf = M3AEImageClassifier.from_preset(backbone_preset, num_classes=2, drop_path_rate=0.1)
    assert clf.backbone.drop_path_rate == 0.1
    clf.compile(base_learning_rate=1e-2, label_smoothing=0.0, layer_decay=0.9)
    x = np.concatenate([np.full((8, 32, 32, 3), 30.0), np.full((8, 32, 32, 3), 220.0)])
    x += np.random.default_rng(0).normal(0, 5, x.shape)
    y = np.repeat([0, 1], 8)
    history = clf.fit(x, y, batch_size=8, epochs=6, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    logits = clf.predict(x, verbose=0)
    assert logits.shape == (16, 2)
    assert (logits.argmax(1) == y).mean() == 1.0


def test_mean_pooling_matches_manual_computation(backbone_preset):
    clf = M3AEImageClassifier.from_preset(backbone_preset, num_classes=4, pooling="mean")
    x = clf.preprocessor(_images(2))
    bb = clf.backbone
    tokens = keras.ops.convert_to_numpy(bb.encode(bb.embed_images(x)))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clf.image_features(x)), tokens[:, 1:].mean(1), rtol=1e-5, atol=1e-6
    )
    token = M3AEImageClassifier(bb, num_classes=4, pooling="token")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(token.image_features(x)), tokens[:, 0], rtol=1e-5, atol=1e-6
    )


def test_preset_round_trip_restores_head(backbone_preset, tmp_path):
    clf = M3AEImageClassifier.from_preset(
        backbone_preset, num_classes=4, fine_tune_blocks=1, pooling="mean"
    )
    clf.output_dense.bias.assign(np.arange(4, dtype="float32"))
    x = _images(4)
    expected = clf.predict(x, verbose=0)
    path = str(tmp_path / "clf")
    clf.save_to_preset(path)
    restored = M3AEImageClassifier.from_preset(path)
    assert (restored.fine_tune_blocks, restored.pooling, restored.num_classes) == (1, "mean", 4)
    np.testing.assert_allclose(restored.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    generic = keras_hub.models.ImageClassifier.from_preset(path)
    assert isinstance(generic, M3AEImageClassifier)
    np.testing.assert_allclose(generic.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    # A new `num_classes` starts a new head on the same encoder.
    fresh = M3AEImageClassifier.from_preset(path, num_classes=7)
    assert fresh.predict(x, verbose=0).shape == (4, 7)


def test_generic_keras_hub_entry_point(backbone_preset):
    clf = keras_hub.models.ImageClassifier.from_preset(backbone_preset, num_classes=10)
    assert isinstance(clf, M3AEImageClassifier)
    assert clf.preprocessor.image_converter.image_size == (32, 32)
    # Raw images of another size are resized by the preprocessor.
    assert clf.predict(_images(3, size=40), verbose=0).shape == (3, 10)


def test_named_and_directory_presets_behave_alike(tmp_path):
    named = M3AEImageClassifier.from_preset("m3ae_vit_tiny_demo", num_classes=3, fine_tune_blocks=0)
    assert named.backbone.num_layers == 4 and named.preprocessor.image_converter.image_size == (64, 64)
    path = str(tmp_path / "tiny")
    named.backbone.save_to_preset(path)
    loaded = M3AEImageClassifier.from_preset(path, num_classes=3, fine_tune_blocks=0)
    assert loaded.backbone.get_config() == named.backbone.get_config()
    x = named.preprocessor(_images(2, size=64))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.image_features(x)),
        keras.ops.convert_to_numpy(named.image_features(x)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_position_interpolation_for_another_image_size(backbone_preset):
    base = M3AEImageClassifier.from_preset(backbone_preset, num_classes=2)
    clf = M3AEImageClassifier.from_preset(backbone_preset, num_classes=2, image_size=48)
    bb = clf.backbone
    assert bb.image_size == 48 and bb.pretrain_image_size == 32 and bb.grid_size == (6, 6)
    assert clf.preprocessor.image_converter.image_size == (48, 48)
    for a, b in zip(bb.weights, base.backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # Direct computation: positions of the 6x6 grid stretched over the 4x4
    # pretraining grid, centre-aligned; columns first, then rows.
    dim = 32
    pos = (np.arange(6) + 0.5) * 4 / 6 - 0.5
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))

    def table_1d(p):
        angles = p[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], 1)

    rows, cols = np.meshgrid(pos, pos, indexing="ij")
    table = np.concatenate([table_1d(cols.ravel()), table_1d(rows.ravel())], 1)
    np.testing.assert_allclose(bb.image_position_type.table, table, atol=1e-6)
    # And the classifier's features use that table.
    x = clf.preprocessor(_images(2, size=48))
    patches = keras.ops.convert_to_numpy(bb.patch_embedding(x))
    type_vector = keras.ops.convert_to_numpy(bb.image_position_type.type_embedding)
    tokens = keras.ops.convert_to_tensor((patches + table + type_vector).astype("float32"))
    manual = keras.ops.convert_to_numpy(bb.encode(tokens))[:, 0]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clf.image_features(x)), manual, rtol=1e-4, atol=1e-5
    )
    assert clf.predict(_images(2, size=48), verbose=0).shape == (2, 2)


def test_converter_normalises_with_cc12m_statistics():
    mean, std = np.array(keras_m3ae.data.CC12M_MEAN), np.array(keras_m3ae.data.CC12M_STD)
    converter = M3AEImageConverter(image_size=(8, 8))
    pixels = np.broadcast_to(mean * 255, (1, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(converter(pixels)), 0, atol=1e-5)
    white = keras.ops.convert_to_numpy(converter(np.full((1, 8, 8, 3), 255.0, "float32")))
    np.testing.assert_allclose(white[0, 0, 0], (1 - mean) / std, rtol=1e-5)
    unit = M3AEImageConverter(image_size=(8, 8), value_range=(0, 1))
    out = keras.ops.convert_to_numpy(unit(np.full((1, 8, 8, 3), 1.0, "float32")))
    np.testing.assert_allclose(out[0, 0, 0], (1 - mean) / std, rtol=1e-5)
    restored = M3AEImageConverter.from_config(unit.get_config())
    assert restored.value_range == (0, 1) and restored.image_size == (8, 8)


def test_clear_errors(backbone_preset, tmp_path):
    with pytest.raises(ValueError, match=r"depth 3.*\[1, 3\]"):
        M3AEImageClassifier.from_preset(backbone_preset, num_classes=2, fine_tune_blocks=4)
    with pytest.raises(ValueError, match="num_classes"):
        M3AEImageClassifier.from_preset(backbone_preset)
    with pytest.raises(ValueError, match="num_classes"):
        M3AEImageClassifier(keras_m3ae.M3AEBackbone(**CONFIG))
    with pytest.raises(ValueError, match="neither a named architecture"):
        M3AEImageClassifier.from_preset(str(tmp_path / "nowhere"), num_classes=2)
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    with open(os.path.join(backbone_preset, "config.json")) as f:
        (incomplete / "config.json").write_text(f.read())
    with pytest.raises(ValueError, match="incomplete.*model.weights.h5"):
        M3AEImageClassifier.from_preset(str(incomplete), num_classes=2)
    with pytest.raises(ValueError, match="pooling"):
        M3AEImageClassifier(keras_m3ae.M3AEBackbone(**CONFIG), num_classes=2, pooling="max")


_SAVE_SCRIPT = """
import sys, numpy as np, keras
import keras_m3ae
from keras_m3ae.models import M3AEImageClassifier
keras.utils.set_random_seed(3)
backbone = keras_m3ae.M3AEBackbone(**{config})
clf = M3AEImageClassifier(backbone, num_classes=3, fine_tune_blocks=0,
    preprocessor=M3AEImageClassifier.preprocessor_cls(
        keras_m3ae.models.M3AEImageConverter(image_size=32)))
clf.head_norm.moving_mean.assign(np.linspace(-1, 1, 32).astype("float32"))
clf.save_to_preset(sys.argv[1])
x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
np.save(sys.argv[1] + "/x.npy", x)
np.save(sys.argv[1] + "/logits.npy", clf.predict(x, verbose=0))
"""


def test_preset_saved_on_another_backend_loads_with_same_outputs(tmp_path):
    here = keras.config.backend()
    other = {"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}[here]
    path = str(tmp_path / "clf")
    env = dict(os.environ, KERAS_BACKEND=other, PYTHONPATH=os.getcwd())
    subprocess.run(
        [sys.executable, "-c", _SAVE_SCRIPT.format(config=json.dumps(CONFIG).replace("null", "None")), path],
        check=True,
        env=env,
        capture_output=True,
    )
    clf = M3AEImageClassifier.from_preset(path)
    assert clf.fine_tune_blocks == 0
    x = np.load(os.path.join(path, "x.npy"))
    np.testing.assert_allclose(
        clf.predict(x, verbose=0), np.load(os.path.join(path, "logits.npy")), rtol=1e-4, atol=1e-4
    )


def test_classifier_is_a_functional_task_and_the_probe_has_no_drop_path():
    backbone = tiny_backbone(drop_path_rate=0.3)
    probe = M3AEImageClassifier(backbone, num_classes=3, fine_tune_blocks=0)
    assert [t.name for t in probe.inputs] == ["images"] and probe.outputs[0].shape == (None, 3)
    # Frozen and without stochastic depth: fit sees the features predict sees.
    assert probe.backbone.drop_path_rate == 0.0
    x = tiny_batch()["images"]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(probe.image_features(x, training=True)),
        keras.ops.convert_to_numpy(probe.image_features(x, training=False)),
    )
    tuned = M3AEImageClassifier(backbone, num_classes=3)
    assert tuned.backbone.drop_path_rate == 0.3
    assert not np.allclose(
        keras.ops.convert_to_numpy(tuned.image_features(x, training=True)),
        keras.ops.convert_to_numpy(tuned.image_features(x, training=False)),
    )
