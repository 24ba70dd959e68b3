"""keras-m3ae: Multimodal Masked Autoencoders for Keras 3.

Importing the package changes nothing outside it (environment, allocator,
logging, warnings filters). `tune_cpu_host()` is the one, explicit call that
tunes the process for training on a CPU host.
"""

from keras_m3ae import analysis
from keras_m3ae import convert
from keras_m3ae import data
from keras_m3ae import layers
from keras_m3ae import losses
from keras_m3ae import optimizers
from keras_m3ae import training
from keras_m3ae.host_tuning import tune_cpu_host
from keras_m3ae.models import M3AEBackbone
from keras_m3ae.models import M3AEDecoder
from keras_m3ae.models import M3AEImageClassifier
from keras_m3ae.models import M3AEImageClassifierPreprocessor
from keras_m3ae.models import M3AEImageConverter
from keras_m3ae.models import M3AEPretrainer

__version__ = "0.1.0"
