"""The data/model contract: what a dataset's batches promise, and checking it.

`DataSpec` is what a builder's batches promise the model (image size, text
length, vocabulary size, normalised images); the builders attach it to the
dataset as `data_spec` and the pretrainer's `fit`/`evaluate` compare it
with the backbone (`contract_errors`) before the first step.
`validate_batches` checks the values of every batch of any dataset, at a
cost; `batch_value_errors` checks one batch's values (the pretrainer runs
it on the first batch of a dataset it did not build).

Reading TFRecord bytes and detecting compression is `tfrecord`; the
probe of a source's first records is `probe`.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_m3ae.data.constants import CC12M_MEAN
from keras_m3ae.data.constants import CC12M_STD


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


# Normalised pixels (CC12M or ImageNet statistics) lie within about
# [-2.2, 2.7]; beyond this bound a batch is surely not normalised.
MAX_ABS_NORMALISED_PIXEL = 10.0


def batch_value_errors(batch, vocabulary_size=None, max_abs_pixel=MAX_ABS_NORMALISED_PIXEL):
    """What one concrete batch's values break of the model's input contract.

    The rule for images: finite, and normalised the library's way
    (`keras_m3ae.data.normalize_image`: pixels in [0, 1] minus the mean,
    over the std), so every value lies within `+-max_abs_pixel`, and they
    are not all whole numbers in [0, 255] (pixels that skipped the
    normalisation: a dark batch can stay below the bound). Absent images
    (`has_image` False) are not looked at. Token ids lie in
    `[0, vocabulary_size)`.

    Args:
        batch: dict of numpy arrays (or anything `np.asarray` reads), or an
            `(x, ...)` tuple.
        vocabulary_size: int or None. Token ids must be below it.
        max_abs_pixel: float. Bound of `|images|`.

    Returns:
        A list of messages; empty when the batch fits.

    Example:

    >>> batch_value_errors({"images": np.full((1, 8, 8, 3), 255.0)})
    ['`images` range over [255, 255]: ...']
    """
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    errors = []
    images = np.asarray(batch["images"])
    if "has_image" in batch:
        images = images[np.asarray(batch["has_image"], bool).reshape(-1)]
    if images.size:
        if not np.issubdtype(images.dtype, np.floating):
            errors.append(
                f"`images` are {images.dtype}; the model takes float images normalised with "
                "`keras_m3ae.data.normalize_image`")
            images = images.astype("float32")
        finite = np.isfinite(images)
        if not finite.all():
            errors.append(
                f"`images` hold {int(images.size - finite.sum())} NaN or infinite value(s) "
                f"(first at index {tuple(int(i) for i in np.argwhere(~finite)[0])})")
        else:
            low, high = float(images.min()), float(images.max())
            if max(abs(low), abs(high)) > max_abs_pixel:
                errors.append(
                    f"`images` range over [{low:.4g}, {high:.4g}]: not normalised (normalised "
                    f"pixels lie within about [-2.2, 2.7]; bound {max_abs_pixel:g}); pixels in "
                    "[0, 255] go through `keras_m3ae.data.normalize_image` first")
            elif low >= 0 and high > 1 and np.array_equal(images, np.round(images)):
                errors.append(
                    f"`images` are whole numbers in [{low:.4g}, {high:.4g}]: pixels that were "
                    "not normalised (`keras_m3ae.data.normalize_image`)")
    if "token_ids" in batch:
        ids = np.asarray(batch["token_ids"])
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            errors.append(f"`token_ids` are {ids.dtype}; the model takes integer ids")
        elif ids.size and (ids.min() < 0
                           or (vocabulary_size is not None and ids.max() >= vocabulary_size)):
            errors.append(
                f"`token_ids` range over [{ids.min()}, {ids.max()}], outside the vocabulary "
                f"[0, {vocabulary_size})")
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
