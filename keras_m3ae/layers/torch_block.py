"""The torch backend's fast path for a `TransformerStack`: its forward in torch ops.

The one torch-specific piece of the model, chosen in one place:
`keras_m3ae.layers.transformer.fast_path_for` (switched off with
`keras_m3ae.layers.set_torch_fast_path(False)`). On the torch backend Keras
runs eagerly, and every `Layer.__call__` and `keras.ops` call adds Python
checks and dispatch on top of its kernel, which for small blocks is most
of their time. `call_stack` computes the same blocks and final norm, from
the same variables, with one torch call per kernel, as torch models are
written.

It reads each sub-layer's weights through Keras (`layer.kernel`, `.value`),
so autocast (mixed precision), stateless scopes, LoRA and the trainers'
gradients all see the usual variables. Sub-layers that Keras would compute
differently (subclasses, quantized or activated `Dense`, non-default
LayerNorm) and what only `Layer.__call__` applies keep the Keras path
(`supports_stack`). `tests/test_layers.py` holds both paths to the same
outputs and gradients, in float32 and mixed bfloat16.

This module does not import `transformer.py` (which chooses it): the
caller checks the block and attention classes.
"""

import keras
import torch
import torch.nn.functional as F

from keras_m3ae.layers.dense import TokenDense
from keras_m3ae.layers.layer_norm import CenteredLayerNorm


def _value(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _plain_dense(layer):
    return (
        type(layer) in (TokenDense, keras.layers.Dense)  # a subclass may compute otherwise
        and layer.quantization_mode is None
        and layer.bias is not None
        and layer.activation in (None, keras.activations.linear)
    )


def _plain_norm(layer):
    return (
        type(layer) in (CenteredLayerNorm, keras.layers.LayerNormalization)
        and layer.center
        and layer.scale
        and not layer.rms_scaling
        and layer.axis in (-1, [-1])
    )


def _plain_block(block):
    attention = block.attention
    return (
        all(_plain_dense(d) for d in (attention.qkv, attention.proj, block.fc1, block.fc2))
        and _plain_norm(block.norm1)
        and _plain_norm(block.norm2)
    )


def supports_stack(stack):
    """Whether `call_stack(stack, ...)` computes what the stack's layer calls do.

    The caller has checked that the blocks are `TransformerBlock`s with a
    `MultiHeadSelfAttention` (not subclasses). `call_stack` runs the blocks
    and the final norm without their `Layer.__call__`. That is the same
    computation when every dense layer and norm is a plain one, each block
    takes the stack's dtype policy (so the stack's autocast scope is its
    own), and no block has an activity regulariser or rematerialisation,
    which only `Layer.__call__` applies.
    """

    def same_dtypes(layer):
        return (layer.compute_dtype, layer.variable_dtype) == (
            stack.compute_dtype,
            stack.variable_dtype,
        )

    # A norm's own `autocast` is False, and so is its weights': `_norm` reads
    # them in float32 in any scope, as Keras does.
    return _plain_norm(stack.norm) and same_dtypes(stack.norm) and all(
        _plain_block(block)
        and same_dtypes(block)
        and block.autocast == stack.autocast
        and block.activity_regularizer is None
        and getattr(block, "_remat_mode", None) is None
        for block in stack.blocks
    )


def _dense(layer, x):
    # One GEMM with the bias in it, as `torch.nn.Linear` runs it; Keras adds
    # the bias in a second pass over the output. In bfloat16 the fused form
    # rounds once where Keras rounds twice.
    return torch.addmm(_value(layer.bias), x, _value(layer.kernel))


def _norm(layer, x):
    # Keras normalises in at least float32 and returns the compute dtype.
    x32 = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.layer_norm(
        x32,
        (x.shape[-1],),
        _value(layer.gamma).to(x32.dtype),
        _value(layer.beta).to(x32.dtype),
        layer.epsilon,
    )
    return out.to(x.dtype)


def _attention(layer, x, batch, length, mask):
    qkv = _dense(layer.qkv, x).view(batch, length, 3, layer.num_heads, layer.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _dense(layer.proj, out.transpose(1, 2).reshape(batch * length, layer.hidden_dim))


def _block(block, x, mask, training):
    """`TransformerBlock.call` without attention scores, for a plain block."""
    batch, length, width = x.shape
    shape = (batch, length, width)

    def drop_path(h):
        if training and block.drop_path_rate:
            h = block.drop_path(h.view(shape), training=True).reshape(-1, width)
        return h

    tokens = x.reshape(-1, width)
    h = _attention(block.attention, _norm(block.norm1, tokens), batch, length, mask)
    tokens = tokens + drop_path(h)
    h = F.gelu(
        _dense(block.fc1, _norm(block.norm2, tokens)),
        approximate="tanh" if block.gelu_approximate else "none",
    )
    tokens = tokens + drop_path(_dense(block.fc2, h))
    return tokens.view(shape)


def call_stack(stack, x, attention_mask=None, training=False, final_norm=True):
    """`TransformerStack.call` without attention scores, in torch ops.

    Args:
        stack: a built `TransformerStack` for which `supports_stack(stack)`.
        x: `(batch, tokens, hidden_dim)` tensor in the compute dtype.
        attention_mask: optional `(batch, tokens)` key mask.
        training: bool; drop path is applied (by each block's `DropPath`)
            only when training with a non-zero rate.
        final_norm: bool. Apply the stack's final LayerNorm.

    Returns:
        The stack's output, shaped and typed like `x`.
    """
    if not isinstance(x, torch.Tensor):  # `stateless_call` passes inputs as given
        x = keras.ops.convert_to_tensor(x)
    mask = None
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask, device=x.device).bool()[:, None, None, :]
    for block in stack.blocks:
        x = _block(block, x, mask, training)
    return _norm(stack.norm, x) if final_norm else x
