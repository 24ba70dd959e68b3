"""Torch backend only: `keras_m3ae.optimizers.AdamW`'s update of all variables.

Keras's torch Adam updates all variables at once with out-of-place
`torch._foreach_*` ops: `grads * grads`, `sqrt(v)`, `+ epsilon`, `m * alpha`
and the quotient each materialise a temporary as large as the whole model,
and its weight decay is a pass of its own. `update(optimizer, ...)` computes
the same AdamW step in place. On CPU and CUDA it runs PyTorch's fused AdamW
kernel (what `torch.optim.AdamW(fused=True)` runs), weight decay included:
one pass over each tensor, no temporaries, one kernel call per (device,
dtype, decay) group. Other devices, and code being compiled by
`torch.compile`, take in-place ops one variable at a time, whose only
temporary is one variable-sized `sqrt(v)`.

Both compute, with `t` the step, `var *= 1 - lr * wd` (decayed variables),
`m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2` and

- Keras's placement of epsilon:
  `var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`;
- with `epsilon_after_bias_correction` (PyTorch's and optax's):
  `var -= lr * m_hat / (sqrt(v_hat) + eps)`, `m_hat = m / (1 - b1^t)`,
  `v_hat = v / (1 - b2^t)`.
"""

import keras

from keras_m3ae.optimizers import _keras_internals

# Devices with PyTorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`).
FUSED_DEVICES = ("cpu", "cuda")


def update(optimizer, grads, variables, learning_rate):
    """One AdamW step of `optimizer` (not AMSGrad) on `variables`, in place."""
    import torch

    with torch.no_grad():
        rest = _fused_update(optimizer, grads, variables, learning_rate)
        if rest:
            _loop_update(optimizer, *zip(*rest), learning_rate)


def _decay(optimizer, variable):
    """`variable`'s weight-decay rate, 0 where the optimizer does not decay it."""
    if not _keras_internals.decays(optimizer, variable):
        return 0.0
    return float(optimizer.weight_decay)


def _slots(optimizer, variable):
    m, v = _keras_internals.adam_slots(optimizer, variable)
    return m.value, v.value


def _fused_update(optimizer, grads, variables, learning_rate):
    """PyTorch's fused AdamW kernel, per (device, dtype, decay) group.

    The kernel's step is `var -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`:
    epsilon after the bias correction. Keras's placement is the same step
    with `eps / sqrt(1 - b2^t)`, a host number: the step count is read back
    once per update. Its decay, `var *= 1 - lr * weight_decay` before the
    step, is Keras's.

    Returns:
        The `(grad, variable)` pairs left to `_loop_update`.
    """
    import torch

    if torch.compiler.is_compiling():  # the host step would break the graph
        return list(zip(grads, variables))
    beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
    step = int(optimizer.iterations.value) + 1
    epsilon = float(optimizer.epsilon)
    if not optimizer.epsilon_after_bias_correction:
        epsilon = epsilon / (1 - beta_2**step) ** 0.5
    groups, rest = {}, []
    for grad, variable in zip(grads, variables):
        var = variable.value
        if var.device.type not in FUSED_DEVICES:
            rest.append((grad, variable))
            continue
        key = (var.device, var.dtype, _decay(optimizer, variable))
        group = groups.setdefault(key, ([], [], [], []))
        for items, tensor in zip(group, (var, grad.to(var.dtype), *_slots(optimizer, variable))):
            items.append(tensor)
    learning_rate = keras.ops.convert_to_tensor(learning_rate)
    for (device, _, decay), (params, grads_, ms, vs) in groups.items():
        steps = [torch.tensor(float(step), device=device)] * len(params)
        torch._fused_adamw_(
            params, grads_, ms, vs, [], steps,
            lr=learning_rate.to(device=device, dtype=torch.float32),
            beta1=beta_1, beta2=beta_2, weight_decay=decay, eps=epsilon,
            amsgrad=False, maximize=False,
        )
    return rest


def _loop_update(optimizer, grads, variables, learning_rate):
    """The same decay and step with in-place torch ops, one variable at a time."""
    import torch

    beta_1, beta_2 = optimizer.beta_1, optimizer.beta_2
    dtype = variables[0].value.dtype
    step = optimizer.iterations.value.to(dtype) + 1
    lr = keras.ops.convert_to_tensor(learning_rate).to(dtype)
    # Keras's form, alpha = lr * sqrt(1 - b2^t) / (1 - b1^t), with epsilon
    # scaled by sqrt(1 - b2^t) when it comes after the bias correction;
    # tensors, so no host sync on accelerators.
    correction_2 = torch.sqrt(1 - beta_2**step)
    alpha = lr * correction_2 / (1 - beta_1**step)
    epsilon = optimizer.epsilon * (correction_2 if optimizer.epsilon_after_bias_correction else 1.0)
    for grad, variable in zip(grads, variables):
        m, v = _slots(optimizer, variable)
        var = variable.value
        grad = grad.to(var.dtype)
        decay = _decay(optimizer, variable)
        if decay:
            var.mul_(1 - decay * lr.to(var.dtype))
        m.lerp_(grad, 1 - beta_1)
        v.mul_(beta_2).addcmul_(grad, grad, value=1 - beta_2)
        # var -= alpha * m / (sqrt(v) + eps), as var -= m / ((sqrt(v) + eps) / alpha).
        denom = v.sqrt().add_(epsilon if isinstance(epsilon, float) else epsilon.to(var.dtype))
        var.addcdiv_(m, denom.div_(alpha.to(var.dtype)), value=-1.0)
