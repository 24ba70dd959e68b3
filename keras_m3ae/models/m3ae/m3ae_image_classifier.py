"""Image classification on an M3AE / MAE encoder: linear probe, partial and full fine-tuning."""

import os

import keras
from keras import ops
from keras_hub.models import ImageClassifier
from keras_hub.models import Task

from keras_m3ae.losses import ClassificationAccuracy
from keras_m3ae.losses import ClassificationCrossentropy
from keras_m3ae.models.m3ae import m3ae_presets
from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone
from keras_m3ae.models.m3ae.m3ae_backbone import image_size_pair
from keras_m3ae.models.m3ae.m3ae_image_classifier_preprocessor import (
    M3AEImageClassifierPreprocessor,
)
from keras_m3ae.models.m3ae.m3ae_image_converter import M3AEImageConverter
from keras_m3ae.optimizers.recipes import FINE_TUNE_RECIPE
from keras_m3ae.optimizers.recipes import LINEAR_PROBE_RECIPE
from keras_m3ae.optimizers.recipes import configure_optimizer
from keras_m3ae.optimizers.recipes import fine_tune_optimizer
from keras_m3ae.optimizers.recipes import linear_probe_optimizer


def _check_arguments(backbone, num_classes, pooling, fine_tune_blocks, feature_norm):
    if num_classes is None:
        raise ValueError(
            "`num_classes` is missing: pass the number of classes, e.g. "
            "`num_classes=10` (only a preset saved from a classifier "
            "holds a head to restore)."
        )
    if pooling not in ("token", "mean"):
        raise ValueError(f"`pooling` must be 'token' or 'mean'; got {pooling!r}.")
    if feature_norm not in (None, "layer_norm"):
        raise ValueError(f"`feature_norm` must be None or 'layer_norm'; got {feature_norm!r}.")
    if feature_norm is not None and fine_tune_blocks == 0:
        raise ValueError("`feature_norm` is a fine-tuning head; the linear probe has its own.")
    depth = backbone.num_layers
    if fine_tune_blocks is not None and (
        isinstance(fine_tune_blocks, bool)
        or not isinstance(fine_tune_blocks, int)
        or not 0 <= fine_tune_blocks <= depth
    ):
        raise ValueError(
            f"`fine_tune_blocks={fine_tune_blocks!r}` is out of range for an "
            f"encoder of depth {depth}: use 0 (linear probe), an int in "
            f"[1, {depth}] (train the last k blocks), or None (full "
            "fine-tuning)."
        )


def _rebuilt_backbone(backbone, image_size, drop_path_rate):
    """The backbone at another image size or drop-path rate, same weights."""
    changes = {}
    size = image_size_pair(backbone.image_size)
    if image_size is not None and image_size_pair(image_size) != size:
        changes["image_size"] = image_size
        changes["pretrain_image_size"] = backbone.pretrain_image_size or backbone.image_size
    if drop_path_rate is not None and drop_path_rate != backbone.drop_path_rate:
        changes["drop_path_rate"] = drop_path_rate
    if not changes:
        return backbone
    new = backbone.__class__.from_config({**backbone.get_config(), **changes})
    new.set_weights(backbone.get_weights())
    return new


def _set_trainable(backbone, fine_tune_blocks, final_norm=True):
    """Freezes what the protocol does not train (see `M3AEImageClassifier`).

    Without `final_norm` the features are taken before the encoder's final
    norm, which is then unused and frozen.
    """
    structure = backbone.structure()
    k, depth = fine_tune_blocks, len(structure.blocks)
    backbone.trainable = True
    for layer in structure.embeddings:
        layer.trainable = k is None
    for i, block in enumerate(structure.blocks):
        block.trainable = k is None or i >= depth - k
    structure.final_norm.trainable = (k is None or k > 0) and final_norm
    # Never used for images; kept so the preset stays an M3AE.
    for layer in structure.text:
        layer.trainable = False


def _pooled_features(backbone, images, pooling, final_norm, training=None):
    """The encoder's image features, pooled: the CLS output or the patch mean."""
    x = backbone.encode(backbone.embed_images(images), training=training, final_norm=final_norm)
    if pooling == "token":
        return x[:, 0]
    return ops.mean(x[:, 1:], axis=1)


def _is_array_like(x):
    """Arrays or tensors, or a dict / list / tuple of them (not a dataset)."""
    if hasattr(x, "element_spec"):
        return False
    leaves = keras.tree.flatten(x)
    return bool(leaves) and all(hasattr(leaf, "shape") and hasattr(leaf, "dtype")
                                for leaf in leaves)


