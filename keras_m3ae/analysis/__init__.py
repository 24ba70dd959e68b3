"""Analysis: what the pretrained model learned (OOD detection, ...)."""

from keras_m3ae.analysis.ood import MahalanobisDetector
from keras_m3ae.analysis.ood import auroc
from keras_m3ae.analysis.ood import extract_features
from keras_m3ae.analysis.ood import max_softmax_score
