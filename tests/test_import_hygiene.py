"""`import keras_m3ae` changes nothing outside the library; `tune_cpu_host()` does, on request."""

import json
import os
import subprocess
import sys

import pytest

from keras_m3ae import host_tuning

# Run in a fresh process per backend. It first imports every third-party
# module that keras_m3ae's modules import at their top (TensorFlow and
# keras-hub set environment variables and warning filters of their own),
# then compares the process state around `import keras_m3ae`, then calls
# `tune_cpu_host()`. The allocator is probed through glibc's `mallinfo2`:
# by default a 128 MB block is served by `mmap` (counted in `hblkhd`); with
# `M_MMAP_MAX` 0 it comes from the heap. (`M_ARENA_MAX` binds only threads
# that have no heap yet, which the libraries' threads already have here, and
# `M_TRIM_THRESHOLD` shows only in what the heap gives back later: neither
# is probed.)
_SCRIPT = r"""
import ast, ctypes, importlib, json, logging, os, pathlib, sys, threading, warnings
import numpy as np

root = pathlib.Path(sys.argv[1])

def top_level_imports(path):
    names = set()
    body = list(ast.parse(path.read_text()).body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.If, ast.Try)):
            body += node.body + node.orelse + getattr(node, "finalbody", [])
            body += [n for h in getattr(node, "handlers", []) for n in h.body]
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] != "keras_m3ae"}

for name in sorted(set().union(*map(top_level_imports, root.rglob("*.py")))):
    try:
        importlib.import_module(name)
    except ImportError:
        pass

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info

def mapped():
    # Whether a fresh 128 MB block comes from mmap.
    before = libc.mallinfo2().hblkhd
    block = np.ones(2**25, "float32")
    return libc.mallinfo2().hblkhd - before >= block.nbytes

def state():
    stat = os.fstat(2)
    return {
        "environ": dict(os.environ),
        "warnings": [repr(f) for f in warnings.filters],
        "logging": [repr(h) for h in logging.getLogger().handlers] + [logging.getLogger().level],
        "stderr": [stat.st_dev, stat.st_ino],
    }

before = state()
import keras_m3ae
after = state()
mapped_after_import = mapped()
tuning = keras_m3ae.tune_cpu_host(verbose=False)
tuned = state()
print(json.dumps({
    "changed_by_import": [k for k in before if before[k] != after[k]],
    "mapped_after_import": mapped_after_import,
    "tuning": {"xla_flag": tuning.xla_flag, "malloc": tuning.malloc, "reasons": tuning.reasons},
    "xla_flags_before": before["environ"].get("XLA_FLAGS"),
    "xla_flags_tuned": tuned["environ"].get("XLA_FLAGS"),
    "other_environ_changed_by_tuning": sorted(
        k for k in set(after["environ"]) | set(tuned["environ"])
        if k != "XLA_FLAGS" and after["environ"].get(k) != tuned["environ"].get(k)),
    "mapped_after_tuning": mapped(),
}))
"""


