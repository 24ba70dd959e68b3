"""JAX backend only: `keras_m3ae.optimizers.AdamW`'s update ordering and clipping.

Keras's JAX trainer jits its train step with the state donated, so each
variable's new value can be written into its old buffer. Without a global
dependency (such as gradient clipping by global norm) XLA may schedule the
update of a kernel before the backward pass has finished reading its old
value; copy insertion then keeps a copy of that kernel: in a ViT-S M3AE
step, 250 MB of the 300 MB of parameters were copied every step.
`after_all_gradients(grads)` adds to every gradient a zero made from one
element of each gradient: each update then depends on all gradients, so
all reads of the old kernels come before any write and the update runs in
place. Values are unchanged; no update overlaps the backward pass, as with
global-norm clipping.

`clip_by_global_norm(grads, clip_norm)` is Keras's clipping by global norm
with the norm from dot products: Keras sums each gradient's squares
(`sum(square(g))`), which XLA:CPU runs as a written temporary of squares
and a reduction over it; a dot product of the flattened gradient with
itself reads it in one pass.
"""


def after_all_gradients(grads):
    """`grads`, each made to depend on every gradient (same values)."""
    import jax.numpy as jnp

    # One element of every gradient, times zero, added to every gradient: a
    # data dependency that costs a few scalar ops
    # (`jax.lax.optimization_barrier` is expanded away before XLA's CPU
    # scheduling and does not order anything there). XLA keeps `x * 0.0`
    # for floats, as it is NaN for a non-finite x; a non-finite gradient
    # then spreads to all, as it would through global-norm clipping.
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    zero = sum(jnp.ravel(g)[0].astype("float32") for g in present) * 0.0
    return [g if g is None else g + zero.astype(g.dtype) for g in grads]


def clip_by_global_norm(grads, clip_norm):
    """Keras's `clip_by_global_norm`, its norm as dot products.

    The norm is summed in float32 whatever the gradients' dtype; the scale
    is 1 for a norm within the limit and NaN for a non-finite one, as in
    Keras; gradients keep their dtype.
    """
    import jax.numpy as jnp

    flat = [jnp.ravel(g) for g in grads if g is not None]
    norm = jnp.sqrt(sum(jnp.vdot(f, f, preferred_element_type="float32") for f in flat))
    scale = clip_norm * jnp.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
    return [g if g is None else g * scale.astype(g.dtype) for g in grads]
