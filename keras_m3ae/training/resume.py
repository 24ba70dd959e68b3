"""Exact resumption of a `fit` run, mid-epoch included: `TrainingCheckpoint` and `fit_resumable`.

A checkpoint holds everything that decides what the next step computes:
every variable of the model (weights, and the states of its
`SeedGenerator`s, which draw the masks), of the optimizer (its step count
included, from which the learning-rate schedule reads) and of the metrics
(Keras logs running means over the epoch), the global step, and each host's
data position (`keras_m3ae.data.positions.DataPosition`). Restarting from it
the run computes the same steps on the same batches, so its weights and its
per-step log equal those of a run that was never interrupted.

Checkpoints are written by Orbax (`orbax.checkpoint.CheckpointManager`),
one step directory each: `<directory>/<step>/state` holds the variables (an
Orbax PyTree, in the order of `model.variables`, the optimizer's and the
metrics' variables), `<directory>/<step>/meta/metadata` the rest as JSON
(step, epoch, the run's `config`, every host's data positions and skip
counts, the list of variables) with the SHA-256 of that JSON. Orbax writes a
step under a temporary name and renames it only once every host finished
its part, so a kill at any instant, mid-write included, leaves the previous
complete steps and an ignored leftover. A step whose metadata is missing,
unreadable or does not match its checksum is reported as damaged by name,
moved aside (`damaged_step_<N>`), and the previous good step is used.

`orbax.checkpoint.CheckpointManager` is used directly rather than
`keras.callbacks.OrbaxCheckpoint`: that callback saves the model's state
tree keyed by variable paths (which carry numbers that depend on what else
the process built), on its own schedule, without the per-host data
positions, skip counts and step metadata an exact mid-epoch restart needs,
without a non-finite check and with no restore path for `fit`; the manager
gives the parts needed here (asynchronous multi-host saves, atomic commit,
`max_to_keep`, one step holding an array tree and a JSON item).

What each backend gets:

- JAX: the variables go to Orbax as `jax.Array`s with their shardings:
  each host writes only the shards it holds, nothing is gathered, and a
  restore puts every shard back onto the current run's shardings.
  Saving is asynchronous: `save` returns once the arrays are copied off the
  accelerator, training goes on while they are written, and at most one
  save is in flight (the next one waits for it). Several hosts (JAX
  processes) need a directory they all see: a shared file system or
  `gs://`.
- TensorFlow and torch (one host): the same API; the variables are copied
  to numpy arrays, which Orbax writes, asynchronously as well.

Paths: local directories and `gs://` URLs are written by Orbax directly
(tensorstore's file and GCS drivers). Other `tf.io.gfile` URLs (`ram://`,
`s3://` through TensorFlow, ...) cannot hold Orbax's array files, so on one
host a checkpoint there is written to a local temporary directory and
copied with `tf.io.gfile` after each save (synchronously), and copied back
on `load`.

Preemption: with `save_on_preemption` (the default) a SIGTERM during `fit`,
or `request_preemption_save()`, makes every host save a checkpoint at the
same step boundary (one small collective per step agrees on it) and raise
`Preempted`; rerunning the same command resumes from that step.
"""

import atexit
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import tempfile
import threading

import keras
import numpy as np

from keras_m3ae.training import hosts
from keras_m3ae.training import paths
from keras_m3ae.training.checkpoints import kill_point
from keras_m3ae.training.run_lock import RunLock

logger = logging.getLogger("keras_m3ae.training")

STATE = "state"
META = "meta"
FORMAT = 2
# The exit status `examples/pretrain.py` uses after a save on preemption
# (128 + SIGTERM, what a shell reports for a process ended by SIGTERM).
PREEMPTED_EXIT_CODE = 143
_TEMPORARY_SUFFIX = ".orbax-checkpoint-tmp"
_COMMITTED = "commit_success.txt"  # Orbax's marker in a complete step directory

_preemption = threading.Event()


