"""Sources -> model-ready examples: image-text TFRecords, images, text lines.

Every builder here yields the same element structure (the batch contract of
the models):

- `images`: float32 (B, H, W, 3), normalised with CC12M mean/std (all zeros
  for text-only examples);
- `token_ids`: int32 (B, T), WordPiece ids padded with 0, no special tokens;
- `padding_mask`: bool (B, T), True = real token (all False: no caption);
- `has_image`: bool (B,), False for text-only examples;

optionally as `(x, labels)` when a label feature is requested. With
`batch_size=None` the same structure comes unbatched, ready for
`mix_datasets`.

The pipeline per host: list files -> keep this host's share -> parallel
interleave over files (counting truncated files) -> optional cache ->
shuffle -> one parallel map that parses, validates (straight-line checks,
one counter update per example), decodes and augments -> batch -> one map
that normalises the images and tokenizes the captions of the whole batch ->
prefetch.
"""

import concurrent.futures
import functools
import logging

import keras
import numpy as np
import tensorflow as tf

from keras_m3ae.data import transforms
from keras_m3ae.data.constants import MAX_TEXT_LENGTH
from keras_m3ae.data.skips import SkipCounter
from keras_m3ae.data.tokenizer import M3AETokenizer

logger = logging.getLogger("keras_m3ae.data")

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# Bytes a TFRecord adds around each record: length, CRC of length, CRC of data.
_TFRECORD_OVERHEAD = 16
_GLOB_CHARS = "*?["


def resolve_files(file_pattern, default_glob="*.tfrecord"):
    """Expands a pattern, path, directory or list of them into sorted files.

    Works on any `tf.io.gfile` path (local, `gs://`, ...).

    Args:
        file_pattern: str or list of str. Glob patterns, file paths, or
            directories (then `default_glob` is matched inside).
        default_glob: str. Pattern used inside a directory.

    Returns:
        A sorted list of unique file paths.

    Raises:
        ValueError: a pattern matches no file, or a path does not exist.
    """
    patterns = [file_pattern] if isinstance(file_pattern, (str, bytes)) else list(file_pattern)
    if not patterns:
        raise ValueError("No file pattern given (empty list).")
    files = set()
    for pattern in patterns:
        pattern = pattern.decode() if isinstance(pattern, bytes) else str(pattern)
        if any(char in pattern for char in _GLOB_CHARS):
            matches = tf.io.gfile.glob(pattern)
            if not matches:
                raise ValueError(f"No files match the pattern {pattern!r}.")
            files.update(matches)
        elif tf.io.gfile.isdir(pattern):
            inner = pattern.rstrip("/") + "/" + default_glob
            matches = tf.io.gfile.glob(inner)
            if not matches:
                raise ValueError(
                    f"Directory {pattern!r} holds no files matching {default_glob!r}."
                )
            files.update(matches)
        elif tf.io.gfile.exists(pattern):
            files.add(pattern)
        else:
            raise ValueError(f"File not found: {pattern!r}.")
    return sorted(files)


def default_shard(shard_index=None, num_shards=None):
    """Returns this host's `(shard_index, num_shards)`.

    With the JAX backend the defaults are `jax.process_index()` and
    `jax.process_count()`, so each host of a pod reads its own files; on
    other backends (one process per input pipeline) `(0, 1)`.

    Args:
        shard_index: int or None.
        num_shards: int or None.

    Returns:
        A tuple of two ints.
    """
    if (shard_index is None) != (num_shards is None):
        raise ValueError(
            "Pass both `shard_index` and `num_shards`, or neither "
            f"(got shard_index={shard_index}, num_shards={num_shards})."
        )
    if shard_index is None:
        if keras.config.backend() == "jax":
            # Imported here: this module must not pull jax in on other backends.
            import jax

            return jax.process_index(), jax.process_count()
        return 0, 1
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"Need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}.")
    return int(shard_index), int(num_shards)


