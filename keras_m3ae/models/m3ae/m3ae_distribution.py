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
# renamed layer changes its pattern with it. The models pass their names in
# (`M3AEBackbone.TOKEN_EMBEDDING`, `M3AEDecoder.TEXT_HEAD`): this module sits
# below them.
_ANY = r"(?:.*/)?"


def layout_specs(
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
    token_embedding=None,
    text_head=None,
):
    """The layout as `{path regex: axes}`, without a device mesh.

    Args:
        model_parallel_dim_name: str. Model-parallel mesh axis.
        data_parallel_dim_name: str. Data-parallel mesh axis.
        token_embedding: optional str. Name of the text embedding layer
            (`M3AEBackbone.TOKEN_EMBEDDING`), split along the vocabulary.
        text_head: optional str. Name of the decoder's vocabulary head
            (`M3AEDecoder.TEXT_HEAD`), split along the vocabulary.

    Returns:
        dict: regular expressions (matched against whole variable paths) to
        the axes of each kernel dimension.

    Example:
    >>> specs = layout_specs(token_embedding=M3AEBackbone.TOKEN_EMBEDDING)
    """
    model, data = model_parallel_dim_name, data_parallel_dim_name
    block = _ANY + TransformerStack.BLOCK_PREFIX + r"\d+/"
    specs = {}
    if token_embedding is not None:
        specs[_ANY + token_embedding + "/embeddings"] = (model, data)
    # Column-parallel first matmuls, row-parallel second ones.
    for path in TransformerBlock.COLUMN_PARALLEL:
        specs[block + path + "/kernel"] = (data, model)
    for path in TransformerBlock.ROW_PARALLEL:
        specs[block + path + "/kernel"] = (model, data)
    if text_head is not None:
        specs[_ANY + text_head + "/kernel"] = (data, model)
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


def layout_map(
    device_mesh,
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
    token_embedding=None,
    text_head=None,
):
    """`LayoutMap` sharding M3AE blocks and the named vocabulary layers.

    `M3AEBackbone.get_layout_map` and `M3AEPretrainer.get_layout_map` call
    it with their layers' names.

    Args:
        device_mesh: `keras.distribution.DeviceMesh` with both axes below.
        model_parallel_dim_name: str. Mesh axis splitting attention heads'
            features, MLP hidden units and the vocabulary.
        data_parallel_dim_name: str. Mesh axis splitting the batch; kernels
            are also split over it on their other dimension.
        token_embedding: optional str. See `layout_specs`.
        text_head: optional str. See `layout_specs`.

    Returns:
        `keras.distribution.LayoutMap`.

    Example:
    >>> devices = keras.distribution.list_devices()
    >>> mesh = keras.distribution.DeviceMesh(
    ...     (len(devices) // 2, 2), ["batch", "model"], devices)
    >>> layout_map = keras_m3ae.M3AEBackbone.get_layout_map(mesh)
    >>> keras.distribution.set_distribution(keras.distribution.ModelParallel(
    ...     layout_map=layout_map, batch_dim_name="batch"))
    """
    _check_mesh(device_mesh, model_parallel_dim_name, data_parallel_dim_name)
    result = keras.distribution.LayoutMap(device_mesh)
    specs = layout_specs(
        model_parallel_dim_name, data_parallel_dim_name, token_embedding, text_head
    )
    for pattern, axes in specs.items():
        result[pattern] = axes
    return result
