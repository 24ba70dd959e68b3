"""`keras.optimizers.AdamW` with a choice of epsilon placement and a faster step."""

import keras
from keras import ops

from keras_m3ae.optimizers import _keras_internals
from keras_m3ae.optimizers import jax_update
from keras_m3ae.optimizers import tf_update
from keras_m3ae.optimizers import torch_adam


@keras.saving.register_keras_serializable(package="keras_m3ae")
class AdamW(_keras_internals.UpdateHooks, keras.optimizers.AdamW):
    """Keras's AdamW, optionally with PyTorch's / optax's epsilon, and a faster step.

    A `keras.optimizers.AdamW` (`isinstance` holds; every argument of it
    works: schedules, clipping, EMA, gradient accumulation, loss scaling,
    `exclude_from_weight_decay`) with two additions.

    **Epsilon placement.** Keras adds epsilon to `sqrt(v)` before the bias
    correction, `var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`;
    PyTorch's `AdamW` and optax's `adamw` (the MAE and M3AE code) add it
    after, `var -= lr * m_hat / (sqrt(v_hat) + eps)`. The two differ by
    `eps / sqrt(1 - b2^t)` against `eps`: most in the first steps and for
    variables whose gradients are near epsilon (up to 0.36 x lr per step
    for a tiny M3AE's vectors at step 1). `epsilon_after_bias_correction=True`
    gives the original's formula.

    **The fast step** (`fast_update=True`), the same values as Keras's:
    - torch: all variables in PyTorch's fused AdamW kernel (CPU, CUDA),
      weight decay included, or in-place ops one variable at a time
      elsewhere (`keras_m3ae/optimizers/torch_adam.py`). Keras's torch Adam
      makes several model-sized temporaries per step. Not with
      `amsgrad=True`, or in a subclass that overrides `update_step` (such
      as `with_learning_rate_multipliers`'s): those take Keras's step.
    - JAX: the update ordered after all gradients, so XLA updates the
      donated variables in place instead of copying them; with
      `global_clipnorm`, the norm from dot products
      (`keras_m3ae/optimizers/jax_update.py`).
    - TensorFlow: Keras's step, with an embedding's sparse gradient made
      dense first: Keras's own squares it slice by slice, which gives a
      token repeated in a batch the sum of the squares in Adam's second
      moment, not the square of its gradient
      (`keras_m3ae/optimizers/tf_update.py`).
    The fast step uses private Keras methods (`_keras_internals.py`), tested
    on Keras 3.15.x; on another Keras this optimizer warns once and takes
    Keras's step.

    Args:
        learning_rate: float or schedule (0.001).
        weight_decay: float (0.004, Keras's default).
        beta_1: float (0.9).
        beta_2: float (0.999).
        epsilon: float (1e-7, Keras's default; PyTorch and optax use 1e-8).
        amsgrad: bool (False).
        epsilon_after_bias_correction: bool. Add epsilon after the bias
            correction, as PyTorch and optax do (False: Keras's placement).
        fast_update: bool. Take the fast step where there is one (True).
        weight_decay_exempt_names: optional list of regular expressions: a
            variable whose `name` matches one takes no weight decay. Saved
            in the config, unlike `exclude_from_weight_decay(var_names=...)`,
            which it calls; a later `exclude_from_weight_decay` call
            replaces it.
        **kwargs: other `keras.optimizers.AdamW` arguments (`clipnorm`,
            `global_clipnorm`, `use_ema`, `gradient_accumulation_steps`...).

    Example:
    >>> optimizer = keras_m3ae.optimizers.AdamW(
    ...     1e-3, weight_decay=0.05, beta_2=0.95, epsilon=1e-8,
    ...     epsilon_after_bias_correction=True)
    >>> isinstance(optimizer, keras.optimizers.AdamW)
    True
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        epsilon_after_bias_correction=False,
        fast_update=True,
        weight_decay_exempt_names=None,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            **kwargs,
        )
        self.epsilon_after_bias_correction = bool(epsilon_after_bias_correction)
        self.fast_update = bool(fast_update)
        self.weight_decay_exempt_names = (
            None if weight_decay_exempt_names is None else list(weight_decay_exempt_names)
        )
        if self.weight_decay_exempt_names is not None:
            self.exclude_from_weight_decay(var_names=self.weight_decay_exempt_names)
        if self.fast_update:
            _keras_internals.warn_untested_keras()

    # --- The per-variable step (every backend, and the fallback) ---

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() == "tensorflow":
            gradient = tf_update.dense(gradient)
        if not self.epsilon_after_bias_correction:
            return super().update_step(gradient, variable, learning_rate)
        # Keras's step with `eps * sqrt(1 - b2^t)` in place of `eps` is
        # `lr * m_hat / (sqrt(v_hat) + eps)`: divide numerator and
        # denominator of `lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps')`
        # by sqrt(1 - b2^t).
        epsilon = self.epsilon
        step = ops.cast(self.iterations + 1, variable.dtype)
        correction = ops.sqrt(1 - ops.power(ops.cast(self.beta_2, variable.dtype), step))
        self.epsilon = ops.multiply(correction, ops.cast(epsilon, variable.dtype))
        try:
            super().update_step(gradient, variable, learning_rate)
        finally:
            self.epsilon = epsilon

    # --- The fast step (routed from Keras by `_keras_internals.UpdateHooks`) ---

    def _torch_fast_step(self):
        return (
            self.fast_update
            and keras.backend.backend() == "torch"
            and not self.amsgrad
            # A subclass that changes the per-variable step keeps it.
            and type(self).update_step is AdamW.update_step
        )

    def _bulk_update(self, grads, variables, learning_rate):
        if not self._torch_fast_step():
            return False
        torch_adam.update(self, grads, variables, learning_rate)
        return True

    def _decays_in_bulk_update(self):
        return self._torch_fast_step()

    def _bulk_clip(self, grads):
        if self.fast_update and keras.backend.backend() == "jax" and self.global_clipnorm:
            return jax_update.clip_by_global_norm(grads, self.global_clipnorm)
        return None

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        if (
            self.fast_update
            and _keras_internals.SUPPORTED
            and keras.backend.backend() == "jax"
            and not self.global_clipnorm  # which orders the update already
        ):
            grads = jax_update.after_all_gradients(grads)
        return super().stateless_apply(optimizer_variables, grads, trainable_variables)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "epsilon_after_bias_correction": self.epsilon_after_bias_correction,
                "fast_update": self.fast_update,
                "weight_decay_exempt_names": self.weight_decay_exempt_names,
            }
        )
        return config
