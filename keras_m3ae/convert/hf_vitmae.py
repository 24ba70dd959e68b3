"""Hugging Face `ViTMAE` directories (`config.json` + `model.safetensors`).

Both key spellings are read: transformers 4.x and the Hub's files name the
decoder blocks `decoder.decoder_layers.N`, transformers 5.x writes
`decoder.decoder_encoder.layer.N`. A `ViTMAEModel` directory (encoder only,
keys without the `vit.` prefix) works too. `.safetensors` files are parsed
here with numpy (the format is a JSON header and raw little-endian data),
so neither `safetensors` nor `transformers` is needed; a directory with only
`pytorch_model.bin` is read with `torch.load(weights_only=True)`.

Facts carried over: separate query/key/value projections (fused here into
one `qkv` kernel in that order); `layer_norm_eps` from the config (1e-12 by
default); exact GELU (`hidden_act: gelu`); fixed sin-cos positions with a
zero class-token row (stored, and checked here); no type vectors;
`qkv_bias: false` means zero biases; `hidden_act` `gelu_new` /
`gelu_pytorch_tanh` map to `gelu_approximate=True`.
"""

import json
import os
import re

import numpy as np

from keras_m3ae.convert import common

_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}

LAYER_MAP = {
    "layernorm_before.weight": ("norm1/gamma", None),
    "layernorm_before.bias": ("norm1/beta", None),
    "attention.output.dense.weight": ("attention/proj/kernel", common.linear),
    "attention.output.dense.bias": ("attention/proj/bias", None),
    "layernorm_after.weight": ("norm2/gamma", None),
    "layernorm_after.bias": ("norm2/beta", None),
    "intermediate.dense.weight": ("fc1/kernel", common.linear),
    "intermediate.dense.bias": ("fc1/bias", None),
    "output.dense.weight": ("fc2/kernel", common.linear),
    "output.dense.bias": ("fc2/bias", None),
}
QKV = ("query", "key", "value")
# `hidden_act` -> gelu_approximate (tanh form).
_GELU_FORMS = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}
TOP_MAP = {
    "vit.embeddings.cls_token": ("backbone/cls_token/cls_token", common.vector),
    "vit.embeddings.patch_embeddings.projection.weight": (
        "backbone/patch_embedding/projection/kernel", common.patch_kernel),
    "vit.embeddings.patch_embeddings.projection.bias": (
        "backbone/patch_embedding/projection/bias", None),
    "vit.layernorm.weight": ("backbone/encoder/norm/gamma", None),
    "vit.layernorm.bias": ("backbone/encoder/norm/beta", None),
    "decoder.decoder_embed.weight": ("decoder/input_projection/kernel", common.linear),
    "decoder.decoder_embed.bias": ("decoder/input_projection/bias", None),
    "decoder.mask_token": ("decoder/image_mask_token", common.vector),
    "decoder.decoder_norm.weight": ("decoder/transformer/norm/gamma", None),
    "decoder.decoder_norm.bias": ("decoder/transformer/norm/beta", None),
    "decoder.decoder_pred.weight": ("decoder/image_head/kernel", common.linear),
    "decoder.decoder_pred.bias": ("decoder/image_head/bias", None),
}
POSITION_TABLES = {
    "vit.embeddings.position_embeddings": "encoder",
    "decoder.decoder_pos_embed": "decoder",
}
# Canonical block prefixes: `vit.encoder.layer.N.` and `decoder.decoder_layers.N.`.
_LAYER = re.compile(r"^(vit\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)$")
STACKS = {"vit.encoder.layer": "backbone/encoder", "decoder.decoder_layers": "decoder/transformer"}


