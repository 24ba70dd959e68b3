"""Models: backbone (encoder), pretrainer, classifier."""

from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone
from keras_m3ae.models.m3ae.m3ae_decoder import M3AEDecoder
from keras_m3ae.models.m3ae.m3ae_pretrainer import M3AEPretrainer
