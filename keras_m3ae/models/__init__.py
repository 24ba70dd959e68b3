"""Models: backbone (encoder), pretrainer, classifier."""

from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone
from keras_m3ae.models.m3ae.m3ae_backbone import M3AEStructure
from keras_m3ae.models.m3ae.m3ae_decoder import M3AEDecoder
from keras_m3ae.models.m3ae.m3ae_pretrainer import M3AEPretrainer
from keras_m3ae.models.m3ae.m3ae_image_classifier import M3AEImageClassifier
from keras_m3ae.models.m3ae.m3ae_image_classifier_preprocessor import (
    M3AEImageClassifierPreprocessor,
)
from keras_m3ae.models.m3ae.m3ae_image_converter import M3AEImageConverter
