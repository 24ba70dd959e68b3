"""Reader, transforms, tokenizer, sharding and mixing of keras_m3ae.data."""

import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_hub
import records
from keras_m3ae import data
from keras_m3ae.data import crops
from keras_m3ae.data import transforms

MEAN = np.array(data.CC12M_MEAN, np.float32)
STD = np.array(data.CC12M_STD, np.float32)


def encode(pixels, fmt="JPEG", mode=None, **kwargs):
    image = Image.fromarray(np.asarray(pixels, np.uint8))
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def solid(color, height=30, width=40):
    return np.broadcast_to(np.array(color, np.uint8), (height, width, 3)).copy()


def write_records(path, features_list):
    """Writes raw tf.train.Examples; values: bytes/str -> bytes, int -> int64."""
    return records.write_records(path, [records.serialize_example(**f) for f in features_list])


def as_list(ds):
    return list(ds.as_numpy_iterator())


@pytest.mark.backend_independent
def test_constant_colour_is_normalised_exactly(tmp_path):
    color = np.array([200, 100, 50], np.uint8)
    path = write_records(
        tmp_path / "a.tfrecord",
        [{"jpg": encode(solid(color), "PNG"), "txt": "x"},
         {"jpg": encode(solid(color), "JPEG", quality=100), "txt": "y"}],
    )
    expected = (color / 255.0 - MEAN) / STD
    for training in (False, True):
        ds = data.image_text_dataset(path, image_size=16, batch_size=2, training=training, seed=0,
                                     deterministic=True)
        (batch,) = as_list(ds)
        png, jpeg = batch["images"]
        np.testing.assert_allclose(png, np.broadcast_to(expected, png.shape), atol=1e-5)
        # JPEG chroma subsampling/quantisation: within 2 grey levels.
        np.testing.assert_allclose(jpeg, np.broadcast_to(expected, jpeg.shape),
                                   atol=2.0 / 255 / STD.min())


def test_batch_contract_and_tokens(tmp_path):
    captions = ["A red Circle", "", "Café au lait", "word " * 80]
    path = write_records(
        tmp_path / "a.tfrecord",
        [{"jpg": encode(solid([i * 40, 0, 0])), "txt": c, "key": str(i), "url": "u",
          "width": 40, "height": 30, "status": "success"}
         for i, c in enumerate(captions)],
    )
    ds = data.image_text_dataset(path, image_size=24, max_text_length=8, batch_size=4,
                                 training=False)
    spec = ds.element_spec
    assert spec["images"].shape == (None, 24, 24, 3)  # eval keeps the remainder
    (batch,) = as_list(ds)
    assert batch["images"].dtype == np.float32 and batch["images"].shape == (4, 24, 24, 3)
    assert batch["token_ids"].dtype == np.int32 and batch["token_ids"].shape == (4, 8)
    assert batch["padding_mask"].dtype == bool and batch["has_image"].dtype == bool
    assert batch["has_image"].tolist() == [True] * 4
    hub = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=data.DEFAULT_VOCABULARY, sequence_length=8, lowercase=True, strip_accents=True
    )
    np.testing.assert_array_equal(batch["token_ids"], np.asarray(hub(captions)))
    assert batch["token_ids"][0, :3].tolist() == [1037, 2417, 4418]  # "a red circle"
    assert batch["padding_mask"].sum(axis=1).tolist() == [3, 0, 4, 8]  # la ##it
    np.testing.assert_array_equal(batch["padding_mask"], batch["token_ids"] != 0)
    # Images come in file order in evaluation: red channel rises.
    reds = batch["images"][:, 12, 12, 0] * STD[0] + MEAN[0]
    np.testing.assert_allclose(reds * 255, [0, 40, 80, 120], atol=3)
    assert ds.skip_counter.counts()["caption_empty"] == 1


@pytest.mark.backend_independent
def test_training_batches_are_static_and_reproducible(tmp_path):
    path = write_records(
        tmp_path / "a.tfrecord",
        [{"jpg": encode(np.random.default_rng(i).integers(0, 255, (30, 40, 3))), "txt": "t"}
         for i in range(10)],
    )

    def run(seed):
        ds = data.image_text_dataset(path, image_size=16, batch_size=4, training=True,
                                     seed=seed, deterministic=True)
        assert ds.element_spec["images"].shape == (4, 16, 16, 3)
        return np.concatenate([b["images"] for b in as_list(ds)])

    first, second, other = run(1), run(1), run(2)
    assert first.shape == (8, 16, 16, 3)  # 10 examples, remainder dropped
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)


