"""The probe: can a source's first records become examples at all?

Broken records are the skip counter's business (`skips`): a few per shard
are normal. A source of which *nothing* can be read is a different matter:
with `repeat=True` the pipeline would re-read it forever without yielding a
batch. `probe_records` reads the first records of this host's first files
when the dataset is built and raises an error naming the cause (a wrong
feature key, records that are no `tf.train.Example`, images that do not
decode).
"""

import logging

import numpy as np
import tensorflow as tf

from keras_m3ae.data import transforms
from keras_m3ae.data.tfrecord import PROBE_FILES
from keras_m3ae.data.tfrecord import describe
from keras_m3ae.data.tfrecord import read_records

logger = logging.getLogger("keras_m3ae.data")

# Records read per probed file: enough to see past a few broken ones, few
# enough to cost milliseconds when a dataset is built.
PROBE_RECORDS = 16


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
        records = read_records(path, compression_type, PROBE_RECORDS)
        if records:
            break
    where = f"the first {len(records)} record(s) of {path}"
    if not records:
        raise ValueError(
            f"No record can be read from the first {len(probed)} file(s) "
            f"({describe(compression_type)}): {probed}."
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


