"""Writes that a kill cannot half-do: atomic directories and guarded presets.

A long run on preemptible machines can be killed at any instruction. A
directory written in place (a keras-hub preset: `config.json` +
`model.weights.h5`) is then left half-written, and the last good copy is
gone. Here every directory is written under a temporary name beside its
destination and swapped in by renames, so at any moment either the old
complete copy or the new complete copy is in place (or, for the instant
between two renames, a complete copy under the backup name, which
`recover_directory` puts back).
"""

import contextlib
import logging
import os
import shutil
import signal
import tempfile

import keras
import numpy as np
from keras import ops

from keras_m3ae.models.m3ae.preset_integrity import CHECKSUMS_FILE
from keras_m3ae.models.m3ae.preset_integrity import write_checksums
from keras_m3ae.training import hosts
from keras_m3ae.training import paths

logger = logging.getLogger("keras_m3ae.training")

# Test hook: "POINT:N" makes the process SIGKILL itself the N-th time it
# reaches POINT ("step", "write:NAME" inside an atomic write of a directory
# named NAME, "swap:NAME" between its two renames), to test what a kill
# leaves behind.
# "write:checkpoint" is the moment right after a checkpoint's asynchronous
# write started. `KERAS_M3AE_TEST_TERM` ("POINT:N") sends SIGTERM instead
# (a preemption notice) and lets the process go on.
KILL_ENV = "KERAS_M3AE_TEST_KILL"
TERM_ENV = "KERAS_M3AE_TEST_TERM"
_kill_counts = {}


def kill_point(point):
    """Signals this process at `point` when `KERAS_M3AE_TEST_KILL`/`_TERM` ask for it (tests only)."""
    for variable, signum in ((KILL_ENV, signal.SIGKILL), (TERM_ENV, signal.SIGTERM)):
        wanted = os.environ.get(variable)
        if not wanted:
            continue
        name, _, times = wanted.rpartition(":")
        if name != point:
            continue
        key = (variable, point)
        _kill_counts[key] = _kill_counts.get(key, 0) + 1
        if _kill_counts[key] == int(times):
            logger.warning("%s=%s: sending %s to this process now.", variable, wanted,
                           signal.Signals(signum).name)
            if signum == signal.SIGKILL:
                logging.shutdown()
            os.kill(os.getpid(), signum)


def _siblings(path):
    if not paths.is_local(path):
        parent, name = os.path.split(str(path).rstrip("/"))
        return paths.join(parent, f".{name}.tmp"), paths.join(parent, f".{name}.old")
    parent, name = os.path.split(os.path.abspath(paths.local(path)))
    return os.path.join(parent, f".{name}.tmp"), os.path.join(parent, f".{name}.old")


def _rename(source, target):
    paths.move_tree(source, target)


