"""Classification datasets for probing / fine-tuning / OOD: TFDS and a built-in default.

`tfds_classification_dataset` reads a TFDS image-classification dataset
(`cifar10`, `cifar100`, `imagenet2012`...) that you have prepared under
`data_dir` (no download unless asked) into batches of raw images in
[0, 255] at the model's size and integer labels; the classifier's
preprocessor normalises them. `default_classification_data` gives a small
labelled image-caption dataset that needs nothing on disk, and
`array_dataset` batches in-memory arrays in a new order every epoch.
"""

import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_m3ae.data import crops
from keras_m3ae.data import denormalize_image
from keras_m3ae.data import image_text_dataset
from keras_m3ae.data import write_shapes_dataset
from keras_m3ae.finetune.augment import EVAL_CROP_FRACTION
from keras_m3ae.finetune.augment import FINETUNE_CROP_SCALE


def tfds_classification_dataset(
    name,
    split,
    batch_size,
    image_size,
    data_dir=None,
    training=False,
    augment=None,
    shuffle_buffer=10_000,
    crop_scale=FINETUNE_CROP_SCALE,
    download=False,
    seed=None,
):
    """A TFDS classification split as batches of `(images, labels)`.

    Training: shuffle, RandomResizedCrop (`crop_scale`) + horizontal flip
    with per-example stateless seeds, repeat-free, drop the last partial
    batch, then an optional batch-level `augment` (e.g.
    `FineTuneAugmentation`). Evaluation: centre crop (0.875) resized, keep
    every example. The crops are `keras_m3ae.data.crops`, the pretraining
    pipeline's. Images are float32 in [0, 255].

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

    def train_map(example_seed, example):
        image, label = example
        image = crops.random_resized_crop(to_rgb(image), image_size, example_seed,
                                          scale=crop_scale)
        return image, tf.cast(label, tf.int32)

    def eval_map(image, label):
        image = crops.center_crop(to_rgb(image), image_size, EVAL_CROP_FRACTION)
        return image, tf.cast(label, tf.int32)

    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
        # A stateless seed per example, as in the pretraining pipeline: the
        # same `seed` gives the same crops and flips whatever the map's
        # parallelism, and every epoch draws new ones.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(seeds, ds).map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True)
        if augment is not None:
            ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def array_dataset(x, y=None, sample_weight=None, batch_size=32, shuffle=True):
    """Batches of in-memory arrays, in a new order every epoch.

    What `M3AEImageClassifier.fit` trains on when given arrays (keras-hub's
    `Task.fit` would batch them in their given order for every epoch). The
    data stays one tensor and each batch gathers its rows by index, so a
    new order costs a permutation of indices, not a shuffle buffer holding
    a copy of the data. The order follows TensorFlow's global seed
    (`keras.utils.set_random_seed`).

    Args:
        x: array, or dict / list / tuple of arrays, with the samples on
            axis 0.
        y: optional labels, same length.
        sample_weight: optional per-sample weights, same length.
        batch_size: int. The last batch may be smaller.
        shuffle: bool. Reshuffle every epoch (True) or keep the order.

    Returns:
        A `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, sample_weight)`
        batches.

    Example:
    >>> ds = array_dataset(np.arange(6), np.arange(6) % 2, batch_size=4)
    >>> [len(x) for x, y in ds]
    [4, 2]
    """
    data = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
    data = keras.tree.map_structure(
        lambda leaf: leaf if isinstance(leaf, tf.Tensor)
        else tf.convert_to_tensor(keras.ops.convert_to_numpy(leaf)),
        data,
    )
    lengths = {int(leaf.shape[0]) for leaf in keras.tree.flatten(data)}
    if len(lengths) != 1:
        raise ValueError(f"All arrays must have the same number of samples; got {sorted(lengths)}.")
    (count,) = lengths
    indices = tf.data.Dataset.range(count)
    if shuffle:
        indices = indices.shuffle(count, reshuffle_each_iteration=True)
    # The arrays enter as one dataset element, not as constants of the map
    # function (which would be limited to 2 GB).
    everything = tf.data.Dataset.from_tensors(data).repeat()
    batches = tf.data.Dataset.zip((indices.batch(batch_size), everything)).map(
        lambda ids, arrays: keras.tree.map_structure(lambda leaf: tf.gather(leaf, ids), arrays),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return batches.prefetch(tf.data.AUTOTUNE)


def dataset_to_numpy(dataset, max_batches=None):
    """Collects a finite `(x, y)` dataset into numpy arrays."""
    xs, ys = [], []
    for i, (x, y) in enumerate(dataset.as_numpy_iterator()):
        if max_batches is not None and i >= max_batches:
            break
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


# --- Built-in default: the labelled shapes dataset of `keras_m3ae.data`. ---


def default_classification_data(num_examples=1024, image_size=64, max_text_length=16, seed=0,
                                vocabulary=None, directory=None, layout="grid"):
    """A small labelled image-caption dataset that needs no download.

    Renders `keras_m3ae.data.write_shapes_dataset` (a coloured shape on a
    background, the shape's class is the label, with a caption describing
    it) and reads it back through `image_text_dataset`.

    Args:
        num_examples: int.
        image_size: int.
        max_text_length: int. Caption length in tokens (padded with 0).
        seed: int. Same seed, same data.
        vocabulary: optional WordPiece vocabulary file (default BERT uncased).
        directory: optional folder for the shards (default: a temporary one).
        layout: `"grid"` or `"centered"` (see `keras_m3ae.data.shapes`).

    Returns:
        dict of numpy arrays: `images` uint8 `(N, S, S, 3)` in [0, 255],
        `labels` int32 `(N,)`, `token_ids` int32 and `padding_mask` bool
        `(N, T)`.
    """
    directory = directory or tempfile.mkdtemp(prefix="m3ae_shapes_")
    shards = write_shapes_dataset(directory, num_examples=num_examples, image_size=image_size,
                                  seed=seed, overwrite=True, layout=layout)
    ds = image_text_dataset(
        shards, image_size=image_size, max_text_length=max_text_length, vocabulary=vocabulary,
        batch_size=256, training=False, label_key="label", drop_remainder=False,
    )
    parts = {"images": [], "token_ids": [], "padding_mask": [], "labels": []}
    for x, y in ds.as_numpy_iterator():
        for key in ("images", "token_ids", "padding_mask"):
            parts[key].append(x[key])
        parts["labels"].append(y)
    result = {k: np.concatenate(v) for k, v in parts.items()}
    # The reader normalises with the CC12M statistics; classifiers take raw pixels.
    pixels = denormalize_image(result["images"]).numpy() * 255.0
    result["images"] = np.clip(np.round(pixels), 0, 255).astype("uint8")
    result["labels"] = result["labels"].astype("int32")
    return result
