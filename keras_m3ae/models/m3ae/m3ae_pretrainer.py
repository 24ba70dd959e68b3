"""M3AE / MAE pretraining: mask, encode visible tokens, decode, reconstruct."""

import keras
import numpy as np
from keras import ops

from keras_m3ae.layers.masking import gather_tokens
from keras_m3ae.layers.masking import num_kept
from keras_m3ae.layers.masking import random_masking
from keras_m3ae.layers.patching import patchify
from keras_m3ae.layers.patching import unpatchify
from keras_m3ae.models.m3ae import m3ae_distribution
from keras_m3ae.models.m3ae.m3ae_decoder import M3AEDecoder
from keras_m3ae.models.m3ae.m3ae_losses import image_reconstruction_loss
from keras_m3ae.models.m3ae.m3ae_losses import normalize_patches
from keras_m3ae.models.m3ae.m3ae_losses import text_prediction_loss
from keras_m3ae.optimizers.torch_adam import use_inplace_update

# Padding sorts after every real token: uniform noise lives in [0, 1).
_PADDING_NOISE_OFFSET = 2.0


@keras.saving.register_keras_serializable(package="keras_m3ae")
class M3AEPretrainer(keras.Model):
    """Masked image-and-text pretraining of an `M3AEBackbone` (M3AE / MAE).

    Each example keeps its own random subset of patches and of its real
    caption tokens (the ratio applies to each caption's non-padding tokens,
    not to the padded length); only those reach the encoder. A light decoder
    rebuilds the full sequence and predicts the pixels of masked patches
    (MSE, optionally on per-patch normalised pixels) and the ids of masked
    tokens (cross-entropy). Loss is
    `image_loss_weight * image_loss + text_loss_weight * text_loss`.

    Examples without a caption (`padding_mask` all False) or without an
    image (`has_image` False) train in the same batch with the same loss:
    the absent modality receives no attention and adds no loss.

    Inputs are a dict: `images` float `(B, H, W, C)`, and for M3AE
    `token_ids` int `(B, T)` and `padding_mask` `(B, T)` (True = real token);
    optional `has_image` bool `(B,)`. Masking draws from a `SeedGenerator`
    (`seed`), or from noise passed to `call` (`image_noise`, `text_noise`,
    uniform in [0, 1), lower = kept), which makes it reproducible.

    Args:
        backbone: `M3AEBackbone`.
        decoder_hidden_dim: int. Decoder width (512).
        decoder_num_layers: int. Decoder blocks (8).
        decoder_num_heads: int. Decoder heads (16).
        image_mask_ratio: float in [0, 1). Fraction of patches masked (0.75).
        text_mask_ratio: float in [0, 1). Fraction of real tokens masked (0.75).
        image_loss_weight: float (1.0).
        text_loss_weight: float (0.5).
        norm_pix_loss: bool. Normalise each target patch by its mean and std.
        seed: optional int for the masking `SeedGenerator`.

    Example:
    >>> backbone = keras_m3ae.M3AEBackbone(
    ...     image_size=32, patch_size=8, vocabulary_size=1000,
    ...     max_text_length=16, hidden_dim=64, num_layers=2, num_heads=4)
    >>> pretrainer = keras_m3ae.M3AEPretrainer(
    ...     backbone, decoder_hidden_dim=32, decoder_num_layers=1, decoder_num_heads=4)
    >>> pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-3, beta_2=0.95))
    >>> history = pretrainer.fit(x, batch_size=4, epochs=3)
    """

    def __init__(
        self,
        backbone,
        decoder_hidden_dim=512,
        decoder_num_layers=8,
        decoder_num_heads=16,
        image_mask_ratio=0.75,
        text_mask_ratio=0.75,
        image_loss_weight=1.0,
        text_loss_weight=0.5,
        norm_pix_loss=False,
        seed=None,
        **kwargs,
    ):
        for name, ratio in (("image_mask_ratio", image_mask_ratio), ("text_mask_ratio", text_mask_ratio)):
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1); got {ratio}.")
        kwargs.setdefault("dtype", backbone.dtype_policy)
        super().__init__(**kwargs)
        self.backbone = backbone
        self.decoder = M3AEDecoder(
            backbone.grid_size,
            backbone.patch_size**2 * backbone.num_channels,
            backbone.vocabulary_size,
            backbone.max_text_length,
            hidden_dim=decoder_hidden_dim,
            num_layers=decoder_num_layers,
            num_heads=decoder_num_heads,
            mlp_ratio=backbone.mlp_ratio,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            # The decoder follows the encoder's GELU form and type vectors.
            gelu_approximate=getattr(backbone, "gelu_approximate", False),
            use_type_embedding=getattr(backbone, "use_type_embedding", True),
            dtype=backbone.dtype_policy,
            name="decoder",
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.image_loss_tracker = keras.metrics.Mean(name="image_loss")
        if backbone.has_text:
            self.text_loss_tracker = keras.metrics.Mean(name="text_loss")
            self.text_accuracy_tracker = keras.metrics.Mean(name="text_accuracy")

        self.decoder_hidden_dim = decoder_hidden_dim
        self.decoder_num_layers = decoder_num_layers
        self.decoder_num_heads = decoder_num_heads
        self.image_mask_ratio = image_mask_ratio
        self.text_mask_ratio = text_mask_ratio
        self.image_loss_weight = image_loss_weight
        self.text_loss_weight = text_loss_weight
        self.norm_pix_loss = norm_pix_loss
        self.seed = seed
        self.num_image_kept = num_kept(backbone.num_patches, image_mask_ratio)
        self.num_text_kept = num_kept(backbone.max_text_length, text_mask_ratio)
        self.build()

    def build(self, input_shape=None):
        self.decoder.build((None, None, self.backbone.hidden_dim))
        self.built = True

    # --- Forward pass ---

    def call(
        self,
        inputs,
        training=False,
        image_noise=None,
        text_noise=None,
        return_attention_scores=False,
    ):
        backbone = self.backbone
        backbone.check_inputs(inputs)
        images = inputs["images"]
        batch_size = ops.shape(images)[0]
        has_image = inputs.get("has_image")
        if has_image is not None:
            has_image = ops.cast(has_image, "bool")

        if image_noise is None:
            image_noise = keras.random.uniform(
                (batch_size, backbone.num_patches), seed=self.seed_generator
            )
        image_keep, image_restore, image_visible = random_masking(
            image_noise, self.num_image_kept
        )
        image_tokens = gather_tokens(backbone.embed_images(images), image_keep)
        image_present = ops.ones_like(image_visible)
        if has_image is not None:
            image_present = ops.logical_and(image_present, has_image[:, None])
        outputs = {"image_mask": ops.logical_and(ops.logical_not(image_visible), image_present)}

        text_tokens = text_keep_visible = text_restore = text_visible = None
        decoder_mask = [ops.ones_like(image_visible[:, :1]), image_present]
        if backbone.has_text:
            padding_mask = ops.cast(inputs["padding_mask"], "bool")
            if text_noise is None:
                text_noise = keras.random.uniform(
                    (batch_size, backbone.max_text_length), seed=self.seed_generator
                )
            text_noise = ops.where(
                padding_mask, text_noise, ops.cast(text_noise, "float32") + _PADDING_NOISE_OFFSET
            )
            # The ratio applies to each caption's own real tokens.
            num_real = ops.sum(ops.cast(padding_mask, "float32"), axis=1)
            num_visible = ops.minimum(
                ops.cast(ops.floor(num_real * (1.0 - self.text_mask_ratio)), "int32"),
                self.num_text_kept,
            )
            text_keep, text_restore, text_visible = random_masking(
                text_noise, self.num_text_kept, num_visible
            )
            text_tokens = gather_tokens(backbone.embed_text(inputs["token_ids"]), text_keep)
            text_keep_visible = ops.take_along_axis(text_visible, text_keep, axis=1)
            outputs["text_mask"] = ops.logical_and(padding_mask, ops.logical_not(text_visible))
            decoder_mask.append(padding_mask)

        encoded = backbone.encode(
            image_tokens,
            text_tokens,
            image_valid=has_image,
            text_valid=text_keep_visible,
            training=training,
            return_attention_scores=return_attention_scores,
        )
        if return_attention_scores:
            encoded, outputs["encoder_attention_scores"] = encoded
        decoded = self.decoder(
            encoded,
            image_restore,
            image_visible,
            num_image_kept=self.num_image_kept,
            text_restore_ids=text_restore,
            text_visible=text_visible,
            attention_mask=ops.concatenate(decoder_mask, axis=1)
            if (has_image is not None or backbone.has_text)
            else None,
            training=training,
            return_attention_scores=return_attention_scores,
        )
        if return_attention_scores:
            outputs["decoder_attention_scores"] = decoded.pop("attention_scores")
        outputs.update(decoded)
        return outputs

    def compute_losses(self, inputs, outputs):
        """Returns `{"loss", "image_loss"[, "text_loss", "text_accuracy"]}`."""
        patches = patchify(inputs["images"], self.backbone.patch_size)
        image_loss = image_reconstruction_loss(
            outputs["image_predictions"], patches, outputs["image_mask"], self.norm_pix_loss
        )
        losses = {"image_loss": image_loss, "loss": self.image_loss_weight * image_loss}
        if self.backbone.has_text:
            text_loss, accuracy = text_prediction_loss(
                outputs["text_logits"], inputs["token_ids"], outputs["text_mask"]
            )
            losses.update(text_loss=text_loss, text_accuracy=accuracy)
            losses["loss"] = losses["loss"] + self.text_loss_weight * text_loss
        return losses

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        losses = self.compute_losses(x, y_pred)
        self.image_loss_tracker.update_state(losses["image_loss"])
        if self.backbone.has_text:
            self.text_loss_tracker.update_state(losses["text_loss"])
            self.text_accuracy_tracker.update_state(losses["text_accuracy"])
        loss = losses["loss"]
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    # --- Training setup ---

    def no_weight_decay_variables(self):
        """Biases, norms, CLS/type/mask vectors and the text embedding."""
        decoder = [v for v in self.decoder.weights if len(v.shape) <= 1]
        return self.backbone.no_weight_decay_variables() + decoder

    def compile(self, optimizer="auto", jit_compile="auto", **kwargs):
        """Configures training; defaults follow the papers.

        `optimizer="auto"` is AdamW(1.5e-4, weight_decay=0.05, betas
        (0.9, 0.95)) (scale the learning rate by batch/256 yourself). For any
        optimizer with weight decay, biases, norms, CLS/type/mask vectors and
        embeddings are excluded from decay, as in the papers. On the torch
        backend a Keras `Adam`/`AdamW` gets an in-place update of the same
        formula (`keras_m3ae.optimizers.torch_adam`): Keras's own materialises
        several model-sized temporaries per step.

        Args:
            optimizer: `"auto"` or a Keras optimizer.
            jit_compile: bool or `"auto"` (on where the backend supports it).
            **kwargs: passed to `keras.Model.compile`.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(
                learning_rate=1.5e-4, weight_decay=0.05, beta_1=0.9, beta_2=0.95
            )
        optimizer = keras.optimizers.get(optimizer)
        if getattr(optimizer, "weight_decay", None) and not optimizer.built:
            optimizer.exclude_from_weight_decay(var_list=self.no_weight_decay_variables())
        use_inplace_update(optimizer)
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def _check_data(self, x):
        spec = getattr(x, "element_spec", None)
        if spec is not None:
            x = spec[0] if isinstance(spec, tuple) else spec
        if isinstance(x, dict) or spec is None:
            self.backbone.check_inputs(x)

    def fit(self, x=None, *args, **kwargs):
        self._check_data(x)
        if hasattr(x, "element_spec"):
            # Our pipelines shuffle already; Keras warns on shuffle=True for them.
            kwargs.setdefault("shuffle", False)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._check_data(x)
        return super().evaluate(x, *args, **kwargs)

    @classmethod
    def get_layout_map(
        cls, device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"
    ):
        """`keras.distribution.LayoutMap` for the backbone, decoder and heads.

        See `keras_m3ae/models/m3ae/m3ae_distribution.py` for the layout.
        """
        return m3ae_distribution.pretrainer_layout_map(
            device_mesh, model_parallel_dim_name, data_parallel_dim_name
        )

    # --- Looking inside ---

    def reconstruct(self, inputs, image_noise=None, text_noise=None):
        """Masked and reconstructed images, in the inputs' pixel space.

        Reconstructions of `norm_pix_loss` models are un-normalised with each
        target patch's own mean and std, as the MAE visualisations do.

        Args:
            inputs: a batch dict, as for `call`.
            image_noise: optional `(B, num_patches)` noise for the mask.
            text_noise: optional `(B, max_text_length)` noise.

        Returns:
            dict of numpy arrays: `images`, `masked_images` (masked patches
            zeroed), `reconstructions` (predictions with the visible patches
            pasted back), `predictions` (raw, every patch predicted),
            `image_mask` `(B, N)`, and for M3AE `text_mask` and
            `predicted_token_ids` `(B, T)`.
        """
        outputs = self(inputs, training=False, image_noise=image_noise, text_noise=text_noise)
        backbone = self.backbone
        patches = patchify(ops.convert_to_tensor(inputs["images"], "float32"), backbone.patch_size)
        predictions = ops.cast(outputs["image_predictions"], "float32")
        if self.norm_pix_loss:
            _, mean, std = normalize_patches(patches)
            predictions = predictions * std + mean
        mask = ops.cast(outputs["image_mask"], "float32")[..., None]
        args = (backbone.patch_size, backbone.grid_size, backbone.num_channels)
        result = {
            "images": ops.convert_to_numpy(inputs["images"]),
            "masked_images": unpatchify(patches * (1 - mask), *args),
            "reconstructions": unpatchify(predictions * mask + patches * (1 - mask), *args),
            "predictions": unpatchify(predictions, *args),
            "image_mask": outputs["image_mask"],
        }
        if backbone.has_text:
            result["text_mask"] = outputs["text_mask"]
            result["predicted_token_ids"] = ops.argmax(outputs["text_logits"], axis=-1)
        return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in result.items()}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.layers.serialize(self.backbone),
                "decoder_hidden_dim": self.decoder_hidden_dim,
                "decoder_num_layers": self.decoder_num_layers,
                "decoder_num_heads": self.decoder_num_heads,
                "image_mask_ratio": self.image_mask_ratio,
                "text_mask_ratio": self.text_mask_ratio,
                "image_loss_weight": self.image_loss_weight,
                "text_loss_weight": self.text_loss_weight,
                "norm_pix_loss": self.norm_pix_loss,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)
