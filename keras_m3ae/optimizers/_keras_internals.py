"""Every use of a private Keras optimizer API in keras-m3ae, in one place.

Keras's public optimizer hooks (`build`, `update_step`, `apply`,
`stateless_apply`, `exclude_from_weight_decay`) handle one variable at a
time or the whole step. What this library does beyond them (the torch
update of all variables in one fused kernel, JAX's global-norm clipping
from dot products, reading and copying which variables an optimizer
exempts from weight decay, per-variable state in LARS and layer-wise
learning-rate decay) uses these private names of Keras 3.15, here only:

- `BaseOptimizer._backend_update_step(grads, variables, learning_rate)`:
  the step over all variables (Keras's default loops over `update_step`);
- `BaseOptimizer._apply_weight_decay(variables)`: the decoupled decay pass
  before it;
- `BaseOptimizer._clip_gradients(grads)`: clipping;
- `BaseOptimizer._use_weight_decay(variable)`, `_var_key`, and the
  attributes `exclude_from_weight_decay()` sets
  (`_exclude_from_weight_decay`, `_exclude_from_weight_decay_pattern`);
- `BaseOptimizer._get_variable_index(variable)`, `_trainable_variables`,
  and Adam's slots `_momentums`, `_velocities`.

`KERAS_VERSION_TESTED` is the range they were checked against (the
library's tests hold every fast path to Keras's own update there). On
another Keras, `SUPPORTED` is False: `UpdateHooks` then leaves every step
to Keras (the stock update, same values, no speed-up) and
`warn_untested_keras()` says so once.
"""

import warnings

import keras

# (major, minor) releases of Keras the private names above were tested on.
KERAS_VERSION_TESTED = ((3, 15),)


def is_tested(version):
    """Whether a Keras version string (e.g. `"3.15.1"`) is in the tested range."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) in KERAS_VERSION_TESTED


SUPPORTED = is_tested(keras.version())
_warned = False


def warn_untested_keras():
    """Warns, once per process, that this Keras takes Keras's own update."""
    global _warned
    if SUPPORTED or _warned:
        return
    _warned = True
    tested = ", ".join(f"{major}.{minor}.x" for major, minor in KERAS_VERSION_TESTED)
    warnings.warn(
        f"keras_m3ae.optimizers: Keras {keras.version()} is outside the tested range "
        f"({tested}); its optimizers use Keras's own update (same values, without the "
        "fused torch kernel or the JAX update ordering).",
        stacklevel=3,
    )


# --- Weight-decay exemptions ---


def has_weight_decay_exclusions(optimizer):
    """Whether `optimizer.exclude_from_weight_decay()` was called (any arguments)."""
    return any(
        hasattr(optimizer, name)
        for name in (
            "_exclude_from_weight_decay",
            "_exclude_from_weight_decay_pattern",
            "_exclude_from_weight_decay_names",
        )
    )


def copy_weight_decay_exclusions(source, target):
    """Gives `target` the exemptions `source.exclude_from_weight_decay()` set."""
    for name in (
        "_exclude_from_weight_decay",
        "_exclude_from_weight_decay_pattern",
        "_exclude_from_weight_decay_names",
    ):
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))


def decays(optimizer, variable):
    """Whether `optimizer` applies weight decay to `variable`."""
    return bool(optimizer.weight_decay) and optimizer._use_weight_decay(variable)


# --- Per-variable state ---


def variable_index(optimizer, variable):
    """The position of `variable` among the variables `optimizer` was built on."""
    return optimizer._get_variable_index(variable)


def trained_variables(optimizer):
    """The variables a built `optimizer` trains, in its order."""
    return optimizer._trainable_variables


def adam_slots(optimizer, variable):
    """`(m, v)`: Adam's first and second moment variables of `variable`."""
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index], optimizer._velocities[index]


def public_class(cls):
    """`cls`, or the public Keras class of a backend-private optimizer class.

    On torch `keras.optimizers.AdamW()` is an instance of a private subclass
    (`keras.src.backend.torch.optimizers...`) whose whole-model step never
    calls `update_step`; a subclass that changes `update_step` must derive
    from the public class.
    """
    if cls.__module__.startswith("keras.src.backend."):
        for base in cls.__mro__[1:]:
            if base.__module__.startswith("keras.src.optimizers."):
                return base
    return cls


# --- The step over all variables ---


class UpdateHooks:
    """Routes Keras's private whole-step methods to the optimizer's own.

    A mixin placed before the Keras optimizer class. The optimizer defines
    `_bulk_update(grads, variables, learning_rate)` (True when it updated
    every variable, weight decay included, itself),
    `_decays_in_bulk_update()` (True when the next `_bulk_update` will
    apply the decay, so Keras's own pass is skipped) and
    `_bulk_clip(grads)` (clipped gradients, or None for Keras's clipping).
    On an untested Keras every method is Keras's own.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not (SUPPORTED and self._bulk_update(grads, trainable_variables, learning_rate)):
            super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _apply_weight_decay(self, variables):
        if not (SUPPORTED and self._decays_in_bulk_update()):
            super()._apply_weight_decay(variables)

    def _clip_gradients(self, grads):
        clipped = self._bulk_clip(grads) if SUPPORTED else None
        return super()._clip_gradients(grads) if clipped is None else clipped


class DecayInUpdateStep:
    """Skips Keras's separate weight-decay pass: the subclass's `update_step` decays.

    For a per-variable rule (`with_learning_rate_multipliers` decays each
    variable at its own learning rate).
    """

    def _apply_weight_decay(self, variables):
        return
