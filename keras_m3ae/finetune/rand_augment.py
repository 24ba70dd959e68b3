"""timm's RandAugment `rand-m9-mstd0.5-inc1`, per image, in TensorFlow ops.

MAE and M3AE fine-tune with timm's `rand-m9-mstd0.5-inc1`: for every image,
2 ops drawn uniformly (with replacement) from timm's 15 "increasing" ops,
each applied with probability 0.5 at a magnitude drawn anew for each
application from N(9, 0.5) clipped to [0, 10] (of 10). The ops and their
magnitude-to-argument rules are timm's (`timm/data/auto_augment.py`),
computed here as PIL computes them on uint8 images; geometric ops fill with
the ImageNet mean colour, as timm configures them for ImageNet.

Keras' `RandAugment` layer differs: one op choice for the whole batch,
magnitudes uniform in `[0, factor]`, every op always applied, a different op
set; it is not used.

Every op equals PIL's on uint8 images (the tests compare them), with one
difference: geometric ops (rotate, shear, translate) resample bilinearly
(TensorFlow has no bicubic image transform) where timm asks PIL for
bicubic; on a smooth image the two differ by 0.4 of 255 on average.
"""

import math

import tensorflow as tf

# timm: magnitudes are out of 10 and clipped to [0, 10].
MAX_MAGNITUDE = 10.0
# `mean` of ImageNet in [0, 255], timm's `img_mean` fill of geometric ops.
IMAGENET_FILL = (124.0, 116.0, 104.0)

OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


def _to_uint8_values(image):
    """PIL stores uint8: round and clip, kept as float32 for the arithmetic."""
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def _blend(degenerate, image, factor):
    """`PIL.Image.blend(degenerate, image, factor)` on uint8 values (truncates)."""
    return tf.clip_by_value(tf.floor(degenerate + factor * (image - degenerate)), 0.0, 255.0)


