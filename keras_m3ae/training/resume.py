"""Exact resumption of a `fit` run, mid-epoch included: `TrainingCheckpoint` and `fit_resumable`.

A checkpoint holds everything that decides what the next step computes:
every variable of the model (weights, and the states of its
`SeedGenerator`s, which draw the masks), of the optimizer (its step count
included, from which the learning-rate schedule reads) and of the metrics
(Keras logs running means over the epoch), the global step, and each host's
data position (`keras_m3ae.data.positions.DataPosition`). Restarting from it
the run computes the same steps on the same batches, so its weights and its
per-step log equal those of a run that was never interrupted.

A checkpoint is a directory `state.npz` + `manifest.json` written by
`atomic_directory`: under a temporary name beside the last good one, files
fsynced, then swapped in by renames. The manifest is written last and holds
the SHA-256 of the state file, so neither a kill at any instant nor a
corrupted file can make a restart load half a checkpoint.
"""

import csv
import hashlib
import json
import logging
import os

import keras
import numpy as np

from keras_m3ae.training import hosts
from keras_m3ae.training.checkpoints import atomic_directory
from keras_m3ae.training.checkpoints import kill_point
from keras_m3ae.training.checkpoints import recover_directory
from keras_m3ae.training.run_lock import RunLock

logger = logging.getLogger("keras_m3ae.training")

STATE = "state.npz"
MANIFEST = "manifest.json"
FORMAT = 1


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


