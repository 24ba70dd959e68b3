"""Checks made once, up front: can a source be read at all, and what its batches promise.

Broken records are the skip counter's business (`skips`): a few per shard
are normal. A source of which *nothing* can be read is a different matter:
with `repeat=True` the pipeline would re-read it forever without yielding a
batch. `detect_compression` and `probe_records` read the first records of
this host's first files when the dataset is built and raise an error naming
the cause (compressed shards, a wrong feature key, records that are no
`tf.train.Example`).

`DataSpec` is what a builder's batches promise the model (image size, text
length, vocabulary size, normalised images); the builders attach it to the
dataset as `data_spec` and the pretrainer's `fit`/`evaluate` compare it
with the backbone (`contract_errors`) before the first step.
`validate_batches` is the debug option for other datasets: it checks the
values of every batch, at a cost.
"""

import dataclasses
import gzip
import logging
import struct
import zlib

import numpy as np
import tensorflow as tf

from keras_m3ae.data import transforms
from keras_m3ae.data.constants import CC12M_MEAN
from keras_m3ae.data.constants import CC12M_STD

logger = logging.getLogger("keras_m3ae.data")

COMPRESSION_TYPES = ("", "GZIP", "ZLIB")
_COMPRESSION_NAMES = {"": "", "NONE": "", "GZIP": "GZIP", "ZLIB": "ZLIB"}
# Records read per probed file: enough to see past a few broken ones, few
# enough to cost milliseconds when a dataset is built.
PROBE_RECORDS = 16
# Files probed when the first ones hold no readable record.
PROBE_FILES = 3


def normalize_compression(compression_type):
    """`None` (detect), or one of `COMPRESSION_TYPES`; raises on anything else."""
    if compression_type is None:
        return None
    name = str(compression_type).upper()
    if name not in _COMPRESSION_NAMES:
        raise ValueError(
            f"compression_type must be None (detect), '', 'GZIP' or 'ZLIB'; got "
            f"{compression_type!r}."
        )
    return _COMPRESSION_NAMES[name]


# What the probe reads of a file at most: enough for `PROBE_RECORDS` records
# of web-scale image-text data, little enough to cost milliseconds.
_PROBE_BYTES = 4 << 20
# The largest single record the probe reads.
_MAX_PROBE_BYTES = 256 << 20


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def _masked_crc32c(data):
    """TFRecord's masked CRC-32C (of the 8 length bytes: cheap in Python)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _head_bytes(path, compression_type, size=_PROBE_BYTES):
    """Up to `size` (decompressed) bytes from the start of `path`; b"" if they don't decompress."""
    with tf.io.gfile.GFile(path, "rb") as f:
        try:
            if compression_type == "GZIP":
                return gzip.GzipFile(fileobj=f).read(size)
            if compression_type == "ZLIB":
                return _inflate_head(f, size)
        except (OSError, EOFError, zlib.error):
            return b""
        return f.read(size)


def _inflate_head(f, size, chunk=1 << 20):
    """The first `size` bytes of the zlib stream `f`, never inflating more."""
    inflater, out = zlib.decompressobj(), b""
    while len(out) < size:
        data = inflater.unconsumed_tail or f.read(chunk)
        if not data:
            break
        out += inflater.decompress(data, size - len(out))
    return out


