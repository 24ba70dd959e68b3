"""Input pipelines: image-caption TFRecords -> model-ready batches."""

from keras_m3ae.data.constants import CC12M_MEAN
from keras_m3ae.data.constants import CC12M_STD
from keras_m3ae.data.constants import DEFAULT_VOCABULARY
from keras_m3ae.data.constants import MAX_TEXT_LENGTH
from keras_m3ae.data.constants import PAD_TOKEN_ID
