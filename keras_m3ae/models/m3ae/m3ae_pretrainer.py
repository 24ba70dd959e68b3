"""M3AE / MAE pretraining: mask, encode visible tokens, decode, reconstruct."""

import collections

import keras
from keras import ops

from keras_m3ae.data.checks import batch_value_errors
from keras_m3ae.data.checks import contract_errors
from keras_m3ae.layers.masking import gather_tokens
from keras_m3ae.layers.masking import num_kept
from keras_m3ae.layers.masking import random_masking
from keras_m3ae.layers.masking import random_text_masking
from keras_m3ae.layers.patching import patchify
from keras_m3ae.models.m3ae import m3ae_distribution
from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone
from keras_m3ae.models.m3ae.m3ae_decoder import M3AEDecoder
from keras_m3ae.models.m3ae.m3ae_losses import TEXT_LOSS_REDUCTIONS
from keras_m3ae.models.m3ae.m3ae_losses import image_reconstruction_loss
from keras_m3ae.models.m3ae.m3ae_losses import text_prediction_loss
from keras_m3ae.optimizers.recipes import configure_optimizer
from keras_m3ae.optimizers.recipes import pretrain_optimizer

# One modality after masking: the kept tokens `(B, K, D)`, the permutation
# back to the original order, visibility in the original order, and (text)
# which of the kept tokens are really visible.
_Masked = collections.namedtuple("_Masked", ["tokens", "restore_ids", "visible", "kept_visible"])


