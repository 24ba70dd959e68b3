"""The split pipeline: options, the reader shim, one crop rule set, one normalisation."""

import io
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import records
from keras_m3ae import data
from keras_m3ae.data import crops
from keras_m3ae.data import transforms
from keras_m3ae.data.constants import normalization_affine
from keras_m3ae.data.options import ReaderOptions
from keras_m3ae.training import augment


def png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="PNG")
    return tf.constant(buffer.getvalue())


def noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


@pytest.mark.backend_independent
def test_reader_shim_warns_and_forwards():
    from keras_m3ae.data import reader

    for name in ("image_text_dataset", "image_dataset", "text_dataset", "resolve_files",
                 "shard_files", "default_shard", "finalize"):
        with pytest.warns(DeprecationWarning, match=name):
            moved = getattr(reader, name)
        assert callable(moved)
    with pytest.warns(DeprecationWarning):
        assert reader.image_text_dataset is data.image_text_dataset
    with pytest.raises(AttributeError):
        reader.no_such_name  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.default_shard(0, 1) == (0, 1)  # the package's names do not warn


@pytest.mark.backend_independent
def test_normalization_affine_is_the_cc12m_arithmetic():
    scale, offset = normalization_affine()
    x = np.array([0.0, 17.0, 128.0, 255.0])[:, None]
    expected = (x / 255 - np.array(data.CC12M_MEAN)) / np.array(data.CC12M_STD)
    np.testing.assert_allclose(x * scale + offset, expected, rtol=1e-12, atol=1e-12)
    scale, offset = normalization_affine(value_range=(-1, 1), mean=(0.5,), std=(0.25,))
    assert scale == [2.0] and offset == [-0.0]  # -1 -> [0, 1] -> 0 -> (0 - 0.5) / 0.25
    np.testing.assert_allclose(np.array([-1.0, 1.0]) * scale[0] + offset[0], [-2.0, 2.0])
    with pytest.raises(ValueError, match="low < high"):
        normalization_affine(value_range=(1, 1))
    image = tf.constant(noise(4, 5), tf.float32)
    back = transforms.denormalize_image(transforms.normalize_image(image)) * 255
    np.testing.assert_allclose(back.numpy(), image.numpy(), atol=1e-3)


@pytest.mark.backend_independent
def test_reader_options_resolve_defaults_once():
    training = ReaderOptions(training=True, seed=3)
    assert (training.deterministic, training.drop_remainder) == (False, True)
    evaluation = ReaderOptions(training=False, seed=3, drop_remainder=True)
    assert (evaluation.deterministic, evaluation.drop_remainder) == (True, True)
    assert (training.shard_index, training.num_shards) in {(0, 1)} | {data.default_shard()}
    assert ReaderOptions(seed=3, shard_index=1, num_shards=2).host_seed == 3 * 1000003 + 1
    assert isinstance(ReaderOptions().seed, int)
    with pytest.raises(TypeError, match="shufle_buffer"):
        data.text_dataset("unused.txt", shufle_buffer=4)


@pytest.mark.backend_independent
def test_mixture_tokenizes_once_and_matches_mixing_prepared_sources(tmp_path):
    pairs = records.write_records(tmp_path / "p.tfrecord", [
        records.serialize_example(jpg=png(noise(12, 10, i)).numpy(), txt=f"caption number {i}")
        for i in range(6)])
    text_file = tmp_path / "t.txt"
    text_file.write_text("".join(f"only text {i}\n" for i in range(6)))
    common = dict(image_size=8, max_text_length=5, batch_size=None, training=False,
                  repeat=True, seed=0)

    def sources():
        return [data.image_text_dataset(str(pairs), **common),
                data.text_dataset(str(text_file), **common)]

    direct = sources()
    assert "captions" in direct[0].unprepared.examples.element_spec
    once = data.mix_datasets(direct, [1, 1], batch_size=4, training=False, seed=1)
    # Mapped sources lose `unprepared`: mixed as prepared, per-example tokens.
    prepared = [ds.map(lambda x: x) for ds in sources()]
    assert not hasattr(prepared[0], "unprepared")
    per_example = data.mix_datasets(prepared, [1, 1], batch_size=4, training=False, seed=1)
    assert once.element_spec == per_example.element_spec
    kinds = []
    for got, expected in zip(once.take(6).as_numpy_iterator(),
                             per_example.take(6).as_numpy_iterator()):
        assert got.keys() == expected.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], expected[key])
        assert not got["images"][~got["has_image"]].any()
        kinds += list(got["has_image"])
    assert any(kinds) and not all(kinds)


