"""Sharding layouts for training M3AE / MAE with `keras.distribution`.

The layouts follow the Megatron split of a transformer block, written the way
keras-hub writes its `get_layout_map`s (Gemma, Llama): a 2-D device mesh
`(batch, model)`; on the `model` axis each block's first matmul (fused qkv,
fc1) is split along its output features and the second (attention output
projection, fc2) along its input features, so one block needs a single
all-reduce per branch; the other kernel axis is split over the `batch` axis
(fully-sharded data parallel: each data replica keeps a slice, gathered when
used). The text embedding `(vocabulary, hidden)` and the decoder's vocabulary
head `(hidden, vocabulary)` are split along the vocabulary on the `model` axis.
Biases, norms, CLS/type/mask vectors and the small patch projection are
replicated.

JAX requires every sharded dimension to be divisible by the size of its mesh
axis (the BERT vocabulary, 30522, divides by 2 but not by 4 or 8: pad the
vocabulary to a multiple of the `model` axis, or use a `model` axis of 2).
"""

import keras

from keras_m3ae.layers.transformer import TransformerBlock
from keras_m3ae.layers.transformer import TransformerStack
from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone
from keras_m3ae.models.m3ae.m3ae_decoder import M3AEDecoder

# Variable paths (print `[v.path for v in model.weights]`):
#   token_embedding/embeddings                         (V, D)
#   encoder/block_i/attention/qkv/kernel               (D, 3D)
#   encoder/block_i/attention/proj/kernel              (D, D)
#   encoder/block_i/fc1/kernel                         (D, mlp)
#   encoder/block_i/fc2/kernel                         (mlp, D)
#   <pretrainer>/decoder/transformer/block_i/...       same block layout
#   <pretrainer>/decoder/text_head/kernel              (Dd, V)
# LayoutMap keys are regular expressions matched against the whole path,
# so one block pattern serves the encoder and the decoder, and a prefix
# (the pretrainer's name) is allowed. Layout maps are built before any model
# exists, so the patterns come from the layers' own name constants: a
# renamed layer changes its pattern with it.
_ANY = r"(?:.*/)?"


def layout_specs(model_parallel_dim_name="model", data_parallel_dim_name="batch", decoder=False):
    """The layout as `{path regex: axes}`, without a device mesh.

    Args:
        model_parallel_dim_name: str. Model-parallel mesh axis.
        data_parallel_dim_name: str. Data-parallel mesh axis.
        decoder: bool. Add the pretrainer decoder's vocabulary head.

    Returns:
        dict: regular expressions (matched against whole variable paths) to
        the axes of each kernel dimension.
    """
    model, data = model_parallel_dim_name, data_parallel_dim_name
    block = _ANY + TransformerStack.BLOCK_PREFIX + r"\d+/"
    specs = {_ANY + M3AEBackbone.TOKEN_EMBEDDING + "/embeddings": (model, data)}
    # Column-parallel first matmuls, row-parallel second ones.
    for path in TransformerBlock.COLUMN_PARALLEL:
        specs[block + path + "/kernel"] = (data, model)
    for path in TransformerBlock.ROW_PARALLEL:
        specs[block + path + "/kernel"] = (model, data)
    if decoder:
        specs[_ANY + M3AEDecoder.TEXT_HEAD + "/kernel"] = (data, model)
    return specs


def _check_mesh(device_mesh, model_parallel_dim_name, data_parallel_dim_name):
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise ValueError(
            "`device_mesh` must be a `keras.distribution.DeviceMesh`; got "
            f"{type(device_mesh).__name__}."
        )
    for role, name in (
        ("model_parallel_dim_name", model_parallel_dim_name),
        ("data_parallel_dim_name", data_parallel_dim_name),
    ):
        if name not in device_mesh.axis_names:
            raise ValueError(
                f"`{role}` {name!r} is not an axis of the device mesh "
                f"{list(device_mesh.axis_names)}."
            )


def backbone_layout_map(
    device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"
):
    """`LayoutMap` sharding an `M3AEBackbone`'s (and any M3AE block's) weights.

    Args:
        device_mesh: `keras.distribution.DeviceMesh` with both axes below.
        model_parallel_dim_name: str. Mesh axis splitting attention heads'
            features, MLP hidden units and the vocabulary.
        data_parallel_dim_name: str. Mesh axis splitting the batch; kernels
            are also split over it on their other dimension.

    Returns:
        `keras.distribution.LayoutMap`.

    Example:
    >>> devices = keras.distribution.list_devices()
    >>> mesh = keras.distribution.DeviceMesh(
    ...     (len(devices) // 2, 2), ["batch", "model"], devices)
    >>> layout_map = backbone_layout_map(mesh)
    >>> keras.distribution.set_distribution(keras.distribution.ModelParallel(
    ...     layout_map=layout_map, batch_dim_name="batch"))
    """
    return _layout_map(device_mesh, model_parallel_dim_name, data_parallel_dim_name, False)


def pretrainer_layout_map(
    device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"
):
    """`LayoutMap` for an `M3AEPretrainer`: backbone, decoder and heads.

    The decoder's blocks share the backbone's block layout; its vocabulary
    head `(decoder_hidden_dim, vocabulary_size)` is split along the
    vocabulary.

    Args:
        device_mesh: `keras.distribution.DeviceMesh`.
        model_parallel_dim_name: str. Model-parallel mesh axis.
        data_parallel_dim_name: str. Data-parallel mesh axis.

    Returns:
        `keras.distribution.LayoutMap`.

    Example:
    >>> layout_map = pretrainer_layout_map(mesh)
    >>> with keras.distribution.ModelParallel(
    ...         layout_map=layout_map, batch_dim_name="batch").scope():
    ...     pretrainer = keras_m3ae.M3AEPretrainer(backbone_fn(), ...)
    """
    return _layout_map(device_mesh, model_parallel_dim_name, data_parallel_dim_name, True)


def _layout_map(device_mesh, model_parallel_dim_name, data_parallel_dim_name, decoder):
    _check_mesh(device_mesh, model_parallel_dim_name, data_parallel_dim_name)
    layout_map = keras.distribution.LayoutMap(device_mesh)
    specs = layout_specs(model_parallel_dim_name, data_parallel_dim_name, decoder)
    for pattern, axes in specs.items():
        layout_map[pattern] = axes
    return layout_map