def test_tokenizer():
    tokenizer = data.M3AETokenizer(max_text_length=6)
    ids, mask = tokenizer(["Café", "cafe", "", "one two three four five six seven"])
    assert ids.dtype == np.int32 and mask.dtype == bool
    assert ids[0].tolist() == ids[1].tolist() == [7668, 0, 0, 0, 0, 0]
    assert mask[2].tolist() == [False] * 6 and mask[3].all()
    ids_fn, _ = data.tokenize("naïve Résumé", max_text_length=6)
    same, _ = data.tokenize("naive resume", max_text_length=6)
    np.testing.assert_array_equal(ids_fn, same)
    assert tokenizer.detokenize(ids[0]) == "cafe"
    # Inside tf.data it returns tensors.
    ds = tf.data.Dataset.from_tensors(tf.constant("Café")).map(tokenizer)
    (graph_ids, graph_mask), = as_list(ds)
    assert graph_ids.tolist() == [7668, 0, 0, 0, 0, 0] and graph_mask.sum() == 1


@pytest.mark.backend_independent
def test_random_resized_crop_decodes_only_the_window():
    rng = np.random.default_rng(0)
    pixels = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    jpeg = encode(pixels, quality=95)
    seed = tf.constant([3, 4], tf.int64)
    crop_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    window = crops.sample_crop_window(tf.constant([60, 80, 3]), crop_seed).numpy()
    y, x, h, w = window
    assert 0.2 * 4800 * 0.9 <= h * w <= 4800 and 0.7 <= w / h <= 1.4
    # Decoded as PIL decodes it (libjpeg's accurate IDCT).
    full = np.asarray(Image.open(io.BytesIO(jpeg)))[y:y + h, x:x + w]
    expected = tf.clip_by_value(tf.image.resize(tf.cast(full, tf.float32), [32, 32],
                                                method="bicubic"), 0, 255)
    got = transforms.decode_random_resized_crop(tf.constant(jpeg), 32, seed)
    flipped = tf.image.flip_left_right(expected)
    error = min(float(tf.reduce_mean(tf.abs(got - expected))),
                float(tf.reduce_mean(tf.abs(got - flipped))))
    assert error < 0.5  # TensorFlow's default IDCT: about 1.5
    # Different seeds give different crops.
    other = transforms.decode_random_resized_crop(tf.constant(jpeg), 32, seed + 1)
    assert float(tf.reduce_mean(tf.abs(other - got))) > 5.0


