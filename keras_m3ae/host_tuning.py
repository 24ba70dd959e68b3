"""Opt-in, process-wide tuning of a CPU host for JAX and torch training.

`import keras_m3ae` changes nothing outside the library. `tune_cpu_host()`
is the one call that does: it is for programs that train on a CPU host
(the demo, the examples and the benchmarks call it and say so), and a
program that imports the library among others decides for itself.
"""

import ctypes
import dataclasses
import importlib.metadata
import importlib.util
import os
import re

# XLA:CPU's switch that keeps reductions out of its YNNPACK fusions.
XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
# jaxlib versions on which `XLA_FLAG` is known to parse and to help: [low, high).
# An XLA that does not know a flag in `XLA_FLAGS` stops the process.
MEASURED_JAXLIB = ((0, 10, 2), (0, 11, 0))

# mallopt parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# glibc's tunable name: (mallopt parameter, value).
MALLOC_SETTINGS = {
    "arena_max": (M_ARENA_MAX, 1),
    "mmap_max": (M_MMAP_MAX, 0),
    "trim_threshold": (M_TRIM_THRESHOLD, 2**31 - 1),
}
# The same settings as a `GLIBC_TUNABLES` value, which acts from a process's start.
# What the demo and the examples print when, at the demo's tiny model size,
# they leave `tune_cpu_host()` uncalled (benchmarks/RESULTS.md, section 11).
NOT_AT_TINY_SIZE = (
    "keras_m3ae.tune_cpu_host(): not called: at this tiny model's size it made training steps "
    "slower on a quiet 2-core host (JAX 1.2-2x; benchmarks/RESULTS.md, section 11); it pays "
    "from ViT-S up. --tune-cpu-host calls it."
)
MALLOC_TUNABLES = ":".join(
    f"glibc.malloc.{name}={value}" for name, (_, value) in MALLOC_SETTINGS.items()
)
# The backends whose CPU training step the malloc settings were measured to speed up.
MALLOC_BACKENDS = ("jax", "torch")

_malloc_applied = False  # mallopt settings cannot be read back from glibc


@dataclasses.dataclass(frozen=True)
class HostTuning:
    """What `tune_cpu_host` did.

    Attributes:
        xla_flag: bool. Whether `XLA_FLAG` was added to `XLA_FLAGS`.
        malloc: bool. Whether glibc's malloc settings (`MALLOC_SETTINGS`)
            were applied.
        reasons: dict from "xla_flag" / "malloc" to why that setting was
            not applied (absent when it was).
    """

    xla_flag: bool
    malloc: bool
    reasons: dict

    def __str__(self):
        parts = []
        for name, label in (("xla_flag", f"XLA flag {XLA_FLAG}"), ("malloc", "glibc malloc settings")):
            if getattr(self, name):
                parts.append(f"{label}: applied")
            else:
                parts.append(f"{label}: not applied ({self.reasons[name]})")
        return "keras_m3ae.tune_cpu_host(): " + "; ".join(parts)


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _jax_accelerator(environ):
    """Why JAX may run on a GPU or TPU here, or None; initialises no backend.

    JAX picks an accelerator only through a plugin (`jax_plugins` entry
    points or package, e.g. jax-cuda12-plugin) or libtpu, unless
    `JAX_PLATFORMS` restricts it to the CPU.
    """
    platforms = environ.get("JAX_PLATFORMS", "") or environ.get("JAX_PLATFORM_NAME", "")
    if platforms:
        others = sorted({p.strip() for p in platforms.split(",")} - {"cpu", ""})
        return f"JAX_PLATFORMS names {', '.join(others)}" if others else None
    plugins = sorted(entry.name for entry in importlib.metadata.entry_points(group="jax_plugins"))
    for module in ("jax_plugins", "libtpu"):
        if importlib.util.find_spec(module) is not None:
            plugins.append(module)
    if plugins:
        return (f"JAX has accelerator plugins installed ({', '.join(plugins)}); "
                "set JAX_PLATFORMS=cpu to tune a CPU-only run")
    return None


def _torch_accelerator():
    """Why torch may run on a GPU here, or None (no CUDA context is created)."""
    import torch

    if torch.cuda.is_available():  # counts devices without initialising CUDA
        return "torch sees a CUDA device"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "torch sees an XPU device"
    if torch.backends.mps.is_available():
        return "torch sees an MPS device"
    return None


def _accelerator(backend, environ):
    if backend == "jax":
        return _jax_accelerator(environ)
    if backend == "torch":
        return _torch_accelerator()
    return None


def xla_flag_reason(backend, jaxlib_version, environ, accelerator=None):
    """Why `XLA_FLAG` is not to be added, or None when it is.

    Args:
        backend: str. The Keras backend.
        jaxlib_version: str or None. The installed jaxlib's version.
        environ: mapping. The process environment.
        accelerator: str or None. Why a GPU/TPU may be in use, if one may.
    """
    if backend != "jax":
        return f"measured on the JAX backend only, not {backend}"
    if accelerator:
        return f"measured on CPU hosts only: {accelerator}"
    if jaxlib_version is None:
        return "jaxlib is not installed"
    low, high = MEASURED_JAXLIB
    if not low <= _version(jaxlib_version) < high:
        return (f"jaxlib {jaxlib_version} is not one it was measured on "
                f"({'.'.join(map(str, low))} to before {'.'.join(map(str, high))})")
    if "xla_cpu_experimental_ynn_fusion_type" in environ.get("XLA_FLAGS", ""):
        return "XLA_FLAGS already sets xla_cpu_experimental_ynn_fusion_type"
    return None


