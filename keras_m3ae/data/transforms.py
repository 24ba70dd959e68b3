"""Image transforms of the M3AE/MAE recipe, as graph code for `tf.data`.

Training: RandomResizedCrop (scale (0.2, 1.0), ratio (3/4, 4/3)), bicubic
resize and a random horizontal flip, as in MAE and M3AE. For JPEG only the
crop window is decoded (`tf.image.decode_and_crop_jpeg`), which saves decoding
work for small crops, and a window much larger than the output is decoded at
1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling). JPEGs use libjpeg's accurate
IDCT, as PIL does. Evaluation: resize the shorter side and take the center
square, bicubic. Every format ends as RGB (grayscale, RGBA,
CMYK JPEG, PNG, GIF, BMP, WebP), then is scaled to [0, 1] and normalised with
the CC12M statistics.

The crop windows, the resize and its clipping come from `crops`, which the
crops of decoded images (fine-tuning) share.
"""

import numpy as np
import tensorflow as tf

from keras_m3ae.data import crops
from keras_m3ae.data.constants import normalization_affine
from keras_m3ae.data.crops import RANDOM_CROP_RATIO
from keras_m3ae.data.crops import RANDOM_CROP_SCALE

# Format codes returned by `image_format`.
FORMAT_UNKNOWN = 0
FORMAT_JPEG = 1
FORMAT_PNG = 2
FORMAT_GIF = 3
FORMAT_BMP = 4
FORMAT_WEBP = 5

# How far from the end the end-of-image marker is looked for: some encoders
# append padding or metadata after it.
_TAIL_WINDOW = 1024

# libjpeg's accurate integer IDCT, the one PIL (and so the PyTorch/PIL
# pipelines of MAE and M3AE) uses; TensorFlow's default, the fast IDCT,
# shifts channel means by about a grey level and single pixels by up to ~10.
# With libjpeg-turbo's SIMD code both cost the same.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def image_format(image_bytes):
    """Returns the format code of encoded image bytes from their magic number.

    Straight-line graph code (a few `substr`/`equal`/`where` ops, no
    control flow), cheap enough to run on every example.

    Args:
        image_bytes: scalar tf.string tensor.

    Returns:
        A scalar int32 tensor, one of the `FORMAT_*` codes.
    """
    # Padded so that short or empty inputs still have 12 bytes to compare.
    head = tf.strings.join([tf.strings.substr(image_bytes, 0, 12), b"\0" * 12])
    first4 = tf.strings.substr(head, 0, 4)
    is_webp = tf.logical_and(
        tf.equal(first4, b"RIFF"), tf.equal(tf.strings.substr(head, 8, 4), b"WEBP")
    )
    # Checked in reverse order of precedence, so the first match in the list
    # JPEG, PNG, GIF, BMP, WebP wins (magic numbers are exclusive anyway).
    cases = [
        (is_webp, FORMAT_WEBP),
        (tf.equal(tf.strings.substr(head, 0, 2), b"BM"), FORMAT_BMP),
        (tf.equal(tf.strings.substr(head, 0, 3), b"GIF"), FORMAT_GIF),
        (tf.equal(first4, b"\x89PNG"), FORMAT_PNG),
        (tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff"), FORMAT_JPEG),
    ]
    fmt = tf.constant(FORMAT_UNKNOWN, tf.int32)
    for condition, code in cases:
        fmt = tf.where(condition, tf.constant(code, tf.int32), fmt)
    return fmt


# The most pixels a file may declare per byte it holds. A baseline or
# progressive JPEG codes at least one bit per 8x8 block and component (at
# most ~512 pixels a byte, a flat grayscale image); deflate compresses at
# most ~1032:1, so a PNG of 1-bit pixels holds at most ~8,300 pixels a
# byte. A header declaring more (a 3 KB JPEG claiming 30000x30000) is a
# corrupt or malicious file: decoded, it would be a flat grey image.
MAX_JPEG_PIXELS_PER_BYTE = 1024
MAX_PNG_PIXELS_PER_BYTE = 8 * 1032


def declared_pixels(image_bytes, fmt):
    """The pixel count a JPEG or PNG header declares (0 for other formats).

    Reads the header only (`tf.image.extract_jpeg_shape`, PNG's IHDR
    chunk); graph code, cheap enough to run on every example.

    Args:
        image_bytes: scalar tf.string tensor.
        fmt: scalar int32 tensor, the `image_format` code.

    Returns:
        A scalar int64 tensor.
    """

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0] * shape[1]

    def png():
        # IHDR: width and height, big-endian uint32, at bytes 16-23.
        head = tf.strings.join([tf.strings.substr(image_bytes, 16, 8), b"\0" * 8])
        size = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 0, 8), tf.uint8), tf.int64)
        width = ((size[0] * 256 + size[1]) * 256 + size[2]) * 256 + size[3]
        height = ((size[4] * 256 + size[5]) * 256 + size[6]) * 256 + size[7]
        return width * height

    return tf.case(
        [(tf.equal(fmt, FORMAT_JPEG), jpeg), (tf.equal(fmt, FORMAT_PNG), png)],
        default=lambda: tf.constant(0, tf.int64), exclusive=True)


