"""Official PyTorch MAE checkpoints (facebookresearch/mae).

`main_pretrain.py` saves `{'model', 'optimizer', 'epoch', 'scaler', 'args'}`
with `torch.save` (`args` an `argparse.Namespace`); the released
`mae_pretrain_vit_*.pth` files hold `{'model': <encoder state_dict>}`.
The file is read with `torch.load(weights_only=True)`, which rebuilds
tensors and plain containers only; `argparse.Namespace` is the one class
allowed besides.

Facts carried over: torch `Linear` weights are `(out, in)`; the patch
embedding is a strided conv `(D, C, p, p)`; positions are the fixed 2-D
sin-cos table with a zero row for the class token (stored, and checked
here); LayerNorm epsilon 1e-6; exact GELU; no type vectors; the head count
is not stored (standard widths: 768 -> 12, 1024 -> 16, 1280 -> 16; MAE's
512-wide decoder -> 16), so other widths need `num_heads=` /
`decoder_num_heads=`.
"""

import argparse
import math
import re

from keras_m3ae.convert import common

BLOCK_MAP = {
    "norm1.weight": ("norm1/gamma", None),
    "norm1.bias": ("norm1/beta", None),
    "attn.qkv.weight": ("attention/qkv/kernel", common.linear),
    "attn.qkv.bias": ("attention/qkv/bias", None),
    "attn.proj.weight": ("attention/proj/kernel", common.linear),
    "attn.proj.bias": ("attention/proj/bias", None),
    "norm2.weight": ("norm2/gamma", None),
    "norm2.bias": ("norm2/beta", None),
    "mlp.fc1.weight": ("fc1/kernel", common.linear),
    "mlp.fc1.bias": ("fc1/bias", None),
    "mlp.fc2.weight": ("fc2/kernel", common.linear),
    "mlp.fc2.bias": ("fc2/bias", None),
}
TOP_MAP = {
    "cls_token": ("backbone/cls_token/cls_token", common.vector),
    "patch_embed.proj.weight": ("backbone/patch_embedding/projection/kernel", common.patch_kernel),
    "patch_embed.proj.bias": ("backbone/patch_embedding/projection/bias", None),
    "norm.weight": ("backbone/encoder/norm/gamma", None),
    "norm.bias": ("backbone/encoder/norm/beta", None),
    "decoder_embed.weight": ("decoder/input_projection/kernel", common.linear),
    "decoder_embed.bias": ("decoder/input_projection/bias", None),
    "mask_token": ("decoder/image_mask_token", common.vector),
    "decoder_norm.weight": ("decoder/transformer/norm/gamma", None),
    "decoder_norm.bias": ("decoder/transformer/norm/beta", None),
    "decoder_pred.weight": ("decoder/image_head/kernel", common.linear),
    "decoder_pred.bias": ("decoder/image_head/bias", None),
}
STACKS = {"blocks": "backbone/encoder", "decoder_blocks": "decoder/transformer"}
POSITION_TABLES = {"pos_embed": "encoder", "decoder_pos_embed": "decoder"}
_BLOCK = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)$")


def target_of(key):
    """The model variable (and transform) for an official MAE state-dict key, or None."""
    return common.stack_target(key, TOP_MAP, _BLOCK, BLOCK_MAP, STACKS)


