"""Bad data is skipped and counted, never crashes, never passes as good."""

import io
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_m3ae import data
from records import serialize_example as example
from records import write_records as write

MEAN = np.array(data.CC12M_MEAN, np.float32)
STD = np.array(data.CC12M_STD, np.float32)

# Pure tf.data / file work: runs once, not once per Keras backend.
pytestmark = pytest.mark.backend_independent


def encode(image, fmt="JPEG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb(color, size=(40, 30)):
    return Image.new("RGB", size, color)


def noisy(seed=0, size=(48, 40)):
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    good_jpeg = encode(noisy())
    good_png = encode(noisy(1), "PNG")
    jpeg_garbage = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
    records = [
        # label = kept example id; the kept ones are 0..6.
        example(jpg=good_jpeg, txt="good jpeg", label=0),
        example(jpg=encode(Image.new("L", (40, 30), 90)), txt="grey", label=1),
        example(jpg=encode(Image.new("RGBA", (40, 30), (10, 200, 30, 128)), "PNG"),
                txt="rgba", label=2),
        example(jpg=encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), quality=100),
                txt="cmyk", label=3),
        example(jpg=good_png, txt="", label=4),  # empty caption: kept, no text
        example(jpg=good_jpeg, txt=b"caf\xe9 latin-1", label=5),  # not UTF-8: kept, no text
        example(jpg=good_jpeg, label=6),  # no txt feature: kept, no text
        example(jpg=b"this is not an image at all", txt="corrupt", label=7),
        example(jpg=good_jpeg[: len(good_jpeg) // 2], txt="truncated jpeg", label=8),
        example(jpg=good_png[: len(good_png) // 2], txt="truncated png", label=9),
        example(txt="no image feature", label=10),
        example(jpg=jpeg_garbage, txt="jpeg header, garbage body", label=11),
        b"not a tf.train.Example",
    ]
    main = write(root / "00000.tfrecord", records)
    (root / "00001.tfrecord").write_bytes(b"")  # zero-byte shard
    intact = write(root / "full.tfrecord",
                   [example(jpg=good_jpeg, txt="tail", label=20 + i) for i in range(3)])
    raw = open(intact, "rb").read()
    (root / "00002.tfrecord").write_bytes(raw[:-20])  # last record cut short
    return root, main


def test_bad_records_are_skipped_and_counted(bad_files):
    root, _ = bad_files
    counter = data.SkipCounter(log_every=1)
    ds = data.image_text_dataset(
        [str(root / "0000*.tfrecord")], image_size=16, max_text_length=4, batch_size=None,
        training=False, label_key="label", skip_counter=counter,
    )
    assert ds.skip_counter is counter
    out = {int(label): x for x, label in ds.as_numpy_iterator()}
    assert sorted(out) == [0, 1, 2, 3, 4, 5, 6, 20, 21]
    counts = counter.counts()
    assert counts == {
        "image_missing": 1,
        "image_not_decodable": 1,
        "image_truncated": 2,
        "image_decode_error": 2,  # garbage JPEG body, record that is no Example
        "label_missing": 0,
        "text_empty_line": 0,
        "caption_empty": 2,
        "caption_invalid_utf8": 1,
        "file_empty": 1,
        "file_truncated": 1,
        "compression_mismatch": 0,
        "image_corrupt": 0,
        "image_non_finite": 0,
    }
    assert counter.total_skipped() == 6
    assert data.skipped_counts()["file_truncated"] >= 1
    # Kept examples without usable text have an all-False mask.
    for label in (4, 5, 6):
        assert not out[label]["padding_mask"].any()
    assert out[0]["padding_mask"].sum() == 3  # good jp ##eg
    # Grey, RGBA and CMYK come out as the right RGB colours.
    pixel = lambda label: out[label]["images"][8, 8] * STD + MEAN  # noqa: E731
    np.testing.assert_allclose(pixel(1) * 255, [90, 90, 90], atol=3)
    np.testing.assert_allclose(pixel(2) * 255, [10, 200, 30], atol=3)
    # CMYK: the colour PIL itself reads back from the file.
    cmyk = encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), quality=100)
    expected = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))[8, 8]
    np.testing.assert_allclose(pixel(3) * 255, expected, atol=3)
    counter.reset()
    assert counter.total_skipped() == 0


def test_training_mode_skips_the_same(bad_files):
    _, main = bad_files
    ds = data.image_text_dataset(main, image_size=16, max_text_length=4, batch_size=3,
                                 training=True, seed=0)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 2  # 7 good examples, remainder dropped
    assert all(np.isfinite(b["images"]).all() for b in batches)
    assert ds.skip_counter.total_skipped() == 6