def is_implausible_size(image_bytes, fmt):
    """Whether a JPEG or PNG header declares far more pixels than its bytes can hold.

    See `MAX_JPEG_PIXELS_PER_BYTE`; other formats are never flagged.

    Args:
        image_bytes: scalar tf.string tensor, a complete JPEG or PNG.
        fmt: scalar int32 tensor, the `image_format` code.

    Returns:
        A scalar bool tensor.
    """
    per_byte = tf.where(tf.equal(fmt, FORMAT_JPEG), tf.constant(MAX_JPEG_PIXELS_PER_BYTE, tf.int64),
                        tf.constant(MAX_PNG_PIXELS_PER_BYTE, tf.int64))
    size = tf.cast(tf.strings.length(image_bytes), tf.int64)
    return declared_pixels(image_bytes, fmt) > per_byte * size


def _contains(data, pattern):
    """Whether the uint8 vector `data` holds the byte string `pattern`."""
    positions = tf.maximum(tf.shape(data)[0] - len(pattern) + 1, 0)
    found = tf.ones([positions], tf.bool)
    for i, byte in enumerate(pattern):
        # Byte i at every candidate position, as a shifted slice (no framing).
        found = tf.logical_and(found, tf.equal(data[i:i + positions], byte))
    return tf.reduce_any(found)


def is_complete_image(image_bytes, fmt):
    """Checks that encoded bytes were not cut short.

    A truncated JPEG is dangerous: `decode_and_crop_jpeg` decodes a crop in
    the intact top part without complaint, so the pipeline would train on
    some crops of a broken file and fail on others. JPEG must end with the
    EOI marker FF D9 (in entropy-coded data FF is always followed by 00 or a
    restart marker, so FF D9 near the end can only be the real EOI) within
    the last `_TAIL_WINDOW` bytes. PNG must hold its IEND chunk there, GIF
    end with its trailer byte. BMP and WebP are left to the decoder.

    All tests run on the same small tail, without control flow, and the one
    of the format is selected.

    Args:
        image_bytes: scalar tf.string tensor.
        fmt: scalar int32 tensor from `image_format`.

    Returns:
        A scalar bool tensor.
    """
    length = tf.strings.length(image_bytes)
    start = tf.maximum(length - _TAIL_WINDOW, 0)
    tail = tf.io.decode_raw(tf.strings.substr(image_bytes, start, _TAIL_WINDOW), tf.uint8)
    jpeg_ok = _contains(tail, b"\xff\xd9")
    png_ok = _contains(tail, b"IEND")
    gif_ok = tf.reduce_any(tf.equal(tail[-1:], ord(";")))  # False when empty
    ok = tf.constant(True)
    for code, check in ((FORMAT_GIF, gif_ok), (FORMAT_PNG, png_ok), (FORMAT_JPEG, jpeg_ok)):
        ok = tf.where(tf.equal(fmt, code), check, ok)
    return ok


# Scales at which libjpeg can decode (inverse DCT at 1/2, 1/4, 1/8 size).
_JPEG_SCALES = (1, 2, 4, 8)


def decode_jpeg_window(image_bytes, window, image_size, dct_scaling=True):
    """Decodes only `window` of a JPEG, at reduced scale when it is large.

    With `dct_scaling`, a window at least 2, 4 or 8 times `image_size` on
    both sides is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's scaled
    inverse DCT (each output pixel averages a block of input pixels), never
    below `image_size`. That saves decoding work on large photos (1.22x end
    to end on 1024x768 sources, see benchmarks/RESULTS.md), and the
    averaging is an antialiasing filter: a plain bicubic resize by more
    than 2x samples too few input pixels and aliases (PIL's resize in the
    PyTorch recipes antialiases too). Without it the window is decoded at
    full resolution.

    Args:
        image_bytes: scalar tf.string tensor, JPEG bytes.
        window: int32 tensor `(offset_y, offset_x, height, width)` in pixels
            of the full-resolution image.
        image_size: int. Side length the window will be resized to.
        dct_scaling: bool. Allow decoding at reduced scale.

    Returns:
        A uint8 tensor (h, w, 3): the window, at full or reduced scale.
    """
    if not dct_scaling:
        return tf.image.decode_and_crop_jpeg(
            image_bytes, window, channels=3, dct_method=JPEG_DCT_METHOD)
    side = tf.minimum(window[2], window[3])
    # Index into _JPEG_SCALES of the coarsest scale keeping side >= image_size.
    level = tf.add_n([tf.cast(side >= scale * image_size, tf.int32) for scale in _JPEG_SCALES[1:]])

    def decode_at(scale):
        def decode():
            # Window in the coordinates of the scaled image (ceil(H / scale)
            # by ceil(W / scale)); flooring keeps it inside.
            return tf.image.decode_and_crop_jpeg(
                image_bytes, window // scale, channels=3, ratio=scale,
                dct_method=JPEG_DCT_METHOD)
        return decode

    return tf.switch_case(level, [decode_at(scale) for scale in _JPEG_SCALES])


