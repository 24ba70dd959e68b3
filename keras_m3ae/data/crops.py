"""Crop windows and how a window becomes the output image: the one crop rule set.

Every crop of the library, at decode time (`transforms.decode_*`, on
encoded bytes, where only the window is decoded) and on decoded images
(`random_resized_crop`, `center_crop`, used by the fine-tuning datasets),
is built from the three pieces here:

- `sample_crop_window`: RandomResizedCrop's window, drawn with torchvision's
  algorithm from a stateless seed (same seed, same window, on every backend
  and host);
- `center_crop_window`: the centred window covering `crop_fraction` of
  the largest window of the output's aspect ratio (1.0, the whole short
  side, for pretraining; 0.875 for classification evaluation, as in MAE);
- `resize_crop`: bicubic resize of the window to the output size, then
  clipping to `value_range` (default [0, 255]) because bicubic
  interpolation overshoots at edges. This is the one clipping policy: every
  crop comes out inside the pixel range of its source.

Windows are int32 `(offset_y, offset_x, height, width)` in pixels.
"""

import math

import tensorflow as tf

# MAE / M3AE pretraining augmentation; fine-tuning widens the scale.
RANDOM_CROP_SCALE = (0.2, 1.0)
RANDOM_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def crop_seeds(seed):
    """Stateless seeds of the crop window and of the flip of one example."""
    seed = tf.cast(seed, tf.int64)
    return (tf.random.experimental.stateless_fold_in(seed, 1),
            tf.random.experimental.stateless_fold_in(seed, 2))


# torchvision's RandomResizedCrop tries this many windows before its fallback.
CROP_ATTEMPTS = 10


def sample_crop_window(shape, seed, scale=RANDOM_CROP_SCALE, ratio=RANDOM_CROP_RATIO):
    """RandomResizedCrop window of an image of `shape`, drawn as torchvision draws it.

    torchvision's `RandomResizedCrop.get_params` (which MAE and M3AE use):
    up to 10 attempts, each with an area uniform in `scale` times the image
    area and an aspect ratio (width / height) log-uniform in `ratio`,
    `width = round(sqrt(area * ratio))`, `height = round(sqrt(area / ratio))`
    (round half to even, as Python's `round`); the first attempt that fits
    the image is placed uniformly. If none fits, the centred window of the
    whole image with its aspect ratio clamped to `ratio`. All attempts are
    drawn at once from the stateless seed, so the same seed gives the same
    window on every backend and host.

    TensorFlow's `sample_distorted_bounding_box`, used before, draws smaller
    crops (mean area 0.497 against torchvision's 0.536 for scale (0.2, 1)
    on a square image).

    Args:
        shape: int tensor `(height, width, channels)`.
        seed: int tensor of shape (2,), the stateless seed.
        scale: `(min, max)` area of the window as a fraction of the image.
        ratio: `(min, max)` aspect ratio of the window.

    Returns:
        An int32 tensor `(offset_y, offset_x, height, width)`.
    """
    shape = tf.cast(shape, tf.int32)
    height, width = shape[0], shape[1]
    seed = tf.cast(seed, tf.int64)
    area_seed, ratio_seed, place_seed = (
        tf.random.experimental.stateless_fold_in(seed, i) for i in (11, 12, 13))
    area = tf.cast(height * width, tf.float64) * tf.random.stateless_uniform(
        [CROP_ATTEMPTS], area_seed, scale[0], scale[1], dtype=tf.float64)
    log_ratio = tf.random.stateless_uniform(
        [CROP_ATTEMPTS], ratio_seed, math.log(ratio[0]), math.log(ratio[1]), dtype=tf.float64)
    aspect = tf.exp(log_ratio)
    widths = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    heights = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    fallback_height, fallback_width = _fallback_size(height, width, ratio)
    found = tf.reduce_any(fits)
    crop_height = tf.where(found, heights[first], fallback_height)
    crop_width = tf.where(found, widths[first], fallback_width)
    # Uniform integer offsets in [0, free], as torch.randint(0, free + 1).
    place = tf.random.stateless_uniform([2], place_seed, dtype=tf.float64)
    free = tf.stack([height - crop_height, width - crop_width])
    offsets = tf.minimum(tf.cast(place * tf.cast(free + 1, tf.float64), tf.int32), free)
    centred = free // 2
    offsets = tf.where(found, offsets, centred)
    return tf.stack([offsets[0], offsets[1], crop_height, crop_width])


