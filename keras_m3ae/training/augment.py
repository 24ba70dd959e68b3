"""Fine-tuning augmentation for `tf.data`: crop, flip, RandAugment, Mixup/CutMix.

MAE / M3AE fine-tuning recipe: RandomResizedCrop + horizontal flip,
RandAugment (9, 0.5), Mixup 0.8 and CutMix 1.0 (one of the two per batch,
as timm switches), label smoothing 0.1 (in the loss). RandAugment, MixUp and
CutMix are Keras' own layers; they run inside `tf.data` on every backend.
Linear probing uses only crop + flip.
"""

import keras
import tensorflow as tf


def random_resized_crop(image, image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=None):
    """Crops a random area fraction `scale` and aspect `ratio`, resized (bicubic).

    Args:
        image: `(H, W, C)` tensor.
        image_size: `(height, width)` of the output.
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio.
        seed: optional int.

    Returns:
        float32 `(height, width, C)`, values in the input's range.
    """
    shape = tf.shape(image)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        area_range=scale,
        aspect_ratio_range=ratio,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
        seed=seed or 0,
    )
    crop = tf.slice(image, begin, size)
    out = tf.image.resize(tf.cast(crop, tf.float32), image_size, method="bicubic")
    # The slice has a dynamic size; keep the static channel count.
    out.set_shape(tuple(image_size) + (image.shape[-1],))
    return out


def center_crop(image, image_size, crop_fraction=0.875):
    """Evaluation transform: resize the short side to `size / crop_fraction`, centre-crop.

    Args:
        image: `(H, W, C)` tensor.
        image_size: `(height, width)` of the output.
        crop_fraction: float (0.875 as in MAE's evaluation).

    Returns:
        float32 `(height, width, C)`.
    """
    image = tf.cast(image, tf.float32)
    height, width = image_size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target = tf.cast(max(height, width) / crop_fraction, tf.float32)
    factor = target / tf.reduce_min(shape)
    resized = tf.cast(tf.math.ceil(shape * factor), tf.int32)
    image = tf.image.resize(image, resized, method="bicubic")
    return tf.image.resize_with_crop_or_pad(image, height, width)


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
