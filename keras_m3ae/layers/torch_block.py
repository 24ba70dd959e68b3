"""The torch backend's `TransformerBlock` and `TransformerStack` forward, in torch ops.

The one torch-specific piece of the model. On the torch backend Keras runs
eagerly, and every `Layer.__call__` (~235 us) and `keras.ops` call (~30 us
of dtype and conversion checks) is Python time on top of its kernel: a
block made of 7 Keras layers took ~5 ms per forward at the `tiny`
benchmark size, mostly Python, and a ViT-S MAE forward spent 113 ms
outside its kernels against 27 ms in transformers' ViTMAE
(`benchmarks/profile_step.py`). This module computes the same block, from
the same variables, with one torch call per kernel, as torch models are
written; a stack of such blocks runs them without a layer call each
(`call_stack`).

It reads each sub-layer's weights through Keras (`layer.kernel`, `.value`),
so autocast (mixed precision), stateless scopes, LoRA and the trainers'
gradients all see the usual variables; sub-layers that Keras would compute
differently (subclasses, quantized or activated `Dense`, non-default
LayerNorm) keep the Keras path (`supports`). `tests/test_layers.py` holds
both paths to the same outputs and gradients, in float32 and mixed
bfloat16.
"""

import keras
import torch
import torch.nn.functional as F

from keras_m3ae.layers.dense import TokenDense
from keras_m3ae.layers.layer_norm import CenteredLayerNorm
from keras_m3ae.layers.transformer import MultiHeadSelfAttention
from keras_m3ae.layers.transformer import TransformerBlock


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


def supports(block):
    """Whether `call(block, ...)` computes what the block's Keras layers do."""
    attention = block.attention
    return (
        type(attention) is MultiHeadSelfAttention
        and all(_plain_dense(d) for d in (attention.qkv, attention.proj, block.fc1, block.fc2))
        and _plain_norm(block.norm1)
        and _plain_norm(block.norm2)
    )


def _dense(layer, x):
    # One GEMM with the bias in it, as `torch.nn.Linear` runs it; Keras adds
    # the bias in a second pass over the output (ViT-B forward, one thread:
    # add + copy kernels 34 -> 26 ms). In bfloat16 the fused form rounds
    # once where Keras rounds twice.
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


def _attention(layer, x, batch, length, attention_mask):
    qkv = _dense(layer.qkv, x).view(batch, length, 3, layer.num_heads, layer.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    mask = None
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask, device=x.device).bool()[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _dense(layer.proj, out.transpose(1, 2).reshape(batch * length, layer.hidden_dim))


def call(block, x, attention_mask=None, training=False):
    """`TransformerBlock.call` without attention scores, in torch ops.

    Args:
        block: a built `TransformerBlock` for which `supports(block)`.
        x: `(batch, tokens, hidden_dim)` tensor in the compute dtype.
        attention_mask: optional `(batch, tokens)` key mask.
        training: bool; drop path is applied (by the block's `DropPath`) only
            when training with a non-zero rate.

    Returns:
        The block's output, shaped and typed like `x`.
    """
    if not isinstance(x, torch.Tensor):  # `stateless_call` passes inputs as given
        x = keras.ops.convert_to_tensor(x)
    batch, length, width = x.shape
    shape = (batch, length, width)

    def drop_path(h):
        if training and block.drop_path_rate:
            h = block.drop_path(h.view(shape), training=True).reshape(-1, width)
        return h

    tokens = x.reshape(-1, width)
    h = _attention(block.attention, _norm(block.norm1, tokens), batch, length, attention_mask)
    tokens = tokens + drop_path(h)
    h = F.gelu(
        _dense(block.fc1, _norm(block.norm2, tokens)),
        approximate="tanh" if block.gelu_approximate else "none",
    )
    tokens = tokens + drop_path(_dense(block.fc2, h))
    return tokens.view(shape)


def supports_stack(stack):
    """Whether `call_stack(stack, ...)` computes what the stack's layer calls do.

    `call_stack` calls the blocks' torch path and the final norm without
    their `Layer.__call__` (~0.1-0.2 ms of Python each per step). That is the
    same computation when each block is a plain `TransformerBlock` that
    `supports`, takes the stack's dtype policy (so the stack's autocast scope
    is its own), and has no activity regulariser or rematerialisation, which
    only `Layer.__call__` applies.
    """

    def same_dtypes(layer):
        return (layer.compute_dtype, layer.variable_dtype) == (
            stack.compute_dtype,
            stack.variable_dtype,
        )

    # A norm's own `autocast` is False, and so is its weights': `_norm` reads
    # them in float32 in any scope, as Keras does.
    return _plain_norm(stack.norm) and same_dtypes(stack.norm) and all(
        type(block) is TransformerBlock
        and supports(block)
        and same_dtypes(block)
        and block.autocast == stack.autocast
        and block.activity_regularizer is None
        and getattr(block, "_remat_mode", None) is None
        for block in stack.blocks
    )


def call_stack(stack, x, attention_mask=None, training=False, final_norm=True):
    """`TransformerStack.call` without attention scores, in torch ops.

    Args:
        stack: a built `TransformerStack` for which `supports_stack(stack)`.
        x: `(batch, tokens, hidden_dim)` tensor in the compute dtype.
        attention_mask: optional `(batch, tokens)` key mask.
        training: bool, for the blocks' drop path.
        final_norm: bool. Apply the stack's final LayerNorm.

    Returns:
        The stack's output, shaped and typed like `x`.
    """
    for block in stack.blocks:
        x = call(block, x, attention_mask, training)
    return _norm(stack.norm, x) if final_norm else x