def _grayscale(image):
    """PIL's `convert("L")`: ITU-R 601-2 luma in 16-bit fixed point."""
    r, g, b = tf.unstack(tf.cast(image, tf.int32), axis=-1)
    return tf.cast((r * 19595 + g * 38470 + b * 7471 + 0x8000) // 65536, tf.float32)


def auto_contrast(image):
    """`ImageOps.autocontrast`: each channel stretched to [0, 255]."""
    # PIL computes its table in Python floats: `int(value * scale - low * scale)`.
    pixels = tf.cast(image, tf.float64)
    low = tf.reduce_min(pixels, axis=[0, 1], keepdims=True)
    high = tf.reduce_max(pixels, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(high - low, 1.0)
    stretched = tf.clip_by_value(tf.floor(pixels * scale + (-low * scale)), 0.0, 255.0)
    return tf.cast(tf.where(high > low, stretched, pixels), tf.float32)


def _equalize_channel(channel):
    values = tf.cast(channel, tf.int32)
    histogram = tf.math.bincount(values, minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(histogram, histogram > 0)
    last = nonzero[-1]
    step = (tf.reduce_sum(histogram) - last) // 255
    safe_step = tf.maximum(step, 1)
    lut = (safe_step // 2 + tf.cumsum(histogram, exclusive=True)) // safe_step
    lut = tf.minimum(lut, 255)
    equalized = tf.cast(tf.gather(lut, values), tf.float32)
    return tf.where(step > 0, equalized, channel)


def equalize(image):
    """`ImageOps.equalize`: each channel's histogram flattened."""
    return tf.stack([_equalize_channel(c) for c in tf.unstack(image, axis=-1)], axis=-1)


def posterize(image, bits):
    """`ImageOps.posterize`: keep the `bits` high bits (0 bits: black)."""
    step = tf.pow(2.0, 8.0 - tf.cast(bits, tf.float32))
    return tf.floor(image / step) * step


def solarize(image, threshold):
    """`ImageOps.solarize`: values at or above `threshold` inverted."""
    return tf.where(image >= threshold, 255.0 - image, image)


def solarize_add(image, addition, threshold=128.0):
    """timm's `solarize_add`: `addition` added to values below `threshold`."""
    return tf.where(image < threshold, tf.minimum(image + addition, 255.0), image)


def color(image, factor):
    """`ImageEnhance.Color`: blend with the grayscale image."""
    return _blend(tf.repeat(_grayscale(image)[..., None], 3, axis=-1), image, factor)


def contrast(image, factor):
    """`ImageEnhance.Contrast`: blend with the mean gray level."""
    mean = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)
    return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
    """`ImageEnhance.Brightness`: blend with black."""
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """`ImageEnhance.Sharpness`: blend with PIL's SMOOTH filter (border pixels kept)."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.clip_by_value(tf.round(smooth), 0.0, 255.0)
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
    return _blend(tf.where(interior, smooth, image), image, factor)


def affine(image, matrix, fill=IMAGENET_FILL):
    """PIL's `Image.transform(size, AFFINE, matrix)`, bilinear, filled with `fill`.

    `matrix` `(a, b, c, d, e, f)` maps output pixel `(x, y)` to input
    `(a x + b y + c, d x + e y + f)`, with PIL's pixel centres at +0.5. As
    PIL, a pixel whose source point falls outside the image gets `fill`,
    one inside interpolates its nearest pixels, edge pixels repeated.
    """
    a, b, c, d, e, f = tf.unstack(tf.cast(matrix, tf.float32))
    # PIL samples at pixel centres; TensorFlow's transform at integer coordinates.
    c = c + 0.5 * (a + b - 1.0)
    f = f + 0.5 * (d + e - 1.0)
    transform = tf.stack([a, b, c, d, e, f, 0.0, 0.0])[None]
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )[0]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    y, x = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32),
                       indexing="ij")
    source_x = a * x + b * y + c
    source_y = d * x + e * y + f
    inside = ((source_x >= -0.5) & (source_x < tf.cast(width, tf.float32) - 0.5)
              & (source_y >= -0.5) & (source_y < tf.cast(height, tf.float32) - 0.5))
    moved = tf.where(inside[..., None], moved, tf.constant(fill, tf.float32))
    # PIL's bilinear filter truncates to uint8.
    return tf.clip_by_value(tf.floor(moved), 0.0, 255.0)


def rotate(image, degrees, fill=IMAGENET_FILL):
    """`Image.rotate(degrees)`: counter-clockwise about the image centre."""
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    angle = -degrees * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    matrix = [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy]
    return affine(image, matrix, fill)


def _signed(value, sign):
    return tf.where(sign, -value, value)


def apply_op(image, op_index, magnitude, sign, fill=IMAGENET_FILL):
    """One of `OPS` at `magnitude` (of 10) with timm's argument rules.

    Args:
        image: float32 `(H, W, 3)` with uint8 values.
        op_index: int32 scalar, an index into `OPS`.
        magnitude: float32 scalar in [0, 10].
        sign: bool scalar: negate the argument of signed ops.
        fill: RGB fill of geometric ops.

    Returns:
        float32 `(H, W, 3)` with uint8 values.
    """
    level = magnitude / MAX_MAGNITUDE
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    enhance = 1.0 + _signed(level * 0.9, sign)
    shear = _signed(level * 0.3, sign)
    translate = _signed(level * 0.45, sign)
    branches = [
        lambda: auto_contrast(image),
        lambda: equalize(image),
        lambda: 255.0 - image,
        lambda: rotate(image, _signed(level * 30.0, sign), fill),
        lambda: posterize(image, 4 - tf.floor(level * 4.0)),
        lambda: solarize(image, 256.0 - tf.floor(level * 256.0)),
        lambda: solarize_add(image, tf.floor(level * 110.0)),
        lambda: color(image, enhance),
        lambda: contrast(image, enhance),
        lambda: brightness(image, enhance),
        lambda: sharpness(image, enhance),
        lambda: affine(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0], fill),
        lambda: affine(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0], fill),
        lambda: affine(image, [1.0, 0.0, translate * width, 0.0, 1.0, 0.0], fill),
        lambda: affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, translate * height], fill),
    ]
    out = tf.switch_case(tf.cast(op_index, tf.int32), branches)
    return tf.ensure_shape(out, image.shape)


def sample_ops(seed, num_ops=2, magnitude=9.0, magnitude_std=0.5, probability=0.5):
    """The random choices of one image's RandAugment, as timm draws them.

    Args:
        seed: `(2,)` stateless seed.
        num_ops: ops per image, drawn with replacement.
        magnitude: mean magnitude (of 10).
        magnitude_std: std of the per-application magnitude (0: fixed).
        probability: chance that each drawn op is applied.

    Returns:
        dict of `(num_ops,)` tensors: `op` int32, `applied` bool,
        `magnitude` float32 in [0, 10], `sign` bool (negated argument).
    """
    seeds = [tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), i)
             for i in range(4)]
    magnitudes = magnitude + magnitude_std * tf.random.stateless_normal([num_ops], seeds[2])
    return {
        "op": tf.random.stateless_uniform([num_ops], seeds[0], 0, len(OPS), dtype=tf.int32),
        "applied": tf.random.stateless_uniform([num_ops], seeds[1]) < probability,
        "magnitude": tf.clip_by_value(magnitudes, 0.0, MAX_MAGNITUDE),
        "sign": tf.random.stateless_uniform([num_ops], seeds[3]) < 0.5,
    }


def rand_augment(image, seed, num_ops=2, magnitude=9.0, magnitude_std=0.5, probability=0.5,
                 fill=IMAGENET_FILL):
    """timm's RandAugment of one image (`rand-m9-mstd0.5-inc1` by default).

    Args:
        image: `(H, W, 3)` with values in [0, 255] (rounded to uint8 values,
            as timm works on PIL images).
        seed: `(2,)` stateless seed.
        num_ops, magnitude, magnitude_std, probability: see `sample_ops`.
        fill: RGB fill of geometric ops.

    Returns:
        float32 `(H, W, 3)` with uint8 values.

    Example:
    >>> image = tf.random.uniform([32, 32, 3], maxval=255)
    >>> rand_augment(image, tf.constant([0, 1])).shape
    TensorShape([32, 32, 3])
    """
    image = _to_uint8_values(tf.cast(image, tf.float32))
    choices = sample_ops(seed, num_ops, magnitude, magnitude_std, probability)

    def step(i, image):
        image = tf.cond(
            choices["applied"][i],
            lambda: apply_op(image, choices["op"][i], choices["magnitude"][i], choices["sign"][i],
                             fill),
            lambda: image,
        )
        return i + 1, image

    # A loop, not `num_ops` copies: the 15 ops are traced once.
    _, image = tf.while_loop(lambda i, _: i < num_ops, step, (tf.constant(0), image))
    return image


def batch_rand_augment(images, seed, **kwargs):
    """`rand_augment` of every image of a batch, each with its own seed.

    Args:
        images: `(B, H, W, 3)` with values in [0, 255].
        seed: `(2,)` stateless seed of the batch.
        **kwargs: passed to `rand_augment`.

    Returns:
        float32 `(B, H, W, 3)`.
    """
    images = tf.cast(images, tf.float32)
    count = tf.shape(images)[0]
    seeds = tf.random.stateless_uniform(
        [count, 2], tf.cast(seed, tf.int64), minval=None, maxval=None, dtype=tf.int64)
    return tf.map_fn(lambda args: rand_augment(args[0], args[1], **kwargs), (images, seeds),
                     fn_output_signature=tf.float32)
