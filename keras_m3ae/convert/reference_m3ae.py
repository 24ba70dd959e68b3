"""Reference JAX/Flax M3AE and MAE pickles (young-geng/m3ae_public).

`m3ae_main.py` / `mae_main.py` save `{"step", "epoch", "variant", "state"}`
with cloudpickle. `variant` holds the run's flags flattened (`m3ae.emb_dim`,
`m3ae.depth`, ..., `data.image_size`, `patch_size`; `mae.*` and
`<dataset>_data.image_size` for the image-only MAE); `state` is a flax
`TrainState` whose `params["params"]` is the parameter tree. The file is
read with the restricted unpickler (`safe_pickle`), never with `pickle`.

Facts carried over from the reference code:
- with `model_type` set, the width/depth/heads flags keep their defaults and
  the model is built from the model-type table below;
- its GELU is flax's `nn.gelu`, the tanh approximation;
- LayerNorm epsilon is flax's 1e-6;
- `use_type_embedding=False` adds no type vectors;
- `output_head_depth > 0` (an MLP output head) has no counterpart here.
"""

import numpy as np

from keras_m3ae.convert import common
from keras_m3ae.convert import safe_pickle

# The reference's model-type table (width, decoder width, depth, decoder
# depth, heads, decoder heads, MLP ratio).
MODEL_TYPES = {
    "small": (384, 512, 12, 8, 6, 16, 4),
    "base": (768, 512, 12, 8, 12, 16, 4),
    "large": (1024, 512, 24, 8, 16, 16, 4),
    "huge": (1280, 512, 32, 8, 16, 16, 4),
    "debug": (1024, 512, 2, 2, 16, 16, 4),
}

# Reference parameter path -> model variable. `{i}`: block index.
BLOCK_MAP = {
    "LayerNorm_0/scale": "norm1/gamma",
    "LayerNorm_0/bias": "norm1/beta",
    "Attention_0/Dense_0/kernel": "attention/qkv/kernel",
    "Attention_0/Dense_0/bias": "attention/qkv/bias",
    "Attention_0/Dense_1/kernel": "attention/proj/kernel",
    "Attention_0/Dense_1/bias": "attention/proj/bias",
    "LayerNorm_1/scale": "norm2/gamma",
    "LayerNorm_1/bias": "norm2/beta",
    "TransformerMLP_0/fc1/kernel": "fc1/kernel",
    "TransformerMLP_0/fc1/bias": "fc1/bias",
    "TransformerMLP_0/fc2/kernel": "fc2/kernel",
    "TransformerMLP_0/fc2/bias": "fc2/bias",
}
TOP_MAP = {
    "cls_token": ("backbone/cls_token/cls_token", common.vector),
    "image_embedding/kernel": ("backbone/patch_embedding/projection/kernel", None),
    "image_embedding/bias": ("backbone/patch_embedding/projection/bias", None),
    "text_embedding/embedding": ("backbone/token_embedding/embeddings", None),
    "encoder_image_type_embedding": ("backbone/image_position_type/type_embedding", common.vector),
    "encoder_text_type_embedding": ("backbone/text_position_type/type_embedding", common.vector),
    "encoder/LayerNorm_0/scale": ("backbone/encoder/norm/gamma", None),
    "encoder/LayerNorm_0/bias": ("backbone/encoder/norm/beta", None),
    "decoder_input_projection/kernel": ("decoder/input_projection/kernel", None),
    "decoder_input_projection/bias": ("decoder/input_projection/bias", None),
    "image_mask_embedding": ("decoder/image_mask_token", common.vector),
    "text_mask_embedding": ("decoder/text_mask_token", common.vector),
    "decoder_image_type_embedding": ("decoder/image_position_type/type_embedding", common.vector),
    "decoder_text_type_embedding": ("decoder/text_position_type/type_embedding", common.vector),
    "decoder/LayerNorm_0/scale": ("decoder/transformer/norm/gamma", None),
    "decoder/LayerNorm_0/bias": ("decoder/transformer/norm/beta", None),
    "decoder_image_output/Dense_0/kernel": ("decoder/image_head/kernel", None),
    "decoder_image_output/Dense_0/bias": ("decoder/image_head/bias", None),
    "decoder_text_output/Dense_0/kernel": ("decoder/text_head/kernel", None),
    "decoder_text_output/Dense_0/bias": ("decoder/text_head/bias", None),
}
STACKS = {"encoder": "backbone/encoder", "decoder": "decoder/transformer"}


