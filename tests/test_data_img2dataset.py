"""The reader on shards written by the real img2dataset tool (1.47.0).

The fixtures under tests/data/ come from tests/data/make_img2dataset_fixture.py
(see its docstring): 15 URLs served from 127.0.0.1, of which 13 are images
(JPEG of several shapes, PNG, grayscale, RGBA, CMYK, GIF, 16-bit PNG, a
truncated JPEG), one a 404 and one HTML text.

- `img2dataset/`: img2dataset re-encoded every image to a JPEG whose
  shorter side is 32 (`resize_mode="keep_ratio"`); 12 successes in two
  shards (the truncated JPEG and the HTML failed to decode in the tool).
- `img2dataset_raw/`: `disable_all_reencoding=True`, the downloaded bytes as
  they are under `jpg`; 14 successes, two of which (truncated JPEG, HTML)
  the reader must skip and count.

Records are matched to the URL list by their `url` feature: the order inside
a shard is download completion order.
"""

import glob
import io
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_m3ae
from conftest import tiny_backbone
from conftest import tiny_pretrainer
from keras_m3ae import data

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
REENCODED = os.path.join(DATA, "img2dataset")
RAW = os.path.join(DATA, "img2dataset_raw")
MEAN = np.array(data.CC12M_MEAN, np.float32)
STD = np.array(data.CC12M_STD, np.float32)
TEXT_LENGTH = 12  # the longest caption has 13 tokens: one is truncated
# What img2dataset 1.47.0 writes for a success: the image under the name of
# `encode_format`, the caption as `txt` (and again under the URL list's own
# column name), and its metadata. In the raw mode the sizes are unknown and
# written as empty bytes instead of int64.
FEATURES = {
    "jpg": "bytes_list", "txt": "bytes_list", "key": "bytes_list", "url": "bytes_list",
    "caption": "bytes_list", "status": "bytes_list", "error_message": "bytes_list",
    "exif": "bytes_list", "sha256": "bytes_list", "width": "int64_list",
    "height": "int64_list", "original_width": "int64_list", "original_height": "int64_list",
}
SIZES = ("width", "height", "original_width", "original_height")


def sources():
    """URL file name -> caption, as in the URL list given to img2dataset."""
    with open(os.path.join(DATA, "sources.json"), encoding="utf-8") as f:
        return {row["path"]: row["caption"] for row in json.load(f)}


def successes(folder):
    """Successes img2dataset reports in its per-shard `_stats.json`."""
    total = 0
    for path in glob.glob(os.path.join(folder, "*_stats.json")):
        with open(path) as f:
            total += json.load(f)["successes"]
    return total


def shard_records(folder):
    """Every record, parsed without the reader: {name: (kind, values)}."""
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.tfrecord"))):
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            rows.append({name: (f.WhichOneof("kind"), list(getattr(f, f.WhichOneof("kind")).value))
                         for name, f in features.items()})
    return rows


def by_url(folder):
    """URL file name -> (caption, jpg bytes) of every record."""
    out = {}
    for row in shard_records(folder):
        name = row["url"][1][0].decode().rsplit("/", 1)[1]
        assert name not in out
        out[name] = (row["txt"][1][0].decode(), row["jpg"][1][0])
    return out


def read_all(ds):
    batches = list(ds.as_numpy_iterator())
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}, batches


def match_rows(token_ids, records):
    """Record name of each output row, by its token ids (captions are unique)."""
    names = list(records)
    expected, _ = data.M3AETokenizer(max_text_length=TEXT_LENGTH)([records[n][0] for n in names])
    matched = []
    for row in token_ids:
        hits = [n for n, ids in zip(names, expected) if np.array_equal(ids, row)]
        assert len(hits) == 1, (row, hits)
        matched.append(hits[0])
    return matched


def reference_pixels(image_bytes, image_size):
    """PIL decode -> RGB -> central square -> bicubic to image_size, in [0, 255]."""
    image = Image.open(io.BytesIO(image_bytes))
    if image.mode == "I;16":
        # PIL's own conversion saturates 16-bit values; keep the high byte.
        pixels = np.asarray(image) >> 8
        pixels = np.repeat(pixels.astype(np.uint8)[..., None], 3, axis=-1)
    else:
        pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(pixels[top:top + side, left:left + side])
    if side != image_size:
        square = square.resize((image_size, image_size), Image.BICUBIC)
    return np.asarray(square, np.float32)


def to_pixels(images):
    return images * (STD * 255.0) + MEAN * 255.0


def nonzero(counts):
    return {reason: count for reason, count in counts.items() if count}