def _portable(array):
    # bfloat16 (mixed precision) is not a NumPy dtype: stored as its bits.
    return array.view(np.uint16) if array.dtype.name == "bfloat16" else array


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves everything needed to resume `fit` exactly, every `every_steps` steps.

    Saves at every `every_steps`-th step and at the end of training (see the
    module docstring for what and how); `load()` reads the last checkpoint
    and the callback restores it when training begins. `fit_resumable` does
    both and handles a restart in the middle of an epoch: use it, or call
    `load()` yourself and resume at epoch boundaries with `initial_epoch`.

    On several hosts (JAX processes) every host runs the callback; each
    reports its own data positions and process 0 writes the checkpoint,
    which must lie on a file system all hosts read.

    Keep `NonFiniteLossGuard` BEFORE this callback: the step whose loss is
    not finite is then never saved. Non-finite weights are never written
    either (a `ValueError` names the variable; the last good checkpoint is
    kept).

    Args:
        directory: str. The checkpoint directory (local file system).
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
            the logs of each step) written by process 0 and cut back to the
            checkpoint's step on restart, so it equals an uninterrupted
            run's.

    Example:
    >>> position = keras_m3ae.data.positions.DataPosition()
    >>> ds = image_text_dataset(files, batch_size=64, repeat=True, seed=0, position=position)
    >>> checkpoint = TrainingCheckpoint("run/checkpoint", 500, positions=[position])
    >>> fit_resumable(pretrainer, ds, epochs=50, steps_per_epoch=1000,
    ...               checkpoint=checkpoint, callbacks=[NonFiniteLossGuard()])
    """

    def __init__(self, directory, every_steps=1000, positions=(), skip_counters=(),
                 config=None, log_path=None):
        super().__init__()
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"`every_steps` must be >= 1 (or None); got {every_steps}.")
        self.directory = directory
        self.every_steps = every_steps
        self.positions = list(positions)
        self.skip_counters = list(skip_counters)
        self.config = json.loads(json.dumps(config or {}))
        self.log_path = log_path
        self.step = 0
        self._saved_step = 0
        self._epoch = 0
        self._pending = None
        self._log = None

    # Loading.

    def load(self):
        """Reads the last checkpoint, if any; the callback restores it at the first epoch.

        Sets `step` and the data positions (so that the dataset's next
        iterator starts where the checkpoint's batches ended) and cuts the
        per-step log back to `step`.

        Returns:
            The manifest (dict), or None when there is no checkpoint.

        Raises:
            ValueError: the checkpoint does not fit this run (another
                `config`, host count or model), or its state file does not
                match its manifest.
        """
        if hosts.is_chief():
            recover_directory(self.directory)
        hosts.barrier("keras_m3ae.TrainingCheckpoint.load")
        manifest_path = os.path.join(self.directory, MANIFEST)
        manifest = None
        if os.path.isfile(manifest_path):
            with open(manifest_path) as f:
                manifest = json.load(f)
            self._check(manifest)
        elif os.path.isdir(self.directory):
            logger.warning("%s has no %s: not a complete checkpoint; starting over.",
                           self.directory, MANIFEST)
        self.step = self._saved_step = manifest["step"] if manifest else 0
        self._pending = manifest
        states = manifest["positions"][hosts.process_index()] if manifest else \
            [None] * len(self.positions)
        for position, state in zip(self.positions, states):
            position.set(state)
        if manifest:
            for counter, counts in zip(self.skip_counters,
                                       manifest["skip_counts"][hosts.process_index()]):
                counter.reset()
                for reason, count in counts.items():
                    if count:
                        counter.add_now(reason, count)
            logger.warning("Resuming from %s: step %d (epoch %d).", self.directory,
                           manifest["step"], manifest["epoch"] + 1)
        self._cut_log(self.step)
        return manifest

    def _check(self, manifest):
        where = f"Checkpoint {self.directory!r}"
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{where} has format {manifest.get('format')}; this version "
                             f"reads format {FORMAT}.")
        changed = {k: (manifest["config"].get(k), v) for k, v in self.config.items()
                   if manifest["config"].get(k) != v}
        if changed:
            shown = "; ".join(f"{k}: {old!r} then, {new!r} now"
                              for k, (old, new) in changed.items())
            raise ValueError(f"{where} was written by a different run ({shown}). Restore the "
                             "original settings, or use another output directory.")
        saved_hosts, now = len(manifest["positions"]), hosts.process_count()
        if saved_hosts != now:
            raise ValueError(f"{where} holds the data positions of {saved_hosts} host(s); this "
                             f"run has {now}. Resume with {saved_hosts} host(s).")
        saved_positions, now = len(manifest["positions"][0]), len(self.positions)
        if saved_positions != now:
            raise ValueError(f"{where} holds {saved_positions} data position(s) per host; "
                             f"this callback was given {now}.")
        digest = _sha256(os.path.join(self.directory, STATE))
        if digest != manifest["sha256"]:
            raise ValueError(f"{where}: {STATE} does not match the SHA-256 in {MANIFEST} "
                             f"({digest} vs {manifest['sha256']}); the file is corrupt.")

    def _restore(self, manifest):
        groups = _variable_groups(self.model)
        with np.load(os.path.join(self.directory, STATE)) as arrays:
            for group, variables in groups.items():
                saved = manifest["variables"][group]
                if len(saved) != len(variables):
                    raise ValueError(
                        f"Checkpoint {self.directory!r} holds {len(saved)} {group} variables; "
                        f"this model has {len(variables)}.")
                for i, (variable, (path, shape, dtype)) in enumerate(zip(variables, saved)):
                    # By position and shape: paths carry numbers that depend
                    # on what else the process built before.
                    if list(variable.shape) != shape:
                        raise ValueError(
                            f"Checkpoint {self.directory!r}: {group} variable {i} is {path} "
                            f"{shape} there and {variable.path} {list(variable.shape)} here.")
                    value = arrays[f"{group}/{i}"]
                    if dtype == "bfloat16":
                        import ml_dtypes

                        value = value.view(ml_dtypes.bfloat16)
                    variable.assign(value)
        logger.warning("Restored step %d from %s.", manifest["step"], self.directory)

    # Saving.

    def save(self):
        """Writes a checkpoint of the current step now (every host must call it)."""
        model = self.model  # on JAX this brings the training state back into the variables
        groups = _variable_groups(model)
        arrays, described = {}, {}
        for group, variables in groups.items():
            described[group] = []
            for i, variable in enumerate(variables):
                value = np.asarray(hosts.to_numpy(variable))
                if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                    raise ValueError(
                        f"Not saving a checkpoint at step {self.step}: {variable.path} is not "
                        f"finite; the last good checkpoint in {self.directory!r} is kept.")
                arrays[f"{group}/{i}"] = _portable(value)
                described[group].append([variable.path, list(variable.shape), value.dtype.name])
        positions = [p.state(self.step) for p in self.positions]
        flat = [v for p in positions for v in (p["raw_records"], p["examples"])]
        gathered = hosts.gather(flat).reshape(hosts.process_count(), len(self.positions), 2)
        counts = [c.counts() for c in self.skip_counters]
        reasons = sorted(counts[0]) if counts else []
        all_counts = hosts.gather([c[r] for c in counts for r in reasons]).reshape(
            hosts.process_count(), len(counts), len(reasons))
        if hosts.is_chief():
            self._flush_log()
            manifest = {
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
            with atomic_directory(self.directory) as temporary:
                state_path = os.path.join(temporary, STATE)
                np.savez(state_path, **arrays)
                manifest["sha256"] = _sha256(state_path)
                # Written last: a directory without it is no checkpoint.
                with open(os.path.join(temporary, MANIFEST), "w") as f:
                    json.dump(manifest, f, indent=1)
        self._saved_step = self.step

    # The per-step log.

    def _cut_log(self, step):
        if not self.log_path or not hosts.is_chief():
            return
        kept = []
        if os.path.exists(self.log_path):
            with open(self.log_path) as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:  # a line the kill cut short
                        break
                    if entry["step"] > step:
                        break
                    kept.append(line)
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        with open(self.log_path, "w") as f:
            f.writelines(kept)

    def _flush_log(self):
        if self._log is not None:
            self._log.flush()
            os.fsync(self._log.fileno())

    def _write_log(self, logs):
        if not self.log_path or not hosts.is_chief():
            return
        if self._log is None:
            self._log = open(self.log_path, "a")
        entry = {"step": self.step, "epoch": self._epoch + 1}
        entry.update({k: float(v) for k, v in (logs or {}).items()})
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()

    # Callback hooks.

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._pending is not None:
            # After Keras built the model and optimizer and reset the
            # metrics: the restored running means carry on.
            manifest, self._pending = self._pending, None
            self._restore(manifest)

    def on_train_batch_begin(self, batch, logs=None):
        kill_point("step")

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self._write_log(logs)
        if self.every_steps and self.step % self.every_steps == 0:
            self.save()

    def on_train_end(self, logs=None):
        if self.step != self._saved_step:
            self.save()
        # A later `fit` on the same datasets continues their streams.
        for position in self.positions:
            position.set(position.state(self.step))
        if self._log is not None:
            self._log.close()
            self._log = None


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
    """
    with RunLock(checkpoint.directory):
        return _fit_resumable(model, x, epochs=epochs, steps_per_epoch=steps_per_epoch,
                              checkpoint=checkpoint, callbacks=callbacks, **kwargs)


def _fit_resumable(model, x, *, epochs, steps_per_epoch, checkpoint, callbacks=None, **kwargs):
    callbacks = list(callbacks or [])
    if checkpoint not in callbacks:
        callbacks.append(checkpoint)
    checkpoint.load()
    total = epochs * steps_per_epoch
    if checkpoint.step >= total:
        logger.warning("The checkpoint holds all %d steps of this run: nothing to do.", total)
        return None
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
    The file is replaced atomically.

    Args:
        callbacks: list of callbacks; `keras.callbacks.CSVLogger`s with
            `append=True` whose file exists are trimmed, others ignored.
        first_epoch: int. The first epoch the resumed run will log.
    """
    for callback in callbacks or ():
        if not isinstance(callback, keras.callbacks.CSVLogger) or not callback.append:
            continue
        path = callback.filename
        if not os.path.isfile(path):
            continue
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter=callback.sep))
        if not rows or "epoch" not in rows[0]:
            continue
        column = rows[0].index("epoch")
        kept = [row for row in rows[1:] if row and int(float(row[column])) < first_epoch]
        if len(kept) == len(rows) - 1:
            continue
        temporary = path + ".tmp"
        with open(temporary, "w", newline="") as f:
            csv.writer(f, delimiter=callback.sep, lineterminator="\n").writerows([rows[0], *kept])
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        logger.info("%s: dropped the rows of epochs >= %d, which this run writes again.",
                    path, first_epoch)