def read_torch(path):
    """`torch.load(weights_only=True)` with `argparse.Namespace` allowed.

    Raises:
        CheckpointError: torch is missing, the file is not a torch
            checkpoint, or it holds anything but tensors and plain data.
    """
    try:
        import torch
    except ImportError:
        common.fail(path, "reading .pth files needs torch (pip install torch)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        message = str(error).split("\n")[0]
        unsupported = re.search(r"GLOBAL ([\w.]+)", str(error))
        if unsupported:
            common.fail(path, f"unsafe checkpoint, nothing was run: it references "
                              f"`{unsupported.group(1)}`, which is not a tensor or plain data")
        if "weights_only" in str(error):
            common.fail(path, f"unsafe checkpoint, nothing was run: it holds objects that are "
                              f"not tensors or plain data ({message})")
        common.fail(path, f"cannot be read as a torch checkpoint ({type(error).__name__}: {message})")


def to_numpy(path, state_dict):
    out = {}
    for key, value in state_dict.items():
        if not hasattr(value, "detach"):
            common.fail(path, f"entry {key!r} of the state dict is a {type(value).__name__}, not a tensor")
        out[str(key)] = value.detach().cpu().float().numpy()
    return out


def state_dict_of(path, checkpoint):
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    if isinstance(checkpoint, dict) and checkpoint and all(hasattr(v, "detach") for v in checkpoint.values()):
        return checkpoint  # a bare state dict
    found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    common.fail(path, f"no `model` state dict in the checkpoint (found {found})")


def load(path, **overrides):
    """Converts an official MAE `.pth` into an `M3AEPretrainer`.

    Args:
        path: str. A `main_pretrain.py` checkpoint (`checkpoint-N.pth`) or
            a released encoder-only file (`mae_pretrain_vit_base.pth`).
        **overrides: architecture overrides, e.g. `num_heads=4`,
            `decoder_num_heads=2` (the file stores no head counts).

    Returns:
        `M3AEPretrainer`: encoder and decoder weights, or for encoder-only
        files the encoder with a freshly initialised decoder.

    Example:
    >>> pretrainer = load("checkpoint-799.pth")
    """
    checkpoint = read_torch(path)
    weights = to_numpy(path, state_dict_of(path, checkpoint))
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if any(k.startswith("head.") or k.startswith("fc_norm.") for k in weights):
        common.fail(path, "a fine-tuned classifier checkpoint (it has a `head`); "
                          "load it with `load_classifier`")
    for key in ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        if key not in weights:
            common.fail(path, f"not an MAE state dict: no `{key}`")

    kernel = weights["patch_embed.proj.weight"]
    width, channels, patch_size = kernel.shape[0], kernel.shape[1], kernel.shape[2]
    depth = 1 + max(int(m.group(2)) for m in map(_BLOCK.match, weights) if m and m.group(1) == "blocks")
    mlp_ratio = weights["blocks.0.mlp.fc1.weight"].shape[0] / width
    num_patches = weights["pos_embed"].shape[1] - 1 if "pos_embed" in weights else None
    image_size = getattr(args, "input_size", None)
    if image_size is None:
        if num_patches is None:
            common.fail(path, "neither `args.input_size` nor `pos_embed` gives the image size")
        grid = int(round(math.sqrt(num_patches)))
        image_size = grid * patch_size
    has_decoder = "decoder_embed.weight" in weights

    backbone_overrides, pretrainer_overrides = common.split_overrides(overrides)
    backbone = dict(
        image_size=image_size,
        patch_size=patch_size,
        vocabulary_size=None,
        hidden_dim=width,
        num_layers=depth,
        num_heads=common.heads_for(path, width, overrides, "num_heads", common.STANDARD_HEADS),
        mlp_ratio=mlp_ratio,
        layer_norm_epsilon=1e-6,
        num_channels=channels,
        gelu_approximate=False,
        use_type_embedding=False,
    )
    backbone.update(backbone_overrides)
    pretrainer = {}
    if has_decoder:
        dec_width = weights["decoder_embed.weight"].shape[0]
        dec_depth = 1 + max(
            int(m.group(2)) for m in map(_BLOCK.match, weights) if m and m.group(1) == "decoder_blocks"
        )
        pretrainer = dict(
            decoder_hidden_dim=dec_width,
            decoder_num_layers=dec_depth,
            decoder_num_heads=common.heads_for(
                path, dec_width, overrides, "decoder_num_heads", common.STANDARD_DECODER_HEADS
            ),
        )
    if args is not None:
        for key, name in (("mask_ratio", "image_mask_ratio"), ("norm_pix_loss", "norm_pix_loss")):
            if hasattr(args, key):
                pretrainer[name] = getattr(args, key)
    pretrainer.update(pretrainer_overrides)
    model = common.build_pretrainer(backbone, pretrainer)

    mapped = {}
    for key, value in weights.items():
        if key in POSITION_TABLES:
            owner = model.backbone if POSITION_TABLES[key] == "encoder" else model.decoder
            common.check_position_table(
                path, key, value, model.backbone.grid_size, owner.hidden_dim
            )
            continue
        name, array = common.converted(path, key, value, target_of(key))
        mapped[name] = array
    common.assign_weights(path, model, mapped, has_decoder=has_decoder)
    return model