def _decode_window(image_bytes, fmt, window_fn, image_size, dct_scaling):
    """Decodes the window `window_fn(shape)` of an encoded image.

    For JPEG only the window is decoded (at reduced scale when it is large);
    other formats are decoded whole and cropped.
    """
    if fmt is None:
        fmt = image_format(image_bytes)

    def jpeg_crop():
        window = window_fn(tf.image.extract_jpeg_shape(image_bytes))
        return decode_jpeg_window(image_bytes, window, image_size, dct_scaling)

    def other_crop():
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        return crops.crop_to_window(image, window_fn(tf.shape(image)))

    return tf.cond(tf.equal(fmt, FORMAT_JPEG), jpeg_crop, other_crop)


def decode_random_resized_crop(image_bytes, image_size, seed, fmt=None, dct_scaling=True,
                               scale=RANDOM_CROP_SCALE, ratio=RANDOM_CROP_RATIO):
    """Training transform: crop-aware decode, RandomResizedCrop, flip.

    The same window sampler, flip and resize as `crops.random_resized_crop`
    on decoded images; the flip is applied to the uint8 crop before the
    resize, where it moves fewer bytes.

    Args:
        image_bytes: scalar tf.string tensor, an encoded image.
        image_size: int. Output height and width.
        seed: int tensor of shape (2,), the stateless seed of this example.
        fmt: optional scalar int32 tensor from `image_format`.
        dct_scaling: bool. Decode large JPEG crops at reduced scale (see
            `decode_jpeg_window`).
        scale: area range of the window (pretraining: 0.2-1).
        ratio: aspect ratio range of the window.

    Returns:
        A float32 tensor (image_size, image_size, 3) with values in [0, 255].
    """
    crop_seed, flip_seed = crops.crop_seeds(seed)
    crop = _decode_window(
        image_bytes, fmt,
        lambda shape: crops.sample_crop_window(shape, crop_seed, scale, ratio),
        image_size, dct_scaling,
    )
    crop = tf.image.stateless_random_flip_left_right(crop, flip_seed)
    return crops.resize_crop(crop, image_size)


def decode_center_crop(image_bytes, image_size, fmt=None, dct_scaling=True, crop_fraction=1.0):
    """Evaluation transform: the centre window (`crops.center_crop_window`), resized.

    With the default `crop_fraction=1.0` the window is the central
    min(height, width) square: resizing the shorter side to `image_size`
    and cropping the centre, done in the order that decodes only the crop
    of a JPEG.

    Args:
        image_bytes: scalar tf.string tensor, an encoded image.
        image_size: int. Output height and width.
        fmt: optional scalar int32 tensor from `image_format`.
        dct_scaling: bool. Decode large JPEG crops at reduced scale (see
            `decode_jpeg_window`).
        crop_fraction: float in (0, 1]; 0.875 for classification evaluation.

    Returns:
        A float32 tensor (image_size, image_size, 3) with values in [0, 255].
    """
    crop = _decode_window(
        image_bytes, fmt,
        lambda shape: crops.center_crop_window(shape, image_size, crop_fraction),
        image_size, dct_scaling,
    )
    return crops.resize_crop(crop, image_size)


def normalize_image(image):
    """Scales [0, 255] pixels to [0, 1] and normalises with CC12M mean/std.

    Computed as one multiply-add, `image * scale + offset`, with the
    constants of `constants.normalization_affine`. When the trailing
    (height, width, 3) shape is static the constants are laid out at full
    size and the image viewed as (batch, height * width * 3): a same-shape
    multiply-add is several times faster than broadcasting a 3-vector, which
    matters because the pipeline normalises every batch once.

    Args:
        image: float or integer tensor (..., 3) with values in [0, 255].

    Returns:
        A float32 tensor of the same shape.
    """
    scale, offset = (np.asarray(v, np.float32) for v in normalization_affine())
    image = tf.cast(image, tf.float32)
    pixel_shape = image.shape[-3:]
    if image.shape.rank is not None and image.shape.rank >= 3 and \
            pixel_shape.is_fully_defined():
        size = pixel_shape.num_elements()
        repeats = size // 3
        flat = tf.reshape(image, [-1, size])
        flat = flat * tf.constant(np.tile(scale, repeats)) + tf.constant(np.tile(offset, repeats))
        return tf.reshape(flat, tf.shape(image))
    return image * scale + offset


def denormalize_image(image):
    """Inverse of `normalize_image`, back to [0, 1] (for visualisation)."""
    # The [0, 1] affine inverted: x = y / scale - offset / scale = y * std + mean.
    scale, offset = normalization_affine(value_range=(0, 1))
    std = tf.constant([1.0 / s for s in scale], tf.float32)
    mean = tf.constant([-o / s for o, s in zip(offset, scale)], tf.float32)
    return tf.cast(image, tf.float32) * std + mean
