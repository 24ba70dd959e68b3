"""Fine-tuning inputs: timm's RandAugment, MixUp / CutMix, label smoothing, classification datasets."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps

import keras_m3ae
from keras_m3ae.finetune import augment
from keras_m3ae.finetune import rand_augment as ra
from keras_m3ae.finetune.augment import FineTuneAugmentation
from keras_m3ae.finetune.datasets import default_classification_data
from keras_m3ae.finetune.datasets import tfds_classification_dataset

FILL = ra.IMAGENET_FILL


def _images():
    rng = np.random.default_rng(0)
    noisy = (rng.integers(0, 256, (24, 32, 3)) * 0.6 + 40).astype(np.uint8)
    y, x = np.mgrid[0:24, 0:32]
    smooth = np.stack([x * 7, y * 9, (x + y) * 4], -1).clip(0, 255).astype(np.uint8)
    return noisy, smooth


def _pil_ops(magnitude, negative, width, height):
    """timm's `rand-m9-mstd0.5-inc1` ops at one magnitude, on PIL images (bilinear)."""
    level = magnitude / 10
    sign = -1 if negative else 1
    enhance = 1 + sign * level * 0.9
    shear, translate = sign * level * 0.3, sign * level * 0.45
    geometry = dict(resample=Image.BILINEAR, fillcolor=tuple(int(v) for v in FILL))

    def affine(matrix):
        return lambda im: im.transform(im.size, Image.AFFINE, matrix, **geometry)

    return {
        "AutoContrast": ImageOps.autocontrast,
        "Equalize": ImageOps.equalize,
        "Invert": ImageOps.invert,
        "Rotate": lambda im: im.rotate(sign * level * 30, **geometry),
        "PosterizeIncreasing": lambda im: ImageOps.posterize(im, 4 - int(level * 4)),
        "SolarizeIncreasing": lambda im: ImageOps.solarize(im, 256 - int(level * 256)),
        "SolarizeAdd": lambda im: Image.fromarray(np.where(
            np.asarray(im) < 128, np.minimum(np.asarray(im) + int(level * 110), 255),
            np.asarray(im)).astype(np.uint8)),
        "ColorIncreasing": lambda im: ImageEnhance.Color(im).enhance(enhance),
        "ContrastIncreasing": lambda im: ImageEnhance.Contrast(im).enhance(enhance),
        "BrightnessIncreasing": lambda im: ImageEnhance.Brightness(im).enhance(enhance),
        "SharpnessIncreasing": lambda im: ImageEnhance.Sharpness(im).enhance(enhance),
        "ShearX": affine((1, shear, 0, 0, 1, 0)),
        "ShearY": affine((1, 0, 0, shear, 1, 0)),
        "TranslateXRel": affine((1, 0, translate * width, 0, 1, 0)),
        "TranslateYRel": affine((1, 0, 0, 0, 1, translate * height)),
    }


@pytest.mark.backend_independent
@pytest.mark.parametrize("magnitude, negative", [(9.0, False), (8.3, True)])
def test_rand_augment_ops_equal_timms_on_pil(magnitude, negative):
    noisy, smooth = _images()
    expected_ops = _pil_ops(magnitude, negative, 32, 24)
    assert list(expected_ops) == list(ra.OPS)
    for image in (noisy, smooth):
        for index, (name, pil_op) in enumerate(expected_ops.items()):
            got = ra.apply_op(tf.constant(image, tf.float32), tf.constant(index),
                              tf.constant(magnitude), tf.constant(negative)).numpy()
            expected = np.asarray(pil_op(Image.fromarray(image)), np.float32)
            # PIL computes geometry in doubles, TensorFlow in floats: a pixel
            # on a rounding boundary may land one level apart.
            assert np.abs(got - expected).max() <= 1, name
            assert (got != expected).mean() < 0.05, name
            if image is noisy:
                assert (got != image).any(), name


@pytest.mark.backend_independent
def test_rand_augment_draws_as_timm():
    choices = tf.function(lambda seeds: tf.map_fn(
        ra.sample_ops, seeds,
        fn_output_signature={"op": tf.int32, "applied": tf.bool, "magnitude": tf.float32,
                             "sign": tf.bool}))
    seeds = tf.stack([tf.range(3000, dtype=tf.int64), tf.fill([3000], tf.constant(5, tf.int64))], 1)
    got = {k: v.numpy() for k, v in choices(seeds).items()}
    assert got["op"].shape == (3000, 2)
    # Two ops per image, uniform over the 15, with replacement.
    counts = np.bincount(got["op"].ravel(), minlength=15)
    assert counts.min() > 6000 / 15 * 0.8 and counts.max() < 6000 / 15 * 1.2
    assert 0.03 < (got["op"][:, 0] == got["op"][:, 1]).mean() < 0.1  # 1/15 repeat
    assert got["applied"].mean() == pytest.approx(0.5, abs=0.03)
    assert got["sign"].mean() == pytest.approx(0.5, abs=0.03)
    # Magnitude ~ N(9, 0.5) per application, clipped to 10.
    magnitude = got["magnitude"].ravel()
    assert magnitude.max() == 10.0 and (magnitude == 10.0).mean() == pytest.approx(0.023, abs=0.01)
    assert np.median(magnitude) == pytest.approx(9.0, abs=0.05)
    assert magnitude[magnitude < 10].std() == pytest.approx(0.45, abs=0.05)
    assert np.corrcoef(magnitude[::2], magnitude[1::2])[0, 1] == pytest.approx(0.0, abs=0.06)


