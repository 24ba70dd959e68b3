"""What every converter shares: errors, building the model, assigning weights.

A converter turns a checkpoint into (1) a backbone config, (2) pretrainer
(decoder) settings, and (3) a dict `{target: array}` whose keys are the
model's variable paths relative to the backbone (`backbone/...`) or to the
decoder (`decoder/...`), e.g. `backbone/encoder/block_0/attention/qkv/kernel`.
`build_pretrainer` makes the Keras model and `assign_weights` copies the
arrays in, checking that every variable gets exactly one array of its shape.
"""

import warnings

import numpy as np

from keras_m3ae.layers.sincos import sincos_2d
from keras_m3ae.layers.transformer import TransformerStack

# Keyword overrides that belong to the pretrainer, not the backbone.
PRETRAINER_KEYS = (
    "decoder_hidden_dim",
    "decoder_num_layers",
    "decoder_num_heads",
    "image_mask_ratio",
    "text_mask_ratio",
    "image_loss_weight",
    "text_loss_weight",
    "norm_pix_loss",
    "seed",
)

# Standard ViT widths -> heads (ViT-B/L/H, and MAE's 512-wide decoder).
STANDARD_HEADS = {384: 6, 768: 12, 1024: 16, 1280: 16}
STANDARD_DECODER_HEADS = {512: 16}


class CheckpointError(ValueError):
    """A checkpoint cannot be converted; the message names the file and why."""


def fail(path, problem):
    """Raises `CheckpointError` naming the file and the problem."""
    raise CheckpointError(f"{path}: {problem}")


def split_overrides(overrides):
    """Splits keyword overrides into (backbone, pretrainer) dicts."""
    backbone = {k: v for k, v in overrides.items() if k not in PRETRAINER_KEYS}
    pretrainer = {k: v for k, v in overrides.items() if k in PRETRAINER_KEYS}
    return backbone, pretrainer


def heads_for(path, width, overrides, key, table):
    """Head count: the override `key`, else the standard one for `width`."""
    if key in overrides:
        return overrides[key]
    if width in table:
        return table[width]
    fail(
        path,
        f"the checkpoint does not store the number of attention heads and width {width} is "
        f"not a standard one ({sorted(table)}); pass `{key}=...`",
    )


def block_path(stack, index, name):
    """The path of a variable of block `index` of a transformer stack."""
    return f"{stack}/{TransformerStack.BLOCK_PREFIX}{index}/{name}"


def stack_target(key, top_map, block_pattern, block_map, stacks):
    """`(model path, transform)` for a checkpoint key, or None.

    Keys are looked up in `top_map`, else matched by `block_pattern`, whose
    groups are (stack name, block index, key inside the block).
    """
    if key in top_map:
        return top_map[key]
    match = block_pattern.match(key)
    if match and match.group(3) in block_map:
        name, transform = block_map[match.group(3)]
        return block_path(stacks[match.group(1)], match.group(2), name), transform
    return None


def converted(path, key, value, target, what="tensor"):
    """`(model path, array)` for one checkpoint tensor and its `target`.

    Raises:
        CheckpointError: `target` is None (the tensor has no counterpart).
    """
    if target is None:
        fail(path, f"{what} {key} has no counterpart in the model")
    name, transform = target
    return name, (transform(value) if transform else value)


def relative_paths(layer):
    """`{path relative to layer: variable}` for the layer's variables.

    Keras prefixes variable paths with the names of the enclosing layers,
    which differ by how the model was built; only the part below `layer`
    is stable.
    """
    out = {}
    for variable in layer.weights:
        path = variable.path
        marker = layer.name + "/"
        if path.startswith(marker):
            path = path[len(marker):]
        elif "/" + marker in path:
            path = path.split("/" + marker, 1)[1]
        out[path] = variable
    return out


def build_pretrainer(backbone_config, pretrainer_config):
    """Builds an `M3AEPretrainer` (and its backbone) from plain configs."""
    from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone
    from keras_m3ae.models.m3ae.m3ae_pretrainer import M3AEPretrainer

    backbone = M3AEBackbone(**backbone_config)
    return M3AEPretrainer(backbone, **pretrainer_config)


