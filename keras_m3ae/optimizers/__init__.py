"""Optimizers, learning-rate rules and the papers' training recipes.

Below `models/` (they import only Keras), so a Task's `compile()` defaults
can use them: `AdamW` (Keras's, with the original code's epsilon placement
as an option and a faster update on torch and JAX), LARS, layer-wise
learning-rate decay, warmup-cosine schedules, and the pretraining,
linear-probe and fine-tuning recipes. `docs/optimizers.md` describes them.
"""

from keras_m3ae.optimizers.adamw import AdamW
from keras_m3ae.optimizers.lars import LARS
from keras_m3ae.optimizers.layer_decay import layer_decay_multipliers
from keras_m3ae.optimizers.layer_decay import layer_ids
from keras_m3ae.optimizers.layer_decay import learning_rate_multipliers
from keras_m3ae.optimizers.layer_decay import with_learning_rate_multipliers
from keras_m3ae.optimizers.recipes import FINE_TUNE_RECIPE
from keras_m3ae.optimizers.recipes import LINEAR_PROBE_RECIPE
from keras_m3ae.optimizers.recipes import M3AE_NO_DECAY_NAMES
from keras_m3ae.optimizers.recipes import MAE_NO_DECAY_NAMES
from keras_m3ae.optimizers.recipes import PRETRAIN_RECIPES
from keras_m3ae.optimizers.recipes import configure_optimizer
from keras_m3ae.optimizers.recipes import fine_tune_optimizer
from keras_m3ae.optimizers.recipes import has_weight_decay_exemptions
from keras_m3ae.optimizers.recipes import linear_probe_optimizer
from keras_m3ae.optimizers.recipes import pretrain_optimizer
from keras_m3ae.optimizers.recipes import recipe_learning_rate
from keras_m3ae.optimizers.recipes import weight_decay_exclusions
from keras_m3ae.optimizers.schedules import scaled_learning_rate
from keras_m3ae.optimizers.schedules import warmup_cosine_schedule
