"""The M3AE encoder: one ViT over `[cls | image patches | text tokens]`."""

import os
from typing import NamedTuple

import keras
import numpy as np
from keras import ops
from keras_hub.models import Backbone

# keras-hub's preset registry; it has no public export (keras-hub's own
# models register from this same module).
from keras_hub.src.utils.preset_utils import register_presets

from keras_m3ae.data.constants import MAX_TEXT_LENGTH
from keras_m3ae.layers.embedding import ClassToken
from keras_m3ae.layers.embedding import PatchEmbedding
from keras_m3ae.layers.embedding import PositionTypeEmbedding
from keras_m3ae.layers.transformer import TransformerStack
from keras_m3ae.models.m3ae import m3ae_distribution
from keras_m3ae.models.m3ae import m3ae_presets
from keras_m3ae.models.m3ae import preset_integrity
from keras_m3ae.optimizers.recipes import weight_decay_exclusions


def image_size_pair(image_size):
    """`(height, width)` of an `image_size` given as an int or a pair.

    Example:
    >>> image_size_pair(224)
    (224, 224)
    """
    if isinstance(image_size, (list, tuple)):
        return tuple(image_size)
    return (image_size, image_size)


class M3AEStructure(NamedTuple):
    """The parts of an `M3AEBackbone`, from input to output.

    Everything that treats parts differently (layer-wise learning-rate decay,
    partial fine-tuning, weight-decay exclusions) reads them here instead of
    reaching into the backbone by attribute name.

    Attributes:
        embeddings: the layers at depth 0: patch embedding, image
            position/type, CLS and, for M3AE, token embedding and text
            position/type.
        blocks: the transformer blocks, input to output.
        final_norm: the encoder's final LayerNorm.
        text: the text-only layers (also in `embeddings`); image tasks never
            use them.
        embedding_matrices: lookup tables (the token embedding, a learned
            position table), which this library exempts from weight decay
            by default.
    """

    embeddings: tuple
    blocks: tuple
    final_norm: keras.layers.Layer
    text: tuple
    embedding_matrices: tuple

    def depth_groups(self):
        """Variables by depth: `[embeddings, block_0, ..., block_n-1, final norm]`."""
        embeddings = [v for layer in self.embeddings for v in layer.weights]
        blocks = [list(block.weights) for block in self.blocks]
        return [embeddings] + blocks + [list(self.final_norm.weights)]


# Pixels in [0, 1] normalised with the CC12M (or ImageNet) mean and std lie
# within about [-2.2, 2.7]; beyond this bound images are surely unnormalised.
_MAX_ABS_NORMALISED_PIXEL = 10.0


def _check_image_values(images, has_image=None):
    """Float images, and for numpy arrays values that look normalised.

    Absent images (`has_image` False) are not looked at: they take no part.
    """
    dtype = getattr(images, "dtype", None)
    if dtype is not None and "float" not in keras.backend.standardize_dtype(dtype):
        raise ValueError(
            f"`images` are {keras.backend.standardize_dtype(dtype)}; the model takes float "
            "images normalised with the CC12M mean and std "
            "(`keras_m3ae.data.normalize_image`)."
        )
    if isinstance(images, np.ndarray) and isinstance(has_image, (np.ndarray, list)):
        images = images[np.asarray(has_image, bool)]
    if isinstance(images, np.ndarray) and images.size:
        finite = np.isfinite(images)
        if not finite.all():
            raise ValueError(
                f"`images` hold {int(images.size - finite.sum())} NaN or infinite value(s) "
                f"(first at index {tuple(int(i) for i in np.argwhere(~finite)[0])}); the model "
                "cannot train on them.")
        low, high = float(images.min()), float(images.max())
        if max(abs(low), abs(high)) > _MAX_ABS_NORMALISED_PIXEL:
            raise ValueError(
                f"`images` range over [{low:.4g}, {high:.4g}]; the model takes images "
                "normalised with the CC12M mean and std (about [-2.2, 2.7]; bound "
                f"{_MAX_ABS_NORMALISED_PIXEL:g}): pixels in [0, 255] go "
                "through `keras_m3ae.data.normalize_image` first."
            )