def request_preemption_save():
    """Asks the running `TrainingCheckpoint` to save at the next step boundary, then stop.

    What a SIGTERM does during `fit` (with `save_on_preemption`); call it
    from your own handler of another signal, a maintenance-event watcher or
    another thread. On several hosts a request on any one of them is
    enough: all hosts save at the same step. `fit` then raises `Preempted`.

    Example:
    >>> signal.signal(signal.SIGUSR1, lambda *_: request_preemption_save())
    """
    _preemption.set()


class Preempted(RuntimeError):
    """`fit` stopped after saving a checkpoint on a preemption request.

    Attributes:
        step: int. The step saved (the run resumes from it).
        directory: str. The checkpoint directory.
    """

    def __init__(self, step, directory):
        super().__init__(
            f"Preempted: saved the checkpoint of step {step} in {directory!r}; rerun the same "
            "command to continue from it.")
        self.step = step
        self.directory = directory


def _variable_groups(model):
    """`{group: [variables]}`; each variable once, in the first group holding it."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    groups, seen = {}, set()
    for name, variables in (("model", model.variables),
                            ("optimizer", model.optimizer.variables if model.optimizer else []),
                            ("metrics", model.metrics_variables)):
        groups[name] = [v for v in variables if id(v) not in seen]
        seen.update(id(v) for v in variables)
    return groups


def _digest(meta):
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def checkpoint_steps(directory):
    """The complete (committed) steps of a checkpoint directory, ascending."""
    if not paths.isdir(directory):
        return []
    return sorted(int(name) for name in paths.listdir(directory) if name.isdigit())


def read_checkpoint_metadata(directory, step=None):
    """The metadata (dict) of `step` (default: the last) of a checkpoint directory, or None.

    Raises:
        ValueError: the step's metadata does not match its checksum.
    """
    steps = checkpoint_steps(directory)
    if step is None:
        if not steps:
            return None
        step = steps[-1]
    with paths.open_file(paths.join(directory, str(step), META, "metadata")) as f:
        meta = json.loads(f.read())
    claimed = meta.pop("sha256", None)
    if claimed != _digest(meta):
        raise ValueError(f"Checkpoint step {step} in {directory!r}: metadata does not match "
                         "its SHA-256.")
    return meta


def read_checkpoint_arrays(directory, step=None):
    """`{"group/i": numpy array}` of `step` (default: the last) of a checkpoint directory.

    Reads the whole arrays into this process (for tests and inspection, not
    for resuming: `TrainingCheckpoint` restores each host's shards).
    """
    meta = read_checkpoint_metadata(directory, step)
    ocp = _ocp()
    target = {group: {str(i): np.empty(shape, _numpy_dtype(dtype))
                      for i, (_, shape, dtype) in enumerate(described)}
              for group, described in meta["variables"].items() if described}
    root = paths.join(directory, str(meta["step"]), STATE)
    if paths.is_local(root):
        root = os.path.abspath(paths.local(root))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(root, target)
    return {f"{group}/{i}": np.asarray(value) for group, values in restored.items()
            for i, value in values.items()}


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves everything needed to resume `fit` exactly, every `every_steps` steps, with Orbax.

    Saves at every `every_steps`-th step and at the end of training (see the
    module docstring for what, where and how); `load()` reads the last good
    checkpoint and the callback restores it when training begins.
    `fit_resumable` does both and handles a restart in the middle of an
    epoch: use it, or call `load()` yourself and resume at epoch boundaries
    with `initial_epoch`.

    On several hosts (JAX processes) every host runs the callback and writes
    its own shards; process 0 writes the metadata, which holds every host's
    data positions. The directory must be one all hosts see.

    Keep `NonFiniteLossGuard` BEFORE this callback: the step whose loss is
    not finite is then never saved. Non-finite variables are never written
    either (checked where they live before the save starts; a `ValueError`
    names the variable; the last good checkpoint is kept).

    Args:
        directory: str. The checkpoint directory: a local path or a
            `tf.io.gfile` URL (`gs://bucket/run/checkpoint`).
        every_steps: int. Save every this many steps; a kill loses at most
            this many.
        positions: list of `DataPosition`, one per training dataset of this
            host (none: the data stream is not resumed).
        skip_counters: list of `keras_m3ae.data.SkipCounter` whose counts are
            saved and restored.
        config: dict of JSON values that must not change across a restart
            (batch size, seed, data, ...); a restart with different values
            is refused, naming them.
        log_path: str or None. A per-step log (JSON lines: step, epoch and
            the logs of each step; a local path or a URL) written by process
            0 and cut back to the checkpoint's step on restart, so it equals
            an uninterrupted run's.
        max_to_keep: int or None. Keep this many most recent checkpoints
            (None: all).
        asynchronous: bool. Write while training goes on (at most one save
            in flight); False waits for each save to complete.
        save_on_preemption: bool. During `fit`, SIGTERM (and
            `request_preemption_save()`) saves at the next step boundary on
            every host and raises `Preempted`.

    Example:
    >>> position = keras_m3ae.data.positions.DataPosition()
    >>> ds = image_text_dataset(files, batch_size=64, repeat=True, seed=0, position=position)
    >>> checkpoint = TrainingCheckpoint("run/checkpoint", 500, positions=[position])
    >>> fit_resumable(pretrainer, ds, epochs=50, steps_per_epoch=1000,
    ...               checkpoint=checkpoint, callbacks=[NonFiniteLossGuard()])
    """

    def __init__(self, directory, every_steps=1000, positions=(), skip_counters=(),
                 config=None, log_path=None, max_to_keep=2, asynchronous=True,
                 save_on_preemption=True):
        super().__init__()
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"`every_steps` must be >= 1 (or None); got {every_steps}.")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"`max_to_keep` must be >= 1 (or None); got {max_to_keep}.")
        self.directory = str(directory)
        self.every_steps = every_steps
        self.positions = list(positions)
        self.skip_counters = list(skip_counters)
        self.config = json.loads(json.dumps(config or {}))
        self.log_path = None if log_path is None else str(log_path)
        self.max_to_keep = max_to_keep
        self.asynchronous = asynchronous
        self.save_on_preemption = save_on_preemption
        self.step = 0
        self._saved_step = 0
        self._epoch = 0
        self._pending = None
        self._log = None
        self._remote_lines = None
        self._remote_dirty = False
        self._manager = None
        self._staging = None
        self._previous_handler = None
        self._handler_installed = False

    # Where Orbax writes.

    @property
    def staged(self):
        """True when Orbax writes to a local copy that is then copied to `directory`."""
        return not (paths.is_local(self.directory) or self.directory.startswith("gs://"))

    def _root(self):
        if paths.is_local(self.directory):
            return os.path.abspath(paths.local(self.directory))
        if not self.staged:
            return self.directory
        if hosts.process_count() > 1:
            raise ValueError(
                f"Checkpoint directory {self.directory!r}: Orbax writes to local paths and "
                "gs:// only, and on several hosts to a directory all of them see; use one.")
        if self._staging is None:
            self._staging = tempfile.mkdtemp(prefix="keras_m3ae_checkpoint_")
            atexit.register(shutil.rmtree, self._staging, True)
        return self._staging

    def _open(self):
        if self._manager is None:
            ocp = _ocp()
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.max_to_keep, create=True,
                enable_async_checkpointing=self.asynchronous and not self.staged,
                cleanup_tmp_directories=True)
            self._manager = ocp.CheckpointManager(self._root(), item_names=(STATE, META),
                                                  options=options)
        return self._manager

    def wait(self):
        """Blocks until the save in flight, if any, is complete on every host."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    def close(self):
        """Waits for the save in flight and releases Orbax's resources; `load` reopens."""
        self._uninstall_handler()
        self._close_log()
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    def _copy_in(self):
        """Staged directories: the remote complete steps into the local copy."""
        root = self._root()
        paths.rmtree(root)
        os.makedirs(root)
        if not paths.isdir(self.directory):
            return
        for name in paths.listdir(self.directory):
            source = paths.join(self.directory, name)
            if name.isdigit() and paths.exists(paths.join(source, _COMMITTED)):
                paths.copy_tree(source, os.path.join(root, name))
            elif name.isdigit():  # a copy a kill interrupted
                logger.warning("%s was not completely copied: removed.", source)
                paths.rmtree(source)

    def _remove_leftovers(self):
        """Removes the temporary directories of writes a kill interrupted."""
        root = self._root()
        if not paths.isdir(root):
            return
        for name in paths.listdir(root):
            if _TEMPORARY_SUFFIX in name:
                paths.rmtree(paths.join(root, name))
                logger.info("Removed %s, a checkpoint write that did not complete.", name)

    def _copy_out(self, step):
        """Staged directories: the new step to the remote directory, then drop the removed ones.

        Orbax's commit marker is copied last: a step without it is an
        incomplete copy, which `load` removes.
        """
        paths.copy_tree(os.path.join(self._root(), str(step)),
                        paths.join(self.directory, str(step)), last=_COMMITTED)
        kept = set(self._manager.all_steps())
        for old in checkpoint_steps(self.directory):
            if old not in kept:
                paths.rmtree(paths.join(self.directory, str(old)))

    # Loading.

    def load(self):
        """Reads the last good checkpoint, if any; the callback restores it at the first epoch.

        Sets `step` and the data positions (so that the dataset's next
        iterator starts where the checkpoint's batches ended) and cuts the
        per-step log back to `step`. Damaged steps (metadata missing,
        unreadable or not matching its checksum) are reported, moved aside
        and the previous good one is used.

        Returns:
            The checkpoint's metadata (dict), or None when there is none.

        Raises:
            ValueError: the checkpoint does not fit this run (another
                `config`, host count or model), or was written by an
                earlier version of this library.
        """
        _preemption.clear()
        if paths.exists(paths.join(self.directory, "manifest.json")):
            raise ValueError(
                f"Checkpoint {self.directory!r} holds a checkpoint of an earlier version "
                "(manifest.json + state.npz), which this version does not read: finish that "
                "run with the version that wrote it, or use another output directory.")
        self.close()
        if hosts.is_chief():
            if self.staged:
                self._copy_in()
            self._remove_leftovers()
        hosts.barrier("keras_m3ae.TrainingCheckpoint.load")
        manager = self._open()
        meta, damaged = None, []
        for step in sorted(manager.all_steps(), reverse=True):
            meta, problem = self._read_meta(manager, step)
            if meta is not None:
                break
            logger.warning("Checkpoint step %d in %s is damaged: %s. Not used.", step,
                           self.directory, problem)
            damaged.append(step)
        if damaged:
            if meta is not None:
                logger.warning("Using the previous good checkpoint, step %d, of %s.",
                               meta["step"], self.directory)
            else:
                logger.warning("No good checkpoint left in %s: starting over.", self.directory)
            self._set_aside(damaged)
        if meta is not None:
            self._check(meta)
        self.step = self._saved_step = meta["step"] if meta else 0
        self._pending = meta
        states = meta["positions"][hosts.process_index()] if meta else \
            [None] * len(self.positions)
        for position, state in zip(self.positions, states):
            position.set(state)
        if meta:
            for counter, counts in zip(self.skip_counters,
                                       meta["skip_counts"][hosts.process_index()]):
                counter.reset()
                for reason, count in counts.items():
                    if count:
                        counter.add_now(reason, count)
            logger.warning("Resuming from %s: step %d (epoch %d).", self.directory,
                           meta["step"], meta["epoch"] + 1)
        self._cut_log(self.step)
        return meta

    def _read_meta(self, manager, step):
        """(metadata, None) for a good step, (None, what is wrong) for a damaged one."""
        ocp = _ocp()
        try:
            meta = manager.restore(step, args=ocp.args.Composite(
                **{META: ocp.args.JsonRestore()}))[META]
        except Exception as error:  # noqa: BLE001 - any failure to read is damage
            return None, f"its metadata cannot be read ({type(error).__name__}: {error})"
        if not isinstance(meta, dict) or "sha256" not in meta:
            return None, "its metadata has no checksum"
        meta = dict(meta)
        claimed = meta.pop("sha256")
        if _digest(meta) != claimed:
            return None, "its metadata does not match its SHA-256 (changed or corrupt)"
        if meta.get("step") != step:
            return None, f"its metadata names step {meta.get('step')}"
        return meta, None

    def _set_aside(self, steps):
        """Renames damaged steps to `damaged_step_<N>`, so that later saves can use the step."""
        self.close()
        if hosts.is_chief():
            for root in [self._root()] + ([self.directory] if self.staged else []):
                for step in steps:
                    source = paths.join(root, str(step))
                    if not paths.isdir(source):
                        continue
                    target, n = paths.join(root, f"damaged_step_{step}"), 1
                    while paths.exists(target):
                        target, n = paths.join(root, f"damaged_step_{step}.{n}"), n + 1
                    paths.move_tree(source, target)
                    logger.warning("Moved the damaged checkpoint %s to %s.", source, target)
        hosts.barrier("keras_m3ae.TrainingCheckpoint.set_aside")
        self._open()

    def _check(self, meta):
        where = f"Checkpoint {self.directory!r} (step {meta.get('step')})"
        if meta.get("format") != FORMAT:
            raise ValueError(f"{where} has format {meta.get('format')}; this version "
                             f"reads format {FORMAT}.")
        changed = {k: (meta["config"].get(k), v) for k, v in self.config.items()
                   if meta["config"].get(k) != v}
        if changed:
            shown = "; ".join(f"{k}: {old!r} then, {new!r} now"
                              for k, (old, new) in changed.items())
            raise ValueError(f"{where} was written by a different run ({shown}). Restore the "
                             "original settings, or use another output directory.")
        saved_hosts, now = len(meta["positions"]), hosts.process_count()
        if saved_hosts != now:
            raise ValueError(f"{where} holds the data positions of {saved_hosts} host(s); this "
                             f"run has {now}. Resume with {saved_hosts} host(s).")
        saved_positions, now = len(meta["positions"][0]), len(self.positions)
        if saved_positions != now:
            raise ValueError(f"{where} holds {saved_positions} data position(s) per host; "
                             f"this callback was given {now}.")

    def _restore(self, meta):
        ocp = _ocp()
        groups = _variable_groups(self.model)
        target = {}
        for group, variables in groups.items():
            saved = meta["variables"][group]
            if len(saved) != len(variables):
                raise ValueError(
                    f"Checkpoint {self.directory!r} holds {len(saved)} {group} variables; "
                    f"this model has {len(variables)}.")
            for i, (variable, (path, shape, dtype)) in enumerate(zip(variables, saved)):
                # By position and shape: paths carry numbers that depend on
                # what else the process built before.
                if list(variable.shape) != shape:
                    raise ValueError(
                        f"Checkpoint {self.directory!r}: {group} variable {i} is {path} "
                        f"{shape} there and {variable.path} {list(variable.shape)} here.")
            if variables:
                target[group] = {str(i): self._abstract(v, saved[i][2])
                                 for i, v in enumerate(variables)}
        restored = self._open().restore(meta["step"], args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(target)}))[STATE]
        # A checkpoint of an epoch's last step: this epoch starts its running
        # means from zero (Keras reset them), as the uninterrupted run did.
        skipped = {"metrics"} if meta["epoch"] != self._epoch else set()
        for group, variables in groups.items():
            if group in skipped:
                continue
            for i, variable in enumerate(variables):
                variable.assign(restored[group][str(i)])
        logger.warning("Restored step %d from %s.", meta["step"], self.directory)

    @staticmethod
    def _abstract(variable, dtype):
        """What Orbax restores into: this run's sharding on JAX, a numpy array otherwise."""
        value = variable.value
        if keras.config.backend() == "jax":
            import jax

            return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding)
        return np.empty(tuple(variable.shape), _numpy_dtype(dtype))

    # Saving.

    def save(self):
        """Starts a checkpoint of the current step now (every host must call it).

        Asynchronous unless `asynchronous=False`: it returns once the values
        are copied, and the checkpoint becomes the one `load` uses once
        complete on every host (`wait` blocks until then).

        Raises:
            ValueError: a variable holds a NaN or an infinity (nothing is
                written; the last good checkpoint is kept).
        """
        ocp = _ocp()
        model = self.model  # on JAX this brings the training state back into the variables
        groups = _variable_groups(model)
        flat = [(group, i, v) for group, variables in groups.items()
                for i, v in enumerate(variables)]
        values = [v.value for _, _, v in flat]
        for (group, i, variable), finite in zip(flat, hosts.finite_flags(values)):
            if not finite:
                raise ValueError(
                    f"Not saving a checkpoint at step {self.step}: {variable.path} is not "
                    f"finite; the last good checkpoint in {self.directory!r} is kept.")
        tree, described = {}, {group: [] for group in groups}
        for (group, i, variable), value in zip(flat, values):
            value = self._savable(value)
            tree.setdefault(group, {})[str(i)] = value
            described[group].append([variable.path, list(variable.shape),
                                     np.dtype(value.dtype).name])
        positions = [p.state(self.step) for p in self.positions]
        flat_positions = [v for p in positions for v in (p["raw_records"], p["examples"])]
        gathered = hosts.gather(flat_positions).reshape(
            hosts.process_count(), len(self.positions), 2)
        counts = [c.counts() for c in self.skip_counters]
        reasons = sorted(counts[0]) if counts else []
        all_counts = hosts.gather([c[r] for c in counts for r in reasons]).reshape(
            hosts.process_count(), len(counts), len(reasons))
        meta = {
            "format": FORMAT,
            "step": self.step,
            "epoch": self._epoch,
            "config": self.config,
            "positions": [[{"raw_records": int(r), "examples": int(e)} for r, e in host]
                          for host in gathered.tolist()],
            "skip_counts": [[dict(zip(reasons, c)) for c in host]
                            for host in all_counts.tolist()],
            "variables": described,
        }
        meta["sha256"] = _digest(meta)
        if hosts.is_chief():
            # The log holds this step before the checkpoint can be complete.
            self._flush_log(sync=True)
        manager = self._open()
        manager.save(self.step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(tree), META: ocp.args.JsonSave(meta)}), force=True)
        kill_point("write:checkpoint")
        if self.staged:
            manager.wait_until_finished()
            self._copy_out(self.step)
        self._saved_step = self.step

    @staticmethod
    def _savable(value):
        if keras.config.backend() == "jax":
            return value  # a jax.Array: Orbax writes this host's shards
        # A copy: torch's numpy view shares memory with the variable, which
        # training changes while the save is in flight.
        return np.array(keras.ops.convert_to_numpy(value), copy=True)

    # The per-step log.

    def _cut_log(self, step):
        if not self.log_path or not hosts.is_chief():
            return
        kept = []
        if paths.exists(self.log_path):
            with paths.open_file(self.log_path) as f:
                for line in f.read().splitlines(keepends=True):
                    try:
                        entry = json.loads(line)
                    except ValueError:  # a line the kill cut short
                        break
                    if entry["step"] > step:
                        break
                    kept.append(line)
        parent = os.path.dirname(self.log_path)
        if parent:
            paths.makedirs(parent)
        with paths.open_file(self.log_path, "w") as f:
            f.write("".join(kept))
        # A URL is rewritten whole at each flush (appending to an object
        # store uploads the whole object anyway): its lines are kept here.
        self._remote_lines = None if paths.is_local(self.log_path) else kept

    def _flush_log(self, sync=False):
        if self._log is not None:
            self._log.flush()
            if sync:
                os.fsync(self._log.fileno())
        elif self._remote_dirty:
            with paths.open_file(self.log_path, "w") as f:
                f.write("".join(self._remote_lines))
            self._remote_dirty = False

    def _write_log(self, logs):
        if not self.log_path or not hosts.is_chief():
            return
        entry = {"step": self.step, "epoch": self._epoch + 1}
        entry.update({k: float(v) for k, v in (logs or {}).items()})
        line = json.dumps(entry) + "\n"
        if not paths.is_local(self.log_path):
            if self._remote_lines is None:
                self._cut_log(self.step - 1)
            self._remote_lines.append(line)
            self._remote_dirty = True
            return
        if self._log is None:
            self._log = open(paths.local(self.log_path), "a")
        self._log.write(line)
        self._log.flush()

    def _close_log(self):
        self._flush_log()
        if self._log is not None:
            self._log.close()
            self._log = None

    # Preemption.

    def _install_handler(self):
        if not self.save_on_preemption or self._handler_installed or \
                threading.current_thread() is not threading.main_thread():
            return
        self._previous_handler = signal.signal(
            signal.SIGTERM, lambda signum, frame: request_preemption_save())
        self._handler_installed = True

    def _uninstall_handler(self):
        if self._handler_installed:
            # None: a handler installed outside Python; the default is put back.
            previous = self._previous_handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            self._handler_installed = False
            self._previous_handler = None

    # Callback hooks.

    def on_train_begin(self, logs=None):
        self._install_handler()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._pending is not None:
            # After Keras built the model and optimizer and reset the
            # metrics: the restored running means carry on.
            meta, self._pending = self._pending, None
            self._restore(meta)

    def on_train_batch_begin(self, batch, logs=None):
        kill_point("step")

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self._write_log(logs)
        preempted = self.save_on_preemption and hosts.any_host(_preemption.is_set())
        if preempted or (self.every_steps and self.step % self.every_steps == 0):
            self.save()
        if preempted:
            self.wait()
            _preemption.clear()
            self.model.stop_training = True
            logger.warning("Preemption: saved step %d in %s; stopping.", self.step,
                           self.directory)
            raise Preempted(self.step, self.directory)

    def on_train_end(self, logs=None):
        if self.step != self._saved_step:
            self.save()
        self.wait()
        # A later `fit` on the same datasets continues their streams.
        for position in self.positions:
            position.set(position.state(self.step))
        self._close_log()
        self._uninstall_handler()