@pytest.mark.backend_independent
def test_img2dataset_schema_and_captions():
    rows = shard_records(REENCODED)
    assert len(rows) == successes(REENCODED) == 12
    captions = sources()
    for row in rows:
        assert {name: kind for name, (kind, _) in row.items()} == FEATURES
        assert row["status"][1] == [b"success"] and row["error_message"][1] == [b""]
        name = row["url"][1][0].decode().rsplit("/", 1)[1]
        assert row["txt"][1] == row["caption"][1] == [captions[name].encode()]
        assert min(row["width"][1] + row["height"][1]) == 32  # keep_ratio, shorter side
        assert row["jpg"][1][0][:2] == b"\xff\xd8"  # re-encoded: always JPEG
    raw_rows = shard_records(RAW)
    assert len(raw_rows) == successes(RAW) == 14
    for row in raw_rows:
        assert {name: row[name][0] for name in SIZES} == dict.fromkeys(SIZES, "bytes_list")
        assert set(row) == set(FEATURES)


@pytest.mark.backend_independent
def test_issue_snippet_evaluation_on_img2dataset_output():
    records = by_url(REENCODED)
    ds = keras_m3ae.data.image_text_dataset(
        os.path.join(REENCODED, "*.tfrecord"),
        image_size=32, max_text_length=TEXT_LENGTH, batch_size=5, training=False,
    )
    out, batches = read_all(ds)
    assert [len(b["images"]) for b in batches] == [5, 5, 2]  # evaluation keeps the remainder
    # Every success exactly once; the empty caption is the only thing counted.
    names = match_rows(out["token_ids"], records)
    assert sorted(names) == sorted(records) and len(names) == successes(REENCODED)
    assert nonzero(ds.skip_counter.counts()) == {"caption_empty": 1}
    assert ds.skip_counter.total_skipped() == 0

    assert out["images"].dtype == np.float32 and out["images"].shape == (12, 32, 32, 3)
    assert out["token_ids"].dtype == np.int32 and out["padding_mask"].dtype == bool
    assert out["has_image"].tolist() == [True] * 12
    # Shorter sides are already 32: evaluation is a center crop of the JPEG,
    # decoded like PIL decodes it, then normalised with the CC12M statistics.
    for name, image in zip(names, out["images"]):
        expected = reference_pixels(records[name][1], 32)
        error = np.abs(to_pixels(image) - expected)
        # Crop-aware decoding upsamples chroma differently at the crop's edges.
        assert error[1:-1, 1:-1].max() < 0.01 and error.mean() < 0.1, (name, error.mean())
        np.testing.assert_allclose(image.mean(axis=(0, 1)),
                                   ((expected / 255.0 - MEAN) / STD).mean(axis=(0, 1)),
                                   atol=0.05 / 255 / STD.min())

    # Text: bert-base-uncased WordPiece of the original captions, accents stripped.
    row = {name: i for i, name in enumerate(names)}
    tokenizer = data.M3AETokenizer(max_text_length=TEXT_LENGTH)
    expected_ids, expected_mask = tokenizer([sources()[name] for name in names])
    np.testing.assert_array_equal(out["token_ids"], expected_ids)
    np.testing.assert_array_equal(out["padding_mask"], expected_mask)
    np.testing.assert_array_equal(out["padding_mask"], out["token_ids"] != 0)
    cafe = out["token_ids"][row["landscape.jpg"]]
    assert tokenizer.detokenize(cafe) == "cafe au lait on a wooden table"
    assert cafe[0] == 7668  # "cafe"
    lengths = {name: int(out["padding_mask"][i].sum()) for name, i in row.items()}
    assert lengths == {
        "landscape.jpg": 8, "portrait.jpg": 6, "panorama.jpg": 8, "square.jpg": 0,
        "tiny.jpg": 11, "photo.png": 11, "gray.jpg": 8, "logo_rgba.png": 5,
        "print_cmyk.jpg": 7, "palette.gif": 12, "deep16.png": 8, "mixed_case.jpg": 12,
    }  # square.jpg: the empty caption; palette.gif: 13 tokens cut to 12
    assert tokenizer.detokenize(out["token_ids"][row["portrait.jpg"]]) == \
        "a tall portrait of a lighthouse"
    # The grayscale JPEG comes out grey, the 16-bit PNG as img2dataset made it: white.
    gray = to_pixels(out["images"][row["gray.jpg"]])
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-3)
    np.testing.assert_allclose(to_pixels(out["images"][row["deep16.png"]]), 255.0, atol=1e-3)