def shard_files(files, shard_index, num_shards):
    """This host's files: every `num_shards`-th file from `shard_index`.

    The shares of all hosts are disjoint and together hold every file.

    Args:
        files: sorted list of paths (the same list on every host).
        shard_index: int. This host's index.
        num_shards: int. Number of hosts.

    Returns:
        A list of paths.
    """
    if num_shards > len(files):
        raise ValueError(
            f"{len(files)} files cannot be split across {num_shards} hosts; "
            "write the data into at least as many shards as hosts."
        )
    if len(files) % num_shards:
        logger.warning(
            "%d files over %d hosts: hosts get unequal shares, so epoch "
            "lengths differ; prefer a multiple of the host count.",
            len(files),
            num_shards,
        )
    return list(files[shard_index::num_shards])


def _file_sizes(files):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda path: tf.io.gfile.stat(path).length, files))


def _drop_empty_files(files, counter):
    sizes = _file_sizes(files)
    kept = [(path, size) for path, size in zip(files, sizes) if size > 0]
    empty = len(files) - len(kept)
    if empty:
        counter.add_now("file_empty", empty)
        logger.warning("Skipping %d zero-byte file(s) of %d.", empty, len(files))
    if not kept:
        raise ValueError(f"All {len(files)} files are empty: {files[:3]}...")
    return [p for p, _ in kept], [s for _, s in kept]


def _read_record_file(path, size, counter, block=64):
    """Records of one TFRecord file; a truncated or corrupt tail is counted.

    `ignore_errors` ends the file at the first bad record but says nothing,
    so the bytes the good records account for are added up and compared with
    the file size when a sentinel after the last record arrives. The sum runs
    over blocks of `block` records (five tf.data stages per block instead of
    per record), which are split into single records again at the end.
    """
    records = tf.data.TFRecordDataset(path, buffer_size=1 << 20).ignore_errors()
    blocks = records.batch(block).map(lambda records: (records, False))
    sentinel = (tf.constant([], tf.string), True)
    blocks = blocks.concatenate(tf.data.Dataset.from_tensors(sentinel))

    def step(consumed, item):
        records, is_sentinel = item
        lengths = tf.cast(tf.strings.length(records), tf.int64) + _TFRECORD_OVERHEAD
        consumed += tf.reduce_sum(lengths)
        short = tf.logical_and(is_sentinel, consumed != size)
        counted = counter.add_if(short, "file_truncated")
        with tf.control_dependencies([counted]):
            return consumed, (tf.identity(records), is_sentinel)

    blocks = blocks.scan(tf.constant(0, tf.int64), step)
    blocks = blocks.filter(lambda records, is_sentinel: tf.logical_not(is_sentinel))
    return blocks.map(lambda records, is_sentinel: records).unbatch()