def target_of(source):
    """The model variable (and transform) for a reference parameter path, or None."""
    if source in TOP_MAP:
        return TOP_MAP[source]
    parts = source.split("/", 2)
    if len(parts) == 3 and parts[0] in STACKS and parts[1].startswith("Block_"):
        if parts[2] in BLOCK_MAP:
            index = parts[1][len("Block_"):]
            return common.block_path(STACKS[parts[0]], index, BLOCK_MAP[parts[2]]), None
    return None


def _unwrap(value):
    """flax `FrozenDict` records -> their dict."""
    if isinstance(value, safe_pickle.PickledObject) and value.qualname.endswith("FrozenDict"):
        if value.args and isinstance(value.args[0], dict):
            return value.args[0]
        if isinstance(value.state, dict) and "_dict" in value.state:
            return value.state["_dict"]
    return value


def flatten_params(path, tree, prefix=""):
    """A (possibly `FrozenDict`) parameter tree -> `{"a/b/c": float array}`.

    Raises:
        CheckpointError: a leaf is not a float array (naming what it is).
    """
    tree = _unwrap(tree)
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten_params(path, value, f"{prefix}{key}/"))
        return out
    name = prefix[:-1]
    if isinstance(tree, np.ndarray) and tree.dtype.kind == "f":
        return {name: tree}
    if isinstance(tree, safe_pickle.PickledObject) and tree.makes_function:
        kind = "a function whose code is stored in the file (cloudpickle by-value)"
    elif isinstance(tree, (safe_pickle.PickledObject, safe_pickle.PickledGlobal)):
        kind = f"a pickled {tree.qualname}"
    else:
        kind = f"a {type(tree).__name__}"
    common.fail(path, f"parameter {name} is {kind}, not a float array")


def _state_dict(state):
    if isinstance(state, safe_pickle.PickledObject) and isinstance(state.state, dict):
        return state.state
    if isinstance(state, safe_pickle.PickledObject) and isinstance(state.state, tuple):
        # Dataclasses with slots pickle (dict_state, slot_state).
        merged = {}
        for part in state.state:
            if isinstance(part, dict):
                merged.update(part)
        return merged
    if isinstance(state, dict):
        return state
    return None


def read_pickle(path):
    """Reads a reference checkpoint with the restricted unpickler.

    Raises:
        CheckpointError: the pickle would run code (nothing is run), or it
            cannot be read.
    """
    try:
        return safe_pickle.load_pickle(path)
    except safe_pickle.UnsafePickleError as error:
        common.fail(path, f"unsafe pickle, nothing was run: {error}")
    except Exception as error:  # truncated or not a pickle
        common.fail(path, f"cannot be read as a pickle ({type(error).__name__}: {error})")


def params_tree(state):
    """The `params["params"]` tree of a pickled flax `TrainState`, or None."""
    state = _state_dict(state)
    params = _unwrap(state.get("params")) if state else None
    return _unwrap(params.get("params")) if isinstance(params, dict) else None


