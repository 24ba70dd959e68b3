"""Optimizers, learning-rate rules and the papers' training recipes.

Below `models/` (they import only Keras), so a Task's `compile()` defaults
can use them: LARS, layer-wise learning-rate decay, warmup-cosine
schedules, the torch backend's fused (or in-place) Adam update, the JAX update's ordering
after all gradients and its global norm as dot products, and the pretraining,
linear-probe and fine-tuning recipes.
"""

from keras_m3ae._deprecation import moved_names
from keras_m3ae.optimizers.jax_update import dot_product_global_norm
from keras_m3ae.optimizers.jax_update import update_after_gradients
from keras_m3ae.optimizers.lars import LARS
from keras_m3ae.optimizers.layer_decay import layer_decay_multipliers
from keras_m3ae.optimizers.layer_decay import layer_ids
from keras_m3ae.optimizers.layer_decay import learning_rate_multipliers
from keras_m3ae.optimizers.layer_decay import with_learning_rate_multipliers
from keras_m3ae.optimizers.recipes import FINE_TUNE_RECIPE
from keras_m3ae.optimizers.recipes import LINEAR_PROBE_RECIPE
from keras_m3ae.optimizers.recipes import configure_optimizer
from keras_m3ae.optimizers.recipes import fine_tune_optimizer
from keras_m3ae.optimizers.recipes import linear_probe_optimizer
from keras_m3ae.optimizers.recipes import pretrain_optimizer
from keras_m3ae.optimizers.recipes import recipe_learning_rate
from keras_m3ae.optimizers.recipes import weight_decay_exclusions
from keras_m3ae.optimizers.schedules import scaled_learning_rate
from keras_m3ae.optimizers.schedules import warmup_cosine_schedule
from keras_m3ae.optimizers.torch_adam import use_inplace_update

# Deprecated: the classification loss and metric are not optimizers.
__getattr__ = moved_names(
    __name__,
    {
        "ClassificationAccuracy": "keras_m3ae.losses",
        "ClassificationCrossentropy": "keras_m3ae.losses",
    },
)
