"""keras-m3ae: Multimodal Masked Autoencoders for Keras 3."""

# First, so `python -m keras_m3ae` can load TensorFlow before the rest does.
from keras_m3ae import _startup  # noqa: F401

# Before anything compiles: XLA reads XLA_FLAGS at its first compilation.
from keras_m3ae import _xla_flags  # noqa: F401

# Before JAX starts its threads: glibc binds a thread to a heap at its first
# allocation.
from keras_m3ae import _host_memory  # noqa: F401
from keras_m3ae import analysis
from keras_m3ae import convert
from keras_m3ae import data
from keras_m3ae import layers
from keras_m3ae import losses
from keras_m3ae import optimizers
from keras_m3ae import recipes
from keras_m3ae import training
from keras_m3ae.models import M3AEBackbone
from keras_m3ae.models import M3AEDecoder
from keras_m3ae.models import M3AEImageClassifier
from keras_m3ae.models import M3AEImageClassifierPreprocessor
from keras_m3ae.models import M3AEImageConverter
from keras_m3ae.models import M3AEPretrainer

__version__ = "0.1.0"