@pytest.mark.backend_independent
def test_issue_snippet_training_on_img2dataset_output():
    records = by_url(REENCODED)
    ds = keras_m3ae.data.image_text_dataset(
        os.path.join(REENCODED, "*.tfrecord"),
        image_size=24, max_text_length=TEXT_LENGTH, batch_size=4, training=True, seed=1,
        # Augmentation seeds follow the order records arrive in; only a
        # deterministic order makes the crops reproducible.
        deterministic=True,
    )
    assert ds.element_spec["images"].shape == (4, 24, 24, 3)  # static for training
    out, batches = read_all(ds)
    assert len(batches) == 3  # 12 successes, batches of 4
    names = match_rows(out["token_ids"], records)
    assert sorted(names) == sorted(records)
    assert nonzero(ds.skip_counter.counts()) == {"caption_empty": 1}
    pixels = to_pixels(out["images"])
    assert np.isfinite(pixels).all()
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    row = {name: i for i, name in enumerate(names)}
    np.testing.assert_allclose(pixels[row["deep16.png"]], 255.0, atol=1e-3)
    gray = pixels[row["gray.jpg"]]
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-3)
    # A crop of an image holds that image's colours: each channel's mean lies
    # within the channel's range in the full image (a few levels of slack for
    # the bicubic overshoot), and no two crops are alike.
    for name, image in zip(names, pixels):
        full = np.asarray(Image.open(io.BytesIO(records[name][1])).convert("RGB"), np.float32)
        if Image.open(io.BytesIO(records[name][1])).mode == "I;16":
            continue  # checked above: all white
        low, high = full.min(axis=(0, 1)), full.max(axis=(0, 1))
        mean = image.mean(axis=(0, 1))
        assert np.all(mean >= low - 4) and np.all(mean <= high + 4), (name, mean, low, high)
    assert len({image.tobytes() for image in out["images"]}) == 12
    # Same seed, deterministic order: the same crops, in the same order.
    again, _ = read_all(keras_m3ae.data.image_text_dataset(
        os.path.join(REENCODED, "*.tfrecord"), image_size=24, max_text_length=TEXT_LENGTH,
        batch_size=4, training=True, seed=1, deterministic=True))
    np.testing.assert_array_equal(again["images"], out["images"])
    np.testing.assert_array_equal(again["token_ids"], out["token_ids"])


@pytest.mark.backend_independent
def test_raw_img2dataset_bytes_are_decoded_or_counted():
    # disable_all_reencoding: `jpg` holds PNG, GIF, CMYK JPEG, 16-bit PNG,
    # a truncated JPEG and HTML as downloaded.
    records = by_url(RAW)
    assert records["photo.png"][1][:4] == b"\x89PNG" and records["palette.gif"][1][:3] == b"GIF"
    ds = keras_m3ae.data.image_text_dataset(
        RAW, image_size=32, max_text_length=TEXT_LENGTH, batch_size=16, training=False,
    )
    out, _ = read_all(ds)
    names = match_rows(out["token_ids"], records)
    broken = {"truncated.jpg", "not_an_image.jpg"}
    assert sorted(names) == sorted(set(records) - broken)
    assert len(names) == successes(RAW) - 2
    assert nonzero(ds.skip_counter.counts()) == {
        "image_truncated": 1, "image_not_decodable": 1, "caption_empty": 1}
    for name, image in zip(names, out["images"]):
        expected = reference_pixels(records[name][1], 32)
        got = to_pixels(image)
        # Resizing differs (tf bicubic without antialiasing vs PIL's), colours do not.
        assert np.abs(got - expected).mean() < 2.0, name
        np.testing.assert_allclose(got.mean(axis=(0, 1)), expected.mean(axis=(0, 1)), atol=0.5,
                                   err_msg=name)


# Keras warns at the end of every first epoch over a dataset of unknown length.
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_fit_on_img2dataset_output():
    ds = keras_m3ae.data.image_text_dataset(
        os.path.join(REENCODED, "*.tfrecord"),
        image_size=16, max_text_length=8, batch_size=4, training=True, seed=0,
    )
    backbone = tiny_backbone(vocabulary_size=data.M3AETokenizer().vocabulary_size)
    # Per token: the mean over real masked tokens, whichever batch holds the
    # record whose caption is empty (the per-example default counts it as 0).
    pretrainer = tiny_pretrainer(backbone, text_loss_reduction="per_token")
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    seen = []
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(
        {k: float(v) for k, v in logs.items()}))
    history = pretrainer.fit(ds, epochs=1, verbose=0, callbacks=[callback]).history
    assert len(seen) == 3  # all 12 successes, in batches of 4
    assert np.isfinite(history["loss"][0]) and history["loss"][0] > 0
    # Per-batch logs: Keras 3.15's TensorFlow trainer averages the epoch's
    # metrics over one step too many when a dataset of unknown length has a
    # static batch size (the failed read at the end still counts a step).
    assert all(np.isfinite(logs["loss"]) and logs["image_loss"] > 0 for logs in seen)
    # Real token ids reached a 30522-way softmax that starts near uniform.
    assert abs(seen[0]["text_loss"] - np.log(backbone.vocabulary_size)) < 1.5
    assert ds.skip_counter.total_skipped() == 0