def _read_records(path, compression_type, count):
    """Up to `count` records from the head of `path`; stops at the first unreadable one.

    Plain Python on the first bytes of the file (no `tf.data` pipeline to
    build: this runs for every dataset built). A record counts when its
    length field passes its CRC and the record fits in the bytes read.
    """
    size = _PROBE_BYTES
    head = _head_bytes(path, compression_type, size)
    records, offset = [], 0
    while len(records) < count and offset + 12 <= len(head):
        length_bytes = head[offset:offset + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", head[offset + 8:offset + 12])
        end = offset + 12 + length
        if _masked_crc32c(length_bytes) != length_crc:
            break
        if end + 4 > len(head):
            # A first record larger than the bytes read (a huge image) is
            # read in full; later ones are left for the pipeline.
            if records or len(head) < size or end + 4 > _MAX_PROBE_BYTES:
                break
            size = end + 4
            head = _head_bytes(path, compression_type, size)
            continue
        records.append(head[offset + 12:end])
        offset = end + 4
    return records


def _head(path, size=8):
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(size)


def _describe(compression_type):
    return {"": "uncompressed", "GZIP": "GZIP", "ZLIB": "ZLIB"}[compression_type]


def _readable_with(paths, compression_type):
    """Whether a record of one of `paths` reads with `compression_type`."""
    return any(_read_records(path, compression_type, 1) for path in paths)


def detect_compression(files, compression_type=None):
    """The compression of TFRecord files: the one given, checked, or the one that reads.

    Reads the first record of the first files (up to `PROBE_FILES`, for a
    first file that is broken) with the given compression (None: tries
    none, GZIP, ZLIB in turn). Files that read with another one than asked
    for are an error naming the right one.

    Args:
        files: list of non-empty TFRecord files, in reading order.
        compression_type: None, "", "GZIP" or "ZLIB".

    Returns:
        One of `COMPRESSION_TYPES`.

    Raises:
        ValueError: the files read with another compression than the one
            given, or with none.
    """
    compression_type = normalize_compression(compression_type)
    paths = list(files[:PROBE_FILES])
    if compression_type is not None and _readable_with(paths, compression_type):
        return compression_type
    readable = [c for c in COMPRESSION_TYPES
                if c != compression_type and _readable_with(paths, c)]
    if readable and compression_type is None:
        if readable[0]:
            logger.info("Reading %s-compressed TFRecords (detected in %s).", readable[0],
                        paths[0])
        return readable[0]
    if readable:
        found = readable[0]
        hint = (f"look {found}-compressed: pass compression_type={found!r}" if found
                else "look uncompressed: pass compression_type=''")
        raise ValueError(
            f"No record of {paths} reads as {_describe(compression_type)} TFRecords; the "
            f"shards {hint} (or None to detect it).")
    raise ValueError(
        f"No record of the first file(s) {paths} can be read as TFRecords, uncompressed, GZIP "
        f"or ZLIB (the first bytes of {paths[0]} are {_head(paths[0])!r}). Are they TFRecord "
        "shards, or truncated ones?")


def _keys_and_images(records, image_key):
    """Feature keys seen in `records` and how many hold a known image under `image_key`."""
    keys, examples, encoded = set(), 0, []
    for record in records:
        try:
            example = tf.train.Example.FromString(record)
        except Exception:  # noqa: BLE001 - protobuf raises its own DecodeError
            continue
        examples += 1
        features = example.features.feature
        keys.update(features)
        if image_key in features and features[image_key].bytes_list.value:
            encoded.append(features[image_key].bytes_list.value[0])
    # One call for all: the format test is elementwise.
    formats = transforms.image_format(tf.constant(encoded, tf.string)) if encoded else []
    images = [b for b, f in zip(encoded, np.asarray(formats)) if f != transforms.FORMAT_UNKNOWN]
    return sorted(keys), examples, images


def _decodes(encoded):
    try:
        tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return False


def probe_records(files, compression_type, image_key, caption_key=None, label_key=None):
    """Reads the first records of `files` and raises if none can become an example.

    Checks only what would make EVERY record fail: records that are not
    `tf.train.Example`s, no `image_key` feature, no recognisable image
    under it or none that decodes, no `label_key`. Some broken records among good ones are left
    to the skip counter. A caption key found in no record is only warned
    about (the examples train without text).

    Args:
        files: this host's non-empty record files, in reading order.
        compression_type: one of `COMPRESSION_TYPES`.
        image_key: str. The image feature.
        caption_key: str or None. The caption feature.
        label_key: str or None. The label feature.

    Raises:
        ValueError: naming the cause and the keys present.
    """
    probed = files[:PROBE_FILES]
    records = []
    for path in probed:
        records = _read_records(path, compression_type, PROBE_RECORDS)
        if records:
            break
    where = f"the first {len(records)} record(s) of {path}"
    if not records:
        raise ValueError(
            f"No record can be read from the first {len(probed)} file(s) "
            f"({_describe(compression_type)}): {probed}."
        )
    keys, examples, images = _keys_and_images(records, image_key)
    if not examples:
        raise ValueError(
            f"None of {where} is a tf.train.Example (the first starts with "
            f"{records[0][:16]!r}); these are not img2dataset-style records."
        )
    if image_key not in keys:
        raise ValueError(
            f"No feature {image_key!r} in {where}: the keys present are {keys}; "
            "pass the image feature as `image_key`."
        )
    if not images:
        raise ValueError(
            f"The {image_key!r} feature of {where} holds no JPEG, PNG, GIF, BMP or WebP "
            f"image: the keys present are {keys}; is `image_key` the image feature?"
        )
    # Decoded until one works: usually the first, one decode per dataset built.
    if not any(_decodes(image) for image in images):
        raise ValueError(
            f"None of the {len(images)} image(s) under {image_key!r} in {where} decodes "
            "(their headers look like images, their bodies do not); are the shards corrupt?"
        )
    if label_key and label_key not in keys:
        raise ValueError(
            f"No feature {label_key!r} (`label_key`) in {where}: the keys present are {keys}."
        )
    if caption_key and caption_key not in keys:
        logger.warning(
            "No feature %r (`caption_key`) in %s: the keys present are %s; the examples "
            "train without text.", caption_key, where, keys)


def _normalized_range(mean=CC12M_MEAN, std=CC12M_STD, tolerance=1e-3):
    """The range of pixels in [0, 1] after normalising with `mean` and `std`.

    Widened by `tolerance` for the float32 rounding of the normalisation.
    """
    low = min((0.0 - m) / s for m, s in zip(mean, std))
    high = max((1.0 - m) / s for m, s in zip(mean, std))
    return float(low) - tolerance, float(high) + tolerance


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a dataset's batches promise the model.

    Args:
        image_size: int. Height and width of `images`.
        max_text_length: int. Length T of `token_ids` and `padding_mask`.
        vocabulary_size: int or None. `token_ids` lie in
            `[0, vocabulary_size)` (the tokenizer's vocabulary; None: no
            text).
        image_range: `(low, high)`. Range of the normalised pixel values.

    Example:

    >>> ds = image_text_dataset("/data/cc12m/*.tfrecord", batch_size=256)
    >>> ds.data_spec.vocabulary_size
    30522
    """

    image_size: int
    max_text_length: int
    vocabulary_size: "int | None"
    image_range: tuple = _normalized_range()


def merged_spec(specs):
    """One `DataSpec` covering all `specs` (a mixture's), or None if any is None."""
    specs = list(specs)
    if not specs or any(spec is None for spec in specs):
        return None
    sizes = [s.vocabulary_size for s in specs if s.vocabulary_size is not None]
    return DataSpec(
        image_size=specs[0].image_size,
        max_text_length=specs[0].max_text_length,
        vocabulary_size=max(sizes) if sizes else None,
        image_range=(min(s.image_range[0] for s in specs), max(s.image_range[1] for s in specs)),
    )


def contract_errors(spec, image_size, max_text_length, vocabulary_size):
    """What a dataset's `DataSpec` breaks of a model's input contract.

    Args:
        spec: `DataSpec` of the dataset.
        image_size: int or `(height, width)`. The model's image size.
        max_text_length: int or None. The model's text length (None: no text).
        vocabulary_size: int or None. The model's vocabulary size.

    Returns:
        A list of messages, each naming both numbers; empty when they fit.
    """
    errors = []
    model_size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size,) * 2
    if (spec.image_size,) * 2 != model_size:
        errors.append(
            f"the dataset's images are {spec.image_size}x{spec.image_size} but the model takes "
            f"{model_size[0]}x{model_size[1]} (build the dataset with image_size="
            f"{model_size[0]})")
    if max_text_length is None:
        return errors
    if spec.max_text_length != max_text_length:
        errors.append(
            f"the dataset's token sequences have length {spec.max_text_length} but the model's "
            f"max_text_length is {max_text_length} (build the dataset with "
            f"max_text_length={max_text_length})")
    if spec.vocabulary_size is not None and vocabulary_size is not None \
            and spec.vocabulary_size > vocabulary_size:
        errors.append(
            f"the dataset's tokenizer has {spec.vocabulary_size} token ids but the model's "
            f"vocabulary_size is {vocabulary_size} (ids >= {vocabulary_size} would index past "
            "the embedding; build the backbone with vocabulary_size="
            f"{spec.vocabulary_size} or use a smaller vocabulary)")
    return errors


def validate_batches(ds, vocabulary_size=None, image_range=None, max_abs_pixel=10.0):
    """A debug option: checks the values of every batch of `ds`, at a cost.

    Builders of this package promise their ranges (`DataSpec`); a dataset
    made otherwise can be wrapped in this while debugging. Each batch is
    checked with `tf.debugging` asserts that fail the step with a message
    naming the range: `token_ids` in `[0, vocabulary_size)`, `images`
    floating point, finite and within `image_range` (or within
    `+-max_abs_pixel`, which catches pixels in [0, 255]).

    Args:
        ds: dataset of batch dicts (or `(dict, labels)` pairs).
        vocabulary_size: int or None. Token ids must be below it.
        image_range: `(low, high)` or None.
        max_abs_pixel: float. Bound of `|images|` when `image_range` is None.

    Returns:
        The dataset, with the checks in a map; its `skip_counter` and
        `data_spec` attributes are kept.

    Example:

    >>> ds = validate_batches(my_dataset, vocabulary_size=backbone.vocabulary_size)
    """
    low, high = image_range or (-max_abs_pixel, max_abs_pixel)

    def check(x, *labels):
        asserts = []
        images = x["images"]
        if not images.dtype.is_floating:
            raise ValueError(
                f"`images` are {images.dtype.name}; the model takes normalised float images "
                "(keras_m3ae.data.normalize_image).")
        asserts.append(tf.debugging.assert_all_finite(images, "`images` hold NaN or inf"))
        asserts.append(tf.debugging.assert_greater_equal(
            images, tf.cast(low, images.dtype),
            message=f"`images` go below {low:.3g}: not normalised?"))
        asserts.append(tf.debugging.assert_less_equal(
            images, tf.cast(high, images.dtype),
            message=f"`images` go above {high:.3g}: pixels in [0, 255] not normalised?"))
        if "token_ids" in x:
            ids = x["token_ids"]
            asserts.append(tf.debugging.assert_non_negative(
                ids, message="`token_ids` hold negative ids"))
            if vocabulary_size is not None:
                asserts.append(tf.debugging.assert_less(
                    ids, tf.cast(vocabulary_size, ids.dtype),
                    message=f"`token_ids` reach past the vocabulary ({vocabulary_size} ids)"))
        with tf.control_dependencies(asserts):
            x = {k: tf.identity(v) for k, v in x.items()}
        return (x, *labels) if labels else x

    checked = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE)
    for name in ("skip_counter", "data_spec"):
        if hasattr(ds, name):
            setattr(checked, name, getattr(ds, name))
    return checked
