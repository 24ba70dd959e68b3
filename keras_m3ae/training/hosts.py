"""Several hosts (JAX processes): start-up, who writes, and gathering small values.

The one module of `training` that calls JAX directly: multi-process
training exists on the JAX backend only, and the helpers fall back to one
host (index 0 of 1) on the others without importing JAX.
"""

import logging
import os

import keras
import numpy as np

logger = logging.getLogger("keras_m3ae.training")

# keras.distribution.initialize reads these when its arguments are left out.
ENVIRONMENT = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
               "KERAS_DISTRIBUTION_PROCESS_ID")


def _jax():
    if keras.config.backend() != "jax":
        return None
    import jax

    return jax


def multi_host_requested(flag=None, environ=None):
    """Whether to start multi-process JAX: `flag` if given, else from the environment.

    Args:
        flag: bool or None. None: True when `KERAS_DISTRIBUTION_NUM_PROCESSES`
            is set to more than 1.
        environ: mapping or None (default `os.environ`).
    """
    if flag is not None:
        return bool(flag)
    environ = os.environ if environ is None else environ
    return int(environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") or 1) > 1


def initialize(job_addresses=None, num_processes=None, process_id=None):
    """`keras.distribution.initialize` for multi-process JAX; must run before any JAX work.

    Arguments left out come from the `KERAS_DISTRIBUTION_*` environment
    variables (or, on Cloud TPU, from JAX's own detection).

    Raises:
        ValueError: the backend is not JAX.
    """
    if _jax() is None:
        raise ValueError(
            "Multi-host training needs KERAS_BACKEND=jax; the backend is "
            f"{keras.config.backend()}.")
    keras.distribution.initialize(job_addresses=job_addresses, num_processes=num_processes,
                                  process_id=process_id)
    logger.info("Host %d of %d started.", process_index(), process_count())


def process_index():
    """This host's index (0 without multi-process JAX)."""
    jax = _jax()
    return jax.process_index() if jax else 0


def process_count():
    """The number of hosts (1 without multi-process JAX)."""
    jax = _jax()
    return jax.process_count() if jax else 1


def is_chief():
    """True on the host that writes presets, checkpoints, logs and pictures (process 0)."""
    return process_index() == 0


def gather(values):
    """Every host's `values` (a 1-D int64 array of equal length on all hosts).

    A collective: every host must call it, at the same point.

    Returns:
        int64 array `(process_count, len(values))`, row i from host i.
    """
    values = np.asarray(values, np.int64).reshape(-1)
    if process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils

    # JAX computes in 32 bits unless x64 is on: sent as two 31-bit halves.
    halves = np.stack([values >> 31, values & (2**31 - 1)], -1).astype(np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(halves)).astype(np.int64)
    return ((gathered[..., 0] << 31) | gathered[..., 1]).reshape(process_count(), -1)


def to_numpy(variable):
    """The whole value of a variable, also when it is sharded over several hosts.

    A collective for such variables (every host must call it); replicated
    and single-host variables are read locally.
    """
    value = variable.value if hasattr(variable, "value") else variable
    jax = _jax()
    if jax is not None and isinstance(value, jax.Array) and not value.is_fully_addressable \
            and not value.sharding.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return keras.ops.convert_to_numpy(value)


def any_host(flag):
    """True on every host when `flag` is True on at least one (a collective on several hosts)."""
    if process_count() == 1:
        return bool(flag)
    return bool(gather([int(bool(flag))]).any())


_finite_jit = None


def finite_flags(values):
    """For each array of `values`, whether all its elements are finite (floats only).

    On JAX the test runs where the arrays live, sharded ones included (a
    collective for arrays spread over several hosts): no host gathers a
    whole array, and one small boolean vector comes back. Non-float arrays
    are reported finite.
    """
    jax = _jax()
    floats = [i for i, v in enumerate(values) if "float" in str(v.dtype)]
    flags = np.ones(len(values), bool)
    if not floats:
        return flags
    if jax is not None:
        global _finite_jit
        if _finite_jit is None:
            import jax.numpy as jnp

            _finite_jit = jax.jit(lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))
        checked = _finite_jit([values[i] for i in floats])
        if not checked.is_fully_addressable:
            from jax.experimental import multihost_utils

            checked = multihost_utils.process_allgather(checked, tiled=True)
        flags[floats] = np.asarray(checked)
    else:
        flags[floats] = [bool(np.all(np.isfinite(keras.ops.convert_to_numpy(values[i]))))
                         for i in floats]
    return flags


def barrier(name):
    """Waits until every host got here (a no-op on one host)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