def _read_files(files, read_fn, training, seed, deterministic, repeat, cache, shuffle_buffer,
                num_parallel_files):
    """Parallel interleave over files, then cache, repeat and shuffle."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat and not cache:
        ds = ds.repeat()
    ds = ds.interleave(
        read_fn,
        cycle_length=max(1, min(num_parallel_files, len(files))),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    if cache:
        # Encoded records are cached (small); augmentation stays random.
        ds = ds.cache(cache if isinstance(cache, str) else "")
        if repeat:
            ds = ds.repeat()
    if training and shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds


def _caption_flags(caption):
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


class _ExampleBuilder:
    """The per-example map: load -> validate -> decode/augment -> caption checks."""

    def __init__(self, load_fn, image_size, counter, training, seed,
                 text_drop_rate, has_labels, dct_scaling=True):
        self.load_fn = load_fn
        self.dct_scaling = dct_scaling
        self.image_size = image_size
        self.counter = counter
        self.training = training
        self.seed = seed
        self.text_drop_rate = float(text_drop_rate)
        self.has_labels = has_labels

    def __call__(self, index, raw, count_captions=True):
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

        # Pixels stay in [0, 255] here; `finalize` normalises whole batches.
        images = tf.cond(ok, decode, blank)
        images = tf.ensure_shape(images, [self.image_size, self.image_size, 3])

        caption, invalid, empty = _caption_flags(caption)
        count_caption = tf.logical_and(ok, count_captions)
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
                (no_label, "label_missing"),
                (tf.logical_and(count_caption, invalid), "caption_invalid_utf8"),
                (tf.logical_and(count_caption, empty), "caption_empty"),
            ])
        with tf.control_dependencies([counted, caption]):
            left = counter.leave_decoder()
        with tf.control_dependencies([left]):
            # Captions stay strings here; `finalize` tokenizes whole batches.
            example = {
                "images": tf.identity(images),
                "captions": tf.identity(caption),
                "has_image": tf.constant(True),
            }
            return tf.identity(ok), example, tf.cast(label, tf.int32)


def _examples(raw, builder, deterministic):
    """Applies the example map, drops failures and skipped examples."""
    # The map holds no Python control flow on tensors; skipping AutoGraph
    # conversion roughly halves the time to build a pipeline.
    builder_fn = tf.autograph.experimental.do_not_convert(builder)
    ds = raw.enumerate().map(builder_fn, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.ignore_errors()
    ds = ds.filter(lambda ok, example, label: ok)
    if builder.has_labels:
        return ds.map(lambda ok, example, label: (example, label))
    return ds.map(lambda ok, example, label: example)


def _prepare(ds, tokenizer, normalize_images):
    """One map over batches: tokenizes `captions`, normalises `images`."""

    def prepare(x, *labels):
        out = dict(x)
        if normalize_images:
            out["images"] = transforms.normalize_image(x["images"])
        if tokenizer is not None:
            token_ids, padding_mask = tokenizer(out.pop("captions"))
            # Keep the static batch size through the tokenizer's ragged ops.
            shape = x["has_image"].shape.concatenate([tokenizer.max_text_length])
            out = {"images": out["images"], "token_ids": tf.ensure_shape(token_ids, shape),
                   "padding_mask": tf.ensure_shape(padding_mask, shape),
                   "has_image": out["has_image"]}
        return (out, *labels) if labels else out

    return ds.map(prepare, num_parallel_calls=AUTOTUNE)


def finalize(ds, batch_size, training, drop_remainder=None, deterministic=None,
             tokenizer=None, normalize_images=False):
    """Batches (static shapes when dropping the remainder), prefetches, sets options.

    With a `tokenizer`, `captions` strings are tokenized after batching:
    WordPiece on a batch costs a fraction of the per-example cost. With
    `normalize_images`, `images` in [0, 255] are normalised after batching
    too (one vectorised multiply-add per batch); both happen in one map.

    Args:
        ds: a dataset of unbatched examples.
        batch_size: int, or None to leave the examples unbatched.
        training: bool. Default of `drop_remainder` and `deterministic`.
        drop_remainder: bool or None (defaults to `training`).
        deterministic: bool or None (defaults to `not training`).
        tokenizer: `M3AETokenizer` or None. Tokenizes `captions`.
        normalize_images: bool. Normalise `images` (pixels in [0, 255])
            with `transforms.normalize_image`.

    Returns:
        A `tf.data.Dataset`.
    """
    if deterministic is None:
        deterministic = not training
    if drop_remainder is None:
        drop_remainder = training
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder,
                      num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if tokenizer is not None or normalize_images:
        ds = _prepare(ds, tokenizer, normalize_images)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)


@functools.lru_cache(maxsize=8)
def _tokenizer(vocabulary, max_text_length):
    # One tokenizer per (vocabulary, length) and process: loading the
    # vocabulary costs a fraction of a second, and pipelines built side by
    # side (mixing, train + eval) can share it.
    return M3AETokenizer(vocabulary, max_text_length)


def _attach(ds, counter):
    # A plain attribute on the returned object, so `ds.skip_counter.counts()`
    # works; transformations made by the user return objects without it, but
    # `skipped_counts()` still sees the counter.
    ds.skip_counter = counter
    return ds


def _seed(seed, shard_index):
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    # Hosts with the same seed still draw different augmentations.
    return seed * 1000003 + shard_index


def _parse_fn(image_key, caption_key, label_key):
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


def image_text_dataset(
    file_pattern,
    image_size=256,
    max_text_length=MAX_TEXT_LENGTH,
    batch_size=256,
    training=True,
    text_drop_rate=0.0,
    image_key="jpg",
    caption_key="txt",
    label_key=None,
    vocabulary=None,
    shard_index=None,
    num_shards=None,
    shuffle_buffer=10_000,
    cache=False,
    seed=None,
    deterministic=None,
    repeat=False,
    drop_remainder=None,
    skip_counter=None,
    num_parallel_files=16,
    jpeg_dct_scaling=True,
):
    """Image-caption pairs from img2dataset-style TFRecords, ready for M3AE.

    Reads `tf.train.Example`s with an encoded image under `image_key` and a
    caption under `caption_key` (img2dataset writes `jpg` and `txt`; other
    features are ignored). Training applies RandomResizedCrop + flip,
    evaluation a center crop; images are normalised with CC12M statistics
    and captions tokenized with bert-base-uncased WordPiece. Broken data is
    skipped and counted in `ds.skip_counter` (see `skips.REASONS`); an
    example whose caption is empty, not UTF-8, or dropped by
    `text_drop_rate` is kept with an all-False `padding_mask`.

    Args:
        file_pattern: str or list of str. Glob patterns, paths or
            directories of TFRecord files; any `tf.io.gfile` path.
        image_size: int. Output height and width.
        max_text_length: int. Token sequence length T.
        batch_size: int, or None for unbatched examples (for `mix_datasets`).
        training: bool. Random augmentation, shuffling, non-deterministic
            order and dropped remainder when True.
        text_drop_rate: float in [0, 1]. Fraction of examples whose caption
            is removed (for paired-fraction experiments).
        image_key: str. Feature holding the encoded image.
        caption_key: str or None. Feature holding the caption (None: no text).
        label_key: str or None. int64 feature to yield as labels, giving
            `(x, labels)` elements; records without it are skipped.
        vocabulary: str or None. WordPiece vocabulary path (default
            bert-base-uncased).
        shard_index: int or None. This host's index among `num_shards`;
            defaults to `jax.process_index()` on JAX, else 0.
        num_shards: int or None. Number of hosts sharing the files.
        shuffle_buffer: int. Examples in the shuffle buffer (training only).
        cache: bool or str. Cache the encoded records in memory (True) or in
            a file with this path prefix.
        seed: int or None. Seed of file order, shuffling and augmentation.
        deterministic: bool or None. Keep element order reproducible;
            defaults to `not training`.
        repeat: bool. Repeat forever (needed as a source of `mix_datasets`
            to keep its proportions).
        drop_remainder: bool or None. Defaults to `training`.
        skip_counter: `SkipCounter` or None. Where to count skips; a new one
            is made by default.
        num_parallel_files: int. Files read at once.
        jpeg_dct_scaling: bool. Decode a JPEG crop window that is at least
            2, 4 or 8 times `image_size` on both sides at that reduced scale
            (libjpeg's DCT scaling: faster, and antialiased where a plain
            bicubic downscale would alias); False decodes at full
            resolution always.

    Returns:
        A `tf.data.Dataset` with a `skip_counter` attribute.

    Example:

    >>> ds = image_text_dataset("/data/cc12m/*.tfrecord", batch_size=256)
    >>> batch = next(iter(ds))
    >>> batch["images"].shape, batch["token_ids"].shape
    (TensorShape([256, 256, 256, 3]), TensorShape([256, 64]))
    """
    if not 0.0 <= text_drop_rate <= 1.0:
        raise ValueError(f"text_drop_rate must be in [0, 1], got {text_drop_rate}.")
    if deterministic is None:
        deterministic = not training
    shard_index, num_shards = default_shard(shard_index, num_shards)
    files = shard_files(resolve_files(file_pattern), shard_index, num_shards)
    counter = skip_counter or SkipCounter(name=f"image_text[{shard_index}/{num_shards}]")
    files, sizes = _drop_empty_files(files, counter)
    size_of = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(files, tf.constant(sizes, tf.int64)), -1
    )
    seed = _seed(seed, shard_index)
    raw = _read_files(
        files,
        lambda path: _read_record_file(path, size_of.lookup(path), counter),
        training, seed, deterministic, repeat, cache, shuffle_buffer, num_parallel_files,
    )
    tokenizer = _tokenizer(vocabulary, max_text_length)
    builder = _ExampleBuilder(
        _parse_fn(image_key, caption_key, label_key),
        image_size,
        counter,
        training,
        seed,
        text_drop_rate,
        has_labels=bool(label_key),
        dct_scaling=jpeg_dct_scaling,
    )
    ds = _examples(raw, builder, deterministic)
    return _attach(finalize(ds, batch_size, training, drop_remainder, deterministic,
                            tokenizer, normalize_images=True), counter)


def image_dataset(
    source,
    image_size=256,
    max_text_length=MAX_TEXT_LENGTH,
    batch_size=256,
    training=True,
    image_key="jpg",
    label_key=None,
    shard_index=None,
    num_shards=None,
    shuffle_buffer=10_000,
    cache=False,
    seed=None,
    deterministic=None,
    repeat=False,
    drop_remainder=None,
    skip_counter=None,
    num_parallel_files=16,
    jpeg_dct_scaling=True,
):
    """Image-only examples: TFRecords without captions, or a folder of images.

    Same element structure as `image_text_dataset`, with `token_ids` all 0
    and `padding_mask` all False (MAE data, or the image-only part of a
    mixture).

    Args:
        source: str or list of str. TFRecord patterns/paths, or directories
            of image files (jpg, jpeg, png, gif, bmp, webp; not recursive).
        image_size: int. Output height and width.
        max_text_length: int. Length T of the (empty) token sequences.
        batch_size: int, or None for unbatched examples.
        training: bool. See `image_text_dataset`.
        image_key: str. Image feature of TFRecords.
        label_key: str or None. int64 label feature of TFRecords.
        shard_index: int or None. See `image_text_dataset`.
        num_shards: int or None. See `image_text_dataset`.
        shuffle_buffer: int. See `image_text_dataset`.
        cache: bool or str. See `image_text_dataset`.
        seed: int or None. See `image_text_dataset`.
        deterministic: bool or None. See `image_text_dataset`.
        repeat: bool. See `image_text_dataset`.
        drop_remainder: bool or None. See `image_text_dataset`.
        skip_counter: `SkipCounter` or None. See `image_text_dataset`.
        num_parallel_files: int. See `image_text_dataset`.
        jpeg_dct_scaling: bool. See `image_text_dataset`.

    Returns:
        A `tf.data.Dataset` with a `skip_counter` attribute.

    Example:

    >>> ds = image_dataset("/data/photos/", image_size=224, batch_size=64)
    """
    sources = [source] if isinstance(source, str) else list(source)
    folders = [s for s in sources if tf.io.gfile.isdir(s) and not tf.io.gfile.glob(
        s.rstrip("/") + "/*.tfrecord")]
    if folders and len(folders) != len(sources):
        raise ValueError("Pass either image folders or TFRecord patterns, not both.")
    if deterministic is None:
        deterministic = not training
    shard_index, num_shards = default_shard(shard_index, num_shards)
    counter = skip_counter or SkipCounter(name=f"image[{shard_index}/{num_shards}]")
    seed = _seed(seed, shard_index)
    tokenizer = _tokenizer(None, max_text_length)
    if folders:
        if label_key:
            raise ValueError("`label_key` needs TFRecords; image folders carry no labels.")
        files = []
        for folder in folders:
            names = tf.io.gfile.listdir(folder)
            files += [folder.rstrip("/") + "/" + n for n in names
                      if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {folders}.")
        files = shard_files(sorted(files), shard_index, num_shards)
        raw = tf.data.Dataset.from_tensor_slices(files)
        if training:
            raw = raw.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        if cache:
            raw = raw.map(tf.io.read_file, num_parallel_calls=AUTOTUNE).cache(
                cache if isinstance(cache, str) else "")
            load = lambda data: (data, tf.constant(""), tf.constant(0, tf.int64))  # noqa: E731
        else:
            load = lambda path: (tf.io.read_file(path), tf.constant(""),  # noqa: E731
                                 tf.constant(0, tf.int64))
        if repeat:
            raw = raw.repeat()
    else:
        files = shard_files(resolve_files(sources), shard_index, num_shards)
        files, sizes = _drop_empty_files(files, counter)
        size_of = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(files, tf.constant(sizes, tf.int64)), -1
        )
        raw = _read_files(
            files,
            lambda path: _read_record_file(path, size_of.lookup(path), counter),
            training, seed, deterministic, repeat, cache, shuffle_buffer, num_parallel_files,
        )
        load = _parse_fn(image_key, None, label_key)
    builder = _ExampleBuilder(load, image_size, counter, training, seed,
                              text_drop_rate=0.0, has_labels=bool(label_key),
                              dct_scaling=jpeg_dct_scaling)
    # An image-only source has no captions to complain about.
    ds = _examples(raw, _NoCaptionCounting(builder), deterministic)
    return _attach(finalize(ds, batch_size, training, drop_remainder, deterministic,
                            tokenizer, normalize_images=True), counter)


class _NoCaptionCounting:
    """Wraps an `_ExampleBuilder` so image-only sources skip caption checks."""

    def __init__(self, builder):
        self.builder = builder
        self.has_labels = builder.has_labels

    def __call__(self, index, raw):
        return self.builder(index, raw, count_captions=False)


def text_dataset(
    file_pattern,
    image_size=256,
    max_text_length=MAX_TEXT_LENGTH,
    batch_size=256,
    training=True,
    vocabulary=None,
    shard_index=None,
    num_shards=None,
    shuffle_buffer=10_000,
    cache=False,
    seed=None,
    deterministic=None,
    repeat=False,
    drop_remainder=None,
    skip_counter=None,
    num_parallel_files=16,
):
    """Text-only examples from plain text files, one caption per line.

    Same element structure as `image_text_dataset`, with `images` all zeros
    and `has_image` False. Blank lines are skipped (`text_empty_line`),
    lines that are not UTF-8 too (`caption_invalid_utf8`).

    Args:
        file_pattern: str or list of str. Text file patterns or paths.
        image_size: int. Height and width of the (zero) images.
        max_text_length: int. Token sequence length T.
        batch_size: int, or None for unbatched examples.
        training: bool. See `image_text_dataset`.
        vocabulary: str or None. WordPiece vocabulary path.
        shard_index: int or None. See `image_text_dataset`.
        num_shards: int or None. See `image_text_dataset`.
        shuffle_buffer: int. See `image_text_dataset`.
        cache: bool or str. See `image_text_dataset`.
        seed: int or None. See `image_text_dataset`.
        deterministic: bool or None. See `image_text_dataset`.
        repeat: bool. See `image_text_dataset`.
        drop_remainder: bool or None. See `image_text_dataset`.
        skip_counter: `SkipCounter` or None. See `image_text_dataset`.
        num_parallel_files: int. See `image_text_dataset`.

    Returns:
        A `tf.data.Dataset` with a `skip_counter` attribute.

    Example:

    >>> ds = text_dataset("/data/captions/*.txt", batch_size=256)
    """
    if deterministic is None:
        deterministic = not training
    shard_index, num_shards = default_shard(shard_index, num_shards)
    files = shard_files(resolve_files(file_pattern, "*.txt"), shard_index, num_shards)
    counter = skip_counter or SkipCounter(name=f"text[{shard_index}/{num_shards}]")
    seed = _seed(seed, shard_index)
    raw = _read_files(
        files, lambda path: tf.data.TextLineDataset(path), training, seed, deterministic,
        repeat, cache, shuffle_buffer, num_parallel_files,
    )
    tokenizer = _tokenizer(vocabulary, max_text_length)

    def build(line):
        caption, invalid, empty = _caption_flags(line)
        counted = counter.add_flags([(invalid, "caption_invalid_utf8"),
                                     (empty, "text_empty_line")])
        with tf.control_dependencies([counted]):
            example = {
                "images": tf.zeros([image_size, image_size, 3], tf.float32),
                "captions": tf.identity(caption),
                "has_image": tf.constant(False),
            }
            return tf.logical_not(tf.logical_or(invalid, empty)), example

    ds = raw.map(build, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.filter(lambda ok, example: ok).map(lambda ok, example: example)
    return _attach(finalize(ds, batch_size, training, drop_remainder, deterministic,
                            tokenizer), counter)