def fit_resumable(model, x, *, epochs, steps_per_epoch, checkpoint, callbacks=None, **kwargs):
    """`model.fit` that continues from `checkpoint`'s last save, mid-epoch included.

    Loads the checkpoint (`TrainingCheckpoint.load`), then fits the rest of
    the interrupted epoch (its remaining steps) and the remaining epochs;
    the epochs, their steps and the logs are those of an uninterrupted run.
    Rerunning after any number of interruptions finishes the same run.

    Args:
        model: a compiled `keras.Model`.
        x: the training data (an infinite stream: a repeated dataset).
        epochs: int. Total epochs of the run.
        steps_per_epoch: int. Steps per epoch.
        checkpoint: `TrainingCheckpoint`; added after `callbacks` if not
            among them.
        callbacks: list of callbacks (`NonFiniteLossGuard` first).
        **kwargs: passed to `fit`.

    Returns:
        The `History` of the last `fit` call, or None when the checkpoint
        already holds the whole run.

    Raises:
        RunLockError: another run writes the same checkpoint directory
            (`RunLock`: one writer per directory).
        Preempted: a SIGTERM or `request_preemption_save()` made every host
            save at one step; rerunning continues from it.
    """
    with RunLock(checkpoint.directory):
        return _fit_resumable(model, x, epochs=epochs, steps_per_epoch=steps_per_epoch,
                              checkpoint=checkpoint, callbacks=callbacks, **kwargs)


