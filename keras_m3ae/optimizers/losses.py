"""Deprecated: the classification loss and metric live in `keras_m3ae.losses`."""

from keras_m3ae._deprecation import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "ClassificationAccuracy": "keras_m3ae.losses",
        "ClassificationCrossentropy": "keras_m3ae.losses",
    },
)