def read_config(path, variant, params, overrides):
    """Backbone and pretrainer configs from the `variant` flags (and shapes)."""
    if not isinstance(variant, dict):
        common.fail(path, "`variant` is not a dict of flags")
    is_m3ae = any(str(k).startswith("m3ae.") for k in variant)
    if not is_m3ae and not any(str(k).startswith("mae.") for k in variant):
        common.fail(path, "`variant` has neither `m3ae.*` nor `mae.*` flags")
    prefix = "m3ae." if is_m3ae else "mae."

    def flag(name, default=None):
        return variant.get(prefix + name, default)

    if variant.get("discretized_image"):
        common.fail(path, "a discretized-image (VQGAN token) model has no counterpart here")
    if (flag("output_head_depth") or 0) > 0:
        common.fail(
            path,
            f"`{prefix}output_head_depth` = {flag('output_head_depth')}: MLP output heads have "
            "no counterpart in this library",
        )
    width, dec_width, depth, dec_depth = flag("emb_dim"), flag("dec_emb_dim"), flag("depth"), flag("dec_depth")
    heads, dec_heads, mlp_ratio = flag("num_heads"), flag("dec_num_heads"), flag("mlp_ratio")
    model_type = flag("model_type")
    if model_type is not None:
        if model_type not in MODEL_TYPES:
            common.fail(path, f"unknown `{prefix}model_type` {model_type!r}")
        width, dec_width, depth, dec_depth, heads, dec_heads, mlp_ratio = MODEL_TYPES[model_type]
    for name, value in (("emb_dim", width), ("depth", depth), ("num_heads", heads)):
        if value is None:
            common.fail(path, f"`variant` lacks `{prefix}{name}`")

    patch_size = variant.get("patch_size")
    if is_m3ae:
        image_size = variant.get("data.image_size")
        text_length = variant.get("data.tokenizer_max_length")
    else:
        dataset = variant.get("dataset", "cc12m")
        image_size = variant.get(f"{dataset}_data.image_size")
        text_length = None
    if patch_size is None or image_size is None:
        common.fail(path, "`variant` lacks `patch_size` or the data's `image_size`")

    kernel = params.get("image_embedding/kernel")
    if kernel is None:
        common.fail(path, "no `image_embedding/kernel` parameter")
    num_channels = kernel.shape[0] // (patch_size * patch_size)
    if num_channels * patch_size * patch_size != kernel.shape[0]:
        common.fail(path, f"`image_embedding/kernel` {kernel.shape} does not fit patch size {patch_size}")
    vocabulary_size = None
    if is_m3ae:
        embedding = params.get("text_embedding/embedding")
        if embedding is None:
            common.fail(path, "an M3AE checkpoint without `text_embedding/embedding`")
        vocabulary_size = int(embedding.shape[0])

    backbone_overrides, pretrainer_overrides = common.split_overrides(overrides)
    backbone = dict(
        image_size=image_size,
        patch_size=patch_size,
        vocabulary_size=vocabulary_size,
        hidden_dim=width,
        num_layers=depth,
        num_heads=heads,
        max_text_length=text_length or 64,
        mlp_ratio=float(mlp_ratio),
        layer_norm_epsilon=1e-6,
        num_channels=num_channels,
        gelu_approximate=True,
        use_type_embedding=bool(flag("use_type_embedding", True)),
    )
    backbone.update(backbone_overrides)
    pretrainer = dict(
        decoder_hidden_dim=dec_width,
        decoder_num_layers=dec_depth,
        decoder_num_heads=dec_heads,
        image_mask_ratio=flag("image_mask_ratio", 0.75),
    )
    if is_m3ae:
        pretrainer["text_mask_ratio"] = flag("text_mask_ratio", 0.75)
        for key in ("image_loss_weight", "text_loss_weight"):
            if key in variant:
                pretrainer[key] = variant[key]
    pretrainer.update(pretrainer_overrides)
    return backbone, pretrainer


def load(path, **overrides):
    """Converts a reference M3AE / MAE pickle into an `M3AEPretrainer`.

    Args:
        path: str. The `model.pkl` that `m3ae_main.py` / `mae_main.py` wrote.
        **overrides: architecture overrides (backbone config keys, or
            pretrainer keys such as `decoder_num_heads`).

    Returns:
        `M3AEPretrainer` with the encoder and the decoder weights.

    Example:
    >>> pretrainer = load("model.pkl")
    """
    data = read_pickle(path)
    if not isinstance(data, dict) or "state" not in data or "variant" not in data:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        common.fail(path, f"not a reference M3AE/MAE checkpoint: expected a dict with `variant` "
                          f"and `state`, found {found}")
    params = params_tree(data["state"])
    if not isinstance(params, dict):
        what = data["state"]
        what = what.qualname if hasattr(what, "qualname") else type(what).__name__
        common.fail(path, f"`state` ({what}) holds no `params['params']` tree")
    if "base_model" in params:
        common.fail(path, "a fine-tuned classifier checkpoint (`base_model` with a head); "
                          "load it with `load_classifier`")
    flat = flatten_params(path, params)
    backbone_config, pretrainer_config = read_config(path, data["variant"], flat, overrides)
    weights = {}
    for source, value in flat.items():
        name, array = common.converted(path, source, value, target_of(source), "parameter")
        weights[name] = array
    pretrainer = common.build_pretrainer(backbone_config, pretrainer_config)
    common.assign_weights(path, pretrainer, weights)
    return pretrainer