def read_safetensors(path):
    """Reads a `.safetensors` file into `{name: numpy array}` (numpy only).

    Raises:
        CheckpointError: truncated file, bad header, or unknown dtype.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            common.fail(path, "truncated safetensors file (no header)")
        header_len = int.from_bytes(head, "little")
        if header_len > size - 8 or header_len > 100_000_000:
            common.fail(path, f"truncated or corrupt safetensors file (header of {header_len} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as error:
            common.fail(path, f"corrupt safetensors header ({error})")
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            common.fail(path, f"tensor {name} has unsupported dtype {info.get('dtype')}")
        start, end = info["data_offsets"]
        if end > len(data) or start > end:
            common.fail(path, f"truncated safetensors file: tensor {name} runs past the end")
        array = np.frombuffer(data[start:end], dtype=dtype)
        shape = tuple(info["shape"])
        if array.size != int(np.prod(shape, dtype=np.int64)):
            common.fail(path, f"tensor {name}: {array.size} values for shape {shape}")
        out[name] = array.reshape(shape).astype(np.float32)
    return out


def canonical(key):
    """Normalises the key spellings of transformers 4.x / 5.x / ViTMAEModel."""
    key = key.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers.")
    if key.startswith(("embeddings.", "encoder.", "layernorm.")):
        key = "vit." + key
    return key


def target_of(key):
    """The model variable (and transform) for a ViTMAE state-dict key, or None."""
    return common.stack_target(key, TOP_MAP, _LAYER, LAYER_MAP, STACKS)


def is_vitmae_dir(path):
    """Whether `path` is a directory with a ViTMAE `config.json`."""
    config = os.path.join(str(path), "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config) as f:
            return json.load(f).get("model_type") == "vit_mae"
    except (OSError, ValueError):
        return False


def read_config(path):
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        common.fail(config_path, f"cannot be read as JSON ({error})")
    if config.get("model_type") != "vit_mae":
        common.fail(config_path, f"model_type is {config.get('model_type')!r}, not 'vit_mae'")
    if config.get("hidden_act", "gelu") not in _GELU_FORMS:
        common.fail(config_path, f"hidden_act {config['hidden_act']!r}: only "
                                 f"{', '.join(sorted(_GELU_FORMS))} are supported")
    return config


def read_weights(path):
    for name in ("model.safetensors", "pytorch_model.bin"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            if name.endswith(".safetensors"):
                return file, read_safetensors(file)
            from keras_m3ae.convert import official_mae

            state = official_mae.read_torch(file)
            return file, official_mae.to_numpy(file, state)
    common.fail(path, "no model.safetensors or pytorch_model.bin in the directory "
                      "(sharded checkpoints are not supported)")


def configs(config, overrides, has_decoder):
    """Backbone and pretrainer configs from a ViTMAE `config.json` dict."""
    width = config.get("hidden_size", 768)
    image_size = config.get("image_size", 224)
    backbone_overrides, pretrainer_overrides = common.split_overrides(overrides)
    backbone = dict(
        image_size=image_size,
        patch_size=config.get("patch_size", 16),
        vocabulary_size=None,
        hidden_dim=width,
        num_layers=config.get("num_hidden_layers", 12),
        num_heads=config.get("num_attention_heads", 12),
        mlp_ratio=config.get("intermediate_size", 3072) / width,
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12),
        num_channels=config.get("num_channels", 3),
        gelu_approximate=_GELU_FORMS[config.get("hidden_act", "gelu")],
        use_type_embedding=False,
    )
    backbone.update(backbone_overrides)
    pretrainer = {}
    if has_decoder:
        dec_width = config.get("decoder_hidden_size", 512)
        dec_mlp = config.get("decoder_intermediate_size", 2048) / dec_width
        if dec_mlp != backbone["mlp_ratio"]:
            raise ValueError(
                f"decoder MLP ratio {dec_mlp} differs from the encoder's {backbone['mlp_ratio']}; "
                "the decoder here shares the encoder's"
            )
        pretrainer = dict(
            decoder_hidden_dim=dec_width,
            decoder_num_layers=config.get("decoder_num_hidden_layers", 8),
            decoder_num_heads=config.get("decoder_num_attention_heads", 16),
            image_mask_ratio=config.get("mask_ratio", 0.75),
            norm_pix_loss=config.get("norm_pix_loss", False),
        )
    pretrainer.update(pretrainer_overrides)
    return backbone, pretrainer


def _projection_width(fused, block):
    """Output width of one of a block's query/key/value projections."""
    return next(iter(fused[(block, "weight")].values())).shape[0]


def load(path, **overrides):
    """Converts a Hugging Face ViTMAE directory into an `M3AEPretrainer`.

    Args:
        path: str. Directory with `config.json` and `model.safetensors`
            (or `pytorch_model.bin`), as `save_pretrained` writes it.
        **overrides: architecture overrides.

    Returns:
        `M3AEPretrainer` (encoder, and decoder for `ViTMAEForPreTraining`).

    Example:
    >>> pretrainer = load("vit-mae-base/")
    """
    config = read_config(path)
    file, raw = read_weights(path)
    weights = {canonical(k): v for k, v in raw.items()}
    has_decoder = any(k.startswith("decoder.") for k in weights)
    try:
        backbone_config, pretrainer_config = configs(config, overrides, has_decoder)
    except ValueError as error:
        common.fail(path, str(error))
    model = common.build_pretrainer(backbone_config, pretrainer_config)

    mapped = {}
    fused = {}
    for key, value in weights.items():
        if key in POSITION_TABLES:
            owner = model.backbone if POSITION_TABLES[key] == "encoder" else model.decoder
            common.check_position_table(file, key, value, model.backbone.grid_size, owner.hidden_dim)
            continue
        match = _LAYER.match(key)
        parts = match.group(3).split(".") if match else []
        if len(parts) == 4 and parts[:2] == ["attention", "attention"] and parts[2] in QKV:
            block = common.block_path(STACKS[match.group(1)], match.group(2), "attention/qkv")
            fused.setdefault((block, parts[3]), {})[parts[2]] = value
            continue
        name, array = common.converted(file, key, value, target_of(key))
        mapped[name] = array
    if not config.get("qkv_bias", True):  # no biases stored: they are zero
        for block, _ in list(fused):
            width = _projection_width(fused, block)
            fused.setdefault((block, "bias"), {n: np.zeros(width, np.float32) for n in QKV})
    for (block, kind), pieces in fused.items():
        if set(pieces) != set(QKV):
            common.fail(file, f"{block}: query/key/value incomplete (found {sorted(pieces)})")
        if kind == "weight":
            mapped[f"{block}/kernel"] = np.concatenate([common.linear(pieces[n]) for n in QKV], axis=1)
        else:
            mapped[f"{block}/bias"] = np.concatenate([pieces[n] for n in QKV], axis=0)
    common.assign_weights(file, model, mapped, has_decoder=has_decoder)
    return model
