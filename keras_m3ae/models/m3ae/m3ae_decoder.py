"""The lightweight M3AE decoder used only for pretraining."""

import keras
from keras import ops

from keras_m3ae.layers.dense import TokenDense
from keras_m3ae.layers.embedding import PositionTypeEmbedding
from keras_m3ae.layers.masking import gather_tokens
from keras_m3ae.layers.transformer import TransformerStack


@keras.saving.register_keras_serializable(package="keras_m3ae")
class M3AEDecoder(keras.layers.Layer):
    """Rebuilds the full token sequence and predicts pixels and token ids.

    Encoder outputs (cls included) are projected to `hidden_dim`; removed
    positions are filled with one learned mask vector per modality; tokens
    are put back in their original order; fixed sin-cos positions and a
    second pair of learned type vectors are added; a small pre-LN
    transformer runs; an image head predicts `patch_dim` pixel values per
    patch and a text head predicts vocabulary logits per token.

    Args:
        grid_size: `(grid_h, grid_w)` patches of the image.
        patch_dim: int. Pixel values per patch, `patch_size**2 * channels`.
        vocabulary_size: int or None (image only).
        max_text_length: int. Text length.
        hidden_dim: int. Decoder width (512 in the papers).
        num_layers: int. Decoder blocks (8).
        num_heads: int. Decoder heads (16).
        mlp_ratio: float. MLP width multiple.
        layer_norm_epsilon: float. LayerNorm epsilon.
        gelu_approximate: bool. Tanh GELU in the MLPs (reference M3AE).
        use_type_embedding: bool. Learned type vectors (False: MAE/ViTMAE).

    Example:
    >>> decoder = M3AEDecoder((4, 4), 192, None, 0, hidden_dim=32, num_layers=1, num_heads=4)
    """

    TEXT_HEAD = "text_head"  # the sharding layout is built from this name

    def __init__(
        self,
        grid_size,
        patch_dim,
        vocabulary_size,
        max_text_length,
        hidden_dim=512,
        num_layers=8,
        num_heads=16,
        mlp_ratio=4.0,
        layer_norm_epsilon=1e-6,
        gelu_approximate=False,
        use_type_embedding=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.gelu_approximate = gelu_approximate
        self.use_type_embedding = use_type_embedding
        self.grid_size = tuple(grid_size)
        self.patch_dim = patch_dim
        self.vocabulary_size = vocabulary_size
        self.max_text_length = max_text_length
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = self.dtype_policy

        def dense(units, name):
            return TokenDense(units, kernel_initializer="glorot_uniform", name=name, dtype=policy)

        self.input_projection = dense(hidden_dim, "input_projection")
        self.image_position_type = PositionTypeEmbedding(
            self.grid_size,
            hidden_dim,
            use_type_embedding=use_type_embedding,
            dtype=policy,
            name="image_position_type",
        )
        self.transformer = TransformerStack(
            num_layers,
            hidden_dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            layer_norm_epsilon=layer_norm_epsilon,
            gelu_approximate=gelu_approximate,
            dtype=policy,
            name="transformer",
        )
        self.image_head = dense(patch_dim, "image_head")
        if vocabulary_size:
            self.text_position_type = PositionTypeEmbedding(
                max_text_length,
                hidden_dim,
                use_type_embedding=use_type_embedding,
                dtype=policy,
                name="text_position_type",
            )
            self.text_head = dense(vocabulary_size, self.TEXT_HEAD)

    def build(self, input_shape):
        self.input_projection.build(input_shape)
        shape = (None, None, self.hidden_dim)
        normal = keras.initializers.RandomNormal(stddev=0.02)
        self.image_mask_token = self.add_weight(
            shape=(self.hidden_dim,), initializer=normal, name="image_mask_token"
        )
        self.image_position_type.build(shape)
        self.transformer.build(shape)
        self.image_head.build(shape)
        if self.vocabulary_size:
            self.text_mask_token = self.add_weight(
                shape=(self.hidden_dim,), initializer=normal, name="text_mask_token"
            )
            self.text_position_type.build(shape)
            self.text_head.build(shape)

    def _unshuffle(self, kept, restore_ids, visible, mask_token):
        # [kept | filler] -> original order; every non-visible position
        # (removed, or kept only to keep shapes static) becomes the mask token.
        length = restore_ids.shape[1]
        filler = ops.zeros(
            (ops.shape(kept)[0], length - kept.shape[1], self.hidden_dim), kept.dtype
        )
        full = gather_tokens(ops.concatenate([kept, filler], axis=1), restore_ids)
        mask_token = ops.cast(mask_token, kept.dtype)
        return ops.where(ops.expand_dims(visible, -1), full, mask_token)

    def call(
        self,
        encoded,
        image_restore_ids,
        image_visible,
        num_image_kept,
        text_restore_ids=None,
        text_visible=None,
        attention_mask=None,
        training=False,
        return_attention_scores=False,
    ):
        """Decodes the encoder output of the visible tokens.

        Args:
            encoded: `(B, 1 + Ki + Kt, D_encoder)`, `[cls | image | text]`.
            image_restore_ids: int `(B, N)` from `random_masking`.
            image_visible: bool `(B, N)`, visible patches in original order.
            num_image_kept: int. Image tokens in `encoded` (Ki); the rest
                after them are text.
            text_restore_ids: int `(B, T)` (M3AE only).
            text_visible: bool `(B, T)` (M3AE only).
            attention_mask: bool `(B, 1 + N + T)`: False for padding and
                absent images, which receive no attention.
            training: bool.
            return_attention_scores: bool. Also return the blocks' scores.

        Returns:
            dict with `image_predictions` `(B, N, patch_dim)` and, for M3AE,
            `text_logits` `(B, T, vocabulary_size)`; plus
            `attention_scores` if asked.
        """
        x = self.input_projection(encoded)
        num_patches = image_restore_ids.shape[1]
        parts = [x[:, :1]]
        image = self._unshuffle(
            x[:, 1 : 1 + num_image_kept], image_restore_ids, image_visible, self.image_mask_token
        )
        parts.append(self.image_position_type(image))
        if text_restore_ids is not None:
            text = self._unshuffle(
                x[:, 1 + num_image_kept :], text_restore_ids, text_visible, self.text_mask_token
            )
            parts.append(self.text_position_type(text))
        x = self.transformer(
            ops.concatenate(parts, axis=1),
            attention_mask=attention_mask,
            training=training,
            return_attention_scores=return_attention_scores,
        )
        if return_attention_scores:
            x, scores = x
        outputs = {"image_predictions": self.image_head(x[:, 1 : 1 + num_patches])}
        if text_restore_ids is not None:
            outputs["text_logits"] = self.text_head(x[:, 1 + num_patches :])
        if return_attention_scores:
            outputs["attention_scores"] = scores
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "grid_size": self.grid_size,
                "patch_dim": self.patch_dim,
                "vocabulary_size": self.vocabulary_size,
                "max_text_length": self.max_text_length,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "gelu_approximate": self.gelu_approximate,
                "use_type_embedding": self.use_type_embedding,
            }
        )
        return config
