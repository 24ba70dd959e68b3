"""Pre-LayerNorm ViT blocks shared by the encoder and the decoder."""

import functools

import keras
from keras import ops

from keras_m3ae.layers.dense import TokenDense
from keras_m3ae.layers.layer_norm import CenteredLayerNorm


@functools.cache
def _jax_on_cpu():
    """Whether Keras runs on JAX with CPU devices (no fused attention kernel there)."""
    return keras.config.backend() == "jax" and keras.distribution.list_devices()[0].startswith("cpu")


_TORCH_FAST_PATH = {"enabled": True}


def set_torch_fast_path(enabled):
    """Turns the torch backend's fast path for `TransformerStack` on or off.

    On the torch backend, a `TransformerStack` whose blocks are plain (see
    `fast_path_for`) runs its forward as torch ops from the same variables
    (`keras_m3ae.layers.torch_block`), without eager Keras's per-layer
    Python. It computes what the `keras.ops` forward computes (outputs and
    gradients, tested); turning it off makes every stack take the `keras.ops`
    forward. On by default; other backends never use it.

    Args:
        enabled: bool.

    Example:
    >>> keras_m3ae.layers.set_torch_fast_path(False)  # the keras.ops forward everywhere
    >>> keras_m3ae.layers.set_torch_fast_path(True)
    """
    _TORCH_FAST_PATH["enabled"] = bool(enabled)


def fast_path_for(stack):
    """The function that runs `stack`'s forward faster than its layer calls, or None.

    The one place a backend fast path is chosen: on the torch backend, with
    `set_torch_fast_path` on, `keras_m3ae.layers.torch_block.call_stack` for
    a stack of plain `TransformerBlock`s (not subclasses, plain sub-layers,
    nothing that only `Layer.__call__` applies; `torch_block.supports_stack`).
    Otherwise None: the `keras.ops` forward.

    Args:
        stack: a built `TransformerStack`.

    Returns:
        `call_stack(stack, x, attention_mask, training, final_norm)` or None.
    """
    # Not cached: torch.compile warns about tracing through `functools.cache`.
    if not _TORCH_FAST_PATH["enabled"] or keras.config.backend() != "torch":
        return None
    if not all(
        type(block) is TransformerBlock and type(block.attention) is MultiHeadSelfAttention
        for block in stack.blocks
    ):
        return None
    from keras_m3ae.layers import torch_block  # imports torch: the torch backend only

    return torch_block.call_stack if torch_block.supports_stack(stack) else None


def _dense(units, name, dtype):
    # MAE and the reference M3AE initialise every linear layer Xavier-uniform
    # with zero bias.
    return TokenDense(units, kernel_initializer="glorot_uniform", name=name, dtype=dtype)


def softmax_attention(qkv, mask=None):
    """Attention with an explicit float32 softmax, computed heads first.

    Args:
        qkv: `(batch, tokens, 3, heads, head_dim)` queries, keys and values.
        mask: optional bool, broadcastable to `(batch, heads, queries, keys)`;
            False keys get no attention.

    Returns:
        `(outputs, scores)`: `(batch, tokens, heads, head_dim)` in the
        dtype of `qkv`, and the float32 scores `(batch, heads, queries, keys)`.

    Example:
    >>> out, scores = softmax_attention(np.ones((2, 5, 3, 4, 8), "float32"))
    >>> out.shape, scores.shape
    ((2, 5, 4, 8), (2, 4, 5, 5))
    """
    # (3, batch, heads, tokens, head_dim): both matmuls batch over leading axes.
    qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = ops.matmul(q, ops.swapaxes(k, -1, -2)) / ops.sqrt(ops.cast(q.shape[-1], q.dtype))
    if mask is not None:
        logits = ops.where(mask, logits, ops.cast(-1e9, logits.dtype))
    scores = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    out = ops.matmul(ops.cast(scores, v.dtype), v)
    return ops.swapaxes(out, 1, 2), scores


