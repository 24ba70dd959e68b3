"""Shared pieces of the benchmarks: sizes, synthetic batches, analytic FLOPs,
timing, peak memory and the dense-matmul peak of the machine.

Backend-specific code lives here on purpose (synchronising a device, reading
its memory counters); the model code stays `keras.ops` only.
"""

import os
import resource
import statistics
import sys
import time

# This checkout, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_m3ae  # noqa: E402

# Backbone config and decoder (width, depth, heads) per size. "tiny" is the
# demo preset; small/base are the paper sizes (SPEC.md) at 224 px.
SIZES = {
    "tiny": dict(image_size=64, patch_size=8, hidden_dim=128, num_layers=4, num_heads=4,
                 decoder=(128, 2, 4)),
    "small": dict(image_size=224, patch_size=16, hidden_dim=384, num_layers=12, num_heads=6,
                  decoder=(512, 8, 16)),
    "base": dict(image_size=224, patch_size=16, hidden_dim=768, num_layers=12, num_heads=12,
                 decoder=(512, 8, 16)),
}
VOCABULARY_SIZE = 30522
MAX_TEXT_LENGTH = 64


def build(size, text=True, image_mask_ratio=0.75, dtype=None, seed=0, decoder_layers=None):
    """An `M3AEPretrainer` (M3AE, or MAE when `text=False`) of a named size.

    `decoder_layers` overrides the size's decoder depth (MAE's ablation uses
    1 and 8 blocks).
    """
    config = dict(SIZES[size])
    decoder = config.pop("decoder")
    if decoder_layers is not None:
        decoder = (decoder[0], decoder_layers, decoder[2])
    keras.utils.set_random_seed(seed)
    backbone = keras_m3ae.M3AEBackbone(
        vocabulary_size=VOCABULARY_SIZE if text else None,
        max_text_length=MAX_TEXT_LENGTH,
        dtype=dtype,
        **config,
    )
    return keras_m3ae.M3AEPretrainer(
        backbone,
        decoder_hidden_dim=decoder[0],
        decoder_num_layers=decoder[1],
        decoder_num_heads=decoder[2],
        image_mask_ratio=image_mask_ratio,
        seed=seed,
    )


def batch(pretrainer, batch_size, seed=0):
    backbone = pretrainer.backbone
    rng = np.random.default_rng(seed)
    size = backbone.image_size
    data = {"images": rng.normal(size=(batch_size, size, size, 3)).astype("float32")}
    if backbone.has_text:
        length = backbone.max_text_length
        data["token_ids"] = rng.integers(1, backbone.vocabulary_size, (batch_size, length)).astype(
            "int32"
        )
        # Captions of 3/4 of the maximum length, as CC12M's are mostly short.
        data["padding_mask"] = np.broadcast_to(
            np.arange(length) < (3 * length) // 4, (batch_size, length)
        ).astype("int32")
    return data


def _block_flops(tokens, width, mlp_ratio):
    """Forward multiply-adds x2 of one pre-LN block on `tokens` tokens.

    Matmuls: qkv 3D^2, proj D^2, fc1 + fc2 2*r*D^2 per token; attention
    scores QK^T and the weighted sum AV, L*D each per token.
    """
    dense = 2 * tokens * (4 + 2 * mlp_ratio) * width**2
    attention = 2 * 2 * tokens**2 * width
    return dense + attention


