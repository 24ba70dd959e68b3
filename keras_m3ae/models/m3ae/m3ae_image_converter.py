"""Raw images -> M3AE inputs: resize, then normalise with the CC12M statistics."""

import keras
from keras_hub.layers import ImageConverter

from keras_m3ae.data.constants import CC12M_MEAN
from keras_m3ae.data.constants import CC12M_STD
from keras_m3ae.data.constants import normalization_affine
from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone


@keras.saving.register_keras_serializable(package="keras_m3ae")
class M3AEImageConverter(ImageConverter):
    """Resizes images and normalises them as M3AE was pretrained.

    Pixels in `value_range` are mapped to `[0, 1]` and then to
    `(x - mean) / std` per channel (CC12M statistics by default), after a
    resize (centre crop to the aspect ratio by default) to `image_size`.

    Args:
        image_size: `(height, width)` or int. Output size.
        value_range: `(low, high)`: range of the raw pixels, `(0, 255)` for
            decoded images or `(0, 1)` for images already scaled to [0, 1].
        mean: per-channel mean of pixels in [0, 1].
        std: per-channel standard deviation of pixels in [0, 1].
        interpolation: resize interpolation (`"bicubic"` as in MAE).
        crop_to_aspect_ratio: bool. Centre-crop to the target aspect ratio
            before resizing instead of distorting the image.
        antialias: bool. Antialias when downsampling.

    Example:
    >>> converter = M3AEImageConverter(image_size=(64, 64))
    >>> converter(np.full((2, 80, 80, 3), 255.0)).shape
    (2, 64, 64, 3)
    """

    backbone_cls = M3AEBackbone

    def __init__(
        self,
        image_size=None,
        value_range=(0, 255),
        mean=CC12M_MEAN,
        std=CC12M_STD,
        interpolation="bicubic",
        crop_to_aspect_ratio=True,
        antialias=False,
        **kwargs,
    ):
        # Computed from the arguments below; a saved config may carry them.
        kwargs.pop("scale", None)
        kwargs.pop("offset", None)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        scale, offset = normalization_affine(value_range, mean, std)
        super().__init__(
            image_size=image_size,
            scale=scale,
            offset=offset,
            interpolation=interpolation,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            antialias=antialias,
            **kwargs,
        )
        self.value_range = tuple(value_range)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def get_config(self):
        config = super().get_config()
        config.pop("scale", None)
        config.pop("offset", None)
        config.update(
            {"value_range": self.value_range, "mean": self.mean, "std": self.std}
        )
        return config