@keras.saving.register_keras_serializable(package="keras_m3ae")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Self-attention with one fused query/key/value projection.

    The fused `qkv` kernel `(hidden_dim, 3 * hidden_dim)` splits its output as
    `(3, num_heads, head_dim)`, the layout of the reference JAX M3AE and of
    MAE, so their checkpoints convert by copying. The fast path goes through
    `keras.ops.dot_product_attention` (flash / cuDNN / TPU kernels where the
    backend has them). Asking for the attention scores, and JAX on CPU, take
    an explicit softmax in the reference's `(batch, heads, tokens, head_dim)`
    layout instead (the same function of the inputs): XLA's CPU backend runs
    its batched matmuls faster than the generic path of
    `dot_product_attention`.

    Args:
        hidden_dim: int. Width of the token vectors.
        num_heads: int. Number of heads; must divide `hidden_dim`.

    Example:
    >>> attention = MultiHeadSelfAttention(64, 4)
    >>> attention(np.zeros((2, 10, 64)), attention_mask=np.ones((2, 10), bool)).shape
    (2, 10, 64)
    """

    # Sub-layer names: variable paths and the sharding layouts are built
    # from these, so a rename reaches both.
    QKV = "qkv"
    PROJ = "proj"

    def __init__(self, hidden_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by "
                f"`num_heads` ({num_heads})."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.qkv = _dense(3 * hidden_dim, self.QKV, self.dtype_policy)
        self.proj = _dense(hidden_dim, self.PROJ, self.dtype_policy)

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, x, attention_mask=None, return_attention_scores=False):
        qkv = ops.reshape(self.qkv(x), (-1, x.shape[1], 3, self.num_heads, self.head_dim))
        mask = None
        if attention_mask is not None:
            # Key mask (batch, keys) -> (batch, heads, queries, keys).
            mask = ops.cast(attention_mask, "bool")[:, None, None, :]
        if return_attention_scores or _jax_on_cpu():
            out, scores = softmax_attention(qkv, mask)
        else:
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            out = ops.dot_product_attention(q, k, v, mask=mask)
        out = self.proj(ops.reshape(out, (-1, x.shape[1], self.hidden_dim)))
        return (out, scores) if return_attention_scores else out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "num_heads": self.num_heads})
        return config


@keras.saving.register_keras_serializable(package="keras_m3ae")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a whole residual branch per example.

    At training time each example's branch is zeroed with probability
    `rate` and otherwise scaled by `1 / (1 - rate)`; at inference it is the
    identity. Keras has no such layer.

    Args:
        rate: float in [0, 1). Probability of dropping the branch.
        seed: optional int for the layer's `SeedGenerator`.

    Example:
    >>> DropPath(0.1)(np.ones((4, 3, 8)), training=True).shape
    (4, 3, 8)
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate else None

    def call(self, x, training=False):
        if not training or not self.rate:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        return x * ops.cast(noise < keep, x.dtype) / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="keras_m3ae")
class TransformerBlock(keras.layers.Layer):
    """Pre-LayerNorm ViT block: `x + attn(ln(x))`, then `x + mlp(ln(x))`.

    Its forward is `keras.ops` on every backend; inside a `TransformerStack`
    on torch the stack may run it through its fast path (`fast_path_for`).

    Args:
        hidden_dim: int. Width of the token vectors.
        num_heads: int. Attention heads.
        mlp_ratio: float. MLP width as a multiple of `hidden_dim` (4 in ViT).
        drop_path_rate: float. Stochastic depth rate of both branches.
        layer_norm_epsilon: float. LayerNorm epsilon (1e-6 as in MAE/M3AE).
        gelu_approximate: bool. Use the tanh approximation of GELU in the
            MLP (flax's `nn.gelu`, the reference JAX M3AE) instead of the
            exact erf form (PyTorch MAE, Hugging Face ViTMAE; default).

    Example:
    >>> TransformerBlock(64, 4)(np.zeros((2, 10, 64))).shape
    (2, 10, 64)
    """

    ATTENTION = "attention"
    FC1 = "fc1"
    FC2 = "fc2"
    # The Megatron split, as sub-layer paths: these matmuls are split along
    # their output features (column) or input features (row), so a block
    # needs one all-reduce per branch.
    COLUMN_PARALLEL = (f"{ATTENTION}/{MultiHeadSelfAttention.QKV}", FC1)
    ROW_PARALLEL = (f"{ATTENTION}/{MultiHeadSelfAttention.PROJ}", FC2)

    def __init__(
        self,
        hidden_dim,
        num_heads,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=1e-6,
        gelu_approximate=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.gelu_approximate = gelu_approximate
        policy = self.dtype_policy
        self.norm1 = CenteredLayerNorm(
            epsilon=layer_norm_epsilon, name="norm1", dtype=policy
        )
        self.attention = MultiHeadSelfAttention(
            hidden_dim, num_heads, name=self.ATTENTION, dtype=policy
        )
        self.norm2 = CenteredLayerNorm(
            epsilon=layer_norm_epsilon, name="norm2", dtype=policy
        )
        self.fc1 = _dense(int(hidden_dim * mlp_ratio), self.FC1, policy)
        self.fc2 = _dense(hidden_dim, self.FC2, policy)
        self.drop_path = DropPath(drop_path_rate, name="drop_path", dtype=policy)

    def build(self, input_shape):
        for layer in (self.norm1, self.attention, self.norm2, self.fc1):
            layer.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (int(self.hidden_dim * self.mlp_ratio),))
        # Built although `call` skips it at rate 0: while any layer is unbuilt,
        # Keras's trainers build the model again before every `train_on_batch`
        # (on JAX a whole trace of the model, on every backend).
        self.drop_path.build(input_shape)

    def call(self, x, attention_mask=None, training=False, return_attention_scores=False):
        # The residual stream stays `(tokens, width)` inside the block, the
        # shape the 2-D matmuls of `TokenDense` take, so none of them reshapes
        # it or its gradient (on JAX's CPU backend each such reshape was one
        # more consumer into which XLA's fusion copied the residual-gradient
        # adds).
        shape = ops.shape(x)
        tokens = ops.reshape(x, (-1, self.hidden_dim))
        h = self.attention(
            ops.reshape(self.norm1(tokens), shape),
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
        )
        if return_attention_scores:
            h, scores = h
        tokens = tokens + self._drop_path(h, shape, training)
        # Exact (erf) GELU, as PyTorch MAE and Hugging Face ViTMAE use, unless
        # `gelu_approximate` (tanh form, flax's default: the reference M3AE).
        h = self.fc2(
            keras.activations.gelu(self.fc1(self.norm2(tokens)), approximate=self.gelu_approximate)
        )
        tokens = tokens + self._drop_path(h, shape, training)
        x = ops.reshape(tokens, shape)
        return (x, scores) if return_attention_scores else x

    def _drop_path(self, h, shape, training):
        """A branch's output as `(tokens, width)`, dropped per example (which needs `shape`)."""
        if training and self.drop_path_rate:
            h = self.drop_path(ops.reshape(h, shape), training=training)
        return ops.reshape(h, (-1, self.hidden_dim))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "drop_path_rate": self.drop_path_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "gelu_approximate": self.gelu_approximate,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_m3ae")
class TransformerStack(keras.layers.Layer):
    """A stack of `TransformerBlock`s followed by a final LayerNorm.

    Drop path grows linearly from 0 at the first block to `drop_path_rate`
    at the last, as in MAE fine-tuning. On the torch backend the forward of
    plain blocks runs as torch ops (`fast_path_for`, switched off with
    `set_torch_fast_path(False)`); it computes the same outputs and
    gradients as the `keras.ops` forward of the blocks. Blocks are `self.blocks[i]`; the
    final norm is `self.norm` (partial fine-tuning and layer-wise decay find
    them there, not by matching names).

    Args:
        num_layers: int. Number of blocks.
        hidden_dim: int. Width of the token vectors.
        num_heads: int. Attention heads.
        mlp_ratio: float. MLP width as a multiple of `hidden_dim`.
        drop_path_rate: float. Stochastic depth rate of the last block.
        layer_norm_epsilon: float. LayerNorm epsilon.
        gelu_approximate: bool. Tanh GELU in every block (see
            `TransformerBlock`).

    Example:
    >>> TransformerStack(2, 64, 4)(np.zeros((2, 10, 64))).shape
    (2, 10, 64)
    """

    # Blocks are named `block_0`, `block_1`... (layouts match `BLOCK_PREFIX\d+`).
    BLOCK_PREFIX = "block_"

    def __init__(
        self,
        num_layers,
        hidden_dim,
        num_heads,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=1e-6,
        gelu_approximate=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.gelu_approximate = gelu_approximate
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        rates = [drop_path_rate * i / max(num_layers - 1, 1) for i in range(num_layers)]
        self.blocks = [
            TransformerBlock(
                hidden_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                drop_path_rate=rate,
                layer_norm_epsilon=layer_norm_epsilon,
                gelu_approximate=gelu_approximate,
                name=f"{self.BLOCK_PREFIX}{i}",
                dtype=self.dtype_policy,
            )
            for i, rate in enumerate(rates)
        ]
        self.norm = CenteredLayerNorm(
            epsilon=layer_norm_epsilon, name="norm", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        for block in self.blocks:
            block.build(input_shape)
        self.norm.build(input_shape)

    def call(
        self,
        x,
        attention_mask=None,
        training=False,
        return_attention_scores=False,
        final_norm=True,
    ):
        fast = None if return_attention_scores else fast_path_for(self)
        if fast is not None:
            return fast(self, x, attention_mask, training, final_norm)
        all_scores = []
        for block in self.blocks:
            x = block(
                x,
                attention_mask=attention_mask,
                training=training,
                return_attention_scores=return_attention_scores,
            )
            if return_attention_scores:
                x, scores = x
                all_scores.append(scores)
        if final_norm:  # MAE's global-pool classifiers pool before it
            x = self.norm(x)
        return (x, all_scores) if return_attention_scores else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "drop_path_rate": self.drop_path_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "gelu_approximate": self.gelu_approximate,
            }
        )
        return config