def _fit_resumable(model, x, *, epochs, steps_per_epoch, checkpoint, callbacks=None, **kwargs):
    callbacks = list(callbacks or [])
    if checkpoint not in callbacks:
        callbacks.append(checkpoint)
    try:
        return _fit_from_checkpoint(model, x, epochs, steps_per_epoch, checkpoint, callbacks,
                                    kwargs)
    finally:
        # Also after an error: the save in flight completes (it is a good
        # one) before the process goes on or exits.
        checkpoint.close()


def _fit_from_checkpoint(model, x, epochs, steps_per_epoch, checkpoint, callbacks, kwargs):
    checkpoint.load()
    total = epochs * steps_per_epoch
    if checkpoint.step >= total:
        logger.warning("The checkpoint holds all %d steps of this run: nothing to do.", total)
        return None
    if hasattr(x, "element_spec"):
        # The dataset's own order is the one an exact resume replays; Keras
        # ignores `shuffle` for a dataset (and warns when it is True).
        kwargs.setdefault("shuffle", False)
    epoch, done = divmod(checkpoint.step, steps_per_epoch)
    # A kill after an epoch's row was written but before the next save
    # redoes that epoch: its row is written again.
    trim_csv_logs(callbacks, epoch)
    history = None
    if done:
        # Two `fit` calls, one run: the summary line comes once, at the end.
        split = epoch + 1 < epochs
        summaries = [c for c in callbacks if split and hasattr(c, "continue_in_next_fit")]
        for callback in summaries:
            callback.continue_in_next_fit()
        history = model.fit(x, initial_epoch=epoch, epochs=epoch + 1,
                            steps_per_epoch=steps_per_epoch - done, callbacks=callbacks, **kwargs)
        epoch += 1
        if model.stop_training:
            for callback in summaries:
                callback.end_run()
            return history
    if epoch < epochs:
        history = model.fit(x, initial_epoch=epoch, epochs=epochs,
                            steps_per_epoch=steps_per_epoch, callbacks=callbacks, **kwargs)
    return history