def recover_directory(path):
    """Completes or undoes a swap that a kill interrupted; returns `path`.

    A leftover temporary copy (a write that never finished) is removed; a
    backup copy is put back if `path` itself is missing (the kill came
    between the two renames of a swap), and removed otherwise.

    Args:
        path: str. The directory `atomic_directory` writes (local or a URL).

    Returns:
        `path`.
    """
    temporary, backup = _siblings(path)
    target = paths.local(path) if paths.is_local(path) else path
    if paths.isdir(temporary):
        paths.rmtree(temporary)
    if paths.isdir(backup):
        if paths.isdir(target):
            paths.rmtree(backup)
        else:
            _rename(backup, target)
            logger.warning("Restored %s from its backup copy (a write was interrupted).", path)
    return path


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temporary directory that replaces `path` when the block succeeds.

    If the block raises (or the process dies), `path` keeps its previous
    content. On a local file system the temporary directory lies beside
    `path` and is swapped in by renames (atomic there). For a URL
    (`gs://...`, any `tf.io.gfile` path) the block writes to a local
    temporary directory, which is copied beside `path` and then swapped in
    the same way; a store without atomic directory renames (GCS renames
    object by object) has the complete copy under `path`, its temporary or
    its backup name at every moment, and `recover_directory` sorts it out.

    Args:
        path: str. The destination directory.

    Yields:
        str: the (local) temporary directory to write into.

    Example:
    >>> with atomic_directory("out/preset") as tmp:
    ...     backbone.save_to_preset(tmp)
    """
    recover_directory(path)
    temporary, backup = _siblings(path)
    remote = not paths.is_local(path)
    written = tempfile.mkdtemp(prefix="keras_m3ae_") if remote else temporary
    if not remote:
        os.makedirs(temporary)
    try:
        yield written
    except BaseException:
        shutil.rmtree(written, ignore_errors=True)
        raise
    name = os.path.basename(str(path).rstrip("/")) if remote else \
        os.path.basename(os.path.abspath(paths.local(path)))
    kill_point(f"write:{name}")
    if remote:
        try:
            paths.copy_tree(written, temporary)
        finally:
            shutil.rmtree(written, ignore_errors=True)
        target = path
    else:
        _fsync_tree(temporary)
        target = paths.local(path)
    if paths.isdir(target):
        _rename(target, backup)
        kill_point(f"swap:{name}")
        _rename(temporary, target)
        paths.rmtree(backup)
    else:
        _rename(temporary, target)
    if not remote:
        _fsync_path(os.path.dirname(os.path.abspath(target)))


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory):
    # Data on disk before the rename makes it visible (a power cut must not
    # expose a complete name over incomplete bytes).
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync_path(os.path.join(root, name))
        _fsync_path(root)


def _local_copy(backbone, weights):
    """A copy of `backbone` on this process's default device, holding `weights`."""
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        copy = type(backbone).from_config(backbone.get_config())
        copy.set_weights(weights)
    finally:
        keras.distribution.set_distribution(distribution)
    return copy


def non_finite_variables(model):
    """Paths of the model's variables that hold a NaN or an infinity."""
    return [
        v.path
        for v in model.variables
        if "float" in str(v.dtype) and not np.all(np.isfinite(ops.convert_to_numpy(v)))
    ]


def save_preset_atomically(backbone, path, chief=None):
    """`backbone.save_to_preset(path)`, atomic, checksummed, never with non-finite weights.

    The preset holds `checksums.json` (the SHA-256 of its files, checked
    by `M3AEBackbone.from_preset`), also for a keras-hub backbone.

    On several JAX processes every process must call it: weights sharded
    over the hosts (`ModelParallel` on a pod) are read with a collective on
    all of them, and the writing process (`chief`) saves a copy of the
    backbone made outside the run's `keras.distribution` and loaded with
    them (one more set of encoder weights in its memory while it writes).
    Every process checks finiteness on the same values, so all raise
    together. On one process the backbone is saved as it is.

    Args:
        backbone: a keras-hub `Backbone` (e.g. `M3AEBackbone`).
        path: str. Preset directory: local, or a URL such as `gs://bucket/run/preset`
            (written locally first, then copied; see `atomic_directory`).
        chief: bool or None. Whether this process writes; None: process 0.

    Raises:
        ValueError: a weight is NaN or infinite; `path` is left as it was.

    Example:
    >>> save_preset_atomically(pretrainer.backbone, "run/preset")
    """
    if hosts.process_count() > 1:
        weights = [hosts.to_numpy(v) for v in backbone.weights]
        bad = [v.path for v, value in zip(backbone.weights, weights)
               if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value))]
    else:
        weights, bad = None, non_finite_variables(backbone)
    if bad:
        raise ValueError(
            f"Not saving a preset to {path!r}: {len(bad)} weight(s) are not finite "
            f"(first: {bad[0]}); the last good preset there is kept."
        )
    if not (hosts.is_chief() if chief is None else chief):
        return
    if weights is not None:
        backbone = _local_copy(backbone, weights)
    with atomic_directory(path) as temporary:
        backbone.save_to_preset(temporary)
        if not os.path.exists(os.path.join(temporary, CHECKSUMS_FILE)):
            write_checksums(temporary, backbone)  # a backbone not of this package
