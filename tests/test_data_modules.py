"""The split pipeline: options, one crop rule set, one normalisation."""

import io

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
from keras_m3ae.finetune import augment


def png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="PNG")
    return tf.constant(buffer.getvalue())


def noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


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
        windows = _tf_windows(60, 80, scale, 200)
        assert (windows[:, :2] >= 0).all() and (windows[:, :2] + windows[:, 2:] <= [60, 80]).all()
        areas[scale] = windows[:, 2] * windows[:, 3] / 4800
        assert areas[scale].min() >= scale[0] * 0.9
    assert areas[augment.FINETUNE_CROP_SCALE].min() < 0.2
    same = crops.sample_crop_window(shape, tf.constant([3, 0]))
    np.testing.assert_array_equal(same, crops.sample_crop_window(shape, tf.constant([3, 0])))


def torchvision_crop_windows(height, width, scale, ratio, draws, rng):
    """torchvision's `RandomResizedCrop.get_params`, in numpy, `draws` times.

    Returns `(windows (draws, 4), fell_back (draws,))`.
    """
    windows, fell_back = [], []
    for _ in range(draws):
        for _ in range(10):
            area = height * width * rng.uniform(*scale)
            aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
            w, h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                windows.append((rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w))
                fell_back.append(False)
                break
        else:
            if width / height < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif width / height > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                h, w = height, width
            windows.append(((height - h) // 2, (width - w) // 2, h, w))
            fell_back.append(True)
    return np.array(windows), np.array(fell_back)


def _tf_windows(height, width, scale, draws):
    seeds = tf.stack([tf.range(draws, dtype=tf.int64), tf.fill([draws], tf.constant(7, tf.int64))], 1)
    shape = tf.constant([height, width, 3])
    sample = tf.function(lambda seeds: tf.map_fn(
        lambda seed: crops.sample_crop_window(shape, seed, scale), seeds,
        fn_output_signature=tf.int32))
    return sample(seeds).numpy()


@pytest.mark.backend_independent
@pytest.mark.parametrize("height, width, scale", [
    (224, 224, crops.RANDOM_CROP_SCALE),  # pretraining
    (40, 200, augment.FINETUNE_CROP_SCALE),  # most attempts fail: a quarter fall back
])
def test_crop_window_distribution_is_torchvisions(height, width, scale):
    ratio = crops.RANDOM_CROP_RATIO
    got = _tf_windows(height, width, scale, 3000)
    expected, expected_fallback = torchvision_crop_windows(
        height, width, scale, ratio, 10000, np.random.default_rng(0))
    assert (got[:, :2] >= 0).all() and (got[:, :2] + got[:, 2:] <= [height, width]).all()
    got_area = got[:, 2] * got[:, 3] / (height * width)
    expected_area = expected[:, 2] * expected[:, 3] / (height * width)
    # 3000 draws: the standard error of the mean area is ~0.004.
    assert got_area.mean() == pytest.approx(expected_area.mean(), abs=0.015)
    assert np.median(got_area) == pytest.approx(np.median(expected_area), abs=0.02)
    got_aspect = np.log(got[:, 3] / got[:, 2])
    assert got_aspect.mean() == pytest.approx(np.log(expected[:, 3] / expected[:, 2]).mean(), abs=0.02)
    # Offsets are uniform over the free room: the window centres average the image centre.
    centre = got[:, :2] + got[:, 2:] / 2
    np.testing.assert_allclose(centre.mean(0), [height / 2, width / 2], rtol=0.03)
    # Every fallback is the same centred window; other windows hardly ever equal it.
    fallback_window = expected[np.argmax(expected_fallback)]
    fell_back = (got == fallback_window).all(1)
    assert fell_back.mean() == pytest.approx(expected_fallback.mean(), abs=0.03)
    if (height, width) == (224, 224):
        # The numbers: torchvision's mean area 0.536 and median 0.530
        # for scale (0.2, 1) on a square image (TensorFlow's sampler: 0.497, 0.476).
        assert got_area.mean() == pytest.approx(0.536, abs=0.012)
        assert np.median(got_area) == pytest.approx(0.530, abs=0.02)
    else:
        assert 0.2 < fell_back.mean() < 0.3


@pytest.mark.backend_independent
def test_crop_window_fallback_is_torchvisions_centre_crop():
    # No attempt fits an area larger than the image: the fallback, every time.
    too_large = (1.5, 2.0)
    for shape, expected in [((40, 200), [0, 73, 40, 53]),  # ratio clamped to 4/3
                            ((200, 40), [73, 0, 53, 40]),  # ratio clamped to 3/4
                            ((60, 70), [0, 0, 60, 70])]:  # within the range: the whole image
        windows = {tuple(crops.sample_crop_window(tf.constant(shape + (3,)), tf.constant([i, 1]),
                                                  too_large).numpy()) for i in range(5)}
        assert windows == {tuple(expected)}, shape