def train_step_flops(pretrainer):
    """Analytic FLOPs of one training example: 3x the forward matmul FLOPs.

    The backward pass costs twice the forward (gradients for activations
    and for weights), the usual `6 * params * tokens` rule, plus attention
    terms. Counts what the model really computes: the patch projection
    runs on every patch, the encoder on the visible tokens only (cls +
    kept patches + kept text slots), the decoder on the full sequence.
    Norms, softmax, GELU and the optimizer are left out (a few %).

    Returns:
        dict of per-example FLOPs: `encoder`, `decoder`, `total` (train step)
        and `encoder_forward`, `decoder_forward`.
    """
    backbone = pretrainer.backbone
    d, dd, r = backbone.hidden_dim, pretrainer.decoder_hidden_dim, backbone.mlp_ratio
    n, patch_dim = backbone.num_patches, backbone.patch_size**2 * backbone.num_channels
    t = backbone.max_text_length if backbone.has_text else 0
    kept = 1 + pretrainer.num_image_kept + (pretrainer.num_text_kept if t else 0)
    encoder = 2 * n * patch_dim * d + backbone.num_layers * _block_flops(kept, d, r)
    full = 1 + n + t
    decoder = 2 * kept * d * dd + pretrainer.decoder_num_layers * _block_flops(full, dd, r)
    decoder += 2 * n * dd * patch_dim
    if t:
        decoder += 2 * t * dd * backbone.vocabulary_size
    return {
        "encoder_forward": encoder,
        "decoder_forward": decoder,
        "encoder": 3 * encoder,
        "decoder": 3 * decoder,
        "total": 3 * (encoder + decoder),
    }


def set_threads(n):
    """Limits the backend's CPU compute threads to `n` (call before any op).

    On a shared CPU, torch's OpenMP barriers make multi-threaded timings
    swing wildly; one thread gives stable figures. JAX's XLA CPU pool has no
    public knob: pin the process instead (`taskset -c 0 ...`).
    """
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(n)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


def device_kind():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].platform
    if backend == "torch":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def reset_peak_memory():
    if keras.backend.backend() == "torch" and device_kind() == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb():
    """Peak accelerator memory, or the process's peak RSS on a CPU."""
    backend, kind = keras.backend.backend(), device_kind()
    try:
        if kind != "cpu":
            if backend == "jax":
                import jax

                return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
            if backend == "torch":
                import torch

                return torch.cuda.max_memory_allocated() / 2**20
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    except Exception:  # Counters not exposed by this build.
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(fn, repeats, warmup=2):
    """Median, min and all wall times of `fn()` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), times


def matmul_peak_flops(n=2048, repeats=5, dtype="float32"):
    """Achieved FLOP/s of an `n x n` matmul on this backend and device."""
    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.normal(size=(n, n)), dtype)
    b = keras.ops.convert_to_tensor(rng.normal(size=(n, n)), dtype)
    if backend == "jax":
        import jax

        f = jax.jit(lambda x, y: x @ y)

        def run():
            f(a, b).block_until_ready()

    elif backend == "tensorflow":
        import tensorflow as tf

        f = tf.function(lambda x, y: tf.matmul(x, y), jit_compile=True)

        def run():
            f(a, b).numpy()

    else:
        import torch

        def run():
            torch.matmul(a, b)
            if a.is_cuda:
                torch.cuda.synchronize()

    median, best, _ = time_calls(run, repeats)
    return 2 * n**3 / median, 2 * n**3 / best


def sync(outputs):
    """Waits for a result: converts one scalar of it to numpy."""
    leaf = keras.tree.flatten(outputs)[0]
    return keras.ops.convert_to_numpy(keras.ops.reshape(leaf, (-1,))[:1])


def time_blocks(contenders, rounds, block_steps, warmup=2):
    """Seconds per step of blocks of steps, contenders alternating, order flipping.

    Each contender (`{name: step()}`, each `step` waiting for its result) runs
    `warmup` steps first; then every round runs one block of `block_steps`
    steps of each contender, in order on even rounds and in reverse order on
    odd ones, so drift in the machine's load hits all of them alike.

    Returns:
        `{name: [seconds per step of each block]}`, `rounds` blocks each.
    """
    for step in contenders.values():
        for _ in range(warmup):
            step()
    names = list(contenders)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(block_steps):
                contenders[name]()
            times[name].append((time.perf_counter() - start) / block_steps)
    return times


def machine_line(cpu0, wall0):
    """How much of the machine a run had since `time.process_time()`, `time.perf_counter()`."""
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"process CPU/wall {cpu / wall:.2f} (of {os.cpu_count()} cores), "
            f"load average {load}")