def _split_off_last(arrays, validation_split):
    """`(train, validation)`: the last `validation_split` of every array, as Keras splits."""
    if not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be in (0, 1); got {validation_split}.")
    count = int(next(a for a in keras.tree.flatten(arrays) if a is not None).shape[0])
    split_at = int(count * (1 - validation_split))
    if split_at in (0, count):
        raise ValueError(f"`validation_split={validation_split}` of {count} samples leaves "
                         "an empty training or validation set.")

    def part(start, end):
        return keras.tree.map_structure(
            lambda leaf: None if leaf is None else leaf[start:end], arrays
        )

    return part(0, split_at), part(split_at, count)


@keras.saving.register_keras_serializable(package="keras_m3ae")
class M3AEImageClassifier(ImageClassifier):
    """An image classifier on a pretrained M3AE / MAE encoder.

    Images alone go through the encoder (`backbone.embed_images` then
    `backbone.encode`); a pretrained M3AE's text parameters are unused and
    frozen. The pooled feature (`"token"`: the CLS output, `"mean"`: the mean
    of the patch outputs) feeds a Dense head that returns logits.

    `fine_tune_blocks` picks the protocol of the papers:

    - `0`: linear probe. The encoder is frozen, without drop path, so it
      computes the same features in `fit` as in `predict`; the head is `BatchNorm(no affine, eps 1e-6) -> Dense` (MAE Sec. A.2).
    - `k`: partial fine-tuning. The last `k` blocks and the final norm train
      with the head (MAE Sec. 4.3).
    - `None`: full fine-tuning (drop path as set on the backbone).

    `compile()` defaults to each protocol's recipe; see `compile`.

    Args:
        backbone: `M3AEBackbone`.
        num_classes: int. Number of classes.
        preprocessor: `M3AEImageClassifierPreprocessor` or None. Applied to
            raw images by `fit`, `evaluate` and `predict`.
        pooling: `"token"` (CLS) or `"mean"` (average of patch tokens).
        fine_tune_blocks: None, 0 or int in `[1, num_layers]`; see above.
        image_size: optional int or `(height, width)`: fine-tune at another
            size than the backbone's. The backbone is rebuilt at this size
            with `pretrain_image_size` set to its previous size, so the
            sin-cos position table is resampled over the pretraining extent
            (weights are unchanged: the table is not a weight).
        drop_path_rate: optional float: rebuilds the backbone with this
            stochastic-depth rate (fine-tuning recipe: 0.1; always 0 for the
            linear probe).
        activation: optional head activation; None returns logits.
        feature_norm: None or `"layer_norm"`: a LayerNorm (`fc_norm`,
            the backbone's epsilon) on the pooled feature before the head,
            as the official MAE `global_pool` head and the reference M3AE
            fine-tuning head have. Not with the linear probe.
        final_norm: bool. Pool the encoder output after its final
            LayerNorm (True, default); False pools the last block's output
            (official MAE `global_pool=True`, which has no final norm).
        head_dtype: optional dtype policy of the head.

    Example:
    >>> clf = M3AEImageClassifier.from_preset(
    ...     "/tmp/m3ae_preset", num_classes=10, fine_tune_blocks=0)
    >>> clf.fit(images, labels, epochs=90)     # raw images in [0, 255]
    >>> clf.predict(images).shape
    (N, 10)
    """

    backbone_cls = M3AEBackbone
    preprocessor_cls = M3AEImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes=None,
        preprocessor=None,
        pooling="token",
        fine_tune_blocks=None,
        image_size=None,
        drop_path_rate=None,
        activation=None,
        head_dtype=None,
        feature_norm=None,
        final_norm=True,
        **kwargs,
    ):
        _check_arguments(backbone, num_classes, pooling, fine_tune_blocks, feature_norm)
        linear_probe = fine_tune_blocks == 0
        if linear_probe:
            # The probe's encoder is frozen and must compute the same features
            # in `fit` as in `predict`: no stochastic depth (it has no other
            # training-time behaviour).
            drop_path_rate = 0.0
        backbone = _rebuilt_backbone(backbone, image_size, drop_path_rate)
        _set_trainable(backbone, fine_tune_blocks, final_norm)
        converter = getattr(preprocessor, "image_converter", None)
        if converter is not None:
            converter.image_size = image_size_pair(backbone.image_size)
        head_dtype = head_dtype or backbone.dtype_policy

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.head_norm = None
        if linear_probe:
            self.head_norm = keras.layers.BatchNormalization(
                center=False,
                scale=False,
                epsilon=1e-6,
                momentum=0.9,
                dtype=head_dtype,
                name="head_norm",
            )
        self.feature_norm_layer = None
        if feature_norm == "layer_norm":
            self.feature_norm_layer = keras.layers.LayerNormalization(
                epsilon=backbone.layer_norm_epsilon, dtype=head_dtype, name="fc_norm"
            )
        self.output_dense = keras.layers.Dense(
            num_classes,
            activation=activation,
            # MAE: trunc-normal 0.01 for the probe, 2e-5 for fine-tuning.
            kernel_initializer=keras.initializers.TruncatedNormal(
                stddev=0.01 if linear_probe else 2e-5
            ),
            dtype=head_dtype,
            name="predictions",
        )

        # === Functional Model ===
        height, width = image_size_pair(backbone.image_size)
        images = keras.Input((height, width, backbone.num_channels), name="images")
        x = _pooled_features(backbone, images, pooling, final_norm)
        for layer in (self.head_norm, self.feature_norm_layer):
            if layer is not None:
                x = layer(x)
        outputs = self.output_dense(x)
        # Skip `ImageClassifier`'s own graph, as keras-hub's ViT classifier
        # does; compiling needs the config below, so it comes last.
        compile_now = kwargs.pop("compile", True)
        Task.__init__(self, inputs=images, outputs=outputs, compile=False, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.pooling = pooling
        self.fine_tune_blocks = fine_tune_blocks
        self.activation = activation
        self.feature_norm = feature_norm
        self.final_norm = final_norm
        self.dropout = 0.0
        if compile_now:
            self.compile()

    def image_features(self, images, training=False):
        """Pooled encoder features `(B, hidden_dim)` of preprocessed images."""
        return _pooled_features(self.backbone, images, self.pooling, self.final_norm, training)

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        metrics="auto",
        batch_size=256,
        epochs=None,
        steps_per_epoch=None,
        warmup_epochs=None,
        base_learning_rate=None,
        weight_decay=None,
        layer_decay=None,
        label_smoothing=None,
        **kwargs,
    ):
        """Configures training with the papers' recipe for the protocol.

        Linear probe (`fine_tune_blocks=0`): LARS (momentum 0.9, trust
        0.001), base learning rate 0.1, no weight decay, 10 warmup epochs,
        plain cross-entropy. Partial and full fine-tuning: AdamW (betas 0.9,
        0.999), base learning rate 1e-3, weight decay 0.05 (not on biases,
        norms, CLS/type vectors and embeddings: this library's default,
        `no_weight_decay_variables()`), layer-wise learning-rate
        decay 0.75, 5 warmup epochs, label smoothing 0.1. Mixup, CutMix and
        RandAugment belong to the input pipeline
        (`keras_m3ae.finetune.augment`); drop path to the backbone
        (`drop_path_rate=0.1` in `from_preset`).

        The learning rate is `base_learning_rate * batch_size / 256`: pass
        the global `batch_size` you train with (the default 256 uses the
        base rate as is). With `epochs` and `steps_per_epoch` the rate
        follows a warmup + cosine schedule; otherwise it is constant.

        Args:
            optimizer: `"auto"` (the recipe) or a Keras optimizer. A given
                optimizer's update is not changed; it gets this library's
                weight-decay exemptions only if it has none of its own
                (`exclude_from_weight_decay()` never called) and, if
                `layer_decay` is set, is replaced by an unbuilt copy with
                per-layer learning rates.
            loss: `"auto"` (cross-entropy on logits taking integer or
                mixed one-hot labels) or a Keras loss.
            metrics: `"auto"` (top-1 accuracy) or a list of metrics.
            batch_size: int. Global batch size, for the learning-rate scaling.
            epochs: int. Training length, for the schedule.
            steps_per_epoch: int. Optimizer steps per epoch, for the schedule.
            warmup_epochs: float. Overrides the recipe's warmup.
            base_learning_rate: float. Overrides the recipe's base rate.
            weight_decay: float. Overrides the recipe's weight decay.
            layer_decay: float in (0, 1]. Overrides the layer-wise decay
                (fine-tuning; lightly pretrained models want 0.8-0.85).
            label_smoothing: float. Overrides the recipe's smoothing.
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`).
        """
        linear_probe = self.fine_tune_blocks == 0
        recipe = dict(LINEAR_PROBE_RECIPE if linear_probe else FINE_TUNE_RECIPE)
        overrides = {
            "base_learning_rate": base_learning_rate,
            "weight_decay": weight_decay,
            "warmup_epochs": warmup_epochs,
            "layer_decay": layer_decay,
            "label_smoothing": label_smoothing,
        }
        recipe.update({k: v for k, v in overrides.items() if v is not None})
        if optimizer == "auto":
            make = linear_probe_optimizer if linear_probe else fine_tune_optimizer
            optimizer = make(
                batch_size=batch_size,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                base_learning_rate=recipe["base_learning_rate"],
                weight_decay=recipe["weight_decay"],
                warmup_epochs=recipe["warmup_epochs"],
            )
        optimizer = configure_optimizer(
            optimizer,
            no_weight_decay=self.no_weight_decay_variables(),
            layer_groups=None if linear_probe else self.backbone.structure(),
            layer_decay=recipe["layer_decay"],
        )
        if loss == "auto":
            from_logits = keras.activations.get(self.activation) != keras.activations.softmax
            loss = ClassificationCrossentropy(
                label_smoothing=recipe["label_smoothing"], from_logits=from_logits
            )
        if metrics == "auto":
            metrics = [ClassificationAccuracy()]
        Task.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None, validation_split=None,
            validation_data=None, shuffle=True, **kwargs):
        """`keras.Model.fit`; arrays are drawn in a new order every epoch.

        keras-hub's `Task.fit` batches arrays in their given order, after
        which Keras ignores `shuffle`. Here arrays (and dicts / tuples of
        them) go through a `tf.data` pipeline that reshuffles each epoch
        when `shuffle` is true (the Keras default), in an order that
        follows the global seed (`keras.utils.set_random_seed`).
        `validation_split` takes the last fraction before shuffling, as
        Keras does. A `tf.data.Dataset` or other iterable is used as given:
        shuffle it yourself.
        """
        if x is not None and _is_array_like(x):
            if validation_split and validation_data is None:
                (x, y, sample_weight), validation_data = _split_off_last(
                    (x, y, sample_weight), validation_split
                )
            from keras_m3ae.finetune.datasets import array_dataset

            x = array_dataset(x, y, sample_weight, batch_size=batch_size or 32, shuffle=shuffle)
            y = sample_weight = batch_size = validation_split = None
        # Datasets keep their own order (Keras would only warn about `shuffle`).
        return super().fit(x, y, batch_size=batch_size, sample_weight=sample_weight,
                           validation_split=validation_split,
                           validation_data=validation_data, shuffle=False, **kwargs)

    def save_task_weights(self, filepath):
        # Head only, as keras-hub's, and without optimizer state: that is
        # training state, not part of a preset.
        keras.saving.save_weights(self, filepath, objects_to_skip=self._not_task_weights())

    def load_task_weights(self, filepath):
        keras.saving.load_weights(self, filepath, objects_to_skip=self._not_task_weights())

    def _not_task_weights(self):
        # Skipping the backbone skips everything inside it.
        optimizer = getattr(self, "optimizer", None)
        return [self.backbone] + ([optimizer] if optimizer is not None else [])

    def no_weight_decay_variables(self):
        """The backbone's rule applied to the whole model: head bias and `fc_norm` too."""
        return self.backbone.no_weight_decay_variables(self.weights)

    def get_config(self):
        config = Task.get_config(self)
        config.update(
            {
                "num_classes": self.num_classes,
                "pooling": self.pooling,
                "fine_tune_blocks": self.fine_tune_blocks,
                "activation": keras.activations.serialize(self.activation)
                if self.activation is not None
                else None,
                "feature_norm": self.feature_norm,
                "final_norm": self.final_norm,
            }
        )
        return config

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Builds a classifier from a backbone or classifier preset.

        `preset` is a named architecture (`M3AEBackbone.presets`, randomly
        initialised), a directory written by `M3AEBackbone.save_to_preset`
        (pretrained encoder; give `num_classes`), or one written by
        `M3AEImageClassifier.save_to_preset` (head and protocol restored;
        passing `num_classes` starts a new head instead).

        Args:
            preset: name or directory.
            load_weights: bool. Load the saved weights.
            **kwargs: constructor arguments (`num_classes`,
                `fine_tune_blocks`, `pooling`, `image_size`,
                `drop_path_rate`...) and `dtype`.

        Example:
        >>> clf = M3AEImageClassifier.from_preset(
        ...     "/tmp/m3ae_preset", num_classes=10, fine_tune_blocks=None,
        ...     drop_path_rate=0.1, image_size=384)
        """
        if m3ae_presets.architecture_config(preset) is not None:
            dtype = kwargs.pop("dtype", None)
            backbone = M3AEBackbone.from_preset(preset, dtype=dtype)
            if "preprocessor" not in kwargs:
                kwargs["preprocessor"] = cls.preprocessor_cls(
                    M3AEImageConverter(image_size=backbone.image_size)
                )
            return cls(backbone=backbone, **kwargs)
        m3ae_presets.check_preset_directory(preset, load_weights)
        if "://" not in str(preset) and "num_classes" not in kwargs:
            if not os.path.exists(os.path.join(preset, "task.json")):
                raise ValueError(
                    f"Preset {preset!r} holds an encoder but no classification "
                    "head: pass `num_classes`."
                )
        return super().from_preset(preset, load_weights=load_weights, **kwargs)
