"""A Dense layer for token sequences, computed as one 2-D matmul."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_m3ae")
class TokenDense(keras.layers.Dense):
    """`keras.layers.Dense` that flattens the leading axes around the matmul.

    Same weights, initialisers, dtype policy and results as
    `keras.layers.Dense`; inputs `(..., features)` of rank above 2 are
    reshaped to `(tokens, features)` for the matmul and back afterwards.
    The reshapes move no data on any backend; on JAX's CPU backend they
    matter, because XLA compiles the gradient of a `(B, L, D) x (D, E)`
    contraction into slower code than that of the same 2-D matmul.

    Args:
        units: int. Output width.
        **kwargs: passed to `keras.layers.Dense`.

    Example:

    >>> TokenDense(8)(np.zeros((2, 5, 4))).shape
    (2, 5, 8)
    """

    def call(self, inputs, training=None):
        shape = ops.shape(inputs)
        if len(shape) <= 2:
            return super().call(inputs, training=training)
        outputs = super().call(ops.reshape(inputs, (-1, shape[-1])), training=training)
        return ops.reshape(outputs, (*shape[:-1], self.units))