@pytest.mark.backend_independent
def test_one_crop_rule_for_bytes_and_decoded_images():
    pixels = noise(30, 44, 1)
    seed = tf.constant([5, 9], tf.int64)
    decoded = crops.random_resized_crop(tf.constant(pixels), 16, seed)
    from_bytes = transforms.decode_random_resized_crop(png(pixels), 16, seed)
    np.testing.assert_array_equal(decoded.numpy(), from_bytes.numpy())
    for fraction in (1.0, 0.875):
        decoded = crops.center_crop(tf.constant(pixels), 16, fraction)
        from_bytes = transforms.decode_center_crop(png(pixels), 16, crop_fraction=fraction)
        np.testing.assert_array_equal(decoded.numpy(), from_bytes.numpy())
    # The fine-tuning wrappers are the same rule with their own defaults.
    np.testing.assert_array_equal(
        augment.center_crop(tf.constant(pixels), (16, 16)).numpy(),
        crops.center_crop(tf.constant(pixels), 16, 0.875).numpy())
    np.testing.assert_array_equal(
        augment.random_resized_crop(tf.constant(pixels), (16, 16), seed=seed).numpy(),
        crops.random_resized_crop(tf.constant(pixels), 16, seed, scale=(0.08, 1.0),
                                  flip=False).numpy())
    # Bicubic overshoot is clipped to the pixel range everywhere.
    edges = np.zeros((30, 44, 3), np.uint8)
    edges[:, ::2] = 255
    for out in (augment.center_crop(tf.constant(edges), (16, 16)),
                augment.random_resized_crop(tf.constant(edges), (16, 16), seed=1),
                transforms.decode_center_crop(png(edges), 16)):
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0


@pytest.mark.backend_independent
def test_crop_windows():
    shape = tf.constant([60, 80, 3])
    np.testing.assert_array_equal(crops.center_crop_window(shape, 32).numpy(), [0, 10, 60, 60])
    # MAE's evaluation crop: 87.5 % of the short side, centred.
    np.testing.assert_array_equal(crops.center_crop_window(shape, 32, 0.875).numpy(),
                                  [4, 14, 52, 52])
    np.testing.assert_array_equal(crops.center_crop_window(shape, (30, 80)).numpy(),
                                  [15, 0, 30, 80])
    with pytest.raises(ValueError, match="crop_fraction"):
        crops.center_crop_window(shape, 32, 0.0)
    areas = {}
    for scale in (crops.RANDOM_CROP_SCALE, augment.FINETUNE_CROP_SCALE):
        windows = np.stack([crops.sample_crop_window(shape, tf.constant([i, 0]), scale).numpy()
                            for i in range(200)])
        assert (windows[:, :2] >= 0).all() and (windows[:, :2] + windows[:, 2:] <= [60, 80]).all()
        areas[scale] = windows[:, 2] * windows[:, 3] / 4800
        assert areas[scale].min() >= scale[0] * 0.9
    assert areas[augment.FINETUNE_CROP_SCALE].min() < 0.2
    same = crops.sample_crop_window(shape, tf.constant([3, 0]))
    np.testing.assert_array_equal(same, crops.sample_crop_window(shape, tf.constant([3, 0])))