def smooth_scene(height, width, seed=0):
    """A photo-like image: gradients and a few solid rectangles."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], -1)
    for _ in range(6):
        top, left = rng.integers(0, height - 40), rng.integers(0, width - 40)
        pixels[top:top + rng.integers(20, height // 2), left:left + rng.integers(20, width // 2)] = \
            rng.integers(0, 255, 3)
    return pixels.astype(np.uint8)


@pytest.mark.backend_independent
def test_dct_scaling_decodes_large_windows_small():
    # The central 512x512 window of a 512x640 image resized to 32 is decoded
    # at 1/8 scale (side >= 8 x 32);
    # the result must match a full-resolution decode downscaled with an
    # antialiasing (area) filter, window offsets included.
    pixels = smooth_scene(512, 640)
    jpeg = tf.constant(encode(pixels, quality=95))
    reference = tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3)[:, 64:576], [32, 32], "area")
    scaled = transforms.decode_center_crop(jpeg, 32)
    assert float(tf.reduce_mean(tf.abs(scaled - reference))) < 3.0
    # The window at reduced scale: a shifted or mis-scaled window misses.
    window = tf.constant([96, 160, 256, 320], tf.int32)
    full = tf.io.decode_jpeg(jpeg, channels=3)[96:352, 160:480]
    for image_size, scale in ((200, 1), (128, 2), (64, 4), (32, 8), (16, 8)):
        part = transforms.decode_jpeg_window(jpeg, window, image_size)
        assert part.shape[:2] == (256 // scale, 320 // scale)
        expected = tf.image.resize(full, part.shape[:2], "area")
        assert float(tf.reduce_mean(tf.abs(tf.cast(part, tf.float32) - expected))) < 3.0
    # Random crops: the same window and flip with and without DCT scaling.
    seed = tf.constant([5, 6], tf.int64)
    fast = transforms.decode_random_resized_crop(jpeg, 48, seed)
    exact = transforms.decode_random_resized_crop(jpeg, 48, seed, dct_scaling=False)
    assert float(tf.reduce_mean(tf.abs(fast - exact))) < 4.0
    other = transforms.decode_random_resized_crop(jpeg, 48, seed + 1)
    assert float(tf.reduce_mean(tf.abs(other - fast))) > 10.0


@pytest.mark.backend_independent
def test_dct_scaling_antialiases():
    # Pixel noise downscaled 16x: DCT scaling averages blocks (little noise
    # left), a plain bicubic resize samples a few pixels (aliasing).
    noise = np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)
    jpeg = tf.constant(encode(np.repeat(noise[..., None], 3, -1), quality=100))
    scaled = transforms.decode_center_crop(jpeg, 32).numpy()
    plain = transforms.decode_center_crop(jpeg, 32, dct_scaling=False).numpy()
    assert abs(scaled.mean() - noise.mean()) < 4.0
    assert scaled.std() < 0.3 * plain.std()
    assert plain.std() > 30.0


@pytest.mark.backend_independent
def test_jpeg_decoding_matches_pil(tmp_path):
    # TensorFlow's default (fast) IDCT is off by about a grey level on average
    # and up to ~10 levels per pixel; the reader uses the accurate one, as PIL.
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 1, 72)[None, :, None] * rng.integers(0, 256, 3)
    pixels = (ramp + rng.normal(0, 25, (40, 72, 3))).clip(0, 255).astype(np.uint8)
    jpeg = encode(pixels, quality=90)
    # The central 40x40 square starts on a 16-pixel block boundary.
    expected = np.asarray(Image.open(io.BytesIO(jpeg)), np.float32)[:, 16:56]
    path = write_records(tmp_path / "a.tfrecord", [{"jpg": jpeg, "txt": "x"}])
    ds = data.image_text_dataset(path, image_size=40, batch_size=1, training=False)
    (batch,) = as_list(ds)
    got = batch["images"][0] * (STD * 255) + MEAN * 255  # center 40x40: no resize
    error = np.abs(got - expected)
    # Crop-aware decoding upsamples chroma differently in the crop's first and
    # last columns only; elsewhere the pixels are PIL's.
    assert error[:, 1:-1].max() < 0.01 and error.mean() < 0.5


@pytest.mark.backend_independent
def test_center_crop_keeps_the_middle():
    pixels = solid([0, 0, 255], 20, 60)
    pixels[:, 20:40] = [255, 0, 0]  # the central 20x20 square is red
    for fmt in ("PNG", "JPEG"):
        out = transforms.decode_center_crop(tf.constant(encode(pixels, fmt, quality=100)), 10)
        center = out.numpy()[1:-1, 1:-1]
        np.testing.assert_allclose(center[..., 0], 255, atol=12)
        np.testing.assert_allclose(center[..., 2], 0, atol=12)


@pytest.mark.backend_independent
def test_text_drop_rate(tmp_path):
    path = write_records(
        tmp_path / "a.tfrecord",
        [{"jpg": encode(solid([9, 9, 9], 8, 8)), "txt": "a caption"} for _ in range(400)],
    )

    def dropped_fraction(rate):
        ds = data.image_text_dataset(path, image_size=8, batch_size=100, training=True,
                                     text_drop_rate=rate, seed=0)
        masks = np.concatenate([b["padding_mask"] for b in as_list(ds)])
        assert len(masks) == 400
        return float(np.mean(~masks.any(axis=1)))

    assert dropped_fraction(0.0) == 0.0
    assert dropped_fraction(1.0) == 1.0
    assert abs(dropped_fraction(0.3) - 0.3) < 0.07  # 400 draws: sd ~0.023
    with pytest.raises(ValueError, match="text_drop_rate"):
        data.image_text_dataset(path, text_drop_rate=1.5)


@pytest.mark.backend_independent
def test_labels(tmp_path):
    path = write_records(
        tmp_path / "a.tfrecord",
        [{"jpg": encode(solid([1, 2, 3])), "txt": "t", "label": i} for i in range(5)]
        + [{"jpg": encode(solid([1, 2, 3])), "txt": "no label"}],
    )
    ds = data.image_text_dataset(path, image_size=8, batch_size=6, training=False,
                                 label_key="label")
    ((x, labels),) = as_list(ds)
    assert labels.tolist() == [0, 1, 2, 3, 4] and x["images"].shape[0] == 5
    assert ds.skip_counter.counts()["label_missing"] == 1


@pytest.mark.backend_independent
def test_sharding_is_disjoint_and_complete(tmp_path):
    paths = [
        write_records(tmp_path / f"{f:05d}.tfrecord",
                      [{"jpg": encode(solid([5, 5, 5], 8, 8)), "txt": "t", "label": f * 10 + i}
                       for i in range(3)])
        for f in range(7)
    ]
    files = data.resolve_files(str(tmp_path / "*.tfrecord"))
    assert files == sorted(paths)
    seen = []
    for index in range(3):
        ds = data.image_text_dataset(files, image_size=8, batch_size=None, training=False,
                                     label_key="label", shard_index=index, num_shards=3)
        seen.append({int(label) for _, label in as_list(ds)})
    assert [len(s) for s in seen] == [9, 6, 6]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert set.union(*seen) == {f * 10 + i for f in range(7) for i in range(3)}
    with pytest.raises(ValueError, match="cannot be split"):
        data.shard_files(files, 0, 8)
    with pytest.raises(ValueError, match="both"):
        data.default_shard(0, None)


def test_default_shard_follows_backend():
    if keras.config.backend() == "jax":
        import jax

        assert data.default_shard() == (jax.process_index(), jax.process_count())
    else:
        assert data.default_shard() == (0, 1)


@pytest.mark.backend_independent
def test_missing_files_are_clear_errors(tmp_path):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(ValueError, match="nothing-"):
        data.image_text_dataset(pattern)
    with pytest.raises(ValueError, match="File not found"):
        data.image_text_dataset(str(tmp_path / "absent.tfrecord"))
    with pytest.raises(ValueError, match="holds no files"):
        data.image_text_dataset(str(tmp_path))


@pytest.mark.backend_independent
def test_image_only_and_text_only_sources(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(solid([10, 20, 30]), "PNG"))
    (folder / "b.jpg").write_bytes(encode(solid([10, 20, 30])))
    (folder / "notes.md").write_text("not an image")
    images = data.image_dataset(str(folder), image_size=8, max_text_length=5, batch_size=2,
                                training=False)
    (batch,) = as_list(images)
    assert batch["has_image"].tolist() == [True, True]
    assert not batch["padding_mask"].any() and not batch["token_ids"].any()
    np.testing.assert_allclose(batch["images"][0, 0, 0], ([10, 20, 30] / np.float32(255) - MEAN)
                               / STD, atol=1e-5)
    assert images.skip_counter.counts()["caption_empty"] == 0

    text_file = tmp_path / "captions.txt"
    text_file.write_bytes(b"a dog\n\nCaf\xc3\xa9\n\xff\xfe bad\n")
    texts = data.text_dataset(str(text_file), image_size=8, max_text_length=5, batch_size=4,
                              training=False)
    (batch,) = as_list(texts)
    assert batch["token_ids"].tolist() == [[1037, 3899, 0, 0, 0], [7668, 0, 0, 0, 0]]
    assert batch["has_image"].tolist() == [False, False]
    assert not batch["images"].any() and batch["images"].shape == (2, 8, 8, 3)
    counts = texts.skip_counter.counts()
    assert counts["text_empty_line"] == 1 and counts["caption_invalid_utf8"] == 1


@pytest.mark.backend_independent
def test_mixing_proportions(tmp_path):
    pairs_path = write_records(
        tmp_path / "p.tfrecord",
        [{"jpg": encode(solid([0, 0, 0], 8, 8)), "txt": "pair"} for _ in range(8)],
    )
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.png").write_bytes(encode(solid([i, 0, 0], 8, 8), "PNG"))
    text_file = tmp_path / "t.txt"
    text_file.write_text("only text\n" * 5)
    common = dict(image_size=8, max_text_length=4, batch_size=None, repeat=True, seed=0)
    sources = [
        data.image_text_dataset(pairs_path, **common),
        data.image_dataset(str(folder), **common),
        data.text_dataset(str(text_file), **common),
    ]
    mixed = data.mix_datasets(sources, [2, 1, 1], batch_size=40, seed=0)
    assert mixed.element_spec["images"].shape == (40, 8, 8, 3)
    kinds = []
    for batch in mixed.take(20).as_numpy_iterator():
        has_text = batch["padding_mask"].any(axis=1)
        kinds += list(np.where(batch["has_image"], np.where(has_text, 0, 1), 2))
    fractions = np.bincount(kinds, minlength=3) / len(kinds)
    np.testing.assert_allclose(fractions, [0.5, 0.25, 0.25], atol=0.06)  # 800 draws
    with pytest.raises(ValueError, match="same unbatched structure"):
        data.mix_datasets([sources[0], data.text_dataset(str(text_file), image_size=16,
                                                         max_text_length=4, batch_size=None)],
                          [1, 1], batch_size=4)


def test_trivial_model_fits_under_current_backend(tmp_path):
    paths = data.write_shapes_dataset(tmp_path, num_examples=32, image_size=16, num_shards=2)
    # Repeated, with the steps per epoch given: a finite reader of unknown
    # length makes Keras warn at its end (docs/data.md, "Epochs over a finite reader").
    ds = data.image_text_dataset(paths, image_size=16, max_text_length=8, batch_size=8,
                                 label_key="label", seed=0, repeat=True)

    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Embedding(30522, 4)
            self.head = keras.layers.Dense(len(data.SHAPE_CLASS_NAMES))

        def call(self, x):
            mask = keras.ops.cast(x["padding_mask"], "float32")[..., None]
            text = keras.ops.sum(self.embed(x["token_ids"]) * mask, axis=1)
            image = keras.ops.mean(x["images"], axis=(1, 2))
            has_image = keras.ops.cast(x["has_image"], "float32")[:, None]
            return self.head(keras.ops.concatenate([text, image * has_image], axis=-1))

    model = Tiny()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(ds, epochs=2, steps_per_epoch=4, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 2
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.backend_independent
def test_shapes_dataset_is_deterministic(tmp_path):
    first = data.write_shapes_dataset(tmp_path / "a", num_examples=24, image_size=32,
                                      num_shards=3, seed=5)
    second = data.write_shapes_dataset(tmp_path / "b", num_examples=24, image_size=32,
                                       num_shards=3, seed=5)
    other = data.write_shapes_dataset(tmp_path / "c", num_examples=24, image_size=32,
                                      num_shards=3, seed=6)
    assert [os.path.basename(p) for p in first] == ["00000.tfrecord", "00001.tfrecord",
                                                     "00002.tfrecord"]
    read = lambda paths: b"".join(open(p, "rb").read() for p in paths)  # noqa: E731
    assert read(first) == read(second) != read(other)
    ds = data.image_text_dataset(first, image_size=32, batch_size=None, training=False,
                                 label_key="label", caption_key="txt")
    records = [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(first)
               .as_numpy_iterator()]
    assert len(records) == 24 == len(as_list(ds))
    for record in records:
        feature = record.features.feature
        label = feature["label"].int64_list.value[0]
        caption = feature["txt"].bytes_list.value[0].decode()
        assert data.SHAPE_CLASS_NAMES[label] in caption
        assert feature["width"].int64_list.value[0] == 32
        assert feature["status"].bytes_list.value[0] == b"success"


@pytest.mark.backend_independent
@pytest.mark.parametrize("num_examples, num_shards", [(5, 4), (10, 4), (7, 3), (4, 4)])
def test_shapes_dataset_writes_exactly_num_shards(tmp_path, num_examples, num_shards):
    paths = data.write_shapes_dataset(tmp_path, num_examples=num_examples, image_size=8,
                                      num_shards=num_shards)
    assert [os.path.basename(p) for p in paths] == [f"{i:05d}.tfrecord" for i in range(num_shards)]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(p) for p in paths]
    sizes = [sum(1 for _ in tf.data.TFRecordDataset(p)) for p in paths]
    assert sum(sizes) == num_examples and max(sizes) - min(sizes) <= 1
