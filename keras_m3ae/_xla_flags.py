"""JAX on CPU: keep column reductions out of XLA's YNNPACK fusions.

jaxlib 0.10.2's XLA:CPU hands reductions to YNNPACK (`__ynn_fusion`). For a
reduction over the leading axis, which is what every bias and LayerNorm
gradient is (a sum over tokens), that path is 27-35x slower than XLA's
own loop: the bias gradient of the 30522-word text head, `sum(axis=0)` of
a `(512, 30522)` array, takes 69-94 ms instead of 2.6-2.7 ms on two cores,
and a ViT-B M3AE training step at batch 8 1.4x longer (ViT-S at batch 4:
no difference; `benchmarks/xla_flags_check.py`,
`benchmarks/RESULTS.md`). XLA's own switch for it is
`--xla_cpu_experimental_ynn_fusion_type=-reduce`, the workaround given in
jax-ml/jax issue 37465 for another slow YNNPACK reduction.

Importing `keras_m3ae` adds that switch to `XLA_FLAGS` when all of these
hold, and otherwise leaves the environment alone:

- the Keras backend is JAX;
- jaxlib is a version on which it was measured (0.10.2 and later 0.10.x): an
  XLA that does not know a flag in `XLA_FLAGS` stops the process, so other
  versions are not touched;
- `XLA_FLAGS` does not already set `xla_cpu_experimental_ynn_fusion_type`
  (your own value wins), and `KERAS_M3AE_KEEP_XLA_FLAGS` is not set.

XLA reads `XLA_FLAGS` once, at the first compilation of the process: import
`keras_m3ae` before running any JAX computation for it to apply. It changes
only how XLA:CPU compiles; GPU and TPU programs are unaffected.
"""

import os
import re

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
# jaxlib versions on which FLAG is known to parse and to help: [low, high).
MEASURED = ((0, 10, 2), (0, 11, 0))


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def wanted(backend, jaxlib_version, environ):
    """Whether to add `FLAG` to `XLA_FLAGS`, given the backend and environment."""
    if backend != "jax" or jaxlib_version is None:
        return False
    if environ.get("KERAS_M3AE_KEEP_XLA_FLAGS"):
        return False
    if "xla_cpu_experimental_ynn_fusion_type" in environ.get("XLA_FLAGS", ""):
        return False
    low, high = MEASURED
    return low <= _version(jaxlib_version) < high


def apply(environ=os.environ):
    """Adds `FLAG` to `environ["XLA_FLAGS"]` when `wanted`; returns whether it did."""
    import keras

    backend = keras.config.backend()
    jaxlib_version = None
    if backend == "jax":
        import jaxlib

        jaxlib_version = jaxlib.__version__
    if not wanted(backend, jaxlib_version, environ):
        return False
    environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " " + FLAG).strip()
    return True


apply()
