"""Training aids: optimizers, learning-rate rules, augmentation, datasets."""

from keras_m3ae.training.lars import LARS
from keras_m3ae.training.layer_decay import layer_decay_multipliers
from keras_m3ae.training.layer_decay import layer_ids
from keras_m3ae.training.layer_decay import learning_rate_multipliers
from keras_m3ae.training.layer_decay import with_learning_rate_multipliers
from keras_m3ae.training.schedules import scaled_learning_rate
from keras_m3ae.training.schedules import warmup_cosine_schedule
from keras_m3ae.training.losses import ClassificationAccuracy
from keras_m3ae.training.losses import ClassificationCrossentropy