def trim_csv_logs(callbacks, first_epoch):
    """Drops the rows of epochs >= `first_epoch` from appending `CSVLogger` files.

    A resumed run writes those epochs again, so each epoch keeps one row.
    A local file is replaced atomically; a URL (`tf.io.gfile`) is rewritten.

    Args:
        callbacks: list of callbacks; `keras.callbacks.CSVLogger`s with
            `append=True` whose file exists are trimmed, others ignored.
        first_epoch: int. The first epoch the resumed run will log.
    """
    for callback in callbacks or ():
        if not isinstance(callback, keras.callbacks.CSVLogger) or not callback.append:
            continue
        path = callback.filename
        if not paths.exists(path) or paths.isdir(path):
            continue
        with paths.open_file(path) as f:
            rows = list(csv.reader(f.read().splitlines(), delimiter=callback.sep))
        if not rows or "epoch" not in rows[0]:
            continue
        column = rows[0].index("epoch")
        kept = [row for row in rows[1:] if row and int(float(row[column])) < first_epoch]
        if len(kept) == len(rows) - 1:
            continue
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=callback.sep, lineterminator="\n").writerows([rows[0], *kept])
        if paths.is_local(path):
            temporary = path + ".tmp"
            with open(temporary, "w", newline="") as f:
                f.write(buffer.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        else:
            with paths.open_file(path, "w") as f:
                f.write(buffer.getvalue())
        logger.info("%s: dropped the rows of epochs >= %d, which this run writes again.",
                    path, first_epoch)