def _fallback_size(height, width, ratio):
    """torchvision's fallback: the whole image, its aspect ratio clamped to `ratio`."""
    in_ratio = tf.cast(width, tf.float64) / tf.cast(height, tf.float64)
    low, high = min(ratio), max(ratio)
    narrow_height = tf.cast(tf.round(tf.cast(width, tf.float64) / low), tf.int32)
    wide_width = tf.cast(tf.round(tf.cast(height, tf.float64) * high), tf.int32)
    crop_height = tf.where(in_ratio < low, narrow_height, height)
    crop_width = tf.where(in_ratio > high, wide_width, width)
    return crop_height, crop_width


def _output_size(image_size):
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def center_crop_window(shape, image_size, crop_fraction=1.0):
    """Centred window: `crop_fraction` of the largest window shaped like the output.

    For a square output and `crop_fraction=1.0` this is the central
    min(height, width) square, so cropping it and resizing equals resizing
    the shorter side and cropping the centre. With 0.875 it equals MAE's
    evaluation transform (resize the short side to `size / 0.875`, crop
    `size`).

    Args:
        shape: int tensor `(height, width, channels)`.
        image_size: int or `(height, width)` of the output.
        crop_fraction: float in (0, 1].

    Returns:
        An int32 tensor `(offset_y, offset_x, height, width)`.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
    out_height, out_width = _output_size(image_size)
    height, width = tf.cast(shape[0], tf.int32), tf.cast(shape[1], tf.int32)
    if out_height == out_width and crop_fraction == 1.0:
        # Exact in integers (no float rounding) for the pretraining pipeline.
        side = tf.minimum(height, width)
        crop_height = crop_width = side
    else:
        fit = tf.minimum(tf.cast(height, tf.float64) / out_height,
                         tf.cast(width, tf.float64) / out_width) * crop_fraction
        crop_height = tf.maximum(tf.cast(tf.round(fit * out_height), tf.int32), 1)
        crop_width = tf.maximum(tf.cast(tf.round(fit * out_width), tf.int32), 1)
    return tf.stack([(height - crop_height) // 2, (width - crop_width) // 2,
                     crop_height, crop_width])


def crop_to_window(image, window):
    """The pixels of `window` of a decoded `(H, W, C)` image."""
    return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])


def resize_crop(crop, image_size, value_range=(0, 255)):
    """Bicubic resize of a crop to the output size, clipped to `value_range`.

    Args:
        crop: `(h, w, C)` tensor of any numeric dtype.
        image_size: int or `(height, width)` of the output.
        value_range: `(low, high)` pixel range of the source.

    Returns:
        A float32 tensor `(height, width, C)` with values in `value_range`.
    """
    size = _output_size(image_size)
    image = tf.image.resize(tf.cast(crop, tf.float32), size, method="bicubic")
    image = tf.clip_by_value(image, float(value_range[0]), float(value_range[1]))
    # The crop has a dynamic size; keep the static output shape.
    return tf.ensure_shape(image, size + (crop.shape[-1],))


def random_resized_crop(image, image_size, seed, scale=RANDOM_CROP_SCALE,
                        ratio=RANDOM_CROP_RATIO, flip=True, value_range=(0, 255)):
    """RandomResizedCrop (and a random horizontal flip) of a decoded image.

    Args:
        image: `(H, W, C)` tensor.
        image_size: int or `(height, width)` of the output.
        seed: int tensor of shape (2,), the stateless seed of this example.
        scale: area range of the window (see `sample_crop_window`).
        ratio: aspect ratio range of the window.
        flip: bool. Mirror the crop with probability 1/2.
        value_range: pixel range of the image; the output is clipped to it.

    Returns:
        A float32 tensor `(height, width, C)`.

    Example:

    >>> image = tf.zeros([60, 80, 3], tf.uint8)
    >>> random_resized_crop(image, 32, seed=tf.constant([0, 1])).shape
    TensorShape([32, 32, 3])
    """
    crop_seed, flip_seed = crop_seeds(seed)
    crop = crop_to_window(image, sample_crop_window(tf.shape(image), crop_seed, scale, ratio))
    if flip:
        # A mirrored bicubic resize equals the resize of the mirror; flipping
        # the smaller source crop moves fewer bytes.
        crop = tf.image.stateless_random_flip_left_right(crop, flip_seed)
    return resize_crop(crop, image_size, value_range)


def center_crop(image, image_size, crop_fraction=1.0, value_range=(0, 255)):
    """Centre crop of a decoded image (see `center_crop_window`), resized.

    Args:
        image: `(H, W, C)` tensor.
        image_size: int or `(height, width)` of the output.
        crop_fraction: float in (0, 1]; 0.875 for classification evaluation.
        value_range: pixel range of the image; the output is clipped to it.

    Returns:
        A float32 tensor `(height, width, C)`.
    """
    window = center_crop_window(tf.shape(image), image_size, crop_fraction)
    return resize_crop(crop_to_window(image, window), image_size, value_range)