def test_skips_are_logged(bad_files, caplog):
    _, main = bad_files
    with caplog.at_level("WARNING", logger="keras_m3ae.data"):
        ds = data.image_text_dataset(main, image_size=8, batch_size=None, training=False,
                                     skip_counter=data.SkipCounter(log_every=2, name="logtest"))
        list(ds.as_numpy_iterator())
    lines = [r.getMessage() for r in caplog.records if "logtest" in r.getMessage()]
    assert lines and "image_" in lines[-1]


def test_all_files_empty_is_an_error(tmp_path):
    (tmp_path / "a.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        data.image_text_dataset(str(tmp_path / "a.tfrecord"))


def _write_compressed(path, records, compression_type):
    options = tf.io.TFRecordOptions(compression_type=compression_type)
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def _captioned(n, start=0):
    return [example(jpg=encode(noisy(start + i)), txt=f"caption {start + i}", label=start + i)
            for i in range(n)]


@pytest.mark.parametrize("compression,asked", [("GZIP", "gzip"), ("ZLIB", None)])
def test_compressed_shards_are_read_when_asked_or_detected(tmp_path, compression, asked):
    path = _write_compressed(tmp_path / "a.tfrecord", _captioned(5), compression)
    ds = data.image_text_dataset(path, image_size=8, max_text_length=4, batch_size=None,
                                 training=False, label_key="label", compression_type=asked)
    assert sorted(int(label) for _, label in ds.as_numpy_iterator()) == [0, 1, 2, 3, 4]
    # Compressed sizes are not record bytes: nothing is miscounted as truncated.
    assert ds.skip_counter.counts()["file_truncated"] == 0


def test_unreadable_sources_fail_fast_naming_the_cause(tmp_path):
    good = write(tmp_path / "plain.tfrecord", _captioned(3))
    gzipped = _write_compressed(tmp_path / "gz.tfrecord", _captioned(3), "GZIP")
    not_examples = write(tmp_path / "raw.tfrecord", [b"\x00\x01 not an Example" * 3] * 4)
    no_image = write(tmp_path / "noimg.tfrecord", [example(png=b"abc", txt="t")] * 4)
    (tmp_path / "junk.tfrecord").write_bytes(b"hello, these are no records" * 10)
    garbage_body = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
    undecodable = write(tmp_path / "bodies.tfrecord", [example(jpg=garbage_body, txt="t")] * 3)
    # The cases that today re-read forever with training=True + repeat.
    cases = [
        (gzipped, dict(compression_type=""),
         r"look GZIP-compressed: pass compression_type='GZIP'"),
        (good, dict(compression_type="GZIP"), r"look uncompressed: pass compression_type=''"),
        (good, dict(image_key="image"),
         r"No feature 'image' in the first 3 record\(s\) of .*plain.tfrecord: the keys "
         r"present are \['jpg', 'label', 'txt'\]; pass the image feature as `image_key`"),
        (good, dict(image_key="txt"), r"'txt' feature .* holds no JPEG"),
        (good, dict(label_key="class"), r"No feature 'class' \(`label_key`\)"),
        (no_image, {}, r"No feature 'jpg' .*keys present are \['png', 'txt'\]"),
        (not_examples, {}, r"None of the first 4 record\(s\) .* is a tf.train.Example"),
        (undecodable, {}, r"None of the 3 image\(s\) under 'jpg' .* decodes"),
        (str(tmp_path / "junk.tfrecord"), {},
         r"can be read as TFRecords, uncompressed, GZIP or ZLIB .*b'hello, t'"),
    ]
    for path, kwargs, message in cases:
        start = time.perf_counter()
        with pytest.raises(ValueError, match=message):
            data.image_text_dataset(path, image_size=8, batch_size=2, training=True,
                                    repeat=True, **kwargs)
        assert time.perf_counter() - start < 10, (path, kwargs)
    with pytest.raises(ValueError, match="compression_type must be None"):
        data.image_text_dataset(good, compression_type="bz2")
    # image_dataset probes its TFRecords too.
    with pytest.raises(ValueError, match="No feature 'jpg'"):
        data.image_dataset(no_image, image_size=8, batch_size=2, repeat=True)


def test_a_broken_first_file_does_not_hide_good_ones(tmp_path):
    intact = write(tmp_path / "full.tfrecord", _captioned(2))
    (tmp_path / "00000.tfrecord").write_bytes(open(intact, "rb").read()[:10])  # no record
    write(tmp_path / "00001.tfrecord", _captioned(2, start=10))
    ds = data.image_text_dataset(str(tmp_path / "0000*.tfrecord"), image_size=8, batch_size=None,
                                 training=False, label_key="label")
    assert sorted(int(label) for _, label in ds.as_numpy_iterator()) == [10, 11]
    assert ds.skip_counter.counts()["file_truncated"] == 1
