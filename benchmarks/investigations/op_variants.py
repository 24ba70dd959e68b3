"""Two formulations of one op, forward + backward, timed side by side.

The library picks between equivalent `keras.ops` formulations in two places
for speed; this script shows the measurement behind each choice on the
current backend (interleaved calls, fastest and median, and the largest
difference of values and gradients).

- `attention`: `keras.ops.dot_product_attention` in `(batch, tokens, heads,
  head_dim)` layout against the library's `softmax_attention` (heads first),
  which `MultiHeadSelfAttention` uses on JAX's CPU.
- `text-loss`: `keras.ops.sparse_categorical_crossentropy` (log-softmax and
  one-hot) against the library's `token_cross_entropy` (log-sum-exp minus
  the target's logit), which `text_prediction_loss` uses.

    KERAS_BACKEND=jax python benchmarks/investigations/op_variants.py attention --shape 4 321 512 16
    KERAS_BACKEND=torch python benchmarks/investigations/op_variants.py text-loss
"""

import argparse
import statistics
import time

import keras
import numpy as np
from keras import ops

from keras_m3ae.layers.transformer import softmax_attention
from keras_m3ae.models.m3ae.m3ae_losses import token_cross_entropy


def attention_variants(batch, tokens, width, heads, masked):
    rng = np.random.default_rng(0)
    head_dim = width // heads
    qkv = rng.normal(size=(batch, tokens, 3, heads, head_dim)).astype("float32")
    mask = (rng.random((batch, tokens)) < 0.8)[:, None, None, :] if masked else None

    def fused(qkv):
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        return ops.dot_product_attention(q, k, v, mask=mask)

    def explicit(qkv):
        return softmax_attention(qkv, mask)[0]

    return {"dot_product_attention": fused, "explicit, heads first": explicit}, qkv


def text_loss_variants(batch, tokens, vocabulary):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(batch, tokens, vocabulary)).astype("float32")
    ids = rng.integers(0, vocabulary, (batch, tokens)).astype("int32")

    def one_hot(logits):
        return ops.sparse_categorical_crossentropy(ids, logits, from_logits=True)

    def logsumexp(logits):
        return token_cross_entropy(logits, ids)

    return {"one-hot cross-entropy": one_hot, "logsumexp - target": logsumexp}, logits


def value_and_grad(fn, x):
    """`(value, gradient)` of `sum(fn(x) * w)` for a fixed random `w`, on this backend."""
    backend = keras.backend.backend()
    w = None

    def loss(x):
        nonlocal w
        y = fn(x)
        if w is None:
            w = ops.convert_to_tensor(np.random.default_rng(1).normal(size=y.shape).astype("float32"))
        return ops.sum(y * w)

    if backend == "jax":
        import jax

        step = jax.jit(jax.value_and_grad(loss))
        return lambda: jax.block_until_ready(step(x))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss(x)
            return value, tape.gradient(value, x)

        x = tf.constant(x)
        return lambda: [t.numpy() for t in step(x)]
    import torch

    x0 = torch.as_tensor(x)

    def step():
        x = x0.clone().requires_grad_(True)
        value = loss(x)
        value.backward()
        return value.detach(), x.grad
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op", choices=("attention", "text-loss"))
    parser.add_argument("--shape", type=int, nargs="+",
                        help="attention: batch tokens width heads (default 4 321 512 16, the "
                             "ViT-S decoder); text-loss: batch tokens vocabulary (4 64 30522)")
    parser.add_argument("--mask", action="store_true", help="attention: a random key mask")
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args(argv)
    if args.op == "attention":
        variants, x = attention_variants(*(args.shape or (4, 321, 512, 16)), args.mask)
    else:
        variants, x = text_loss_variants(*(args.shape or (4, 64, 30522)))
    steps = {name: value_and_grad(fn, x) for name, fn in variants.items()}
    results = {name: [ops.convert_to_numpy(t) for t in step()] for name, step in steps.items()}
    first, second = results.values()
    print(f"{keras.backend.backend()}, {args.op} {x.shape}: largest difference "
          f"value {abs(float(first[0]) - float(second[0])):.3g}, "
          f"gradient {float(np.max(np.abs(first[1] - second[1]))):.3g}")
    times = {name: [] for name in steps}
    for r in range(args.calls):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(f"  {name:24} fastest {min(t) * 1e3:8.2f} ms  median {statistics.median(t) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
