"""A small synthetic image-caption dataset of coloured shapes.

Used by the demo and the classification examples so that they run anywhere
without downloads: each image shows one shape of a colour and size at a grid
position on a plain background (with light noise), the caption says exactly
that, and the shape class is stored as an int64 `label`. Rendering is
deterministic given the seed, and the records go through the same writer as
real data (img2dataset schema).
"""

import io
import itertools
import math
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

from keras_m3ae.data.writer import write_tfrecords

SHAPE_CLASS_NAMES = [
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "star",
    "hexagon",
    "ring",
]
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
POSITIONS = [
    ("top left", 0, 0), ("top", 0, 1), ("top right", 0, 2),
    ("left", 1, 0), ("center", 1, 1), ("right", 1, 2),
    ("bottom left", 2, 0), ("bottom", 2, 1), ("bottom right", 2, 2),
]
SIZES = {"small": 0.13, "large": 0.22}  # radius as a fraction of the image side


def article(word):
    """The indefinite article before `word`: "an" before a vowel ("an orange"), else "a"."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _polygon(cx, cy, radius, corners, rotation=0.0, inner=None):
    """Corner points of a regular polygon (a star when `inner` is given)."""
    points = []
    steps = corners * 2 if inner else corners
    for i in range(steps):
        r = radius if not inner or i % 2 == 0 else radius * inner
        angle = rotation + 2 * math.pi * i / steps
        points.append((cx + r * math.sin(angle), cy - r * math.cos(angle)))
    return points


def _draw_shape(draw, shape, cx, cy, r, color):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=color)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3), fill=color)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4), fill=color)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, inner=0.45), fill=color)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rotation=math.pi / 6), fill=color)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color,
                     width=max(2, int(r * 0.35)))
    else:
        raise ValueError(f"Unknown shape {shape!r}.")


def _noisy(image, rng):
    """The image's pixels with light uniform noise, uint8."""
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + rng.integers(-6, 7, size=pixels.shape, dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def render_shape_example(rng, image_size=64, layout="grid", colors=None):
    """Draws one random example.

    Args:
        rng: `numpy.random.Generator`.
        image_size: int. Side of the square image.
        layout: `"grid"`: a small or large shape in one of 9 grid cells,
            captioned "a {size} {colour} {shape} in the {position} on a
            {background} background". `"centered"`: one large shape
            (radius 28-40% of the side) near the centre, captioned "a
            {colour} {shape} on a {background} background": the shape is
            legible even at 32 px. "a" is "an" before a vowel ("an orange
            star").
        colors: optional `(shape colour, background colour)`, names from
            `COLORS`; by default both are drawn at random (and differ).

    Returns:
        A tuple `(image, caption, label)`: uint8 array (S, S, 3), str, int.
    """
    if layout not in ("grid", "centered"):
        raise ValueError(f"`layout` must be 'grid' or 'centered'; got {layout!r}.")
    label = int(rng.integers(len(SHAPE_CLASS_NAMES)))
    shape = SHAPE_CLASS_NAMES[label]
    names = list(COLORS)
    color, background = rng.choice(len(names), size=2, replace=False)
    color, background = names[color], names[background]
    if colors is not None:
        color, background = colors
        if color not in COLORS or background not in COLORS or color == background:
            raise ValueError(f"`colors` must be two different names from {names}; got {colors!r}.")
    if layout == "centered":
        r = rng.uniform(0.28, 0.4) * image_size
        cx, cy = image_size / 2 + rng.uniform(-0.08, 0.08, size=2) * image_size
        image = Image.new("RGB", (image_size, image_size), COLORS[background])
        _draw_shape(ImageDraw.Draw(image), shape, cx, cy, r, COLORS[color])
        caption = f"{article(color)} {color} {shape} on {article(background)} {background} background"
        return _noisy(image, rng), caption, label
    position, row, col = POSITIONS[int(rng.integers(len(POSITIONS)))]
    size = ("small", "large")[int(rng.integers(2))]

    image = Image.new("RGB", (image_size, image_size), COLORS[background])
    cell = image_size / 3
    r = SIZES[size] * image_size
    # Jitter inside the cell, kept small so the position word stays true.
    cx = (col + 0.5) * cell + rng.uniform(-0.15, 0.15) * cell
    cy = (row + 0.5) * cell + rng.uniform(-0.15, 0.15) * cell
    _draw_shape(ImageDraw.Draw(image), shape, cx, cy, r, COLORS[color])
    pixels = _noisy(image, rng)
    where = "in the center" if position == "center" else f"in the {position}"
    caption = f"{article(size)} {size} {color} {shape} {where} on {article(background)} {background} background"
    return pixels, caption, label


def object_mask(pixels, caption, threshold=40):
    """Which pixels of a rendered example belong to the shape.

    The background colour is read from the caption ("... on a {background}
    background"); a pixel is the shape's when one of its channels differs
    from that colour by more than `threshold` (the noise is at most 6 and
    JPEG moves a flat colour by a few levels; any two colours differ by at
    least 75 in some channel).

    Args:
        pixels: uint8 array `(S, S, 3)` (or `(N, S, S, 3)` with a list of
            captions).
        caption: str (or list of str) as written by `render_shape_example`.
        threshold: int. Largest channel difference still counted as
            background.

    Returns:
        bool array `(S, S)` (or `(N, S, S)`).

    Example:

    >>> pixels, caption, label = render_shape_example(np.random.default_rng(0))
    >>> object_mask(pixels, caption).mean()   # share of the image the shape covers
    """
    captions = [caption] if isinstance(caption, str) else list(caption)
    pixels = np.asarray(pixels)
    batched = pixels.ndim == 4
    pixels = pixels if batched else pixels[None]
    if len(captions) != len(pixels):
        raise ValueError(f"Got {len(pixels)} images but {len(captions)} captions.")
    backgrounds = []
    for text in captions:
        words = text.split()
        if len(words) < 2 or words[-1] != "background" or words[-2] not in COLORS:
            raise ValueError(f"Not a shapes caption (no '<colour> background' at the end): {text!r}.")
        backgrounds.append(COLORS[words[-2]])
    backgrounds = np.asarray(backgrounds, "int16")[:, None, None, :]
    mask = np.abs(pixels.astype("int16") - backgrounds).max(-1) > threshold
    return mask if batched else mask[0]


def write_shapes_dataset(directory, num_examples=512, image_size=64, num_shards=4, seed=0,
                         progress=False, overwrite=False, layout="grid"):
    """Renders the shapes dataset into img2dataset-style TFRecord shards.

    Args:
        directory: str. Output folder (created if needed).
        num_examples: int. Number of images.
        image_size: int. Side of the square images.
        num_shards: int. Number of shard files.
        seed: int. Same seed, same bytes.
        progress: bool. Show a progress bar.
        overwrite: bool. Replace shards already in `directory` (else it
            must be empty); the same seed writes the same bytes again.
        layout: `"grid"` or `"centered"` (see `render_shape_example`).

    Returns:
        The list of shard paths. Records carry `jpg`, `txt`, `key`, `url`,
        `width`, `height`, `status` and an int64 `label` indexing
        `SHAPE_CLASS_NAMES`.

    Example:

    >>> paths = write_shapes_dataset("/tmp/shapes", num_examples=64)
    >>> ds = image_text_dataset(paths, image_size=64, batch_size=8, label_key="label")
    """
    if num_shards < 1 or num_examples < num_shards:
        raise ValueError(f"Need 1 <= num_shards <= num_examples, got {num_shards}, {num_examples}.")
    if layout not in ("grid", "centered"):
        raise ValueError(f"`layout` must be 'grid' or 'centered'; got {layout!r}.")
    rng = np.random.default_rng(seed)

    def examples():
        for index in range(num_examples):
            pixels, caption, label = render_shape_example(rng, image_size, layout=layout)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
            yield {
                "image": buffer.getvalue(),
                "caption": caption,
                "key": f"{index:08d}",
                "url": f"shapes://{seed}/{index}",
                "extra": {"label": label},
            }

    # Balanced shards: the first `num_examples % num_shards` get one more, so
    # exactly `num_shards` files are written (5 over 4: 2, 1, 1, 1). One
    # summary carries the shard numbering across the calls.
    stream = examples()
    summary = None
    for shard in range(num_shards):
        size = num_examples // num_shards + (shard < num_examples % num_shards)
        summary = write_tfrecords(itertools.islice(stream, size), os.fspath(directory), size,
                                  progress=progress, total=size, summary=summary,
                                  overwrite=overwrite)
    return summary.paths