@pytest.mark.backend_independent
def test_rand_augment_is_per_image():
    _, smooth = _images()
    images = tf.constant(np.repeat(smooth[None], 16, 0), tf.float32)
    out = ra.batch_rand_augment(images, tf.constant([1, 2])).numpy()
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 255
    changed = (out != smooth).reshape(16, -1).any(1)
    # Each image has its own ops: P(unchanged) = 0.25 (Invert twice and the
    # like aside), so some are and most are not, and the changed differ.
    assert 0 < changed.sum() < 16
    distinct = {out[i].tobytes() for i in np.flatnonzero(changed)}
    assert len(distinct) > changed.sum() // 2
    again = ra.batch_rand_augment(images, tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(out, again)


def _timm_cutmix_lams(draws, height, width, rng):
    """timm's `cutmix_bbox_and_lam` with `correct_lam`, in numpy."""
    lams = []
    for lam in rng.beta(1.0, 1.0, draws):
        cut_h, cut_w = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        yl, yh = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
        xl, xh = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
        lams.append(1 - (yh - yl) * (xh - xl) / (height * width))
    return np.array(lams)


@pytest.mark.backend_independent
def test_mixup_and_cutmix_one_lambda_per_batch_as_timm():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    labels = np.eye(6, dtype=np.float32)
    mix = tf.function(lambda seed: augment.mix_batch(images, labels, seed))
    for i in range(40):
        mixed, mixed_labels, lam, cutmix = (t.numpy() for t in mix(tf.constant([i, 9])))
        # One lambda for the batch; each image's partner is its mirror.
        np.testing.assert_allclose(mixed_labels, lam * labels + (1 - lam) * labels[::-1], atol=1e-6)
        if cutmix:
            own = (mixed == images).all(-1)
            np.testing.assert_array_equal(own, (mixed != images[::-1]).any(-1))
            np.testing.assert_allclose(own[0].mean(), lam, atol=1e-6)
            assert (own == own[0]).all()  # the same box in every image
        else:
            np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-5,
                                       atol=1e-3)
    draws = tf.function(lambda seeds: tf.map_fn(
        lambda seed: augment.mix_batch(images[:2, :, :, :1], labels[:2], seed)[2:], seeds,
        fn_output_signature=(tf.float32, tf.bool)))
    seeds = tf.stack([tf.range(1200, dtype=tf.int64), tf.fill([1200], tf.constant(4, tf.int64))], 1)
    lams, used_cutmix = (t.numpy() for t in draws(seeds))
    assert used_cutmix.mean() == pytest.approx(0.5, abs=0.06)
    # MixUp: Beta(0.8, 0.8), mean 0.5, std 0.310.
    assert lams[~used_cutmix].mean() == pytest.approx(0.5, abs=0.04)
    assert lams[~used_cutmix].std() == pytest.approx(0.310, abs=0.03)
    # CutMix: Beta(1, 1), corrected to the kept area: mean ~0.70, none below
    # 0.1 (Keras' CutMix(factor=1.0): 0.51 and 22 %).
    expected = _timm_cutmix_lams(20000, 32, 32, np.random.default_rng(2))
    assert expected.mean() == pytest.approx(0.70, abs=0.01)
    assert lams[used_cutmix].mean() == pytest.approx(expected.mean(), abs=0.04)
    assert (lams[used_cutmix] < 0.1).mean() == (expected < 0.1).mean() == 0.0
    assert np.median(lams[used_cutmix]) == pytest.approx(np.median(expected), abs=0.06)


