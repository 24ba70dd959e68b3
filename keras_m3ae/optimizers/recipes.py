"""The papers' training recipes as configured optimizers.

- Pretraining (MAE Table 7, M3AE Table 2): AdamW, betas (0.9, 0.95), weight
  decay 0.05, learning rate 1.5e-4 per 256 examples (`pretrain_optimizer`).
- Linear probe (MAE Table 9, M3AE Table 3): LARS (momentum 0.9, trust
  0.001), base learning rate 0.1, no weight decay, 10 warmup epochs.
- Fine-tuning, full or partial (MAE Table 8 and Sec. 4.3, M3AE Table 4):
  AdamW (betas 0.9, 0.999), base learning rate 1e-3, weight decay 0.05,
  layer-wise decay 0.75, 5 warmup epochs, label smoothing 0.1.

Which variables take no weight decay differs between the two codebases and
this library (`docs/optimizers.md` has the table):

- `recipe="mae"` (MAE's `main_pretrain.py`, timm's `add_weight_decay`:
  every 1-D tensor and every `.bias`): biases and normalisation scales and
  offsets (`MAE_NO_DECAY_NAMES`). The class and mask tokens (3-D tensors
  there) are decayed; MAE's position table is fixed.
- `recipe="m3ae"` (the reference M3AE's `m3ae_main.py`, `no_decay_list`:
  cls, type and mask embeddings, `text_embedding`, `bias`, `embedding`,
  matched against each part of a parameter's path): the class token, type
  vectors, mask tokens, the text embedding table, biases and LayerNorm
  offsets (`bias` there) (`M3AE_NO_DECAY_NAMES`). LayerNorm scales are
  decayed. (The reference's image-only MAE, `mae_main.py`, also decays its
  decoder's image type vector; this recipe does not.)
- The library's default (`recipe=None`, and the tasks' `compile()` for an
  optimizer without exemptions of its own): every variable of rank <= 1
  (biases, LayerNorm scales and offsets, the CLS, type and mask vectors),
  the text embedding matrix and a learned position table
  (`weight_decay_exclusions`). This is this library's choice, not the
  papers': the union of what the two originals exempt, and a learned
  position table (neither original has one).

Adam's epsilon: PyTorch's and optax's AdamW add it after the bias
correction, `m_hat / (sqrt(v_hat) + eps)`; Keras before,
`sqrt(1 - b2^t) m_hat / (sqrt(v) + eps)`, which is the same with
`eps / sqrt(1 - b2^t)` in place of `eps`. The `recipe=` optimizers use the
original placement (`AdamW(epsilon_after_bias_correction=True)`) and
epsilon 1e-8; the library's default keeps Keras's placement with epsilon
1e-8 (Keras's default is 1e-7): the two differ in the first steps (a few
tens with beta_2 = 0.95, thousands with 0.999) and most for variables whose
gradients are near epsilon.

Learning rates follow `base * batch / 256` (`scaled_learning_rate`) and,
given the training length, a warmup + cosine schedule. The tasks'
`compile()` use these; call them to build the same optimizers for a custom
loop.
"""

import keras

from keras_m3ae.optimizers import _keras_internals
from keras_m3ae.optimizers.adamw import AdamW
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
# The variables each original pretraining code exempts from weight decay, as
# regular expressions on this library's variable names, for
# `exclude_from_weight_decay(var_names=...)`; see the module docstring. Keras
# matches them against `variable.name`: the bare name (`"gamma"`) on JAX and
# torch, the TensorFlow variable's path with its output index
# (`"encoder/norm/gamma:0"`) on TensorFlow; hence the optional parts.
def _names(*names):
    return tuple(rf"(^|/){name}(:\d+)?$" for name in names)


MAE_NO_DECAY_NAMES = _names("bias", "gamma", "beta")
M3AE_NO_DECAY_NAMES = _names(
    "bias", "beta", "cls_token", "type_embedding", "image_mask_token", "text_mask_token",
    "embeddings",
)
PRETRAIN_RECIPES = {"mae": MAE_NO_DECAY_NAMES, "m3ae": M3AE_NO_DECAY_NAMES}
FINE_TUNE_RECIPE = {
    "base_learning_rate": 1e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 5,
    "layer_decay": 0.75,
    "label_smoothing": 0.1,
}


