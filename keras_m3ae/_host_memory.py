"""JAX and torch on CPU: reuse freed host memory instead of handing it back every step.

glibc's `malloc` serves each request above 32 MB (and any request a worker
thread's 64 MB heap cannot hold) with a fresh `mmap`, and `free` unmaps it
again. XLA:CPU allocates a program's temporaries and outputs that way, and
torch's CPU allocator its tensors, so every training step the kernel maps,
zeroes and faults in the same memory again, 4 KB at a time. On two cores, a
jitted op writing a 64 MB output took 28 ms per call instead of 5 ms into
reused memory, and a ViT-S M3AE train step at batch 4 faulted in 253,000
pages (1 GB) and ran 1.30x slower on JAX (fastest step; 1.38x median), with
a higher peak RSS (6.2 vs 5.9 GB); on torch the same step faulted in 42,000
to 65,000 pages and ran 1.06-1.15x slower (1.06-1.20x median;
`benchmarks/host_memory_check.py`, `benchmarks/RESULTS.md`, "Fifth pass"
and "Sixth pass").

Importing `keras_m3ae` therefore sets, through `mallopt`:

- `M_ARENA_MAX` 1: every thread allocates from the main heap, which can
  grow past 64 MB (XLA's worker threads otherwise get their own heaps);
- `M_MMAP_MAX` 0: large blocks come from that heap, not from `mmap`;
- `M_TRIM_THRESHOLD` 2 GiB: freed memory stays with the process for the next
  step instead of going back to the kernel at once.

The costs: memory freed after a step stays with the process instead of
going back to the system; threads share one heap lock for blocks larger
than glibc's per-thread cache, which makes XLA's multi-threaded compilation
slower (a tiny M3AE train step compiled in 21-27 s instead of 16-20 s, four
compilations in each of two processes per setting); and the heap can hold
freed blocks it does not reuse at once (a toy program writing one 64 MB output per call grew its heap
to 720 MB over 8 calls before it settled). In the measured train step the
peak RSS was lower, not higher, and `benchmarks/data_pipeline.py` ran as
fast as without the settings.

It applies only when all of these hold, and otherwise does nothing:

- the Keras backend is JAX or torch (TensorFlow's step, which faulted in
  15,000 pages, was no faster with the settings);
- the C library is glibc (Linux); others have no `mallopt` with these
  parameters;
- `KERAS_M3AE_KEEP_MALLOC` is not set, and `GLIBC_TUNABLES` sets no
  `glibc.malloc.*` tunable (your own settings win).

Two heaps (`M_ARENA_MAX` 2) compiled as fast as glibc's default but left
XLA's worker threads faulting in fresh pages in two of three runs (a
worker's heap cannot hold a 128 MB block, and `mmap` serves it after all),
so it is one. `M_ARENA_MAX` binds only threads that have not allocated yet: import
`keras_m3ae` before running any JAX or torch computation, as for `_xla_flags.py`.
The same three settings can be given to any process from its start with
`GLIBC_TUNABLES` set to `TUNABLES`: `glibc.malloc.arena_max=1:
glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647`.
"""

import ctypes
import os

# mallopt parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# glibc's tunable name: (mallopt parameter, value).
SETTINGS = {
    "arena_max": (M_ARENA_MAX, 1),
    "mmap_max": (M_MMAP_MAX, 0),
    "trim_threshold": (M_TRIM_THRESHOLD, 2**31 - 1),
}
# The same settings for `GLIBC_TUNABLES`, which acts from a process's start.
TUNABLES = ":".join(f"glibc.malloc.{name}={value}" for name, (_, value) in SETTINGS.items())
BACKENDS = ("jax", "torch")


def wanted(backend, is_glibc, environ):
    """Whether to change glibc's malloc settings, given the backend and environment."""
    if backend not in BACKENDS or not is_glibc or environ.get("KERAS_M3AE_KEEP_MALLOC"):
        return False
    # The user's own malloc tunables win.
    return "glibc.malloc." not in environ.get("GLIBC_TUNABLES", "")


def _glibc():
    """The process's C library if it is glibc (it has `gnu_get_libc_version`), else None."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded: Python's own C library
    except (OSError, TypeError):  # TypeError: Windows has no such handle
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def apply(environ=os.environ):
    """Sets `SETTINGS` through `mallopt` when `wanted`; returns whether all took."""
    import keras

    libc = _glibc()
    if not wanted(keras.config.backend(), libc is not None, environ):
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all([libc.mallopt(param, value) == 1 for param, value in SETTINGS.values()])


applied = apply()
