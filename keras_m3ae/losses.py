"""Classification loss and accuracy that take hard or soft (mixed) labels.

Mixup and CutMix turn integer labels into mixed one-hot vectors, while
validation data keeps integers. These two accept either form, decided from
the static label shape, so one compiled model trains and validates on both.
"""

import keras
from keras import ops


def _dense_targets(y_true, y_pred):
    num_classes = y_pred.shape[-1]
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == num_classes:
        return ops.cast(y_true, y_pred.dtype)
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.one_hot(labels, num_classes, dtype=y_pred.dtype)


@keras.saving.register_keras_serializable(package="keras_m3ae")
class ClassificationCrossentropy(keras.losses.Loss):
    """Cross-entropy on logits with optional label smoothing.

    Labels are integer class ids `(B,)` / `(B, 1)` or (soft) one-hot vectors
    `(B, num_classes)`. Smoothing mixes the target with the uniform
    distribution: `(1 - s) * y + s / num_classes`.

    Args:
        label_smoothing: float in [0, 1) (fine-tuning recipe: 0.1).
        from_logits: bool. Predictions are logits (True) or probabilities.

    Example:
    >>> loss = ClassificationCrossentropy(label_smoothing=0.1)
    >>> float(loss(np.array([1]), np.array([[0.0, 0.0]])))  # ln 2
    0.693...
    """

    def __init__(self, label_smoothing=0.0, from_logits=True, name="classification_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        targets = _dense_targets(y_true, y_pred)
        return keras.losses.categorical_crossentropy(
            targets,
            y_pred,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"label_smoothing": self.label_smoothing, "from_logits": self.from_logits})
        return config


@keras.saving.register_keras_serializable(package="keras_m3ae")
class ClassificationAccuracy(keras.metrics.MeanMetricWrapper):
    """Top-1 accuracy for integer or (soft) one-hot labels (argmax of the target).

    Example:
    >>> metric = ClassificationAccuracy()
    >>> metric.update_state(np.array([1, 0]), np.array([[0.0, 1.0], [0.0, 1.0]]))
    >>> float(metric.result())
    0.5
    """

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(fn=_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _accuracy(y_true, y_pred):
    targets = _dense_targets(y_true, y_pred)
    return ops.cast(
        ops.equal(ops.argmax(targets, axis=-1), ops.argmax(y_pred, axis=-1)), "float32"
    )
