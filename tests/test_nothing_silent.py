"""Issue 27's rows 5-10: data that cannot train is refused or skipped under its own name.

Rows 1-3 are `test_run_lock.py` and `test_preset_integrity.py`.
"""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from PIL import Image

from conftest import tiny_backbone
from conftest import tiny_batch
from conftest import tiny_pretrainer
from keras_m3ae import data
from keras_m3ae.data import transforms
from records import serialize_example as example
from records import write_records as write


def encode(image, fmt="JPEG"):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noisy(seed=0, size=(48, 40)):
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def bomb(side=30000):
    """A ~3 KB JPEG whose SOF header claims `side` x `side` pixels."""
    jpeg = bytearray(encode(noisy(1)))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = side.to_bytes(2, "big") * 2
    return bytes(jpeg)


def _gzip(path, records):
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for record in records:
            w.write(record)


def _labels(ds):
    return sorted(int(label) for _, label in ds.as_numpy_iterator())


# --- Row 5: images that are not what they claim ---

@pytest.mark.backend_independent
@pytest.mark.parametrize("training", [False, True])
def test_a_decompression_bomb_is_skipped_as_image_corrupt(tmp_path, training):
    jpeg = bomb()
    assert len(jpeg) < 5000
    assert transforms.is_implausible_size(tf.constant(jpeg), transforms.image_format(jpeg))
    assert not transforms.is_implausible_size(tf.constant(encode(noisy())),
                                              tf.constant(transforms.FORMAT_JPEG))
    path = write(tmp_path / "a.tfrecord", [example(jpg=encode(noisy()), txt="ok", label=0),
                                            example(jpg=jpeg, txt="bomb", label=1),
                                            example(jpg=encode(noisy(2)), txt="ok", label=2)])
    ds = data.image_text_dataset(path, image_size=16, max_text_length=4, batch_size=None,
                                 training=training, repeat=False, label_key="label")
    assert _labels(ds) == [0, 2]
    counts = ds.skip_counter.counts()
    assert counts["image_corrupt"] == 1
    assert counts["image_decode_error"] == 0 and ds.skip_counter.total_skipped() == 1


@pytest.mark.backend_independent
def test_non_finite_decoded_images_are_skipped_as_image_non_finite(tmp_path, monkeypatch):
    decode = transforms.decode_center_crop
    monkeypatch.setattr(transforms, "decode_center_crop",
                        lambda *args, **kwargs: decode(*args, **kwargs) * float("nan"))
    path = write(tmp_path / "a.tfrecord",
                 [example(jpg=encode(noisy(i)), txt="t", label=i) for i in range(3)])
    ds = data.image_text_dataset(path, image_size=16, max_text_length=4, batch_size=None,
                                 training=False, label_key="label")
    assert _labels(ds) == []
    assert ds.skip_counter.counts()["image_non_finite"] == 3


# --- Row 9: a plain shard among GZIP ones ---

@pytest.mark.backend_independent
@pytest.mark.parametrize("plain_first", [True, False])
def test_a_shard_compressed_unlike_the_others_is_read_and_counted(tmp_path, plain_first):
    records = [[example(jpg=encode(noisy(10 * f + i)), txt="t", label=10 * f + i)
                for i in range(2)] for f in range(3)]
    plain = 0 if plain_first else 1
    for f in range(3):
        path = tmp_path / f"{f:05d}.tfrecord"
        write(path, records[f]) if f == plain else _gzip(path, records[f])
    ds = data.image_text_dataset(str(tmp_path / "*.tfrecord"), image_size=8, max_text_length=4,
                                 batch_size=None, training=False, label_key="label")
    assert _labels(ds) == [0, 1, 10, 11, 20, 21]
    counts = ds.skip_counter.counts()
    assert counts["compression_mismatch"] == (2 if plain_first else 1)
    assert counts["file_truncated"] == 0


# --- Row 10: the writer names its skips; a large valid image is written ---

