"""Weighted mixing of paired, image-only and text-only sources."""

import tensorflow as tf

from keras_m3ae.data.batching import batch_and_prepare
from keras_m3ae.data.batching import normalize_where_has_image
from keras_m3ae.data.checks import merged_spec


def mix_datasets(datasets, weights, batch_size, training=True, seed=None,
                 drop_remainder=None, deterministic=None):
    """Mixes unbatched sources per example, then batches.

    M3AE trains on image-text pairs together with image-only and text-only
    data; mixing before batching lets one batch hold all three kinds, in
    the proportions given by `weights` (in expectation). Build each source
    with `batch_size=None` and the same `image_size`, `max_text_length` and
    `label_key`, and with `repeat=True`: when a finite source runs out the
    mixture stops, so that the proportions never silently change.

    The sources' examples are mixed before they are tokenized and
    normalised, which then happens once per batch of the mixture.

    Args:
        datasets: list of unbatched datasets from `image_text_dataset`,
            `image_dataset` or `text_dataset`.
        weights: list of non-negative floats, one per dataset (normalised).
        batch_size: int, or None for an unbatched mixture.
        training: bool. Default of `drop_remainder` and `deterministic`.
        seed: int or None. Seed of the source draws.
        drop_remainder: bool or None. Defaults to `training`.
        deterministic: bool or None. Defaults to `not training`.

    Returns:
        A `tf.data.Dataset` with the element structure of the sources, a
        `skip_counters` attribute listing the sources' counters, and a
        `data_spec` covering the sources' (None if one has none).

    Example:

    >>> pairs = image_text_dataset("cc12m/*.tfrecord", batch_size=None, repeat=True)
    >>> images = image_dataset("imagenet/*.tfrecord", batch_size=None, repeat=True)
    >>> texts = text_dataset("captions/*.txt", batch_size=None, repeat=True)
    >>> ds = mix_datasets([pairs, images, texts], [0.5, 0.25, 0.25], batch_size=256)
    """
    datasets = list(datasets)
    weights = [float(w) for w in weights]
    if not datasets or len(datasets) != len(weights):
        raise ValueError(
            f"Need one weight per dataset, got {len(datasets)} datasets and "
            f"{len(weights)} weights."
        )
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"Weights must be non-negative with a positive sum, got {weights}.")
    spec = datasets[0].element_spec
    for i, ds in enumerate(datasets[1:], 1):
        if ds.element_spec != spec:
            raise ValueError(
                "All sources must yield the same unbatched structure (same "
                "image_size, max_text_length, label_key, batch_size=None). "
                f"Source 0: {spec}; source {i}: {ds.element_spec}."
            )
    total = sum(weights)
    sources, tokenizer, normalize = _unprepared(datasets)
    mixed = tf.data.Dataset.sample_from_datasets(
        sources,
        weights=[w / total for w in weights],
        seed=seed,
        stop_on_empty_dataset=True,
    )
    mixed = batch_and_prepare(mixed, batch_size, training, drop_remainder, deterministic,
                              tokenizer, normalize)
    mixed.skip_counters = [getattr(ds, "skip_counter", None) for ds in datasets]
    mixed.data_spec = merged_spec(getattr(ds, "data_spec", None) for ds in datasets)
    return mixed


def _unprepared(datasets):
    """What to sample from, and how to prepare the mixture's batches.

    When every source comes straight from a builder and all share one
    tokenizer, the mixture is drawn from their untokenized, unnormalised
    examples and tokenized and normalised once per batch (text-only
    examples keep their zero images). Otherwise the prepared sources are
    mixed as they are.
    """
    unprepared = [getattr(ds, "unprepared", None) for ds in datasets]
    if any(u is None for u in unprepared):
        return datasets, None, None
    tokenizers = {(u.tokenizer.vocabulary, u.tokenizer.max_text_length) for u in unprepared}
    if len(tokenizers) != 1:
        return datasets, None, None
    return [u.examples for u in unprepared], unprepared[0].tokenizer, normalize_where_has_image
