"""Classification datasets for probing / fine-tuning / OOD: TFDS and a built-in default.

`tfds_classification_dataset` reads a TFDS image-classification dataset
(`cifar10`, `cifar100`, `imagenet2012`...) that you have prepared under
`data_dir` (no download unless asked) into batches of raw images in
[0, 255] at the model's size and integer labels; the classifier's
preprocessor normalises them. `default_classification_data` gives a small
labelled image-caption dataset that needs nothing on disk.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf

from keras_m3ae.data.constants import CC12M_MEAN
from keras_m3ae.data.constants import CC12M_STD
from keras_m3ae.data.constants import DEFAULT_VOCABULARY
from keras_m3ae.training.augment import center_crop
from keras_m3ae.training.augment import random_resized_crop


def tfds_classification_dataset(
    name,
    split,
    batch_size,
    image_size,
    data_dir=None,
    training=False,
    augment=None,
    shuffle_buffer=10_000,
    crop_scale=(0.08, 1.0),
    download=False,
    seed=None,
):
    """A TFDS classification split as batches of `(images, labels)`.

    Training: shuffle, RandomResizedCrop (`crop_scale`) + horizontal flip,
    repeat-free, drop the last partial batch, then an optional batch-level
    `augment` (e.g. `FineTuneAugmentation`). Evaluation: resize and centre
    crop (0.875), keep every example. Images are float32 in [0, 255].

    Args:
        name: TFDS name, e.g. `"cifar10"`, `"cifar100"`, `"imagenet2012"`.
        split: e.g. `"train"`, `"test"`, `"validation"`, `"train[:10%]"`.
        batch_size: int.
        image_size: int or `(height, width)` the model takes.
        data_dir: TFDS data directory (where the prepared dataset lives).
        training: bool. Training transforms (see above).
        augment: optional callable `(images, labels) -> (images, labels)`
            mapped over training batches.
        shuffle_buffer: int. Shuffle buffer for training.
        crop_scale: area range of the training crop; MAE fine-tuning uses
            (0.08, 1), its linear probe the same.
        download: bool. Let TFDS download and prepare the data.
        seed: optional int.

    Returns:
        `tf.data.Dataset` of `(images (B, H, W, 3) float32, labels (B,) int32)`.

    Example:
    >>> train = tfds_classification_dataset(
    ...     "cifar10", "train", 256, 224, data_dir="~/tensorflow_datasets",
    ...     training=True)
    """
    import tensorflow_datasets as tfds

    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    ds = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        as_supervised=True,
        download=download,
        shuffle_files=training,
    )

    def to_rgb(image):
        image = tf.convert_to_tensor(image)
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return image

    def train_map(image, label):
        image = random_resized_crop(to_rgb(image), image_size, scale=crop_scale, seed=seed)
        image = tf.image.random_flip_left_right(image, seed=seed)
        return tf.clip_by_value(image, 0.0, 255.0), tf.cast(label, tf.int32)

    def eval_map(image, label):
        image = center_crop(to_rgb(image), image_size)
        return tf.clip_by_value(image, 0.0, 255.0), tf.cast(label, tf.int32)

    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
        ds = ds.map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True)
        if augment is not None:
            ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def dataset_to_numpy(dataset, max_batches=None):
    """Collects a finite `(x, y)` dataset into numpy arrays."""
    xs, ys = [], []
    for i, (x, y) in enumerate(dataset.as_numpy_iterator()):
        if max_batches is not None and i >= max_batches:
            break
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


# --- Built-in default: labelled synthetic shapes with captions. ---

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "white": (240, 240, 240),
}


def _load_vocabulary(path=DEFAULT_VOCABULARY):
    with open(path, encoding="utf-8") as f:
        return {token.rstrip("\n"): i for i, token in enumerate(f)}


def _render_shapes(num_examples, image_size, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype("float32")
    color_names = list(COLORS)
    images = np.empty((num_examples, image_size, image_size, 3), "uint8")
    labels = rng.integers(0, len(SHAPES), num_examples)
    captions = []
    for i, label in enumerate(labels):
        background = rng.uniform(0, 80, 3)
        image = np.broadcast_to(background, (image_size, image_size, 3)).copy()
        image += rng.normal(0, 8, image.shape)
        color = color_names[rng.integers(len(color_names))]
        radius = rng.uniform(0.15, 0.3) * image_size
        cy, cx = rng.uniform(radius, image_size - radius, 2)
        dy, dx = (yy - cy) / radius, (xx - cx) / radius
        shape = SHAPES[label]
        if shape == "circle":
            inside = dy**2 + dx**2 <= 1
        elif shape == "square":
            inside = (np.abs(dy) <= 0.8) & (np.abs(dx) <= 0.8)
        elif shape == "triangle":
            inside = (dy <= 0.8) & (dy >= -1 + 2 * np.abs(dx))
        else:
            inside = ((np.abs(dy) <= 0.3) | (np.abs(dx) <= 0.3)) & (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
        image[inside] = COLORS[color]
        images[i] = np.clip(image, 0, 255).astype("uint8")
        side = "left" if cx < image_size / 2 else "right"
        captions.append(f"a {color} {shape} on the {side}")
    return images, labels.astype("int32"), captions


def _tokenize(captions, max_text_length):
    vocab = _load_vocabulary()
    ids = np.zeros((len(captions), max_text_length), "int32")
    for i, caption in enumerate(captions):
        tokens = [vocab.get(w, vocab["[UNK]"]) for w in caption.lower().split()]
        tokens = tokens[:max_text_length]
        ids[i, : len(tokens)] = tokens
    return ids, (ids > 0).astype("int32")


def _from_shapes_writer(num_examples, image_size, max_text_length, seed):
    # The project's own labelled shapes dataset (keras_m3ae.data), when present.
    from keras_m3ae.data import image_text_dataset  # noqa: F401
    from keras_m3ae.data import write_shapes_dataset

    directory = tempfile.mkdtemp(prefix="m3ae_shapes_")
    write_shapes_dataset(directory, num_examples=num_examples, image_size=image_size, seed=seed)
    ds = image_text_dataset(
        os.path.join(directory, "*"),
        image_size=image_size,
        max_text_length=max_text_length,
        batch_size=64,
        training=False,
        label_key="label",
    )
    parts = {"images": [], "token_ids": [], "padding_mask": [], "labels": []}
    for batch in ds.as_numpy_iterator():
        x, y = batch if isinstance(batch, tuple) else (batch, batch["label"])
        for key in ("images", "token_ids", "padding_mask"):
            parts[key].append(np.asarray(x[key]))
        parts["labels"].append(np.asarray(y).reshape(-1))
    data = {k: np.concatenate(v) for k, v in parts.items()}
    images = data["images"].astype("float32")
    if images.min() < 0:
        # The reader normalises with the CC12M statistics; back to [0, 255].
        images = images * np.asarray(CC12M_STD) + np.asarray(CC12M_MEAN)
        images = images * 255.0
    elif images.max() <= 1.0:
        images = images * 255.0
    data["images"] = np.clip(np.round(images), 0, 255).astype("uint8")
    data["labels"] = data["labels"].astype("int32")
    data["source"] = "keras_m3ae.data.write_shapes_dataset"
    return data


def default_classification_data(num_examples=1024, image_size=64, max_text_length=32, seed=0):
    """A small labelled image-caption dataset that needs no download.

    Uses `keras_m3ae.data.write_shapes_dataset` + `image_text_dataset` when
    that module is installed, otherwise renders the same kind of data here:
    a coloured shape (circle, square, triangle or cross; the label) on a
    noisy background, with a caption such as "a red circle on the left".

    Args:
        num_examples: int.
        image_size: int.
        max_text_length: int. Caption length in tokens (padded with 0).
        seed: int.

    Returns:
        dict of numpy arrays: `images` uint8 `(N, S, S, 3)` in [0, 255],
        `labels` int32 `(N,)`, `token_ids`, `padding_mask` int32 `(N, T)`,
        and `source` (a string naming where the data came from).
    """
    try:
        return _from_shapes_writer(num_examples, image_size, max_text_length, seed)
    except ImportError:
        pass
    images, labels, captions = _render_shapes(num_examples, image_size, seed)
    token_ids, padding_mask = _tokenize(captions, max_text_length)
    return {
        "images": images,
        "labels": labels,
        "token_ids": token_ids,
        "padding_mask": padding_mask,
        "source": "keras_m3ae.training.datasets (built-in renderer)",
    }
