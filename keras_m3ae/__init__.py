"""keras-m3ae: Multimodal Masked Autoencoders for Keras 3."""

from keras_m3ae import data

__version__ = "0.1.0"
