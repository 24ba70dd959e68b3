"""Optimizers, learning-rate rules and classification losses.

Below `models/` (they import only Keras), so a Task's `compile()` defaults
can use them: LARS, layer-wise learning-rate decay, warmup-cosine
schedules, the torch backend's in-place Adam update, and label-smoothed
cross-entropy / accuracy that take integer or mixed (mixup) labels.
"""

from keras_m3ae.optimizers.lars import LARS
from keras_m3ae.optimizers.layer_decay import layer_decay_multipliers
from keras_m3ae.optimizers.layer_decay import layer_ids
from keras_m3ae.optimizers.layer_decay import learning_rate_multipliers
from keras_m3ae.optimizers.layer_decay import with_learning_rate_multipliers
from keras_m3ae.optimizers.losses import ClassificationAccuracy
from keras_m3ae.optimizers.losses import ClassificationCrossentropy
from keras_m3ae.optimizers.schedules import scaled_learning_rate
from keras_m3ae.optimizers.schedules import warmup_cosine_schedule
from keras_m3ae.optimizers.torch_adam import use_inplace_update
