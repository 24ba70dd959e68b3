"""LARS: the optimizer of MAE / M3AE linear probing (Keras has none)."""

import keras
from keras import ops

from keras_m3ae.optimizers import _keras_internals


@keras.saving.register_keras_serializable(package="keras_m3ae")
class LARS(keras.optimizers.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al.).

    For every variable of rank >= 2 the update direction
    `d = grad + weight_decay * w` is rescaled by the trust ratio
    `trust_coefficient * ||w|| / ||d||` (1 when either norm is 0); biases and
    normalisation parameters (rank <= 1) are neither adapted nor decayed,
    as in MAE's linear probe. Then `m = momentum * m + d` and
    `w = w - learning_rate * m`.

    Args:
        learning_rate: float or schedule. Peak learning rate (MAE probe:
            0.1 * batch / 256).
        momentum: float (0.9).
        weight_decay: float (0 for the linear probe).
        trust_coefficient: float (0.001).
        exclude_from_layer_adaptation: optional list of variables that are
            treated like biases even if their rank is >= 2.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`clipnorm`...).

    Example:
    >>> optimizer = LARS(learning_rate=0.1 * 4096 / 256)
    >>> model.compile(optimizer=optimizer, loss="mse")
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.0,
        trust_coefficient=0.001,
        exclude_from_layer_adaptation=None,
        name="lars",
        **kwargs,
    ):
        # Weight decay is part of the adapted direction, not decoupled, so
        # the base class must not apply its own.
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        self.momentum = momentum
        self.lars_weight_decay = weight_decay
        self.trust_coefficient = trust_coefficient
        self._excluded_ids = {id(v) for v in exclude_from_layer_adaptation or ()}

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        self._adapted = [
            len(v.shape) > 1 and id(v) not in self._excluded_ids for v in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        index = _keras_internals.variable_index(self, variable)
        learning_rate = ops.cast(learning_rate, variable.dtype)
        direction = ops.cast(gradient, variable.dtype)
        if self._adapted[index]:
            if self.lars_weight_decay:
                direction = direction + self.lars_weight_decay * variable
            weight_norm = ops.sqrt(ops.sum(ops.square(variable)))
            update_norm = ops.sqrt(ops.sum(ops.square(direction)))
            ratio = ops.where(
                ops.logical_and(weight_norm > 0, update_norm > 0),
                self.trust_coefficient * weight_norm / ops.maximum(update_norm, 1e-30),
                ops.ones_like(weight_norm),
            )
            direction = direction * ratio
        momentum = self.momentums[index]
        self.assign(momentum, momentum * ops.cast(self.momentum, variable.dtype) + direction)
        self.assign_sub(variable, learning_rate * momentum)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.lars_weight_decay,
                "trust_coefficient": self.trust_coefficient,
            }
        )
        return config