def malloc_reason(backend, is_glibc, environ, accelerator=None):
    """Why the malloc settings are not to be applied, or None when they are.

    Args:
        backend: str. The Keras backend.
        is_glibc: bool. Whether the process's C library is glibc.
        environ: mapping. The process environment.
        accelerator: str or None. Why a GPU/TPU may be in use, if one may.
    """
    if backend not in MALLOC_BACKENDS:
        return f"measured to help on JAX and torch only, not {backend}"
    if accelerator:
        return f"measured on CPU hosts only: {accelerator}"
    if not is_glibc:
        return "the C library is not glibc"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES already sets glibc.malloc tunables"
    if _malloc_applied:
        return "already applied by an earlier call"
    return None


def _glibc():
    """The process's C library if it is glibc (it has `gnu_get_libc_version`), else None."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded: Python's own C library
    except (OSError, TypeError):  # TypeError: Windows has no such handle
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def _jaxlib_version():
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def tune_cpu_host(xla_flag=True, malloc=True, verbose=True):
    """Tunes this process for training on a CPU host with JAX or torch.

    Changes process-wide state, for the whole process and (for the XLA
    flag) every child process it starts:

    - the XLA flag: appends `--xla_cpu_experimental_ynn_fusion_type=-reduce`
      to `os.environ["XLA_FLAGS"]`. jaxlib 0.10's XLA:CPU hands reductions
      to YNNPACK, whose sums over the leading axis (every bias and
      LayerNorm gradient is one, a sum over tokens) run 27-35x slower than
      XLA's own loop. Measured: a ViT-B M3AE training step at batch 8 1.40x
      faster (ViT-S at batch 4: no difference). XLA reads `XLA_FLAGS` only
      at the process's first compilation: call this before any JAX
      computation. Only XLA:CPU compilation is affected.
    - the malloc settings, through glibc's `mallopt`: one heap for all
      threads (`M_ARENA_MAX` 1), no `mmap` for large blocks (`M_MMAP_MAX`
      0), trimming only above 2 GiB (`M_TRIM_THRESHOLD`). glibc otherwise
      maps every block over 32 MB afresh and unmaps it when freed, so each
      step the kernel maps and zeroes XLA's temporaries (and torch's large
      tensors) again. Measured: a ViT-S M3AE training step at batch 4 1.30x
      faster on JAX (253,000 page faults per step, now none; lower peak
      RSS) and 1.06-1.15x faster on torch. `M_ARENA_MAX` binds only
      threads that have not allocated yet: call this before any JAX or
      torch computation. The same settings can be given to any process
      from its start with `GLIBC_TUNABLES=` `MALLOC_TUNABLES`.

    Both pay from ViT-S up; at the demo's tiny size (width 128, 4 blocks)
    they cost: on a quiet 2-core host the JAX M3AE step ran 1.2-1.3x and
    the JAX MAE step 1.6-2.1x slower with both on, the torch MAE step
    1.2-1.4x (`benchmarks/RESULTS.md`, section 11; one heap,
    `M_ARENA_MAX` 1, is the larger part). The demo and the examples on
    their built-in data therefore leave it uncalled unless asked.

    The costs: the process keeps its high-water mark of host memory
    instead of returning freed memory to the system, and XLA compiles
    15-25 % slower (its compiler threads share the one heap's lock).
    `benchmarks/` measures both settings against the defaults.

    A setting is left alone, with the reason in the result (and printed
    when `verbose`), where it was not measured to help: a backend other
    than the one it was measured on (the XLA flag: JAX; malloc: JAX and
    torch, TensorFlow's step was no faster), a GPU or TPU that may be used
    (checked without initialising a backend: JAX's accelerator plugins or
    `JAX_PLATFORMS`, `torch.cuda.is_available()`), a jaxlib outside
    0.10.2-0.10.x (an XLA that does not know a flag stops the process), a C
    library other than glibc. Your own settings win: an `XLA_FLAGS` that
    already sets the flag, and `glibc.malloc.*` tunables in
    `GLIBC_TUNABLES`, are kept.

    Args:
        xla_flag: bool. Whether to consider the XLA flag.
        malloc: bool. Whether to consider the malloc settings.
        verbose: bool. Print one line saying what was done.

    Returns:
        A `HostTuning`: which settings were applied, and why the others
        were not.

    Example:
    >>> import keras_m3ae
    >>> tuning = keras_m3ae.tune_cpu_host()  # first thing, before any training
    """
    global _malloc_applied
    import keras

    backend = keras.config.backend()
    environ = os.environ
    accelerator = _accelerator(backend, environ) if (xla_flag or malloc) else None
    reasons = {}
    xla_done = malloc_done = False
    if xla_flag:
        reason = xla_flag_reason(backend, _jaxlib_version(), environ, accelerator)
        if reason is None:
            environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " " + XLA_FLAG).strip()
            xla_done = True
        else:
            reasons["xla_flag"] = reason
    else:
        reasons["xla_flag"] = "not asked for"
    if malloc:
        libc = _glibc()
        reason = malloc_reason(backend, libc is not None, environ, accelerator)
        if reason is None:
            libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            failed = [name for name, (param, value) in MALLOC_SETTINGS.items()
                      if libc.mallopt(param, value) != 1]
            if failed:
                reasons["malloc"] = f"mallopt refused {', '.join(failed)}"
            malloc_done = _malloc_applied = not failed
        else:
            reasons["malloc"] = reason
    else:
        reasons["malloc"] = "not asked for"
    result = HostTuning(xla_flag=xla_done, malloc=malloc_done, reasons=reasons)
    if verbose:
        print(result)
    return result
