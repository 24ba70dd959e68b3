"""Torch backend only: an in-place Adam/AdamW update for Keras optimizers.

Keras's torch Adam (`keras/src/backend/torch/optimizers/torch_adam.py`)
updates all variables at once with out-of-place `torch._foreach_*` ops:
`grads * grads`, `sqrt(v)`, `+ epsilon`, `m * alpha` and the quotient each
materialise a temporary as large as the whole model. For a ViT-B MAE that is
~5 x 450 MB of fresh memory per step; on CPU each such allocation is mapped
and page-faulted anew, and the update took 2.6 s of a 4.2 s step (one
thread), against 0.26 s for PyTorch's own AdamW on the same model
(`benchmarks/RESULTS.md`, "ViTMAE (transformers) vs keras-m3ae (torch)").

`use_inplace_update(optimizer)` swaps that one method of a Keras `Adam` /
`AdamW` instance for an update that computes the same formula
(`m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
`var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`) with in-place
ops, one variable at a time, so the only temporary is one variable-sized
`sqrt(v)`. Everything else of the Keras optimizer (learning-rate schedules,
weight decay and its exclusions, clipping, loss scaling, EMA, gradient
accumulation, saving) is untouched: they run outside this method. Other
backends, other optimizers and `amsgrad=True` are left as they are.
"""

import types

import keras


def _inplace_update_step(self, grads, variables, learning_rate):
    import torch

    dtype = variables[0].value.dtype
    step = self.iterations.value.to(dtype) + 1
    lr = keras.ops.convert_to_tensor(learning_rate).to(dtype)
    # Keras's Adam form: alpha = lr * sqrt(1 - b2^t) / (1 - b1^t); a tensor,
    # so no host sync on accelerators.
    alpha = lr * torch.sqrt(1 - self.beta_2**step) / (1 - self.beta_1**step)
    with torch.no_grad():
        for grad, variable in zip(grads, variables):
            index = self._get_variable_index(variable)
            m = self._momentums[index].value
            v = self._velocities[index].value
            var = variable.value
            grad = grad.to(var.dtype)
            m.lerp_(grad, 1 - self.beta_1)
            v.mul_(self.beta_2).addcmul_(grad, grad, value=1 - self.beta_2)
            # var -= alpha * m / (sqrt(v) + eps), as var -= m / ((sqrt(v) + eps) / alpha).
            denom = v.sqrt().add_(self.epsilon).div_(alpha.to(var.dtype))
            var.addcdiv_(m, denom, value=-1.0)


def use_inplace_update(optimizer):
    """Gives a Keras `Adam`/`AdamW` the in-place update on the torch backend.

    Args:
        optimizer: a Keras optimizer instance.

    Returns:
        True if the update was swapped; False (nothing changed) on other
        backends, for other optimizers or with `amsgrad=True`.
    """
    if keras.backend.backend() != "torch":
        return False
    if type(optimizer).__name__ not in ("Adam", "AdamW") or getattr(optimizer, "amsgrad", True):
        return False
    if not isinstance(optimizer, keras.optimizers.Adam):
        return False
    if not hasattr(type(optimizer), "_parallel_update_step"):
        return False  # Not Keras's torch Adam: nothing to replace.
    optimizer._parallel_update_step = types.MethodType(_inplace_update_step, optimizer)
    return True
