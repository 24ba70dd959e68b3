"""Torch backend only: a fused, in-place Adam/AdamW update for Keras optimizers.

Keras's torch Adam (`keras/src/backend/torch/optimizers/torch_adam.py`)
updates all variables at once with out-of-place `torch._foreach_*` ops:
`grads * grads`, `sqrt(v)`, `+ epsilon`, `m * alpha` and the quotient each
materialise a temporary as large as the whole model. For a ViT-B MAE that is
~5 x 450 MB of fresh memory per step; on CPU each such allocation is mapped
and page-faulted anew, and the update took 2.6 s of a 4.2 s step (one
thread), against 0.26 s for PyTorch's own AdamW on the same model
(`benchmarks/RESULTS.md`, "ViTMAE (transformers) vs keras-m3ae (torch)").

`use_inplace_update(optimizer)` swaps the update of a Keras `Adam` /
`AdamW` instance for an update that computes the same formula
(`m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
`var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`) in place.
On CPU and CUDA it runs PyTorch's fused AdamW kernel (what
`torch.optim.AdamW(fused=True)` runs), weight decay included: one pass over
each tensor, no temporaries, one kernel call per group of tensors (ViT-B
MAE's 254 tensors, one CPU thread: 134 ms against 525 ms for
`torch.optim.AdamW`'s default loop; `benchmarks/adam_update.py`). Other
devices take the in-place ops one variable at a time, whose only temporary
is one variable-sized `sqrt(v)`. Everything else of the Keras optimizer
(learning-rate schedules, which variables decay, clipping, loss scaling, EMA,
gradient accumulation, saving) is untouched: they run outside these
methods. Other backends, other optimizers and `amsgrad=True` are left as
they are.
"""

import types

import keras


# Devices with PyTorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`).
_FUSED_DEVICES = ("cpu", "cuda")


def _inplace_update_step(self, grads, variables, learning_rate):
    import torch

    with torch.no_grad():
        rest = _fused_update(self, grads, variables, learning_rate)
        if rest:
            _loop_update(self, *zip(*rest), learning_rate)


def _decay_in_update(self, variables):
    """Keras's separate weight-decay pass, left to `_inplace_update_step`.

    Keras decays the variables (`var *= 1 - weight_decay * lr`) in a pass of
    their own right before the update step; the update does it in the same
    pass, as `torch.optim.AdamW` does (ViT-B: a pass over 110 M values).
    """


def _decay(self, variable):
    """`variable`'s weight-decay rate, 0 where Keras would not decay it."""
    if not self.weight_decay or not self._use_weight_decay(variable):
        return 0.0
    return float(self.weight_decay)


def _slots(self, variable):
    index = self._get_variable_index(variable)
    return self._momentums[index].value, self._velocities[index].value


def _fused_update(self, grads, variables, learning_rate):
    """PyTorch's fused AdamW kernel, per (device, dtype, decay) group.

    Keras's step is `var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`;
    the kernel's is `var -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps')`,
    the same with `eps' = eps / sqrt(1 - b2^t)`, which the kernel takes as a
    host number: the step count is read back once per update. Its decay,
    `var *= 1 - lr * weight_decay` before the step, is Keras's.

    Returns:
        The `(grad, variable)` pairs left to `_loop_update`.
    """
    import torch

    if torch.compiler.is_compiling():  # the host step would break the graph
        return list(zip(grads, variables))
    beta_1, beta_2, epsilon = float(self.beta_1), float(self.beta_2), float(self.epsilon)
    step = int(self.iterations.value) + 1
    groups, rest = {}, []
    for grad, variable in zip(grads, variables):
        var = variable.value
        if var.device.type not in _FUSED_DEVICES:
            rest.append((grad, variable))
            continue
        group = groups.setdefault((var.device, var.dtype, _decay(self, variable)), ([], [], [], []))
        for items, tensor in zip(group, (var, grad.to(var.dtype), *_slots(self, variable))):
            items.append(tensor)
    learning_rate = keras.ops.convert_to_tensor(learning_rate)
    for (device, _, decay), (params, grads_, ms, vs) in groups.items():
        steps = [torch.tensor(float(step), device=device)] * len(params)
        torch._fused_adamw_(
            params, grads_, ms, vs, [], steps,
            lr=learning_rate.to(device=device, dtype=torch.float32),
            beta1=beta_1, beta2=beta_2, weight_decay=decay,
            eps=epsilon / (1 - beta_2**step) ** 0.5,
            amsgrad=False, maximize=False,
        )
    return rest


def _loop_update(self, grads, variables, learning_rate):
    """The same decay and step with in-place torch ops, one variable at a time."""
    import torch

    dtype = variables[0].value.dtype
    step = self.iterations.value.to(dtype) + 1
    lr = keras.ops.convert_to_tensor(learning_rate).to(dtype)
    # Keras's Adam form: alpha = lr * sqrt(1 - b2^t) / (1 - b1^t); a tensor,
    # so no host sync on accelerators.
    alpha = lr * torch.sqrt(1 - self.beta_2**step) / (1 - self.beta_1**step)
    for grad, variable in zip(grads, variables):
        m, v = _slots(self, variable)
        var = variable.value
        grad = grad.to(var.dtype)
        decay = _decay(self, variable)
        if decay:
            var.mul_(1 - decay * lr.to(var.dtype))
        m.lerp_(grad, 1 - self.beta_1)
        v.mul_(self.beta_2).addcmul_(grad, grad, value=1 - self.beta_2)
        # var -= alpha * m / (sqrt(v) + eps), as var -= m / ((sqrt(v) + eps) / alpha).
        denom = v.sqrt().add_(self.epsilon).div_(alpha.to(var.dtype))
        var.addcdiv_(m, denom, value=-1.0)


def use_inplace_update(optimizer):
    """Gives a Keras `Adam`/`AdamW` the fused (or in-place) update on the torch backend.

    Replaces the instance's update step and its separate weight-decay pass,
    which the update then applies.

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
    optimizer._apply_weight_decay = types.MethodType(_decay_in_update, optimizer)
    return True