def _present(patch_mask, has_image):
    """`patch_mask` `(B, N)`, False on every patch of an absent image."""
    if has_image is None:
        return patch_mask
    return ops.logical_and(patch_mask, has_image[:, None])


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
        image_mask_ratio: float in (0, 1). Fraction of patches masked (0.75).
        text_mask_ratio: float in (0, 1). Fraction of real tokens masked
            (0.75); any value for MAE (no text).
        image_loss_weight: float (1.0).
        text_loss_weight: float (0.5, the paper's value, Table 2 and
            Sec. 4, and the reference README's pretraining command; the
            flag default of the reference `m3ae_main.py` is 0.1: pass 0.1
            to reproduce a run made with that script's defaults).
        norm_pix_loss: bool. Normalise each target patch by its mean and std.
        text_loss_reduction: `"per_example"` (default, the reference M3AE
            code): the text loss and accuracy average each example's masked
            tokens, then the examples (a caption-less example counts 0), so
            short captions weigh as much as long ones. `"per_token"`: the
            mean over all masked tokens of the batch, the rule of earlier
            versions. Configs saved without the key load with the new
            default: the same weights, but a different text loss (and so
            different training) for batches whose captions differ in length.
        seed: optional int for the masking `SeedGenerator`.
        allow_zero_mask_ratio: bool. Accept a mask ratio of 0 for a
            modality the model takes (its loss is then always 0 and never
            trains): only for a model that masks nothing, e.g. to look at
            its reconstructions. Default False: a ratio of 0 is refused.

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
        text_loss_reduction="per_example",
        seed=None,
        allow_zero_mask_ratio=False,
        **kwargs,
    ):
        if text_loss_reduction not in TEXT_LOSS_REDUCTIONS:
            raise ValueError(
                f"`text_loss_reduction` must be one of {TEXT_LOSS_REDUCTIONS}; "
                f"got {text_loss_reduction!r}."
            )
        for name, ratio in (("image_mask_ratio", image_mask_ratio), ("text_mask_ratio", text_mask_ratio)):
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1); got {ratio}.")
        zero = [name for name, ratio, used in (
            ("image_mask_ratio", image_mask_ratio, True),
            ("text_mask_ratio", text_mask_ratio, backbone.has_text)) if used and ratio == 0]
        if zero and not allow_zero_mask_ratio:
            raise ValueError(
                f"`{zero[0]}` is 0: nothing of that modality is masked, so its loss is always "
                "0 and its objective never trains. Use a ratio in (0, 1) (the papers: 0.75); "
                "for a model that masks nothing (looking at reconstructions, evaluation), "
                "pass `allow_zero_mask_ratio=True`.")
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
        self.text_loss_reduction = text_loss_reduction
        self.seed = seed
        self.allow_zero_mask_ratio = allow_zero_mask_ratio
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
        """Masks, encodes the visible tokens and decodes every position.

        Returns:
            dict: `image_mask` `(B, N)` and `text_mask` `(B, T)` (True where
            the loss scores), `image_predictions` `(B, N, patch_dim)`,
            `text_logits` `(B, T, vocabulary_size)`, and with
            `return_attention_scores` the `encoder_attention_scores` and
            `decoder_attention_scores` lists. No text keys for MAE.
        """
        image_noise, text_noise = self._draw_noise(inputs, image_noise, text_noise)
        has_image, padding_mask = self._presence(inputs)
        image = self._embed_and_mask_images(inputs["images"], image_noise)
        text = self._embed_and_mask_text(inputs.get("token_ids"), padding_mask, text_noise)
        outputs = self._loss_masks(image, text, has_image, padding_mask)

        encoded = self.backbone.encode(
            image.tokens,
            text.tokens,
            image_valid=has_image,
            text_valid=text.kept_visible,
            training=training,
            return_attention_scores=return_attention_scores,
        )
        if return_attention_scores:
            encoded, outputs["encoder_attention_scores"] = encoded
        decoded = self.decoder(
            encoded,
            image.restore_ids,
            image.visible,
            num_image_kept=self.num_image_kept,
            text_restore_ids=text.restore_ids,
            text_visible=text.visible,
            attention_mask=self._decoder_attention_mask(image.visible, has_image, padding_mask),
            training=training,
            return_attention_scores=return_attention_scores,
        )
        if return_attention_scores:
            outputs["decoder_attention_scores"] = decoded.pop("attention_scores")
        outputs.update(decoded)
        return outputs

    def _draw_noise(self, inputs, image_noise, text_noise):
        """Uniform masking noise for each modality the caller gave none for."""
        batch_size = ops.shape(inputs["images"])[0]
        if image_noise is None:
            image_noise = keras.random.uniform(
                (batch_size, self.backbone.num_patches), seed=self.seed_generator
            )
        if text_noise is None and self.backbone.has_text:
            text_noise = keras.random.uniform(
                (batch_size, self.backbone.max_text_length), seed=self.seed_generator
            )
        return image_noise, text_noise

    def _presence(self, inputs):
        """`has_image` `(B,)` and `padding_mask` `(B, T)` as bools, or None."""
        has_image = inputs.get("has_image")
        if has_image is not None:
            has_image = ops.cast(has_image, "bool")
        padding_mask = None
        if self.backbone.has_text:
            padding_mask = ops.cast(inputs["padding_mask"], "bool")
        return has_image, padding_mask

    def _embed_and_mask_images(self, images, noise):
        keep_ids, restore_ids, visible = random_masking(noise, self.num_image_kept)
        tokens = gather_tokens(self.backbone.embed_images(images), keep_ids)
        return _Masked(tokens, restore_ids, visible, None)

    def _embed_and_mask_text(self, token_ids, padding_mask, noise):
        if not self.backbone.has_text:
            return _Masked(None, None, None, None)
        keep_ids, restore_ids, visible = random_text_masking(
            noise, padding_mask, self.text_mask_ratio, self.num_text_kept
        )
        tokens = gather_tokens(self.backbone.embed_text(token_ids), keep_ids)
        # Padding fills a short caption's spare encoder slots; it gets no attention.
        kept_visible = ops.take_along_axis(visible, keep_ids, axis=1)
        return _Masked(tokens, restore_ids, visible, kept_visible)

    def _loss_masks(self, image, text, has_image, padding_mask):
        """What the losses score: masked patches of present images, masked real tokens."""
        masks = {"image_mask": _present(ops.logical_not(image.visible), has_image)}
        if padding_mask is not None:
            masks["text_mask"] = ops.logical_and(padding_mask, ops.logical_not(text.visible))
        return masks

    def _decoder_attention_mask(self, image_visible, has_image, padding_mask):
        """`[cls | patches | tokens]` validity: absent images and padding get no attention."""
        if has_image is None and padding_mask is None:
            return None
        cls_and_patches = [
            ops.ones_like(image_visible[:, :1]),
            _present(ops.ones_like(image_visible), has_image),
        ]
        extra = [] if padding_mask is None else [padding_mask]
        return ops.concatenate(cls_and_patches + extra, axis=1)

    def compute_losses(self, inputs, outputs):
        """Returns `{"loss", "image_loss"[, "text_loss", "text_accuracy"]}`."""
        patches = patchify(inputs["images"], self.backbone.patch_size)
        # Named scopes: profiles and HLO metadata attribute the work to each loss.
        with keras.name_scope("image_loss"):
            image_loss = image_reconstruction_loss(
                outputs["image_predictions"], patches, outputs["image_mask"], self.norm_pix_loss
            )
        losses = {"image_loss": image_loss, "loss": self.image_loss_weight * image_loss}
        if self.backbone.has_text:
            with keras.name_scope("text_loss"):
                text_loss, accuracy = text_prediction_loss(
                    outputs["text_logits"],
                    inputs["token_ids"],
                    outputs["text_mask"],
                    reduction=self.text_loss_reduction,
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
        """This library's default weight-decay exemptions (`M3AEBackbone.no_weight_decay_variables`).

        Biases, norms, CLS/type/mask vectors, the text embedding and a
        learned position table, over the backbone and the decoder.
        """
        return self.backbone.no_weight_decay_variables(self.weights)

    def compile(self, optimizer="auto", jit_compile="auto", **kwargs):
        """Configures training with the pretraining recipe or the given optimizer.

        `optimizer="auto"` is `keras_m3ae.optimizers.pretrain_optimizer()`:
        `keras_m3ae.optimizers.AdamW(1.5e-4, weight_decay=0.05)`, betas
        (0.9, 0.95), epsilon 1e-8 (scale the learning rate by batch/256
        yourself), whose update runs PyTorch's fused AdamW kernel on torch
        and is ordered after all gradients on JAX.

        A given optimizer is used as given: its class, update and settings
        are not changed. Weight decay: if it decays, is not built yet, and
        has no exemptions of its own (`exclude_from_weight_decay()` never
        called, no `weight_decay_exempt_names`), it gets this library's
        default exemptions, `no_weight_decay_variables()` (rank <= 1 and
        embedding matrices; not the papers' rule: see
        `pretrain_optimizer(recipe="mae" / "m3ae")` for the originals').
        One with exemptions of its own keeps them; call
        `optimizer.exclude_from_weight_decay()` with no arguments to decay
        every variable.

        Args:
            optimizer: `"auto"`, a Keras optimizer or its name.
            jit_compile: bool or `"auto"` (on where the backend supports it).
            **kwargs: passed to `keras.Model.compile`.
        """
        if isinstance(optimizer, str) and optimizer == "auto":
            optimizer = pretrain_optimizer()
        optimizer = configure_optimizer(optimizer, self.no_weight_decay_variables())
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    # --- Input checks ---
    #
    # Where inputs are checked, and why there (Keras 3.15). Structure (keys,
    # shapes, dtypes) is checked in `__call__`: every entry point reaches it,
    # directly or when Keras traces the train/test/predict step, so that one
    # hook covers all of them (at trace time, once per compile). Values
    # (token id ranges, NaN, unnormalised pixels) cannot be checked there:
    # under jit `call` and `compute_loss` see traced values, and an error
    # inside a compiled step never reaches the user. Keras has no public
    # hook that sees the caller's raw data before its data adapters turn it
    # into tensors, so values are checked where data enters, once per call:
    # the data-taking entry points below, all through `_check_data`. For a
    # dataset that costs one batch (the first, read once more), not a pass.

    def _check_data(self, x, check_first_batch=False):
        """Checks raw data where it enters: arrays by value, datasets by spec.

        A dataset of `keras_m3ae.data` is checked by its `data_spec` (image
        size, text length, tokenizer vocabulary against the backbone's);
        any other `tf.data.Dataset` by its element spec and, with
        `check_first_batch`, by the values of its first batch
        (`keras_m3ae.data.checks.batch_value_errors`). Generators and
        `PyDataset`s, read lazily, are left to Keras;
        `keras_m3ae.data.checks.validate_batches` checks every batch of any
        dataset.
        """
        data_spec = getattr(x, "data_spec", None)
        if data_spec is not None:
            self._check_data_spec(data_spec)
        spec = getattr(x, "element_spec", None)
        if spec is not None:
            self.backbone.check_inputs(spec[0] if isinstance(spec, tuple) else spec)
            if check_first_batch and data_spec is None and hasattr(x, "take"):
                self._check_first_batch(x)
            return
        if not isinstance(x, (dict, list, tuple)) and not hasattr(x, "shape"):
            return
        self.backbone.check_inputs(x)

    def _check_first_batch(self, ds):
        """The values of a foreign dataset's first batch (one extra read of it)."""
        for batch in ds.take(1).as_numpy_iterator():
            errors = batch_value_errors(
                batch, self.backbone.vocabulary_size if self.backbone.has_text else None)
            if errors:
                raise ValueError(
                    "The first batch of the dataset cannot train the model: "
                    + "; ".join(errors) + ". (Checked on the first batch only; wrap the "
                    "dataset in `keras_m3ae.data.checks.validate_batches` to check every "
                    "batch, or pass `check_first_batch=False` to skip this check.)")

    def _check_data_spec(self, data_spec):
        """A dataset's promises (`keras_m3ae.data.checks.DataSpec`) against the backbone."""
        backbone = self.backbone
        errors = contract_errors(
            data_spec, backbone.image_size,
            backbone.max_text_length if backbone.has_text else None,
            backbone.vocabulary_size if backbone.has_text else None)
        if errors:
            raise ValueError("The dataset does not fit the model: " + "; ".join(errors) + ".")

    def __call__(self, inputs, *args, **kwargs):
        self._check_data(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def fit(self, x=None, *args, check_first_batch=True, **kwargs):
        """`keras.Model.fit`, with the input checks (see `_check_data`).

        Args:
            check_first_batch: bool. For a `tf.data.Dataset` not built by
                `keras_m3ae.data`, read its first batch once more before
                training and refuse values that cannot train (ids outside
                the vocabulary, NaN or unnormalised images). Default True.
        """
        self._check_data(x, check_first_batch)
        if hasattr(x, "element_spec"):
            # Our pipelines shuffle already; Keras warns on shuffle=True for them.
            kwargs.setdefault("shuffle", False)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, check_first_batch=True, **kwargs):
        """`keras.Model.evaluate`, with the input checks of `fit`."""
        self._check_data(x, check_first_batch)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._check_data(x)
        return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x=None, *args, **kwargs):
        self._check_data(x)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x=None, *args, **kwargs):
        self._check_data(x)
        return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x):
        self._check_data(x)
        return super().predict_on_batch(x)

    @classmethod
    def get_layout_map(
        cls, device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"
    ):
        """`keras.distribution.LayoutMap` for the backbone, decoder and heads.

        See `keras_m3ae/models/m3ae/m3ae_distribution.py` for the layout.
        """
        return m3ae_distribution.layout_map(
            device_mesh,
            model_parallel_dim_name,
            data_parallel_dim_name,
            token_embedding=M3AEBackbone.TOKEN_EMBEDDING,
            text_head=M3AEDecoder.TEXT_HEAD,
        )

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
                "text_loss_reduction": self.text_loss_reduction,
                "seed": self.seed,
                "allow_zero_mask_ratio": self.allow_zero_mask_ratio,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)
