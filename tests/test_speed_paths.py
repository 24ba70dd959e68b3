"""Speed paths: backend-specific pieces that must not change results."""

import os
import re

import keras
import numpy as np
import pytest

from conftest import tiny_backbone
from conftest import tiny_batch
from conftest import tiny_pretrainer
from keras_m3ae.optimizers.jax_update import dot_product_global_norm
from keras_m3ae.optimizers.jax_update import update_after_gradients

jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's compiled train step")


def _compiled_train_step(model, data):
    import jax

    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                 optimizer_variables=True, metrics_variables=True)
    arrays = jax.tree.map(jax.numpy.asarray, data)
    return jax.jit(model.train_step, donate_argnums=0).lower(state, (arrays, None, None)).compile()


def _copied_state(hlo):
    """Shapes of the entry parameters (state arrays) that the program copies."""
    entry = hlo[hlo.index("\nENTRY"):]
    shapes = dict(re.findall(r"(state_[\w.]+): \w+\[([\d,]*)\]", entry))
    copied = re.findall(r"\} copy\(%(state_[\w.]+)\)", entry)
    return [tuple(int(d) for d in shapes[name].split(",") if d) for name in copied]


def test_update_after_gradients_applies_to_jax_only_and_without_global_clipping():
    assert update_after_gradients(keras.optimizers.SGD()) == (keras.backend.backend() == "jax")
    assert not update_after_gradients(keras.optimizers.SGD(global_clipnorm=1.0))


def test_dot_product_global_norm_applies_to_jax_and_global_clipping_only():
    on_jax = keras.backend.backend() == "jax"
    assert dot_product_global_norm(keras.optimizers.SGD(global_clipnorm=1.0)) == on_jax
    assert not dot_product_global_norm(keras.optimizers.SGD())
    assert not dot_product_global_norm(keras.optimizers.SGD(clipnorm=1.0))
    model = tiny_pretrainer()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, global_clipnorm=1.0))
    assert ("_clip_gradients" in vars(model.optimizer)) == on_jax


@jax_only
@pytest.mark.parametrize("clip", [0.5, 100.0])
def test_dot_product_global_norm_clips_as_keras_does(clip):
    from keras.src.optimizers.base_optimizer import clip_by_global_norm

    rng = np.random.default_rng(0)
    grads = [rng.normal(size=s).astype("float32") for s in [(7, 5), (5,), (3, 4, 2)]]
    optimizer = keras.optimizers.SGD(global_clipnorm=clip)
    assert dot_product_global_norm(optimizer)
    ours = optimizer._clip_gradients([*grads[:1], None, *grads[1:]])
    assert ours[1] is None
    expected = clip_by_global_norm(grads, clip)
    norm = np.sqrt(sum((g.astype("float64") ** 2).sum() for g in grads))  # about 7.9
    for got, want, g in zip(ours[:1] + ours[2:], expected, grads):
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(got, g * min(1.0, clip / norm), rtol=1e-5)
    # bfloat16 gradients stay bfloat16, scaled by the norm summed in float32.
    half = optimizer._clip_gradients([keras.ops.cast(g, "bfloat16") for g in grads])
    assert [keras.backend.standardize_dtype(g.dtype) for g in half] == ["bfloat16"] * 3
    for got, want in zip(half, expected):
        np.testing.assert_allclose(np.asarray(got, "float32"), want, rtol=1e-2, atol=1e-3)
    # A non-finite gradient makes every gradient NaN, as in Keras.
    grads[1][0] = np.inf
    assert all(np.isnan(np.asarray(g)).all() for g in optimizer._clip_gradients(grads))


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


@jax_only
def test_jax_train_step_updates_state_in_place():
    model = tiny_pretrainer()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.optimizer.build(model.trainable_variables)
    data = tiny_batch()
    compiled = _compiled_train_step(model, data)
    # Donated state is updated in place: no kernel is copied (Keras's own
    # update copied every one here). XLA still copies a few vectors (head
    # biases, the seed state): bytes, not model-sized.
    copied = _copied_state(compiled.as_text())
    assert [shape for shape in copied if len(shape) > 1] == []
    assert sum(int(np.prod(shape)) for shape in copied) < 0.01 * model.count_params()
    # ... and the whole state is donated (aliased to the outputs).
    state_bytes = 4 * (model.count_params() + sum(
        int(np.prod(v.shape)) for v in model.optimizer.variables + model.non_trainable_variables))
    assert compiled.memory_analysis().alias_size_in_bytes >= 0.99 * state_bytes


@jax_only
def test_jax_update_after_gradients_keeps_values():
    data = tiny_batch()
    results = []
    for ordered in (False, True):
        keras.utils.set_random_seed(0)
        model = tiny_pretrainer()
        model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.05))
        if not ordered:
            del model.optimizer.stateless_apply  # back to Keras's own
        start = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        losses = [model.train_on_batch(data, return_dict=True)["loss"] for _ in range(3)]
        results.append((losses, [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]))
    (losses, plain), (ordered_losses, ordered) = results
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(ordered_losses, losses, rtol=1e-6)
    for a, b, s in zip(plain, ordered, start):
        assert not np.allclose(a, s)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


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
