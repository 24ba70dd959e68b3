"""Records -> examples: parsing, per-example validation, decoding, caption checks.

One parallel map per source turns each raw element (a serialized
`tf.train.Example`, an image file, a text line) into an unbatched example
`{"images": float32 (H, W, 3) in [0, 255], "captions": tf.string,
"has_image": bool}` (and a label), counting what it skips in the source's
`SkipCounter`. Images stay unnormalised and captions untokenized: that is
done once per batch by `batching`.
"""

import tensorflow as tf

from keras_m3ae.data import transforms

AUTOTUNE = tf.data.AUTOTUNE


def record_loader(image_key, caption_key, label_key):
    """A function parsing one serialized Example into `(image, caption, label)`.

    Only the features named are parsed; a missing caption is "", a missing
    label -1 (counted as `label_missing` when labels are asked for).
    """
    features = {image_key: tf.io.FixedLenFeature([], tf.string, default_value="")}
    if caption_key:
        features[caption_key] = tf.io.FixedLenFeature([], tf.string, default_value="")
    if label_key:
        features[label_key] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)

    def load(record):
        parsed = tf.io.parse_single_example(record, features)
        caption = parsed[caption_key] if caption_key else tf.constant("")
        label = parsed[label_key] if label_key else tf.constant(0, tf.int64)
        return parsed[image_key], caption, label

    return load


def file_loader(read):
    """A function reading one image file (via `read`) into `(image, "", 0)`."""
    return lambda item: (read(item), tf.constant(""), tf.constant(0, tf.int64))


def caption_flags(caption):
    """Valid UTF-8, non-empty caption (or ""), and what was wrong with it.

    Returns:
        `(caption, invalid, empty)`: the caption, or "" when it is not
        UTF-8; whether it was not UTF-8; whether it is empty or blank.
    """
    # Transcoding with replacement changes the bytes iff they are not UTF-8.
    transcoded = tf.strings.unicode_transcode(
        caption, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )
    invalid = tf.not_equal(transcoded, caption)
    empty = tf.logical_and(
        tf.logical_not(invalid), tf.equal(tf.strings.length(tf.strings.strip(caption)), 0)
    )
    return tf.where(invalid, tf.constant(""), caption), invalid, empty


