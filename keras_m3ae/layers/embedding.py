"""Token embeddings: patch projection, positions + modality type, CLS."""

import keras
from keras import ops

from keras_m3ae.layers.dense import TokenDense
from keras_m3ae.layers.patching import patchify
from keras_m3ae.layers.sincos import sincos_1d
from keras_m3ae.layers.sincos import sincos_2d


@keras.saving.register_keras_serializable(package="keras_m3ae")
class PatchEmbedding(keras.layers.Layer):
    """Cuts images into patches and projects each to `hidden_dim`.

    A Dense layer on flattened `(row, col, channel)` patches, as in the
    reference M3AE (equal to MAE's strided convolution with reshaped kernel).

    Args:
        patch_size: int. Side of a square patch in pixels.
        hidden_dim: int. Output width.

    Example:
    >>> PatchEmbedding(8, 64)(np.zeros((2, 32, 32, 3))).shape
    (2, 16, 64)
    """

    def __init__(self, patch_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.projection = TokenDense(
            hidden_dim,
            kernel_initializer="glorot_uniform",
            name="projection",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.projection.build((None, None, self.patch_size**2 * input_shape[-1]))

    def call(self, images):
        return self.projection(patchify(images, self.patch_size))

    def compute_output_shape(self, input_shape):
        grid = (input_shape[1] // self.patch_size) * (input_shape[2] // self.patch_size)
        return (input_shape[0], grid, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "hidden_dim": self.hidden_dim})
        return config


@keras.saving.register_keras_serializable(package="keras_m3ae")
class PositionTypeEmbedding(keras.layers.Layer):
    """Adds a fixed sin-cos position table and a learned modality type vector.

    M3AE tells the modalities apart by adding one learned "type" vector to
    every token of a modality, on top of fixed positions: 2-D for image
    patches, 1-D for text. The table is a constant, not a weight, so a model
    loads at any image size; `source_grid_size` resamples the positions to
    the extent the model was pretrained on.

    Args:
        sequence_shape: int (text length) for a 1-D table, or
            `(grid_h, grid_w)` for a 2-D one.
        hidden_dim: int. Token width.
        source_grid_size: optional `(grid_h, grid_w)`, 2-D only: the grid the
            weights were pretrained with; see `sincos_2d`.
        use_type_embedding: bool. Whether to add the learned type vector
            (True); False adds positions only and has no weight, as MAE,
            ViTMAE and reference M3AE models trained without type vectors.
        learned_positions: bool. Make the position table a trainable
            weight (`positions`, initialised with the sin-cos table), as
            timm's ViT in MAE fine-tuning has it. Default False: fixed.

    Example:
    >>> PositionTypeEmbedding((4, 4), 64)(np.zeros((2, 16, 64))).shape
    (2, 16, 64)
    """

    def __init__(
        self,
        sequence_shape,
        hidden_dim,
        source_grid_size=None,
        use_type_embedding=True,
        learned_positions=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.use_type_embedding = use_type_embedding
        self.learned_positions = learned_positions
        self.sequence_shape = (
            tuple(sequence_shape) if isinstance(sequence_shape, (list, tuple)) else sequence_shape
        )
        self.hidden_dim = hidden_dim
        self.source_grid_size = (
            tuple(source_grid_size) if source_grid_size is not None else None
        )
        if isinstance(self.sequence_shape, tuple):
            self.table = sincos_2d(self.sequence_shape, hidden_dim, self.source_grid_size)
        else:
            self.table = sincos_1d(range(self.sequence_shape), hidden_dim)

    def build(self, input_shape):
        if self.learned_positions:
            table = self.table
            self.positions = self.add_weight(
                shape=table.shape,
                initializer=lambda shape, dtype=None: ops.convert_to_tensor(table, dtype),
                name="positions",
            )
        if not self.use_type_embedding:
            return
        self.type_embedding = self.add_weight(
            shape=(self.hidden_dim,),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="type_embedding",
        )

    def call(self, x):
        if self.learned_positions:
            table = ops.cast(self.positions, self.compute_dtype)
        else:
            table = ops.convert_to_tensor(self.table, dtype=self.compute_dtype)
        if not self.use_type_embedding:
            return x + table
        return x + table + ops.cast(self.type_embedding, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_shape": self.sequence_shape,
                "hidden_dim": self.hidden_dim,
                "source_grid_size": self.source_grid_size,
                "use_type_embedding": self.use_type_embedding,
                "learned_positions": self.learned_positions,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_m3ae")
class ClassToken(keras.layers.Layer):
    """Prepends one learned CLS vector (no position, no type) to a sequence.

    Args:
        hidden_dim: int. Token width.

    Example:
    >>> ClassToken(64)(np.zeros((2, 10, 64))).shape
    (2, 11, 64)
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim

    def build(self, input_shape):
        self.cls_token = self.add_weight(
            shape=(self.hidden_dim,),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="cls_token",
        )

    def call(self, x):
        cls = ops.cast(self.cls_token, self.compute_dtype)
        cls = ops.broadcast_to(cls[None, None, :], (ops.shape(x)[0], 1, self.hidden_dim))
        return ops.concatenate([cls, x], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 1, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim})
        return config
