"""The papers' training recipes as configured optimizers.

- Pretraining (MAE Table 7, M3AE Table 2): AdamW, betas (0.9, 0.95), weight
  decay 0.05, learning rate 1.5e-4 per 256 examples.
- Linear probe (MAE Table 9, M3AE Table 3): LARS (momentum 0.9, trust
  0.001), base learning rate 0.1, no weight decay, 10 warmup epochs.
- Fine-tuning, full or partial (MAE Table 8 and Sec. 4.3, M3AE Table 4):
  AdamW (betas 0.9, 0.999), base learning rate 1e-3, weight decay 0.05,
  layer-wise decay 0.75, 5 warmup epochs, label smoothing 0.1.

Adam's epsilon: the papers' code (optax, PyTorch) divides by
`sqrt(v_hat) + 1e-8`; Keras by `sqrt(v) + epsilon` with the bias corrections
folded into the step size, which is `sqrt(v_hat) + epsilon / sqrt(1 - beta_2^t)`.
The recipes set `epsilon=1e-8` (Keras' default is 1e-7), so the two agree
once `beta_2^t` is small: for a tiny M3AE's real gradients the update's
relative difference from the original formula is 3.2e-3 at step 1 and
1.5e-6 at step 100 with betas (0.9, 0.95) (1.9e-2 and 5.2e-4 with Keras'
1e-7), and 1.5e-2 and 7.4e-4 with (0.9, 0.999) (5.7e-2 and 1.3e-3). The
remaining difference is only in the first steps (thousands with
beta_2 = 0.999, a few tens with 0.95), within warmup, where the learning
rate is small.

In every recipe the variables of rank <= 1 (biases, norms, CLS / type / mask
vectors) and embedding matrices take no weight decay
(`weight_decay_exclusions`). Learning rates follow `base * batch / 256`
(`scaled_learning_rate`) and, given the training length, a warmup + cosine
schedule. The tasks' `compile()` use these; call them to build the same
optimizers for a custom loop.
"""

import keras

from keras_m3ae.optimizers.lars import LARS
from keras_m3ae.optimizers.layer_decay import layer_decay_multipliers
from keras_m3ae.optimizers.layer_decay import with_learning_rate_multipliers
from keras_m3ae.optimizers.schedules import scaled_learning_rate
from keras_m3ae.optimizers.schedules import warmup_cosine_schedule

# Adam's epsilon of the original code (optax / PyTorch); see the module docstring.
ADAM_EPSILON = 1e-8

# The numbers of each classification protocol; `compile()` overrides take
# precedence.
LINEAR_PROBE_RECIPE = {
    "base_learning_rate": 0.1,
    "weight_decay": 0.0,
    "warmup_epochs": 10,
    "layer_decay": None,
    "label_smoothing": 0.0,
}
FINE_TUNE_RECIPE = {
    "base_learning_rate": 1e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 5,
    "layer_decay": 0.75,
    "label_smoothing": 0.1,
}


def weight_decay_exclusions(variables, embedding_matrices=()):
    """The variables the papers exclude from weight decay.

    Args:
        variables: the model's variables.
        embedding_matrices: lookup tables among them (e.g. a token embedding),
            excluded although their rank is 2.

    Returns:
        list: every variable of rank <= 1, then the embedding matrices.
    """
    return [v for v in variables if len(v.shape) <= 1] + list(embedding_matrices)


def recipe_learning_rate(
    base_learning_rate, batch_size=256, epochs=None, steps_per_epoch=None, warmup_epochs=0
):
    """`base * batch / 256`, on a warmup + cosine schedule when the length is known.

    Args:
        base_learning_rate: float. The rate quoted for a batch of 256.
        batch_size: int. Global batch size.
        epochs: optional int. Training length.
        steps_per_epoch: optional int. Optimizer steps per epoch.
        warmup_epochs: float. Warmup length, at most half of training.

    Returns:
        A float (constant rate) or a learning-rate schedule.
    """
    peak = scaled_learning_rate(base_learning_rate, batch_size)
    if epochs is None or steps_per_epoch is None:
        return peak
    return warmup_cosine_schedule(
        peak,
        epochs=epochs,
        warmup_epochs=min(warmup_epochs, epochs / 2),
        steps_per_epoch=steps_per_epoch,
    )


