"""Examples -> batches: batch, then normalise images and tokenize captions once per batch.

WordPiece on a batch costs a fraction of the per-example cost, and
normalising a batch is one vectorised multiply-add, so both run after
batching, in one map. A source built with `batch_size=None` is prepared
per example (so that it can be iterated on its own) but also remembers its
unprepared examples, from which `mix_datasets` batches, tokenizes and
normalises the mixture once.
"""

import dataclasses
import functools

import tensorflow as tf

from keras_m3ae.data import transforms
from keras_m3ae.data.checks import DataSpec
from keras_m3ae.data.options import order_defaults
from keras_m3ae.data.tokenizer import M3AETokenizer

AUTOTUNE = tf.data.AUTOTUNE


@functools.lru_cache(maxsize=8)
def cached_tokenizer(vocabulary, max_text_length):
    """One tokenizer per (vocabulary, length) and process.

    Loading the vocabulary costs a fraction of a second, and pipelines
    built side by side (mixing, train + eval) can share it.
    """
    return M3AETokenizer(vocabulary, max_text_length)


def _normalize_all(x):
    return transforms.normalize_image(x["images"])


def normalize_where_has_image(x):
    """Normalised images, and zeros (as text-only sources yield) where there is none."""
    has_image = tf.reshape(x["has_image"], tf.concat([tf.shape(x["has_image"]), [1, 1, 1]], 0))
    return tf.where(has_image, transforms.normalize_image(x["images"]), 0.0)


def _prepare(ds, tokenizer, normalize):
    """One map over batches: tokenizes `captions`, normalises `images`."""

    def prepare(x, *labels):
        out = dict(x)
        if normalize is not None:
            out["images"] = normalize(x)
        if tokenizer is not None:
            token_ids, padding_mask = tokenizer(out.pop("captions"))
            # Keep the static batch size through the tokenizer's ragged ops.
            shape = x["has_image"].shape.concatenate([tokenizer.max_text_length])
            out = {"images": out["images"], "token_ids": tf.ensure_shape(token_ids, shape),
                   "padding_mask": tf.ensure_shape(padding_mask, shape),
                   "has_image": out["has_image"]}
        return (out, *labels) if labels else out

    return ds.map(prepare, num_parallel_calls=AUTOTUNE)


def batch_and_prepare(ds, batch_size, training, drop_remainder=None, deterministic=None,
                      tokenizer=None, normalize=None):
    """`finalize` with `normalize` a function of the batch (or None)."""
    deterministic, drop_remainder = order_defaults(training, deterministic, drop_remainder)
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder,
                      num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if tokenizer is not None or normalize is not None:
        ds = _prepare(ds, tokenizer, normalize)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)


def finalize(ds, batch_size, training, drop_remainder=None, deterministic=None,
             tokenizer=None, normalize_images=False):
    """Batches (static shapes when dropping the remainder), prefetches, sets options.

    With a `tokenizer`, `captions` strings are tokenized after batching.
    With `normalize_images`, `images` in [0, 255] are normalised after
    batching too; both happen in one map.

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
    return batch_and_prepare(ds, batch_size, training, drop_remainder, deterministic,
                             tokenizer, _normalize_all if normalize_images else None)


@dataclasses.dataclass(frozen=True)
class UnpreparedSource:
    """The examples of an unbatched source before tokenizing and normalising."""

    examples: tf.data.Dataset
    tokenizer: M3AETokenizer


def finalize_source(examples, batch_size, options, counter, vocabulary, max_text_length,
                    normalize_images=True, has_text=True):
    """The builders' last step: `finalize`, with the source's bookkeeping attached.

    Captions are tokenized with the `vocabulary` (None: bert-base-uncased)
    and `max_text_length`; `normalize_images` is False for text-only
    sources, whose zero images stay zero; `has_text` is False for
    image-only sources, whose token ids are all padding.

    The returned dataset has `skip_counter` and `data_spec` (what its
    batches promise the model, `checks.DataSpec`) attributes, and, when
    unbatched, an `unprepared` one (`UnpreparedSource`) for `mix_datasets`.
    These are plain attributes: datasets derived by the user lack them, but
    `skipped_counts()` still sees the counter, and a mixture of such
    datasets is still correct (tokenized per example, as given).
    """
    tokenizer = cached_tokenizer(vocabulary, max_text_length)
    ds = finalize(examples, batch_size, options.training, options.drop_remainder,
                  options.deterministic, tokenizer, normalize_images)
    ds.skip_counter = counter
    example_spec = examples.element_spec
    example_spec = example_spec[0] if isinstance(example_spec, tuple) else example_spec
    ds.data_spec = DataSpec(example_spec["images"].shape[0], tokenizer.max_text_length,
                            tokenizer.vocabulary_size if has_text else None)
    if batch_size is None:
        ds.unprepared = UnpreparedSource(examples.prefetch(AUTOTUNE), tokenizer)
    return ds