@keras.saving.register_keras_serializable(package="keras_m3ae")
class M3AEBackbone(Backbone):
    """Multimodal masked autoencoder encoder (M3AE); image-only it is MAE.

    Images are cut into `patch_size` patches and projected; text token ids
    are embedded. Each modality gets a fixed sin-cos position table and a
    learned modality type vector, a learned CLS vector is prepended, and one
    pre-LayerNorm ViT encodes the sequence `[cls | patches | tokens]`.
    Padding tokens never receive attention.

    Called as a model, the backbone encodes every token (no masking) and
    returns `(batch, 1 + num_patches + max_text_length, hidden_dim)`. The
    pretrainer calls `embed_images`, `embed_text` and `encode` directly to
    encode only the visible tokens. With `vocabulary_size=None` the model has
    no text parameters and takes images alone: that is MAE.

    Args:
        image_size: int or `(height, width)`. Input image size.
        patch_size: int. Side of a square patch; must divide `image_size`.
        vocabulary_size: int or None. Text vocabulary size; None for MAE.
        hidden_dim: int. Token width.
        num_layers: int. Number of transformer blocks.
        num_heads: int. Attention heads per block.
        max_text_length: int. Text length the model takes (M3AE: 64).
        mlp_ratio: float. MLP width as a multiple of `hidden_dim`.
        drop_path_rate: float. Stochastic depth rate (fine-tuning only).
        layer_norm_epsilon: float. LayerNorm epsilon (1e-6).
        num_channels: int. Image channels.
        pretrain_image_size: optional int or `(height, width)`: the image size
            the weights were pretrained at, when it differs from
            `image_size`. Position tables are then resampled to cover the
            same extent.
        gelu_approximate: bool. Tanh GELU in the MLPs (the reference JAX
            M3AE, flax's `nn.gelu`); default False is the exact GELU of
            PyTorch MAE and ViTMAE.
        use_type_embedding: bool. Learned modality type vectors (True, as
            M3AE); False for MAE / ViTMAE weights, which have none.
        learned_positions: bool. Trainable image position table
            (initialised with the sin-cos one), as timm's ViT learns it in
            MAE fine-tuning. Default False: the fixed table.
        dtype: string or `keras.DTypePolicy`, e.g. `"mixed_bfloat16"`.

    Example:
    >>> backbone = keras_m3ae.M3AEBackbone(
    ...     image_size=32, patch_size=8, vocabulary_size=1000,
    ...     max_text_length=16, hidden_dim=64, num_layers=2, num_heads=4)
    >>> features = backbone({
    ...     "images": np.zeros((2, 32, 32, 3), "float32"),
    ...     "token_ids": np.ones((2, 16), "int32"),
    ...     "padding_mask": np.ones((2, 16), "int32")})
    >>> features.shape    # cls + 16 patches + 16 tokens
    (2, 33, 64)
    """

    # Sub-layer names; the sharding layouts are built from them.
    TOKEN_EMBEDDING = "token_embedding"
    ENCODER = "encoder"

    def __init__(
        self,
        image_size,
        patch_size,
        vocabulary_size,
        hidden_dim,
        num_layers,
        num_heads,
        max_text_length=MAX_TEXT_LENGTH,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=1e-6,
        num_channels=3,
        pretrain_image_size=None,
        gelu_approximate=False,
        use_type_embedding=True,
        learned_positions=False,
        dtype=None,
        **kwargs,
    ):
        height, width = image_size_pair(image_size)
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"`image_size` {image_size} is not divisible by `patch_size` "
                f"{patch_size}: images are cut into whole patches."
            )
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads})."
            )
        if hidden_dim % 4:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by 4 for the 2-D "
                "sin-cos position table."
            )
        grid_size = (height // patch_size, width // patch_size)
        source_grid = None
        source_size = None if pretrain_image_size is None else image_size_pair(pretrain_image_size)
        if source_size is not None and source_size != (height, width):
            ph, pw = source_size
            source_grid = (ph // patch_size, pw // patch_size)
            if learned_positions:
                raise ValueError(
                    "`learned_positions` tables cannot be resampled to another "
                    "`image_size`; keep the pretraining size."
                )

        # === Layers ===
        self.patch_embedding = PatchEmbedding(
            patch_size, hidden_dim, dtype=dtype, name="patch_embedding"
        )
        self.image_position_type = PositionTypeEmbedding(
            grid_size,
            hidden_dim,
            source_grid,
            use_type_embedding=use_type_embedding,
            learned_positions=learned_positions,
            dtype=dtype,
            name="image_position_type",
        )
        if vocabulary_size:
            self.token_embedding = keras.layers.Embedding(
                vocabulary_size,
                hidden_dim,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
                dtype=dtype,
                name=self.TOKEN_EMBEDDING,
            )
            self.text_position_type = PositionTypeEmbedding(
                max_text_length,
                hidden_dim,
                use_type_embedding=use_type_embedding,
                dtype=dtype,
                name="text_position_type",
            )
        self.cls_token = ClassToken(hidden_dim, dtype=dtype, name="cls_token")
        self.encoder = TransformerStack(
            num_layers,
            hidden_dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            layer_norm_epsilon=layer_norm_epsilon,
            gelu_approximate=gelu_approximate,
            dtype=dtype,
            name=self.ENCODER,
        )
        self.grid_size = grid_size

        # === Functional Model ===
        images = keras.Input((height, width, num_channels), name="images")
        inputs = {"images": images}
        text_tokens = padding_mask = None
        if vocabulary_size:
            inputs["token_ids"] = keras.Input((max_text_length,), dtype="int32", name="token_ids")
            inputs["padding_mask"] = keras.Input(
                (max_text_length,), dtype="int32", name="padding_mask"
            )
            text_tokens = self.embed_text(inputs["token_ids"])
            padding_mask = inputs["padding_mask"]
        outputs = self.encode(self.embed_images(images), text_tokens, text_valid=padding_mask)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.image_size = image_size
        self.patch_size = patch_size
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.max_text_length = max_text_length
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.num_channels = num_channels
        self.pretrain_image_size = pretrain_image_size
        self.gelu_approximate = gelu_approximate
        self.use_type_embedding = use_type_embedding
        self.learned_positions = learned_positions
        self.structure()  # a layer left out of the structure fails here

    # --- Pieces the pretrainer and the classifier call directly. ---

    @property
    def has_text(self):
        return bool(self.vocabulary_size)

    @property
    def num_patches(self):
        return self.grid_size[0] * self.grid_size[1]

    def embed_images(self, images):
        """Patch embedding + 2-D positions + image type: `(B, N, D)`."""
        return self.image_position_type(self.patch_embedding(images))

    def embed_text(self, token_ids):
        """Token embedding + 1-D positions + text type: `(B, T, D)`."""
        return self.text_position_type(self.token_embedding(token_ids))

    def encode(
        self,
        image_tokens,
        text_tokens=None,
        image_valid=None,
        text_valid=None,
        training=False,
        return_attention_scores=False,
        final_norm=True,
    ):
        """Runs the encoder on `[cls | image_tokens | text_tokens]`.

        Args:
            image_tokens: `(B, Ni, D)` embedded patches (all, or the visible
                subset).
            text_tokens: optional `(B, Nt, D)` embedded tokens.
            image_valid: optional bool `(B,)` or `(B, Ni)`: False for tokens
                of absent images, which then receive no attention.
            text_valid: optional bool `(B, Nt)`: False for padding.
            training: bool. Enables drop path.
            final_norm: bool. Apply the encoder's final LayerNorm (False:
                the last block's output, as MAE's global-pool classifier
                pools it).
            return_attention_scores: bool. Also return each block's
                attention weights `(B, heads, S, S)`.

        Returns:
            `(B, 1 + Ni + Nt, D)`, and the list of scores if asked.
        """
        tokens = [image_tokens]
        valid = [ops.ones_like(image_tokens[:, :, 0], dtype="bool")]
        if image_valid is not None:
            image_valid = ops.cast(image_valid, "bool")
            if len(image_valid.shape) == 1:
                image_valid = image_valid[:, None]
            valid[0] = ops.logical_and(valid[0], image_valid)
        if text_tokens is not None:
            tokens.append(text_tokens)
            if text_valid is None:
                text_valid = ops.ones_like(text_tokens[:, :, 0], dtype="bool")
            valid.append(ops.cast(text_valid, "bool"))
        attention_mask = None
        if image_valid is not None or text_valid is not None:
            cls_valid = ops.ones_like(image_tokens[:, :1, 0], dtype="bool")
            attention_mask = ops.concatenate([cls_valid] + valid, axis=1)
        x = self.cls_token(ops.concatenate(tokens, axis=1))
        return self.encoder(
            x,
            attention_mask=attention_mask,
            training=training,
            return_attention_scores=return_attention_scores,
            final_norm=final_norm,
        )

    def check_inputs(self, inputs):
        """Raises a clear `ValueError` for inputs the model cannot take.

        Static checks (keys, ranks, sizes, channels, text length, dtypes)
        always run; token id ranges and the image value range (normalised,
        not pixels in [0, 255]) are checked when they are numpy arrays.

        Args:
            inputs: dict with `"images"` and, for M3AE, `"token_ids"` and
                `"padding_mask"` (arrays or tensors; shapes are what count).
        """
        if not isinstance(inputs, dict):
            raise ValueError(
                "M3AE inputs must be a dict with keys "
                f"{sorted(self.input_names)}; got {type(inputs).__name__}."
            )
        missing = [k for k in self.input_names if k not in inputs]
        if missing:
            raise ValueError(
                f"Missing input key(s) {missing}; the model takes "
                f"{sorted(self.input_names)} (got {sorted(inputs)})."
            )
        shape = tuple(inputs["images"].shape)
        expected = image_size_pair(self.image_size)
        if len(shape) != 4:
            raise ValueError(
                f"`images` must be a batch (batch, height, width, channels); got shape {shape}."
            )
        if shape[-1] != self.num_channels:
            raise ValueError(
                f"`images` have {shape[-1]} channels; the model takes "
                f"{self.num_channels} (convert grayscale/RGBA images to RGB)."
            )
        if tuple(shape[1:3]) != expected:
            raise ValueError(
                f"`images` are {shape[1]}x{shape[2]}; the model takes "
                f"{expected[0]}x{expected[1]} (resize them, or build the model "
                "with this `image_size`)."
            )
        _check_image_values(inputs["images"], inputs.get("has_image"))
        if not self.has_text:
            return
        for key in ("token_ids", "padding_mask"):
            length = tuple(inputs[key].shape)[-1]
            if length is not None and length > self.max_text_length:
                raise ValueError(
                    f"`{key}` has length {length}, longer than `max_text_length` "
                    f"{self.max_text_length}; truncate the text."
                )
            if length is not None and length != self.max_text_length:
                raise ValueError(
                    f"`{key}` has length {length}; pad it to `max_text_length` "
                    f"{self.max_text_length}."
                )
        ids = inputs["token_ids"]
        dtype = getattr(ids, "dtype", None)
        if dtype is not None and "int" not in keras.backend.standardize_dtype(dtype):
            raise ValueError(
                f"`token_ids` are {keras.backend.standardize_dtype(dtype)}; the model takes "
                "integer ids."
            )
        if isinstance(ids, (np.ndarray, list)):
            ids = np.asarray(ids)
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocabulary_size):
                raise ValueError(
                    f"`token_ids` range over [{ids.min()}, {ids.max()}], outside the "
                    f"vocabulary [0, {self.vocabulary_size})."
                )

    def structure(self):
        """The backbone's parts in depth order; see `M3AEStructure`.

        Raises:
            ValueError: if a variable of the backbone belongs to no part (a
                new layer must be placed in the structure, not left out).
        """
        text = (self.token_embedding, self.text_position_type) if self.has_text else ()
        structure = M3AEStructure(
            embeddings=(self.patch_embedding, self.image_position_type, self.cls_token) + text,
            blocks=tuple(self.encoder.blocks),
            final_norm=self.encoder.norm,
            text=text,
            embedding_matrices=((self.token_embedding.embeddings,) if self.has_text else ())
            + ((self.image_position_type.positions,) if self.learned_positions else ()),
        )
        placed = {id(v) for group in structure.depth_groups() for v in group}
        missing = [v.path for v in self.weights if id(v) not in placed]
        if missing:
            raise ValueError(
                f"Backbone variables {missing} belong to no part of "
                "`M3AEBackbone.structure()`; add their layer there."
            )
        return structure

    def no_weight_decay_variables(self, variables=None):
        """Variables this library exempts from weight decay by default.

        Every variable of rank <= 1 (biases, LayerNorm scales and offsets,
        the CLS, type and mask vectors), the text embedding matrix and a
        learned position table. The pretrainer and the classifier pass their
        own variables, so their decoder and head follow the same rule. This
        is the library's choice, not either paper's: MAE's code decays the
        CLS and mask tokens, the reference M3AE's the LayerNorm scales
        (`keras_m3ae.optimizers.pretrain_optimizer(recipe=...)` has theirs).

        Args:
            variables: optional list of variables; the backbone's by default.
        """
        variables = self.weights if variables is None else variables
        return weight_decay_exclusions(variables, self.structure().embedding_matrices)

    @property
    def input_names(self):
        return ["images", "token_ids", "padding_mask"] if self.has_text else ["images"]

    def predict(self, x, *args, **kwargs):
        if not isinstance(x, dict) and not hasattr(x, "element_spec") and not self.has_text:
            x = {"images": x}
        if not hasattr(x, "element_spec"):
            self.check_inputs(x)
        return super().predict(x, *args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "max_text_length": self.max_text_length,
                "mlp_ratio": self.mlp_ratio,
                "drop_path_rate": self.drop_path_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "num_channels": self.num_channels,
                "pretrain_image_size": self.pretrain_image_size,
                "gelu_approximate": self.gelu_approximate,
                "use_type_embedding": self.use_type_embedding,
                "learned_positions": self.learned_positions,
            }
        )
        return config

    @classmethod
    def get_layout_map(
        cls, device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"
    ):
        """`keras.distribution.LayoutMap` for model-parallel training.

        See `keras_m3ae/models/m3ae/m3ae_distribution.py` for the layout.
        """
        return m3ae_distribution.layout_map(
            device_mesh,
            model_parallel_dim_name,
            data_parallel_dim_name,
            token_embedding=cls.TOKEN_EMBEDDING,
        )

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Builds a backbone from a named architecture or a preset directory.

        Args:
            preset: a name in `M3AEBackbone.presets` (a freshly initialised
                model of that architecture), a keras-hub preset directory
                written by `save_to_preset` (config and weights), or a local
                Hugging Face ViTMAE directory (converted on load).
            load_weights: bool. Load the preset's weights (directories only).
            **kwargs: config overrides, e.g. `dtype` or `image_size`.

        Example:
        >>> backbone = keras_m3ae.M3AEBackbone.from_preset("m3ae_vit_base_patch16")
        """
        config = m3ae_presets.architecture_config(preset)
        if config is not None:
            return cls(**{**config, **kwargs})
        # A directory in another format (a Hugging Face ViTMAE directory) is
        # converted by the loader `keras_m3ae.convert` registers.
        load = m3ae_presets.directory_loader(preset)
        if load is not None:
            return load(preset, **kwargs)
        m3ae_presets.check_preset_directory(preset, load_weights)
        if "://" in str(preset):
            return super().from_preset(preset, load_weights=load_weights, **kwargs)
        # A local directory: its files are checked against their checksums,
        # and the model built from its config against the weights, before
        # they are loaded (see `preset_integrity`).
        record = preset_integrity.verify_checksums(preset)
        backbone = super().from_preset(preset, load_weights=False, **kwargs)
        if load_weights:
            weights = os.path.join(preset, "model.weights.h5")
            if not os.path.exists(weights):  # sharded: keras-hub's index of the shards
                weights = os.path.join(preset, "model.weights.json")
            else:
                preset_integrity.check_weights_fit(backbone, preset, record, weights)
            backbone.load_weights(weights)
        return backbone

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Saves the backbone as a keras-hub preset, with the checksums of its files.

        Besides keras-hub's `config.json`, `metadata.json` and weights, it
        writes `checksums.json`: the SHA-256 of each file and the model's
        variables, which `from_preset` checks (a changed or damaged file,
        or a config that does not fit the weights, is refused by name).

        Args:
            preset_dir: str. A local directory.
            max_shard_size: int or float. Largest weights file in GB
                (keras-hub's sharding).
        """
        super().save_to_preset(preset_dir, max_shard_size=max_shard_size)
        preset_integrity.write_checksums(preset_dir, self)


# `M3AEBackbone.presets` (and the classifier's) list them through keras-hub.
register_presets(m3ae_presets.backbone_presets, M3AEBackbone)
