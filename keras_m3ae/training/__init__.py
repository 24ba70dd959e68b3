"""Training aids: augmentation and classification datasets.

The optimizers, schedules and losses live in `keras_m3ae.optimizers` (below
the models, whose `compile()` uses them) and are re-exported here.
"""

from keras_m3ae.optimizers import LARS
from keras_m3ae.optimizers import ClassificationAccuracy
from keras_m3ae.optimizers import ClassificationCrossentropy
from keras_m3ae.optimizers import layer_decay_multipliers
from keras_m3ae.optimizers import layer_ids
from keras_m3ae.optimizers import learning_rate_multipliers
from keras_m3ae.optimizers import scaled_learning_rate
from keras_m3ae.optimizers import warmup_cosine_schedule
from keras_m3ae.optimizers import with_learning_rate_multipliers
from keras_m3ae.training.callbacks import NonFiniteLossError
from keras_m3ae.training.callbacks import NonFiniteLossGuard
from keras_m3ae.training.callbacks import SavePreset
from keras_m3ae.training.checkpoints import atomic_directory
from keras_m3ae.training.checkpoints import recover_directory
from keras_m3ae.training.checkpoints import save_preset_atomically
from keras_m3ae.training.callbacks import SkipCountLogger