def linear_probe_optimizer(
    batch_size=256,
    epochs=None,
    steps_per_epoch=None,
    base_learning_rate=LINEAR_PROBE_RECIPE["base_learning_rate"],
    weight_decay=LINEAR_PROBE_RECIPE["weight_decay"],
    warmup_epochs=LINEAR_PROBE_RECIPE["warmup_epochs"],
):
    """LARS of the linear-probe recipe (MAE Sec. A.2).

    Args:
        batch_size: int. Global batch size, for the learning-rate scaling.
        epochs: optional int. Training length, for the schedule.
        steps_per_epoch: optional int. Steps per epoch, for the schedule.
        base_learning_rate: float (0.1).
        weight_decay: float (0).
        warmup_epochs: float (10).

    Returns:
        An unbuilt `LARS`.

    Example:
    >>> optimizer = linear_probe_optimizer(batch_size=16384, epochs=90,
    ...                                    steps_per_epoch=78)
    """
    return LARS(
        recipe_learning_rate(base_learning_rate, batch_size, epochs, steps_per_epoch, warmup_epochs),
        momentum=0.9,
        weight_decay=weight_decay,
        trust_coefficient=0.001,
    )


def fine_tune_optimizer(
    batch_size=256,
    epochs=None,
    steps_per_epoch=None,
    base_learning_rate=FINE_TUNE_RECIPE["base_learning_rate"],
    weight_decay=FINE_TUNE_RECIPE["weight_decay"],
    warmup_epochs=FINE_TUNE_RECIPE["warmup_epochs"],
):
    """AdamW of the fine-tuning recipe (MAE Table 8, M3AE Table 4).

    Layer-wise decay and the weight-decay exclusions depend on the model:
    add them with `configure_optimizer`.

    Args:
        batch_size: int. Global batch size, for the learning-rate scaling.
        epochs: optional int. Training length, for the schedule.
        steps_per_epoch: optional int. Steps per epoch, for the schedule.
        base_learning_rate: float (1e-3).
        weight_decay: float (0.05).
        warmup_epochs: float (5).

    Returns:
        An unbuilt `keras.optimizers.AdamW` with epsilon 1e-8 (see the
        module docstring for how it compares with the original formula).

    Example:
    >>> optimizer = configure_optimizer(
    ...     fine_tune_optimizer(batch_size=1024, epochs=100, steps_per_epoch=1251),
    ...     no_weight_decay=backbone.no_weight_decay_variables(),
    ...     layer_groups=backbone.structure(), layer_decay=0.75)
    """
    return keras.optimizers.AdamW(
        recipe_learning_rate(base_learning_rate, batch_size, epochs, steps_per_epoch, warmup_epochs),
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=ADAM_EPSILON,
    )


def pretrain_optimizer(learning_rate=1.5e-4, weight_decay=0.05, **kwargs):
    """AdamW of the pretraining recipe (MAE Table 7, M3AE Table 2).

    Args:
        learning_rate: float or schedule. 1.5e-4 is the rate for a batch of
            256: scale it with `scaled_learning_rate` for yours.
        weight_decay: float (0.05).
        **kwargs: other `AdamW` arguments (`gradient_accumulation_steps`...).

    Returns:
        An unbuilt `keras.optimizers.AdamW` with betas (0.9, 0.95) and
        epsilon 1e-8 (see the module docstring).

    Example:
    >>> optimizer = pretrain_optimizer(scaled_learning_rate(1.5e-4, 4096))
    """
    kwargs.setdefault("epsilon", ADAM_EPSILON)
    return keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=weight_decay, beta_1=0.9, beta_2=0.95, **kwargs
    )


def configure_optimizer(optimizer, no_weight_decay=(), layer_groups=None, layer_decay=None):
    """Gives any optimizer the recipe's per-variable rules.

    Args:
        optimizer: a Keras optimizer or its name.
        no_weight_decay: variables to exclude from weight decay (see
            `weight_decay_exclusions`); applied if the optimizer decays and
            is not built yet.
        layer_groups: optional variables in depth order, or a model with
            `structure()` (see `layer_decay_multipliers`).
        layer_decay: optional float in (0, 1]: layer-wise learning-rate decay
            over `layer_groups` (None or 1: none).

    Returns:
        The optimizer, or an unbuilt copy with per-variable learning rates.
    """
    optimizer = keras.optimizers.get(optimizer)
    if layer_groups is not None and layer_decay and layer_decay != 1:
        optimizer = with_learning_rate_multipliers(
            optimizer, layer_decay_multipliers(layer_groups, layer_decay)
        )
    if getattr(optimizer, "weight_decay", None) and not optimizer.built:
        optimizer.exclude_from_weight_decay(var_list=list(no_weight_decay))
    return optimizer
