"""Fine-tuning augmentation for `tf.data`: crop, flip, RandAugment, Mixup/CutMix.

MAE / M3AE fine-tuning recipe: RandomResizedCrop + horizontal flip,
RandAugment (9, 0.5), Mixup 0.8 and CutMix 1.0 (one of the two per batch,
as timm switches), label smoothing 0.1 (in the loss). RandAugment, MixUp and
CutMix are Keras' own layers; they run inside `tf.data` on every backend.
Linear probing uses only crop + flip. The crops are those of the
pretraining pipeline (`keras_m3ae.data.crops`), with the fine-tuning scale
and the evaluation crop fraction.
"""

import keras
import tensorflow as tf

from keras_m3ae.data import crops


# MAE fine-tuning and linear probing crop a wider area range than pretraining.
FINETUNE_CROP_SCALE = (0.08, 1.0)
# MAE's evaluation transform: resize the short side to size / 0.875, crop size.
EVAL_CROP_FRACTION = 0.875


def stateless_seed(seed=None):
    """A stateless `(2,)` seed: `seed` itself if it is one, else a fresh draw.

    An int (or None) seeds a stateful draw, so that each call, e.g. each
    example of a `tf.data` map, gets its own crop while the sequence stays
    reproducible for an int seed.
    """
    if seed is not None and not isinstance(seed, int):
        seed = tf.convert_to_tensor(seed)
        if seed.shape.rank == 1:
            return seed
    return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64, seed=seed or 0)


def random_resized_crop(image, image_size, scale=FINETUNE_CROP_SCALE, ratio=(3 / 4, 4 / 3),
                        seed=None):
    """RandomResizedCrop of a decoded image: `keras_m3ae.data.crops` with fine-tuning defaults.

    The window sampler, resize and clipping (to [0, 255]) are those of the
    pretraining pipeline; no flip.

    Args:
        image: `(H, W, C)` tensor with values in [0, 255].
        image_size: int or `(height, width)` of the output.
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio.
        seed: a `(2,)` stateless seed, or an int / None (see `stateless_seed`).

    Returns:
        float32 `(height, width, C)`, values in [0, 255].
    """
    return crops.random_resized_crop(image, image_size, stateless_seed(seed), scale, ratio,
                                     flip=False)


def center_crop(image, image_size, crop_fraction=EVAL_CROP_FRACTION):
    """Evaluation crop: `keras_m3ae.data.crops.center_crop` with MAE's 0.875.

    Args:
        image: `(H, W, C)` tensor with values in [0, 255].
        image_size: int or `(height, width)` of the output.
        crop_fraction: float in (0, 1].

    Returns:
        float32 `(height, width, C)`, values in [0, 255].
    """
    return crops.center_crop(image, image_size, crop_fraction)


class FineTuneAugmentation:
    """Batch-level fine-tuning augmentation: RandAugment, then Mixup or CutMix.

    Map it over a *batched* dataset of `(images, labels)` with images in
    `value_range` and integer labels; it returns images in the same range
    and (mixed) one-hot labels, which `ClassificationCrossentropy` and
    `ClassificationAccuracy` (the classifier's defaults) accept.

    Args:
        num_classes: int.
        rand_augment: bool. RandAugment with 2 ops at magnitude 9/10
            (Keras' `factor` is the normalised magnitude).
        mixup_alpha: float. Mixup Beta parameter (0.8); 0 disables.
        cutmix_alpha: float. CutMix Beta parameter (1.0); 0 disables.
        switch_prob: float. Probability of CutMix rather than Mixup for a
            batch when both are on.
        value_range: pixel range of the images.
        seed: optional int.

    Example:
    >>> augment = FineTuneAugmentation(num_classes=1000)
    >>> train_ds = train_ds.batch(256).map(augment)
    """

    def __init__(
        self,
        num_classes,
        rand_augment=True,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        switch_prob=0.5,
        value_range=(0, 255),
        seed=None,
    ):
        self.num_classes = num_classes
        self.switch_prob = switch_prob
        self.seed = seed
        self.rand_augment = (
            keras.layers.RandAugment(value_range=value_range, num_ops=2, factor=0.9, seed=seed)
            if rand_augment
            else None
        )
        self.mixup = keras.layers.MixUp(alpha=mixup_alpha, seed=seed) if mixup_alpha else None
        self.cutmix = keras.layers.CutMix(factor=cutmix_alpha, seed=seed) if cutmix_alpha else None

    def __call__(self, images, labels):
        images = tf.cast(images, tf.float32)
        if self.rand_augment is not None:
            images = self.rand_augment(images)
        labels = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), self.num_classes)
        data = {"images": images, "labels": labels}

        def apply(layer):
            out = layer(dict(data))
            return out["images"], tf.cast(out["labels"], tf.float32)

        if self.mixup is not None and self.cutmix is not None:
            use_cutmix = tf.random.uniform([], seed=self.seed) < self.switch_prob
            return tf.cond(use_cutmix, lambda: apply(self.cutmix), lambda: apply(self.mixup))
        if self.cutmix is not None:
            return apply(self.cutmix)
        if self.mixup is not None:
            return apply(self.mixup)
        return images, labels