def weight_decay_exclusions(variables, embedding_matrices=()):
    """The variables this library exempts from weight decay by default.

    Every variable of rank <= 1 (biases, LayerNorm scales and offsets, the
    CLS, type and mask vectors) and the given embedding matrices. This is
    the library's choice, not either paper's: MAE's code decays the CLS and
    mask tokens, the reference M3AE's the LayerNorm scales (see
    `pretrain_optimizer(recipe=...)` for theirs).

    Args:
        variables: the model's variables.
        embedding_matrices: lookup tables among them (the text embedding, a
            learned position table), exempt although their rank is 2.

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

    Layer-wise decay and the weight-decay exemptions depend on the model:
    add them with `configure_optimizer` (the classifier's `compile()` does).

    Args:
        batch_size: int. Global batch size, for the learning-rate scaling.
        epochs: optional int. Training length, for the schedule.
        steps_per_epoch: optional int. Steps per epoch, for the schedule.
        base_learning_rate: float (1e-3).
        weight_decay: float (0.05).
        warmup_epochs: float (5).

    Returns:
        An unbuilt `keras_m3ae.optimizers.AdamW` with epsilon 1e-8 and
        Keras's epsilon placement (see the module docstring).

    Example:
    >>> optimizer = configure_optimizer(
    ...     fine_tune_optimizer(batch_size=1024, epochs=100, steps_per_epoch=1251),
    ...     no_weight_decay=backbone.no_weight_decay_variables(),
    ...     layer_groups=backbone.structure(), layer_decay=0.75)
    """
    return AdamW(
        recipe_learning_rate(base_learning_rate, batch_size, epochs, steps_per_epoch, warmup_epochs),
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=ADAM_EPSILON,
    )


def pretrain_optimizer(learning_rate=1.5e-4, weight_decay=0.05, recipe=None, **kwargs):
    """AdamW of the pretraining recipe (MAE Table 7, M3AE Table 2).

    Betas (0.9, 0.95), epsilon 1e-8, weight decay 0.05. `recipe` chooses
    whose update it is:

    - `None` (default): this library's. Keras's epsilon placement; the
      optimizer has no exemptions of its own, so the tasks' `compile()`
      gives it the library's default (`weight_decay_exclusions`: rank <= 1
      and embedding matrices).
    - `"mae"`: MAE's `main_pretrain.py` (`torch.optim.AdamW` over timm's
      `add_weight_decay` groups): epsilon after the bias correction; exempt
      are biases and normalisation scales and offsets (the original's 1-D
      tensors and `.bias`es); the CLS and mask tokens are decayed.
    - `"m3ae"`: the reference M3AE's `m3ae_main.py` (`optax.adamw` with its
      `no_decay_list`): epsilon after the bias correction; exempt are the
      CLS token, the encoder's and decoder's type vectors, the image and
      text mask tokens, the text embedding table, biases and LayerNorm
      offsets; LayerNorm scales are decayed. (`m3ae_main.py` also chains
      `clip_by_global_norm(1e9)`, which never clips at that bound; pass
      `global_clipnorm=` to clip.)

    The recipes' exemptions match variable names
    (`weight_decay_exempt_names`, `MAE_NO_DECAY_NAMES` /
    `M3AE_NO_DECAY_NAMES`), so they hold for any model built from this
    library's layers and are kept by `compile()`. A learned position table
    (neither original has one) is decayed by both.

    Args:
        learning_rate: float or schedule. 1.5e-4 is the rate for a batch of
            256: scale it with `scaled_learning_rate` for yours.
        weight_decay: float (0.05).
        recipe: None, `"mae"` or `"m3ae"`.
        **kwargs: other `keras_m3ae.optimizers.AdamW` arguments
            (`global_clipnorm`, `gradient_accumulation_steps`, `epsilon`,
            `fast_update`...); they override the recipe's.

    Returns:
        An unbuilt `keras_m3ae.optimizers.AdamW`.

    Example:
    >>> optimizer = pretrain_optimizer(scaled_learning_rate(1.5e-4, 4096), recipe="mae")
    """
    if recipe is not None and recipe not in PRETRAIN_RECIPES:
        raise ValueError(
            f"`recipe` must be None or one of {sorted(PRETRAIN_RECIPES)}; got {recipe!r}."
        )
    kwargs.setdefault("beta_1", 0.9)
    kwargs.setdefault("beta_2", 0.95)
    kwargs.setdefault("epsilon", ADAM_EPSILON)
    if recipe is not None:
        kwargs.setdefault("epsilon_after_bias_correction", True)
        kwargs.setdefault("weight_decay_exempt_names", list(PRETRAIN_RECIPES[recipe]))
    return AdamW(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)


def has_weight_decay_exemptions(optimizer):
    """Whether the optimizer has weight-decay exemptions of its own.

    True once its `exclude_from_weight_decay()` was called, with any
    arguments (none: decay everything), or it was made with
    `weight_decay_exempt_names`.
    """
    return _keras_internals.has_weight_decay_exclusions(optimizer)


def configure_optimizer(optimizer, no_weight_decay=(), layer_groups=None, layer_decay=None):
    """Gives any optimizer the recipe's per-variable rules.

    The optimizer is used as given, its class and update untouched.

    Args:
        optimizer: a Keras optimizer or its name.
        no_weight_decay: variables to exempt from weight decay (see
            `weight_decay_exclusions`), applied only if the optimizer
            decays, is not built, and has no exemptions of its own
            (`has_weight_decay_exemptions`).
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
    if (
        getattr(optimizer, "weight_decay", None)
        and not optimizer.built
        and not has_weight_decay_exemptions(optimizer)
    ):
        optimizer.exclude_from_weight_decay(var_list=list(no_weight_decay))
    return optimizer
