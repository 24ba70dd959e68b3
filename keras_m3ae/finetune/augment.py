"""Fine-tuning augmentation for `tf.data`: crop, flip, RandAugment, MixUp/CutMix.

MAE / M3AE fine-tuning recipe, with timm's semantics as the papers' code
uses it: RandomResizedCrop (torchvision's sampler, scale 0.08-1) +
horizontal flip, timm's per-image RandAugment `rand-m9-mstd0.5-inc1`, then
per batch MixUp 0.8 or CutMix 1.0 (switch probability 0.5, one lambda per
batch), label smoothing 0.1 (in the loss). Everything runs inside `tf.data`
on every backend. Linear probing uses only crop + flip. The crops are those
of the pretraining pipeline (`keras_m3ae.data.crops`), with the fine-tuning
scale and the evaluation crop fraction.
"""

import tensorflow as tf

from keras_m3ae.data import crops
from keras_m3ae.finetune.rand_augment import batch_rand_augment


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


def _beta(alpha, seed):
    """One Beta(alpha, alpha) draw, as the ratio of two Gamma draws."""
    seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in (1, 2)]
    x, y = (tf.random.stateless_gamma([], s, alpha, dtype=tf.float64) for s in seeds)
    return x / (x + y)


def cutmix_box(image_height, image_width, lam, seed):
    """timm's `rand_bbox`: a box of side `sqrt(1 - lam)` times the image's, clipped.

    The centre is uniform over the image's pixels and the box is clipped to
    the image, so it can be smaller than asked; `lam` is then corrected to
    the area kept (timm's `correct_lam`).

    Args:
        image_height, image_width: int.
        lam: float64 scalar, the Beta draw.
        seed: `(2,)` stateless seed.

    Returns:
        `(y_low, y_high, x_low, x_high)` int32 and the corrected `lam`
        (float32: the weight of each image's own label).
    """
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(image_height, tf.float64) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(image_width, tf.float64) * cut, tf.int32)
    y_seed, x_seed = (tf.random.experimental.stateless_fold_in(seed, i) for i in (1, 2))
    centre_y = tf.random.stateless_uniform([], y_seed, 0, image_height, dtype=tf.int32)
    centre_x = tf.random.stateless_uniform([], x_seed, 0, image_width, dtype=tf.int32)
    y_low = tf.clip_by_value(centre_y - cut_h // 2, 0, image_height)
    y_high = tf.clip_by_value(centre_y + cut_h // 2, 0, image_height)
    x_low = tf.clip_by_value(centre_x - cut_w // 2, 0, image_width)
    x_high = tf.clip_by_value(centre_x + cut_w // 2, 0, image_width)
    area = tf.cast((y_high - y_low) * (x_high - x_low), tf.float32)
    kept = 1.0 - area / tf.cast(image_height * image_width, tf.float32)
    return (y_low, y_high, x_low, x_high), kept


def mix_batch(images, labels, seed, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5):
    """timm's `Mixup` in mode "batch": one lambda and one partner order per batch.

    Each image is mixed with the image at the mirrored position of the batch
    (timm's `flip(0)`): with probability `switch_prob` by CutMix (a box of
    the partner pasted in, lambda ~ Beta(1, 1) corrected to the kept area),
    else by MixUp (`lam * x + (1 - lam) * partner`, lambda ~ Beta(0.8, 0.8)).
    Labels mix with the same lambda. Label smoothing, which timm applies to
    the targets before mixing, is linear and so equals smoothing the mixed
    labels in the loss (`ClassificationCrossentropy(label_smoothing=0.1)`).

    Args:
        images: float `(B, H, W, C)`.
        labels: float `(B, num_classes)` one-hot (or soft) labels.
        seed: `(2,)` stateless seed of the batch.
        mixup_alpha: float. MixUp Beta parameter; 0 disables MixUp.
        cutmix_alpha: float. CutMix Beta parameter; 0 disables CutMix.
        switch_prob: float. Chance of CutMix when both are enabled.

    Returns:
        `(images, labels, lam, used_cutmix)`: the mixed batch, the weight of
        each example's own label and whether CutMix was used.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError(
            "mix_batch needs `mixup_alpha` or `cutmix_alpha` above 0; "
            f"got {mixup_alpha} and {cutmix_alpha}."
        )
    seed = tf.cast(seed, tf.int64)
    switch_seed, mixup_seed, cutmix_seed, box_seed = (
        tf.random.experimental.stateless_fold_in(seed, i) for i in range(4))
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([], switch_seed, dtype=tf.float64) < switch_prob
    else:
        use_cutmix = tf.constant(cutmix_alpha > 0)
    images = tf.cast(images, tf.float32)
    labels = tf.cast(labels, tf.float32)
    partner_images, partner_labels = tf.reverse(images, [0]), tf.reverse(labels, [0])

    def mixup():
        lam = tf.cast(_beta(mixup_alpha or 1.0, mixup_seed), tf.float32)
        return lam * images + (1.0 - lam) * partner_images, lam

    def cutmix():
        shape = tf.shape(images)
        lam = _beta(cutmix_alpha or 1.0, cutmix_seed)
        (y_low, y_high, x_low, x_high), lam = cutmix_box(shape[1], shape[2], lam, box_seed)
        rows = tf.range(shape[1])[:, None]
        cols = tf.range(shape[2])[None, :]
        box = (rows >= y_low) & (rows < y_high) & (cols >= x_low) & (cols < x_high)
        return tf.where(box[None, :, :, None], partner_images, images), lam

    mixed, lam = tf.cond(use_cutmix, cutmix, mixup)
    mixed_labels = lam * labels + (1.0 - lam) * partner_labels
    return mixed, mixed_labels, lam, use_cutmix


class FineTuneAugmentation:
    """Batch-level fine-tuning augmentation with timm's semantics (MAE / M3AE).

    Per image, timm's RandAugment `rand-m9-mstd0.5-inc1`
    (`keras_m3ae.finetune.rand_augment`); then, per batch, timm's `Mixup`
    (mode "batch"): CutMix (alpha 1.0) with probability 0.5, else MixUp
    (alpha 0.8), one lambda for the batch, each image mixed with the one at
    the mirrored batch position. Label smoothing 0.1 belongs to the loss
    (`ClassificationCrossentropy`, the classifier's default in fine-tuning),
    which equals timm's smoothing of the targets before mixing.

    Map it over a *batched* dataset of `(images, labels)` with images in
    `value_range` and integer labels; it returns float32 images in the
    same range and
    (mixed) one-hot labels, which `ClassificationCrossentropy` and
    `ClassificationAccuracy` accept. Keras' `RandAugment`, `MixUp` and
    `CutMix` layers are not used: they draw one op choice per batch with
    uniform magnitudes, and one mixing weight per example with CutMix's
    alpha itself drawn uniformly (mean weight kept on the own label 0.51
    against timm's 0.70).

    Not included: timm's random erasing (`reprob` 0.25 in the MAE code),
    which acts on normalised images after this map.

    Args:
        num_classes: int.
        rand_augment: bool. timm's per-image RandAugment (m9, mstd 0.5).
        mixup_alpha: float. MixUp Beta parameter (0.8); 0 disables.
        cutmix_alpha: float. CutMix Beta parameter (1.0); 0 disables.
        switch_prob: float. Probability of CutMix rather than MixUp for a
            batch when both are on (0.5).
        value_range: pixel range of the images.
        seed: optional int: same seed, same augmentation sequence. A `(2,)`
            stateless seed instead gives every batch the same draws (tests).

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
        self.value_range = value_range
        self.rand_augment = rand_augment
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.seed = seed

    def __call__(self, images, labels):
        # A stateful draw per batch (new each map call), stateless from there on.
        seed = stateless_seed(self.seed)
        augment_seed, mix_seed = (tf.random.experimental.stateless_fold_in(seed, i) for i in (1, 2))
        images = tf.cast(images, tf.float32)
        if self.rand_augment:
            # timm's ops work on [0, 255] pixels.
            low, high = self.value_range
            scale = 255.0 / (high - low)
            images = batch_rand_augment((images - low) * scale, augment_seed) / scale + low
        labels = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), self.num_classes)
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            return images, labels
        images, labels, _, _ = mix_batch(
            images, labels, mix_seed, self.mixup_alpha, self.cutmix_alpha, self.switch_prob)
        return images, labels
