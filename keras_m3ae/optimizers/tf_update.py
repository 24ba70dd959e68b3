"""TensorFlow backend only: `keras_m3ae.optimizers.AdamW`'s dense embedding gradients.

On TensorFlow an embedding's gradient is a `tf.IndexedSlices`: one slice
per token of the batch, a token repeated in the batch repeated in it.
Keras 3.15's Adam squares such a gradient slice by slice
(`ops.square` keeps it sparse), so the second moment of a repeated row
gets the sum of the squares instead of the square of the summed gradient
(JAX, torch, PyTorch and optax have the latter). `dense(gradient)` sums the
slices first; Adam's moments are dense anyway.
"""


def dense(gradient):
    """`gradient` as a dense tensor if it is a `tf.IndexedSlices`."""
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient
