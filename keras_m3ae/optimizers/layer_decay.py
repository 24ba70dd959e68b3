"""Layer-wise learning-rate decay (BEiT / MAE fine-tuning), any optimizer.

Fine-tuning a pretrained ViT, MAE and M3AE give block `i` (counted from the
input) the learning rate `lr * decay ** (depth + 1 - layer_id)`. Layer ids are
positions in the model's own list of variable groups, input to output
(`M3AEBackbone.structure().depth_groups()`), not guesses from names:

- patch / text embeddings, CLS vector, position and type vectors: 0
- transformer block `i`: `i + 1`
- final norm and the classification head: `depth + 1` (full rate)

With adaptive optimizers (Adam...) scaling the gradient does not scale the
update, so the multiplier is applied to the learning rate of each variable
inside the optimizer's per-variable `update_step` (and to its decoupled
weight decay, as PyTorch parameter groups do). This works on JAX,
TensorFlow and PyTorch alike.
"""

from keras import ops

from keras_m3ae.optimizers import _keras_internals


def _depth_groups(groups):
    # A backbone (or its structure) lists its own groups; see `layer_ids`.
    if hasattr(groups, "structure"):
        groups = groups.structure()
    if hasattr(groups, "depth_groups"):
        groups = groups.depth_groups()
    return [list(group) for group in groups]


def layer_ids(groups):
    """Maps every variable to its layer id: its group's position.

    Args:
        groups: the variables in depth order, a list of lists
            `[embeddings, block_0, ..., block_n-1, final norm]`; or a model
            with `structure()` (an `M3AEBackbone`), whose groups are used.

    Returns:
        `(ids, depth)`: `ids` a dict `id(variable) -> layer id`, `depth` the
        number of blocks (`len(groups) - 2`).
    """
    groups = _depth_groups(groups)
    ids = {id(v): i for i, group in enumerate(groups) for v in group}
    return ids, len(groups) - 2


def layer_decay_multipliers(groups, layer_decay):
    """Learning-rate multiplier `decay ** (depth + 1 - id)` of each variable.

    Variables in no group (the head) are not listed: they keep multiplier 1.

    Args:
        groups: variables in depth order, or a model with `structure()`;
            see `layer_ids`.
        layer_decay: float in (0, 1], e.g. 0.75 (ViT-B), 0.8-0.85 for lightly
            pretrained models.

    Returns:
        list of `(variable, multiplier)` pairs, input to output.

    Example:
    >>> pairs = layer_decay_multipliers(backbone.structure(), 0.75)
    >>> optimizer = with_learning_rate_multipliers(keras.optimizers.AdamW(1e-3), pairs)
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"`layer_decay` must be in (0, 1]; got {layer_decay}.")
    groups = _depth_groups(groups)
    top = len(groups) - 1
    return [(v, float(layer_decay ** (top - i))) for i, group in enumerate(groups) for v in group]


_CLASSES = {}


def _multiplier_class(base):
    base = _keras_internals.public_class(base)
    if base in _CLASSES:
        return _CLASSES[base]

    class Multiplied(_keras_internals.DecayInUpdateStep, base):
        def build(self, variables):
            if self.built:
                return
            super().build(variables)
            lookup = getattr(self, "_lr_multiplier_lookup", {})
            self._lr_multipliers = [lookup.get(id(v), 1.0) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            multiplier = self._lr_multipliers[_keras_internals.variable_index(self, variable)]
            if multiplier != 1.0:
                learning_rate = learning_rate * multiplier
            if _keras_internals.decays(self, variable):
                rate = ops.cast(learning_rate, variable.dtype) * ops.cast(
                    self.weight_decay, variable.dtype
                )
                self.assign(variable, variable - variable * rate)
            super().update_step(gradient, variable, learning_rate)

    Multiplied.__name__ = Multiplied.__qualname__ = f"LayerDecay{base.__name__}"
    _CLASSES[base] = Multiplied
    return Multiplied


def with_learning_rate_multipliers(optimizer, multipliers):
    """Returns a copy of `optimizer` whose learning rate is scaled per variable.

    The copy is the same Keras optimizer class (AdamW, SGD, LARS...) with its
    config and its weight-decay exclusions; each variable's update (and
    decoupled weight decay) uses `learning_rate * multiplier`. Variables not
    listed keep multiplier 1.

    Args:
        optimizer: an unbuilt Keras optimizer.
        multipliers: list of `(variable, float)` pairs, or a dict keyed by
            variable, e.g. from `layer_decay_multipliers`.

    Returns:
        A new, unbuilt optimizer.

    Example:
    >>> optimizer = with_learning_rate_multipliers(
    ...     keras.optimizers.AdamW(1e-3, weight_decay=0.05),
    ...     layer_decay_multipliers(classifier.backbone, 0.75))
    """
    if optimizer.built:
        raise ValueError(
            "Learning-rate multipliers must be set before the optimizer is built."
        )
    pairs = multipliers.items() if isinstance(multipliers, dict) else multipliers
    cls = _multiplier_class(type(optimizer))
    new = cls.from_config(optimizer.get_config())
    _keras_internals.copy_weight_decay_exclusions(optimizer, new)
    if hasattr(optimizer, "_excluded_ids"):  # LARS's layer-adaptation exemptions
        new._excluded_ids = optimizer._excluded_ids
    new._lr_multiplier_lookup = {id(v): float(m) for v, m in pairs}
    return new


def learning_rate_multipliers(optimizer):
    """The multiplier a `with_learning_rate_multipliers` optimizer uses per variable.

    Args:
        optimizer: a built optimizer from `with_learning_rate_multipliers`.

    Returns:
        dict `variable.path -> multiplier` over the variables it trains.
    """
    return {
        v.path: m
        for v, m in zip(_keras_internals.trained_variables(optimizer), optimizer._lr_multipliers)
    }
