"""Speed paths: backend-specific pieces that must not change results."""

import os

import keras
import numpy as np
import pytest

from conftest import tiny_backbone
from conftest import tiny_batch
from conftest import tiny_pretrainer

jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's compiled train step")


def test_train_on_batch_runs_the_model_only_in_the_compiled_step(monkeypatch):
    # Drop path 0 in the first block and the decoder, 0.1 in the last.
    model = tiny_pretrainer(tiny_backbone(drop_path_rate=0.1))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    data = tiny_batch()
    model.train_on_batch(data)
    # While any layer is unbuilt, Keras's trainers build the model again
    # before every `train_on_batch` (on JAX: a whole trace of the model, 140 ms
    # of a 300 ms tiny M3AE step). Rate-0 DropPath layers, which `call`
    # skips, were never built.
    assert [layer.path for layer in model._flatten_layers() if not layer.built] == []
    calls = []
    call = type(model).call
    monkeypatch.setattr(type(model), "call", lambda self, *a, **k: calls.append(1) or call(self, *a, **k))
    model.train_on_batch(data)
    # Compiled backends run the traced step; eager torch runs `call` once.
    assert len(calls) == (1 if keras.backend.backend() == "torch" else 0)


def _gradient_bytes_accessed(stack, x):
    """XLA's `bytes accessed` of the compiled gradient of `sum(stack(x)**2)`."""
    import jax

    stack.build(x.shape)
    trainable = [v.value for v in stack.trainable_variables]

    def loss(trainable, x):
        y, _ = stack.stateless_call(trainable, [], x)
        return (y**2).sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(trainable, x).compile()
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["bytes accessed"]


@jax_only
def test_jax_centered_layer_norm_moves_fewer_bytes_in_the_backward_pass(monkeypatch):
    from keras_m3ae import layers

    # XLA's CPU fusion copies the residual gradient's chain of adds into the
    # backward fusion of every earlier LayerNorm; Keras's LayerNorm puts 7
    # arrays per norm into that chain, ours 2 (6.3 % fewer bytes here, 10.6 %
    # for the ViT-S M3AE step). Same values: tests/test_layers.py.
    x = np.random.default_rng(0).normal(size=(2, 33, 64)).astype("float32")
    ours = _gradient_bytes_accessed(layers.TransformerStack(4, 64, 4), x)
    monkeypatch.setattr(layers.CenteredLayerNorm, "call", keras.layers.LayerNormalization.call)
    keras_norm = _gradient_bytes_accessed(layers.TransformerStack(4, 64, 4), x)
    assert ours < 0.97 * keras_norm, (ours, keras_norm)


@jax_only
def test_tune_cpu_host_sets_xla_flag_and_malloc_in_a_fresh_process():
    """The XLA flag is added to the user's flags and takes effect; freed memory is reused."""
    import subprocess
    import sys

    from keras_m3ae import host_tuning

    if host_tuning.xla_flag_reason("jax", host_tuning._jaxlib_version(), {}) is not None:
        pytest.skip("jaxlib version not covered by keras_m3ae.tune_cpu_host")
    if host_tuning._glibc() is None or host_tuning._jax_accelerator({}) is not None:
        pytest.skip("not a glibc CPU host: tune_cpu_host leaves malloc alone")
    # Host memory: a 128 MB block allocated from a new thread comes from the
    # main heap, not from a fresh mapping (glibc's mallinfo2 counts mapped
    # blocks); and a jitted op writing a fresh 64 MB output, after warm-up
    # calls in which glibc's heap settles, reuses freed memory instead of
    # faulting in 16384 new 4 KB pages per call.
    script = (
        "import ctypes, os, resource, sys, threading, jax, numpy as np\n"
        "import keras_m3ae\n"
        "tuned = keras_m3ae.tune_cpu_host(verbose=False) if sys.argv[1] == 'tune' else None\n"
        "x = np.ones((512, 300), 'float32')\n"
        "hlo = jax.jit(lambda x: x.sum(0)).lower(x).compile().as_text()\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in 'arena ordblks smblks hblks hblkhd usmblks '\n"
        "                'fsmblks uordblks fordblks keepcost'.split()]  # all of glibc's struct\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.mallinfo2.restype = Info\n"
        "mapped = []\n"
        "def allocate():\n"
        "    block = np.ones(2**25, 'float32')\n"
        "    mapped.append(libc.mallinfo2().hblkhd >= block.nbytes)\n"
        "thread = threading.Thread(target=allocate)\n"
        "thread.start(), thread.join()\n"
        "f, big = jax.jit(lambda x: x * 2.0), jax.numpy.ones((4096, 4096))\n"
        "def run(calls):  # each output is freed before the next call\n"
        "    for _ in range(calls): f(big).block_until_ready()\n"
        "run(30)\n"
        "start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "run(5)\n"
        "faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5\n"
        "print(os.environ['XLA_FLAGS'], jax.device_count(), '__ynn_fusion' in hlo,\n"
        "      tuned and tuned.malloc, mapped[0], faults > 8192)\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("GLIBC_TUNABLES", None)

    def run(mode):
        return subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True,
                              text=True, check=True).stdout.split()

    assert run("tune") == ["--xla_force_host_platform_device_count=2", host_tuning.XLA_FLAG, "2",
                           "False", "True", "False", "False"]
    # The same program without the call: YNNPACK sums, a mapped block, fresh
    # pages every call. So each check above can fail.
    assert run("default") == ["--xla_force_host_platform_device_count=2", "2", "True", "None",
                              "True", "True"]


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's CPU allocator")
def test_tune_cpu_host_makes_torch_reuse_freed_memory_in_a_fresh_process():
    """A fresh 64 MB tensor per call reuses freed memory instead of new pages."""
    import subprocess
    import sys

    from keras_m3ae import host_tuning

    if host_tuning._glibc() is None or host_tuning._torch_accelerator() is not None:
        pytest.skip("not a glibc CPU host: tune_cpu_host leaves malloc alone")
    script = (
        "import resource, sys, torch\n"
        "import keras_m3ae\n"
        "tuned = keras_m3ae.tune_cpu_host(verbose=False) if sys.argv[1] == 'tune' else None\n"
        "def run(calls):  # each tensor is freed before the next is made\n"
        "    for _ in range(calls): torch.ones(2**24).mul_(2.0)\n"
        "run(10)\n"
        "start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "run(5)\n"
        "faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5\n"
        "print(tuned and tuned.malloc, faults > 8192)\n"
    )
    env = dict(os.environ, KERAS_BACKEND="torch")
    env.pop("GLIBC_TUNABLES", None)
    run = lambda mode: subprocess.run([sys.executable, "-c", script, mode], env=env,  # noqa: E731
                                      capture_output=True, text=True, check=True).stdout.split()
    assert run("tune") == ["True", "False"]
    assert run("default") == ["None", "True"]  # glibc's default: 16384 fresh pages per call
