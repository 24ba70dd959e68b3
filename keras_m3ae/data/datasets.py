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

The pipeline per host, one module per stage: `files` (list files -> keep
this host's share -> parallel interleave over files, counting truncated
files -> optional cache -> shuffle) -> `examples` (one parallel map that
parses, validates, decodes and augments) -> `batching` (batch -> one map
that normalises the images and tokenizes the captions of the whole batch ->
prefetch). The options all builders share (sharding, order, shuffling,
caching, seed, batching, skip counting) are `options.ReaderOptions`, passed
as keyword arguments.
"""

import functools

from keras_m3ae.data import probe as probe_lib
from keras_m3ae.data import examples as examples_lib
from keras_m3ae.data import files as files_lib
from keras_m3ae.data.batching import finalize_source
from keras_m3ae.data.constants import MAX_TEXT_LENGTH
from keras_m3ae.data.options import ReaderOptions


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
    *,
    jpeg_dct_scaling=True,
    **options,
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
        jpeg_dct_scaling: bool. Decode a JPEG crop window that is at least
            2, 4 or 8 times `image_size` on both sides at that reduced scale
            (libjpeg's DCT scaling: faster, and antialiased where a plain
            bicubic downscale would alias); False decodes at full
            resolution always.
        **options: the shared reader options, documented once in
            `ReaderOptions`: `shard_index`, `num_shards`, `shuffle_buffer`,
            `cache`, `compression_type`, `seed`, `deterministic`, `repeat`,
            `drop_remainder`, `skip_counter`, `num_parallel_files`.

    Returns:
        A `tf.data.Dataset` with `skip_counter` and `data_spec` (what its
        batches promise the model, `checks.DataSpec`) attributes.

    Raises:
        ValueError: no record of this host's first files can become an
            example (compressed shards read as uncompressed, no
            `image_key` feature, ...); the message names the cause.

    Example:

    >>> ds = image_text_dataset("/data/cc12m/*.tfrecord", batch_size=256)
    >>> batch = next(iter(ds))
    >>> batch["images"].shape, batch["token_ids"].shape
    (TensorShape([256, 256, 256, 3]), TensorShape([256, 64]))
    """
    if not 0.0 <= text_drop_rate <= 1.0:
        raise ValueError(f"text_drop_rate must be in [0, 1], got {text_drop_rate}.")
    options = ReaderOptions(training=training, **options)
    counter = options.counter("image_text")
    probe = functools.partial(probe_lib.probe_records, image_key=image_key,
                              caption_key=caption_key, label_key=label_key)
    raw = files_lib.read_tfrecords(file_pattern, options, counter, probe)
    load = examples_lib.record_loader(image_key, caption_key, label_key)
    return _image_examples(raw, load, image_size, batch_size, vocabulary, max_text_length,
                           counter, options, text_drop_rate=text_drop_rate,
                           has_labels=bool(label_key), dct_scaling=jpeg_dct_scaling)


def _image_examples(raw, load, image_size, batch_size, vocabulary, max_text_length, counter,
                    options, has_text=True, **builder_args):
    """The image builders' common tail: decode and check each example, then batch."""
    if options.position is not None:
        options.position.attach(batch_size, options)
    builder = examples_lib.ExampleBuilder(load, image_size, counter, options, **builder_args)
    return finalize_source(builder.examples(raw), batch_size, options, counter, vocabulary,
                           max_text_length, has_text=has_text)


def image_dataset(
    source,
    image_size=256,
    max_text_length=MAX_TEXT_LENGTH,
    batch_size=256,
    training=True,
    image_key="jpg",
    label_key=None,
    *,
    jpeg_dct_scaling=True,
    **options,
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
        training: bool. As in `image_text_dataset`.
        image_key: str. Image feature of TFRecords.
        label_key: str or None. int64 label feature of TFRecords.
        jpeg_dct_scaling: bool. As in `image_text_dataset`.
        **options: the shared reader options (see `ReaderOptions`).

    Returns:
        A `tf.data.Dataset` with `skip_counter` and `data_spec` attributes.

    Example:

    >>> ds = image_dataset("/data/photos/", image_size=224, batch_size=64)
    """
    folders = files_lib.image_folders(source)
    options = ReaderOptions(training=training, **options)
    counter = options.counter("image")
    if folders:
        if label_key:
            raise ValueError("`label_key` needs TFRecords; image folders carry no labels.")
        if options.position is not None:
            raise ValueError("`position` (exact resumption) needs TFRecords, not image folders.")
        raw, read = files_lib.read_image_files(folders, options)
        load = examples_lib.file_loader(read)
    else:
        probe = functools.partial(probe_lib.probe_records, image_key=image_key,
                                  label_key=label_key)
        raw = files_lib.read_tfrecords(source, options, counter, probe)
        load = examples_lib.record_loader(image_key, None, label_key)
    # An image-only source has no captions to complain about.
    return _image_examples(raw, load, image_size, batch_size, None, max_text_length, counter,
                           options, has_text=False, has_labels=bool(label_key),
                           dct_scaling=jpeg_dct_scaling, count_captions=False)


def text_dataset(
    file_pattern,
    image_size=256,
    max_text_length=MAX_TEXT_LENGTH,
    batch_size=256,
    training=True,
    vocabulary=None,
    **options,
):
    """Text-only examples from plain text files, one caption per line.

    Same element structure as `image_text_dataset`, with `images` all zeros
    and `has_image` False. Blank lines are skipped (`text_empty_line`),
    lines that are not UTF-8 too (`caption_invalid_utf8`).

    Args:
        file_pattern: str or list of str. Text file patterns or paths
            (directories: their `*.txt` files).
        image_size: int. Height and width of the (zero) images.
        max_text_length: int. Token sequence length T.
        batch_size: int, or None for unbatched examples.
        training: bool. As in `image_text_dataset`.
        vocabulary: str or None. WordPiece vocabulary path.
        **options: the shared reader options (see `ReaderOptions`).

    Returns:
        A `tf.data.Dataset` with `skip_counter` and `data_spec` attributes.

    Example:

    >>> ds = text_dataset("/data/captions/*.txt", batch_size=256)
    """
    options = ReaderOptions(training=training, **options)
    if options.position is not None:
        raise ValueError("`position` (exact resumption) supports TFRecord image sources only.")
    counter = options.counter("text")
    lines = files_lib.read_text_lines(file_pattern, options)
    examples = examples_lib.text_examples(lines, image_size, counter, options.deterministic)
    return finalize_source(examples, batch_size, options, counter, vocabulary, max_text_length,
                           normalize_images=False)