@pytest.mark.backend_independent
def test_the_writer_writes_images_over_pils_guard_and_names_what_it_skips(tmp_path, monkeypatch):
    # PIL's guard lowered so that a 64x64 JPEG trips it as a 20000x20000 one does.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    large = encode(noisy(3, size=(64, 64)))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(large))
    items = [{"image": large, "caption": "large", "key": "0", "extra": {"label": 0}},
             {"image": bomb(), "caption": "bomb", "key": "1", "extra": {"label": 1}},
             {"image": b"not an image", "caption": "junk", "key": "2", "extra": {"label": 2}}]
    summary = data.write_tfrecords(items, str(tmp_path / "out"), progress=False)
    assert summary.written == 1
    assert dict(summary.skipped) == {"image_corrupt": 1, "unreadable_image": 1}
    ds = data.image_text_dataset(summary.paths, image_size=16, max_text_length=4,
                                 batch_size=None, training=False, label_key="label")
    assert _labels(ds) == [0]


# --- Rows 6, 7, 8: inputs that cannot train are refused up front ---

def _weights(model):
    return [ops.convert_to_numpy(v) for v in model.trainable_variables]


def test_one_nan_pixel_in_array_input_is_refused():
    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer="adam")
    batch = tiny_batch()
    batch["images"][2, 5, 6, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\) \(first at index "
                                         r"\(2, 5, 6, 1\)\)"):
        pretrainer.fit(batch, batch_size=2, verbose=0)


def test_a_zero_mask_ratio_is_refused_unless_asked_for():
    for name in ("image_mask_ratio", "text_mask_ratio"):
        with pytest.raises(ValueError, match=f"`{name}` is 0: .*loss is always 0.*"
                                             "allow_zero_mask_ratio=True"):
            tiny_pretrainer(**{name: 0.0})
    # MAE has no text: its text ratio masks nothing and is not checked.
    tiny_pretrainer(tiny_backbone(vocabulary_size=None), text_mask_ratio=0.0)
    opted = tiny_pretrainer(image_mask_ratio=0.0, allow_zero_mask_ratio=True)
    assert opted.get_config()["allow_zero_mask_ratio"] is True
    assert not ops.convert_to_numpy(opted(tiny_batch())["image_mask"]).any()


def _foreign(batch):
    """A tf.data pipeline the library did not build (no `data_spec`)."""
    return tf.data.Dataset.from_tensor_slices(batch).batch(2)


@pytest.mark.parametrize("change, message", [
    (lambda b: dict(b, token_ids=b["token_ids"] + 50), r"range over \[\d+, \d+\], outside the "
                                                       r"vocabulary \[0, 50\)"),
    (lambda b: dict(b, token_ids=b["token_ids"] - 60), r"range over \[-\d+, .*outside"),
    (lambda b: dict(b, images=(np.abs(b["images"]) * 100).round()), r"not normalised"),
    (lambda b: dict(b, images=np.abs(b["images"]).round()), r"whole numbers in \[0, \d\]"),
    (lambda b: dict(b, images=np.where(b["images"] > 2, np.inf, b["images"]).astype("float32")),
     r"NaN or infinite"),
])
def test_fit_checks_the_first_batch_of_a_foreign_dataset(change, message):
    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    before = _weights(pretrainer)
    bad = _foreign(change(tiny_batch(8)))
    with pytest.raises(ValueError, match="The first batch of the dataset cannot train the "
                                         "model: .*" + message + ".*check_first_batch=False"):
        pretrainer.fit(bad, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=message):
        pretrainer.evaluate(bad, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(pretrainer)))


def test_the_first_batch_check_passes_good_data_and_can_be_turned_off():
    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    batch = tiny_batch(8)
    history = pretrainer.fit(_foreign(batch), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # Turned off, unnormalised pixels train (to a large loss): the check was the refusal.
    pixels = dict(batch, images=(np.abs(batch["images"]) * 100).round())
    history = pretrainer.fit(_foreign(pixels), epochs=1, verbose=0, check_first_batch=False)
    assert history.history["loss"][0] > 100
