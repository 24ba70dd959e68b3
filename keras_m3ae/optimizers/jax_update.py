"""JAX backend only: the optimizer update runs after every gradient is known.

Keras's JAX trainer jits its train step with the state donated, so each
variable's new value can be written into its old buffer. Without a global
dependency (such as gradient clipping by global norm) XLA may schedule the
update of a kernel before the backward pass has finished reading its old
value; copy insertion then keeps a copy of that kernel. In a ViT-S M3AE
step at 256 px without clipping, XLA's CPU pipeline copied 250 MB of the
300 MB of parameters every step (every MLP, decoder QKV and the text head
kernel): an extra read and write of most of the model per step, and the
slowdown that grows when other work competes for memory bandwidth
(`benchmarks/RESULTS.md`, "Reference M3AE (JAX) and ViTMAE (torch)").

`update_after_gradients(optimizer)` wraps the optimizer instance's
`stateless_apply` (what the JAX trainer calls) so that every gradient gets
a zero made from one element of each gradient: each update then depends on
all gradients, so all reads of the old kernels come before any write and
the update runs in place. Values are unchanged; the cost is that no update
overlaps the backward pass, which the reference Flax M3AE's global-norm
clipping imposes too.

`dot_product_global_norm(optimizer)` does the other case, clipping by
global norm: Keras sums each gradient's squares (`sum(square(g))`), which
XLA:CPU runs as a written temporary of squares and a reduction over it; a
dot product of the flattened gradient with itself reads it in one pass. The update of a ViT-B M3AE (150 M parameters) with
clipping took 328 ms that way and 277 ms with dot products, against 174 ms
without clipping (`benchmarks/RESULTS.md`, "Sixth pass").
"""

import types

import keras


def _stateless_apply_after_gradients(self, optimizer_variables, grads, trainable_variables):
    import jax.numpy as jnp

    # One element of every gradient, times zero, added to every gradient: a
    # data dependency of each update on all gradients that costs a few
    # scalar ops (`jax.lax.optimization_barrier` is expanded away before
    # XLA's CPU scheduling and does not order anything there). XLA keeps
    # `x * 0.0` for floats, as it is NaN for a non-finite x; a non-finite
    # gradient then spreads to all, as it would through global-norm clipping.
    zero = sum(jnp.ravel(g)[0].astype("float32") for g in grads if g is not None) * 0.0
    grads = [g if g is None else g + zero.astype(g.dtype) for g in grads]
    return type(self).stateless_apply(self, optimizer_variables, grads, trainable_variables)


def update_after_gradients(optimizer):
    """Orders a Keras optimizer's JAX update after all gradients.

    Args:
        optimizer: a Keras optimizer instance.

    Returns:
        True if the update was wrapped; False (nothing changed) on other
        backends, or when the optimizer clips by global norm: that already
        orders every update after all gradients, and the added dependency
        then only costs (1.51 vs 1.40 GB accessed per tiny M3AE step).

    Example:
    >>> optimizer = keras.optimizers.AdamW(1e-4)
    >>> update_after_gradients(optimizer) == (keras.backend.backend() == "jax")
    True
    """
    if keras.backend.backend() != "jax" or getattr(optimizer, "global_clipnorm", None):
        return False
    optimizer.stateless_apply = types.MethodType(_stateless_apply_after_gradients, optimizer)
    return True


def _clip_gradients_by_dot_products(self, grads):
    import jax.numpy as jnp

    if not self.global_clipnorm:
        return type(self)._clip_gradients(self, grads)
    # Keras's `clip_by_global_norm`, its norm as dot products (summed in
    # float32 whatever the gradients' dtype): the same scale, 1 for a norm
    # within the limit, NaN for a non-finite one; gradients keep their dtype.
    flat = [jnp.ravel(g) for g in grads if g is not None]
    norm = jnp.sqrt(sum(jnp.vdot(f, f, preferred_element_type="float32") for f in flat))
    clip = self.global_clipnorm
    scale = clip * jnp.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
    return [g if g is None else g * scale.astype(g.dtype) for g in grads]


def dot_product_global_norm(optimizer):
    """Computes a Keras optimizer's global-norm clipping with dot products on JAX.

    Args:
        optimizer: a Keras optimizer instance.

    Returns:
        True if the clipping was replaced; False (nothing changed) on other
        backends or when the optimizer does not clip by global norm.

    Example:
    >>> optimizer = keras.optimizers.AdamW(1e-4, global_clipnorm=1.0)
    >>> dot_product_global_norm(optimizer) == (keras.backend.backend() == "jax")
    True
    """
    if keras.backend.backend() != "jax" or not getattr(optimizer, "global_clipnorm", None):
        return False
    optimizer._clip_gradients = types.MethodType(_clip_gradients_by_dot_products, optimizer)
    return True