def test_label_smoothing_in_the_loss_equals_timms_smoothed_targets():
    from keras_m3ae.losses import ClassificationCrossentropy

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 5)).astype(np.float32)
    targets, lam = np.array([0, 3, 1, 2]), 0.3
    one_hot = np.eye(5, dtype=np.float32)[targets]
    mixed = lam * one_hot + (1 - lam) * one_hot[::-1]
    # timm's mixup_target: smoothed one-hots (off 0.1 / 5, on 1 - 0.1 + off), then mixed.
    off = 0.1 / 5
    smooth = one_hot * (1 - 0.1) + off
    timm_targets = lam * smooth + (1 - lam) * smooth[::-1]
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -(timm_targets * log_p).sum(1).mean()
    loss = ClassificationCrossentropy(label_smoothing=0.1)
    assert float(loss(mixed, logits)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.backend_independent
def test_fine_tune_augmentation_in_a_pipeline():
    _, smooth = _images()
    images = np.repeat(smooth[None], 4, 0)
    ds = tf.data.Dataset.from_tensors((images, np.arange(4))).repeat(3)
    ds = ds.map(augment.FineTuneAugmentation(num_classes=4, seed=3))
    batches = list(ds.as_numpy_iterator())
    for out, labels in batches:
        assert out.shape == (4, 24, 32, 3) and labels.shape == (4, 4)
        assert 0 <= out.min() and out.max() <= 255
        np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-6)
        # One lambda per batch, the partner mirrored.
        np.testing.assert_allclose(np.diag(labels), labels[0, 0], atol=1e-6)
        np.testing.assert_allclose(labels[0, 3] + labels[0, 0], 1.0, atol=1e-6)
    assert len({b[1][0, 0] for b in batches}) == 3  # a new lambda every batch
    # Same seed, same augmentation.
    np.testing.assert_array_equal(batches[1][0], next(iter(ds.skip(1).as_numpy_iterator()))[0])
    # [0, 1] images are augmented as [0, 255] ones (a fixed stateless seed).
    seed = tf.constant([3, 4], tf.int64)
    in_bytes = augment.FineTuneAugmentation(num_classes=4, seed=seed)(images, np.arange(4))
    in_units = augment.FineTuneAugmentation(num_classes=4, value_range=(0, 1), seed=seed)(
        images / 255.0, np.arange(4))
    np.testing.assert_allclose(in_units[0].numpy() * 255.0, in_bytes[0].numpy(), atol=1e-2)
    assert (in_bytes[0].numpy() != images).any()
    plain = augment.FineTuneAugmentation(num_classes=4, rand_augment=False, mixup_alpha=0,
                                         cutmix_alpha=0)
    out, labels = plain(images, np.arange(4))
    np.testing.assert_array_equal(out.numpy(), images)
    np.testing.assert_array_equal(labels.numpy(), np.eye(4))


def test_tfds_pipelines_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        train = tfds_classification_dataset(
            "cifar10", "train", batch_size=4, image_size=24, training=True,
            augment=FineTuneAugmentation(num_classes=10, rand_augment=False, seed=1), seed=0,
        )
        batches = list(train.as_numpy_iterator())
        assert len(batches) == 3
        images, labels = batches[0]
        assert images.shape == (4, 24, 24, 3) and labels.shape == (4, 10)
        assert 0 <= images.min() and images.max() <= 255 and images.max() > 1
        np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-5)
        test = tfds_classification_dataset("cifar100", "test", batch_size=5, image_size=16)
        batches = list(test.as_numpy_iterator())
        assert [len(b[1]) for b in batches] == [5, 5, 2]  # evaluation keeps every example
        assert batches[0][1].dtype == np.int32 and batches[0][1].max() < 100


def test_default_classification_data_is_labelled_consistently():
    data = default_classification_data(num_examples=64, image_size=32, max_text_length=16, seed=1)
    assert data["images"].shape == (64, 32, 32, 3) and data["images"].dtype == np.uint8
    names = keras_m3ae.data.SHAPE_CLASS_NAMES
    assert data["labels"].min() >= 0 and data["labels"].max() < len(names)
    assert len(np.unique(data["labels"])) >= 4
    # Each caption names the labelled shape.
    tokenizer = keras_m3ae.data.M3AETokenizer(max_text_length=16)
    for ids, mask, label in zip(data["token_ids"], data["padding_mask"], data["labels"]):
        name_ids, name_mask = tokenizer([names[label]])
        assert set(name_ids[0][name_mask[0]]) <= set(ids[mask])
    again = default_classification_data(num_examples=64, image_size=32, max_text_length=16, seed=1)
    np.testing.assert_array_equal(again["images"], data["images"])


@pytest.mark.backend_independent
def test_array_dataset_draws_a_new_order_every_epoch_and_keeps_rows_together():
    from keras_m3ae.finetune import array_dataset

    tf.random.set_seed(0)
    x = {"images": np.arange(10, dtype="float32")[:, None] * np.ones((1, 3), "float32")}
    ds = array_dataset(x, np.arange(10) * 10, np.arange(10) / 10, batch_size=4)

    def epoch():
        rows = [(b[0]["images"].numpy(), b[1].numpy(), b[2].numpy()) for b in ds]
        assert [len(r[1]) for r in rows] == [4, 4, 2]
        images, labels, weights = (np.concatenate(part) for part in zip(*rows))
        np.testing.assert_array_equal(images[:, 0], labels / 10)  # rows stay together
        np.testing.assert_allclose(weights, labels / 100)
        assert sorted(labels.tolist()) == list(range(0, 100, 10))  # each row once
        return labels.tolist()

    first, second = epoch(), epoch()
    assert first != second and first != sorted(first)
    tf.random.set_seed(0)
    again = array_dataset(x, np.arange(10) * 10, np.arange(10) / 10, batch_size=4)
    assert [b[1].numpy().tolist() for b in again] == [first[:4], first[4:8], first[8:]]
    in_order = array_dataset(np.arange(5), batch_size=2, shuffle=False)
    assert [b.numpy().tolist() for b in in_order] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match=r"same number of samples; got \[3, 4\]"):
        array_dataset(np.zeros(4), np.zeros(3))