def _probe(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("GLIBC_TUNABLES", None)
    env.pop("JAX_PLATFORMS", None)
    package = os.path.dirname(host_tuning.__file__)
    result = subprocess.run([sys.executable, "-c", _SCRIPT, package], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _host_is_tunable(backend):
    accelerator = host_tuning._accelerator(backend, {})
    return host_tuning._glibc() is not None and accelerator is None


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "backend", ["jax", "torch", pytest.param("tensorflow", marks=pytest.mark.slow)]
)
def test_import_changes_nothing_outside_the_library_and_tuning_does(backend):
    pytest.importorskip(backend)
    if host_tuning._glibc() is None:
        pytest.skip("the allocator probe reads glibc's mallinfo2")
    out = _probe(backend)
    # The environment (every key), warning filters, root logging handlers and
    # file descriptor 2 are as they were, and glibc's malloc still maps large
    # blocks.
    assert out["changed_by_import"] == []
    assert out["mapped_after_import"] is True
    assert out["xla_flags_before"] == "--xla_force_host_platform_device_count=2"
    assert out["other_environ_changed_by_tuning"] == []
    tuning = out["tuning"]
    if not _host_is_tunable(backend):
        pytest.skip(f"not a glibc CPU host for {backend}: {tuning['reasons']}")
    jaxlib_ok = backend == "jax" and host_tuning.xla_flag_reason(
        "jax", host_tuning._jaxlib_version(), {}) is None
    # The XLA flag: added to the user's flags on JAX (a measured jaxlib), else left alone.
    assert tuning["xla_flag"] is jaxlib_ok
    expected_flags = "--xla_force_host_platform_device_count=2"
    if jaxlib_ok:
        expected_flags += " " + host_tuning.XLA_FLAG
    assert out["xla_flags_tuned"] == expected_flags
    # The malloc settings: JAX and torch; TensorFlow's step was not measured faster.
    assert tuning["malloc"] is (backend != "tensorflow")
    assert out["mapped_after_tuning"] is (backend == "tensorflow")
    if backend == "tensorflow":
        assert set(tuning["reasons"]) == {"xla_flag", "malloc"}
        assert "not tensorflow" in tuning["reasons"]["malloc"]


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "backend, jaxlib_version, environ, accelerator, expected",
    [
        ("jax", "0.10.2", {}, None, None),
        ("jax", "0.10.7", {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, None, None),
        # The user's own value wins.
        ("jax", "0.10.2", {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=reduce"}, None,
         "XLA_FLAGS already sets"),
        # Versions it was not measured on: an unknown flag would stop XLA.
        ("jax", "0.10.1", {}, None, "jaxlib 0.10.1 is not one it was measured on"),
        ("jax", "0.11.0", {}, None, "jaxlib 0.11.0 is not one it was measured on"),
        ("jax", None, {}, None, "jaxlib is not installed"),
        ("jax", "0.10.2", {}, "JAX_PLATFORMS names cuda", "measured on CPU hosts only"),
        ("tensorflow", None, {}, None, "JAX backend only"),
        ("torch", None, {}, None, "JAX backend only"),
    ],
)
def test_xla_flag_only_for_jax_on_a_measured_jaxlib_and_cpu(
    backend, jaxlib_version, environ, accelerator, expected
):
    reason = host_tuning.xla_flag_reason(backend, jaxlib_version, environ, accelerator)
    assert reason is None if expected is None else expected in reason


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "backend, is_glibc, environ, accelerator, expected",
    [
        ("jax", True, {}, None, None),
        ("torch", True, {}, None, None),
        ("jax", True, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, None, "GLIBC_TUNABLES"),
        ("jax", True, {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, None, None),
        ("jax", False, {}, None, "not glibc"),
        ("torch", True, {}, "torch sees a CUDA device", "measured on CPU hosts only"),
        ("tensorflow", True, {}, None, "JAX and torch only"),
    ],
)
def test_malloc_settings_only_for_jax_and_torch_on_a_glibc_cpu_host(
    backend, is_glibc, environ, accelerator, expected
):
    reason = host_tuning.malloc_reason(backend, is_glibc, environ, accelerator)
    assert reason is None if expected is None else expected in reason


@pytest.mark.backend_independent
def test_jax_accelerator_is_found_from_plugins_and_platforms_without_a_backend():
    assert host_tuning._jax_accelerator({"JAX_PLATFORMS": "cpu"}) is None
    assert "cuda" in host_tuning._jax_accelerator({"JAX_PLATFORMS": "cuda,cpu"})
    assert "tpu" in host_tuning._jax_accelerator({"JAX_PLATFORMS": "tpu"})


@pytest.mark.backend_independent
def test_malloc_tunables_spell_the_mallopt_settings():
    assert host_tuning.MALLOC_TUNABLES == (
        "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
    )