def assign_weights(path, pretrainer, weights, has_decoder=True):
    """Copies `weights` (`{"backbone/..." | "decoder/...": array}`) in.

    Every backbone variable (and, with `has_decoder`, every decoder
    variable) must receive an array of its exact shape; every array must
    land on a variable.

    Raises:
        CheckpointError: a tensor is missing, left over, or of the wrong
            shape (naming the file, the tensor and both shapes).
    """
    targets = {f"backbone/{k}": v for k, v in relative_paths(pretrainer.backbone).items()}
    if has_decoder:
        targets.update({f"decoder/{k}": v for k, v in relative_paths(pretrainer.decoder).items()})
    missing = sorted(set(targets) - set(weights))
    if missing:
        fail(path, f"the checkpoint has no tensor for {', '.join(missing[:8])}"
                   + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""))
    unused = sorted(set(weights) - set(targets))
    if unused:
        fail(path, f"tensors with no place in the model: {', '.join(unused[:8])}")
    for name, variable in targets.items():
        value = np.asarray(weights[name])
        if tuple(value.shape) != tuple(variable.shape):
            fail(
                path,
                f"tensor for {name} has shape {tuple(value.shape)}, the configuration "
                f"implies {tuple(variable.shape)}: the checkpoint contradicts its config",
            )
        if not np.all(np.isfinite(value)):
            fail(path, f"tensor for {name} holds non-finite values")
        variable.assign(value.astype(variable.dtype))
    if not has_decoder:
        warnings.warn(
            f"{path}: the checkpoint holds the encoder only; the decoder is freshly "
            "initialised (fine-tune, or pretrain further, from here).",
            stacklevel=3,
        )


def _position_table_error(table, grid_size, hidden_dim, has_cls=True):
    """Max difference of a stored table from the fixed sin-cos one, or a reason it cannot be."""
    table = np.asarray(table, np.float32).reshape(-1, hidden_dim)
    expected = sincos_2d(grid_size, hidden_dim)
    if has_cls:
        if table.shape[0] != expected.shape[0] + 1:
            return (f"has {table.shape[0] - 1} patch positions; the configuration implies "
                    f"{expected.shape[0]} ({grid_size[0]}x{grid_size[1]} patches)")
        if np.abs(table[0]).max() > 1e-6:
            return "gives the class token a position; only fixed sin-cos positions are supported"
        table = table[1:]
    elif table.shape != expected.shape:
        return f"has shape {table.shape}, expected {expected.shape}"
    return float(np.abs(table - expected).max())


def is_fixed_position_table(table, grid_size, hidden_dim, tolerance=1e-4):
    """Whether a stored `(1 + N, D)` table is the fixed sin-cos one (zero CLS row)."""
    error = _position_table_error(table, grid_size, hidden_dim)
    return not isinstance(error, str) and error <= tolerance


def check_position_table(path, name, table, grid_size, hidden_dim, has_cls=True):
    """Checks a stored fixed sin-cos table against the one the model computes.

    MAE and ViTMAE store their (frozen) sin-cos positions; the model computes
    them. A table that differs was learned or interpolated: refuse it.
    """
    error = _position_table_error(table, grid_size, hidden_dim, has_cls)
    if isinstance(error, str):
        fail(path, f"{name} {error}")
    if error > 1e-4:
        fail(path, f"{name} is not the fixed 2-D sin-cos table (max difference {error:.3g}); "
                   "learned or resampled position embeddings are not supported")


def linear(weight):
    """torch `Linear.weight` `(out, in)` -> Keras kernel `(in, out)`."""
    return np.asarray(weight).T


def patch_kernel(weight):
    """Conv patch kernel `(D, C, p, p)` -> Dense kernel `(p*p*C, D)`.

    The model flattens each patch in (pixel row, pixel column, channel)
    order.
    """
    weight = np.asarray(weight)
    return weight.transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])


def vector(value):
    """`(1, 1, D)` parameters (CLS, type, mask vectors) -> `(D,)`."""
    return np.asarray(value).reshape(-1)