class ExampleBuilder:
    """The per-example map: load -> validate -> decode/augment -> caption checks.

    Args:
        load_fn: function from one raw element to `(image_bytes, caption,
            label)` (see `record_loader`).
        image_size: int. Output height and width.
        counter: `SkipCounter` counting what is skipped.
        options: `ReaderOptions` (training, seed, order).
        text_drop_rate: float in [0, 1]. Fraction of captions removed.
        has_labels: bool. Yield `(example, label)` and skip unlabelled ones.
        dct_scaling: bool. Decode large JPEG windows at reduced scale.
        count_captions: bool. Count empty / invalid captions (False for
            image-only sources, which have none to complain about).
    """

    def __init__(self, load_fn, image_size, counter, options, text_drop_rate=0.0,
                 has_labels=False, dct_scaling=True, count_captions=True):
        self.load_fn = load_fn
        self.dct_scaling = dct_scaling
        self.image_size = image_size
        self.counter = counter
        self.training = options.training
        self.seed = options.host_seed
        self.deterministic = options.deterministic
        self.position = options.position
        self.text_drop_rate = float(text_drop_rate)
        self.has_labels = has_labels
        self.count_captions = count_captions

    def examples(self, raw):
        """Applies the example map to `raw`, drops failures and skipped examples."""
        # The map holds no Python control flow on tensors; skipping AutoGraph
        # conversion roughly halves the time to build a pipeline.
        builder_fn = tf.autograph.experimental.do_not_convert(self)
        # Each example carries its raw index to the ledger of a resumable
        # stream (`positions`), which starts that index where it resumes.
        indexed = self.position.indexed(raw) if self.position else raw.enumerate()
        ds = indexed.map(lambda index, record: (index, *builder_fn(index, record)),
                         num_parallel_calls=AUTOTUNE, deterministic=self.deterministic)
        ds = ds.ignore_errors()
        ds = ds.filter(lambda index, ok, example, label: ok)
        ds = self.position.record(ds) if self.position else ds.map(lambda index, *rest: rest)
        if self.has_labels:
            return ds.map(lambda ok, example, label: (example, label))
        return ds.map(lambda ok, example, label: example)

    def __call__(self, index, raw):
        counter = self.counter
        # Anything below that raises (an unparsable record, a decoder error
        # on bytes that passed the checks) drops the element through
        # `ignore_errors`; entering/leaving counts make that gap visible.
        with tf.control_dependencies([counter.enter_decoder()]):
            image_bytes, caption, label = self.load_fn(tf.identity(raw))
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(index, tf.int64)])

        # Validation is straight-line code (no per-check control flow): the
        # format and end-of-image tests are evaluated on every example and
        # combined with logical ops.
        missing = tf.equal(tf.strings.length(image_bytes), 0)
        fmt = transforms.image_format(image_bytes)
        unknown = tf.logical_and(tf.logical_not(missing), tf.equal(fmt, transforms.FORMAT_UNKNOWN))
        bad = tf.logical_or(missing, unknown)
        truncated = tf.logical_and(
            tf.logical_not(bad), tf.logical_not(transforms.is_complete_image(image_bytes, fmt))
        )
        bad = tf.logical_or(bad, truncated)
        # A header declaring far more pixels than the bytes hold (a
        # decompression bomb) would decode into a flat grey image.
        implausible = tf.cond(bad, lambda: tf.constant(False),
                              lambda: transforms.is_implausible_size(image_bytes, fmt))
        bad = tf.logical_or(bad, implausible)
        no_label = tf.logical_and(tf.logical_not(bad), tf.less(label, 0)) if self.has_labels \
            else tf.constant(False)
        ok = tf.logical_not(tf.logical_or(bad, no_label))

        def decode():
            if self.training:
                return transforms.decode_random_resized_crop(
                    image_bytes, self.image_size, seed, fmt, self.dct_scaling)
            return transforms.decode_center_crop(
                image_bytes, self.image_size, fmt, self.dct_scaling)

        def blank():
            return tf.zeros([self.image_size, self.image_size, 3], tf.float32)

        # Pixels stay in [0, 255] here; `batching.finalize` normalises whole batches.
        images = tf.cond(ok, decode, blank)
        images = tf.ensure_shape(images, [self.image_size, self.image_size, 3])
        # No decoder of ours makes NaN or inf; a custom one (or a broken
        # resize) must not put them into a batch.
        non_finite = tf.logical_and(ok, tf.logical_not(tf.reduce_all(tf.math.is_finite(images))))
        ok = tf.logical_and(ok, tf.logical_not(non_finite))

        caption, invalid, empty = caption_flags(caption)
        count_caption = tf.logical_and(ok, self.count_captions)
        if self.text_drop_rate > 0:
            drop_seed = tf.random.experimental.stateless_fold_in(seed, 3)
            dropped = tf.random.stateless_uniform([], drop_seed) < self.text_drop_rate
            caption = tf.where(dropped, tf.constant(""), caption)

        # All counts of this example in one update, once the image decoded
        # (an example whose decoder fails counts as `image_decode_error`
        # only).
        with tf.control_dependencies([images]):
            counted = counter.add_flags([
                (missing, "image_missing"),
                (unknown, "image_not_decodable"),
                (truncated, "image_truncated"),
                (implausible, "image_corrupt"),
                (non_finite, "image_non_finite"),
                (no_label, "label_missing"),
                (tf.logical_and(count_caption, invalid), "caption_invalid_utf8"),
                (tf.logical_and(count_caption, empty), "caption_empty"),
            ])
        with tf.control_dependencies([counted, caption]):
            left = counter.leave_decoder()
        with tf.control_dependencies([left]):
            # Captions stay strings here; `batching.finalize` tokenizes whole batches.
            example = {
                "images": tf.identity(images),
                "captions": tf.identity(caption),
                "has_image": tf.constant(True),
            }
            return tf.identity(ok), example, tf.cast(label, tf.int32)


def text_examples(lines, image_size, counter, deterministic):
    """Text-only examples from text lines; blank and non-UTF-8 lines are skipped.

    Args:
        lines: dataset of scalar strings.
        image_size: int. Height and width of the (zero) images.
        counter: `SkipCounter`.
        deterministic: bool. Keep the order of the map.

    Returns:
        A dataset of unbatched examples with `has_image` False.
    """

    def build(line):
        caption, invalid, empty = caption_flags(line)
        counted = counter.add_flags([(invalid, "caption_invalid_utf8"),
                                     (empty, "text_empty_line")])
        with tf.control_dependencies([counted]):
            example = {
                "images": tf.zeros([image_size, image_size, 3], tf.float32),
                "captions": tf.identity(caption),
                "has_image": tf.constant(False),
            }
            return tf.logical_not(tf.logical_or(invalid, empty)), example

    ds = lines.map(build, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds.filter(lambda ok, example: ok).map(lambda ok, example: example)
