"""LayerNorm over the last axis, written as one centred pass."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_m3ae")
class CenteredLayerNorm(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` computed as `(x - mean) * rsqrt(var + eps)`.

    Same weights (`gamma`, `beta`), arguments, dtype handling (statistics in
    float32, output in the compute dtype) and results, to float32 rounding,
    as `keras.layers.LayerNormalization`. On JAX the normalisation over the
    last axis is written here as `c = x - mean(x)`, `c * rsqrt(mean(c**2) +
    eps) * gamma + beta`, instead of Keras's `x * inv + (beta - mean * inv)`
    with a variance that computes the mean a second time. Both forms cost
    about the same FLOPs, but XLA's CPU fusion copies the residual
    stream's chain of gradient adds into the backward fusion of every
    earlier LayerNorm instead of keeping it in memory once per block, and
    Keras's form puts 7 arrays per norm into that chain where this one puts
    2, so XLA moves fewer bytes with it. Other
    backends, other axes and the `center`/`scale`/`rms_scaling` variants use
    Keras's own code (torch's fused `layer_norm` kernel included).

    Args:
        **kwargs: passed to `keras.layers.LayerNormalization`.

    Example:

    >>> CenteredLayerNorm(epsilon=1e-6)(np.ones((2, 3, 4))).shape
    (2, 3, 4)
    """

    def call(self, inputs):
        last_axis = self.axis in (-1, [-1], len(inputs.shape) - 1, [len(inputs.shape) - 1])
        if (
            keras.config.backend() != "jax"
            or not (self.center and self.scale and last_axis)
            or self.rms_scaling
        ):
            return super().call(inputs)
        x = ops.cast(inputs, "float32")
        centered = x - ops.mean(x, axis=-1, keepdims=True)
        variance = ops.mean(ops.square(centered), axis=-1, keepdims=True)
        outputs = centered * ops.rsqrt(variance + self.epsilon)
        outputs = outputs * ops.cast(self.gamma, "float32") + ops.cast(self.beta, "float32")
        return ops.cast(outputs, self.compute_dtype)
