"""Preprocessor of `M3AEImageClassifier`: raw images (and labels) -> model inputs."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone
from keras_m3ae.models.m3ae.m3ae_image_converter import M3AEImageConverter


@keras.saving.register_keras_serializable(package="keras_m3ae")
class M3AEImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """Resizes and normalises images for `M3AEImageClassifier`.

    Labels and sample weights pass through unchanged. `fit`, `evaluate` and
    `predict` of the classifier apply it to raw images automatically.

    Args:
        image_converter: an `M3AEImageConverter`.

    Example:
    >>> preprocessor = M3AEImageClassifierPreprocessor(
    ...     M3AEImageConverter(image_size=(64, 64)))
    >>> x, y = preprocessor(np.zeros((2, 96, 96, 3)), np.array([0, 1]))
    """

    backbone_cls = M3AEBackbone
    image_converter_cls = M3AEImageConverter

    @classmethod
    def _add_missing_kwargs(cls, loader, kwargs):
        # keras-hub's hook for arguments a preset does not hold. A preset
        # written by `M3AEBackbone.save_to_preset` (pretraining) has no image
        # converter: build the default one from the backbone config. The
        # loader's public method signals a missing file as keras-hub's own
        # `check_file_exists` detects it, by `FileNotFoundError`.
        if "image_converter" not in kwargs:
            try:
                kwargs["image_converter"] = loader.load_image_converter(cls.image_converter_cls)
            except FileNotFoundError:
                kwargs["image_converter"] = cls.image_converter_cls(
                    image_size=loader.config["config"]["image_size"]
                )
        return super()._add_missing_kwargs(loader, kwargs)
