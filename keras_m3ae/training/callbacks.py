"""Callbacks for long `fit` runs: a non-finite loss guard, atomic preset saving, skip counts."""

import logging
import math

import keras

from keras_m3ae.training.checkpoints import save_preset_atomically

logger = logging.getLogger("keras_m3ae.training")


class NonFiniteLossError(RuntimeError):
    """Training stopped on a non-finite loss; the message says where and which."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops `fit` at a non-finite loss, before anything saves its weights.

    Checks every loss the model logs (`loss`, `image_loss`, `text_loss`,
    ...) after each step and raises `NonFiniteLossError` naming the step and
    the losses. Raising from the step, rather than setting `stop_training`,
    means no later callback sees that step: put the guard FIRST in the
    callback list and no checkpoint or preset written at the end of that
    step or epoch will hold the broken weights. Keras' own `TerminateOnNaN`
    stops quietly after the epoch's callbacks have run.

    Keras logs running means over the epoch, so once a step's loss is
    non-finite every later step of that epoch logs a non-finite value too;
    `max_non_finite_steps > 1` tolerates that many consecutive ones, which
    is useful only when the optimizer skips non-finite updates (e.g. a
    `LossScaleOptimizer`).

    Args:
        max_non_finite_steps: int. Consecutive steps with a non-finite loss
            allowed before stopping (1: stop at the first).
        monitor: str. Log keys ending with this suffix are checked.

    Example:
    >>> pretrainer.fit(ds, callbacks=[NonFiniteLossGuard(), ...])
    """

    def __init__(self, max_non_finite_steps=1, monitor="loss"):
        super().__init__()
        if max_non_finite_steps < 1:
            raise ValueError(f"`max_non_finite_steps` must be >= 1; got {max_non_finite_steps}.")
        self.max_non_finite_steps = max_non_finite_steps
        self.monitor = monitor
        self._epoch = 0
        self._steps = 0
        self._streak = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        losses = {k: float(v) for k, v in (logs or {}).items() if k.endswith(self.monitor)}
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        self._streak = self._streak + 1 if bad else 0
        if self._streak >= self.max_non_finite_steps:
            self.model.stop_training = True
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(losses.items()))
            raise NonFiniteLossError(
                f"Non-finite loss at step {self._steps} of this run (epoch {self._epoch + 1}, "
                f"batch {batch + 1}): {shown}. Training stopped before saving; the last good "
                "checkpoint and preset are kept. Lower the learning rate, check the inputs "
                "(images normalised, token ids inside the vocabulary), or resume from the "
                "last checkpoint."
            )


class SavePreset(keras.callbacks.Callback):
    """Saves the backbone as a keras-hub preset every `every_epochs` epochs, atomically.

    The write goes to a temporary directory that replaces the previous
    preset only once complete (`save_preset_atomically`); weights that are
    not finite are never written over a good preset (that raises instead).
    On several JAX processes put it on every process: weights sharded over
    the hosts are read with all of them, and the chief alone writes.

    Args:
        backbone: the backbone to save (e.g. `pretrainer.backbone`).
        path: str. Preset directory.
        every_epochs: int. Save at the end of every this many epochs (and
            always at the end of training).
        chief: bool or None. Whether this process writes; None: process 0.

    Example:
    >>> pretrainer.fit(ds, epochs=50, callbacks=[
    ...     NonFiniteLossGuard(), SavePreset(pretrainer.backbone, "run/preset")])
    """

    def __init__(self, backbone, path, every_epochs=1, chief=None):
        super().__init__()
        self.backbone = backbone
        self.path = path
        self.every_epochs = every_epochs
        self.chief = chief
        self._unsaved = False

    def on_epoch_end(self, epoch, logs=None):
        self._unsaved = (epoch + 1) % self.every_epochs != 0
        if not self._unsaved:
            save_preset_atomically(self.backbone, self.path, chief=self.chief)

    def on_train_end(self, logs=None):
        if self._unsaved:
            save_preset_atomically(self.backbone, self.path, chief=self.chief)


class SkipCountLogger(keras.callbacks.Callback):
    """Reports the data pipeline's skip counts while training runs.

    Every `every_steps` steps and at the end of every epoch, the non-zero
    counts of `counter` (see `keras_m3ae.data.skips.REASONS`; decoder
    failures included) are logged at WARNING level when they changed, and
    the number of examples dropped so far is added to every step's and
    every epoch's logs as `skipped` (one stable column, so `CSVLogger` and
    `TensorBoard` placed after this callback record it, TensorBoard per
    step with `update_freq`). A run that reads mostly broken data is then
    visible long before `fit` returns.

    Args:
        counter: a `keras_m3ae.data.SkipCounter`, e.g. `dataset.skip_counter`.
        every_steps: int or None. Also report every this many steps.
        print_fn: callable taking a line; default logs at WARNING level on
            the `keras_m3ae.training` logger.

    Example:
    >>> ds = keras_m3ae.data.image_text_dataset(...)
    >>> pretrainer.fit(ds, callbacks=[SkipCountLogger(ds.skip_counter, 1000)])
    """

    def __init__(self, counter, every_steps=1000, print_fn=None):
        super().__init__()
        self.counter = counter
        self.every_steps = every_steps
        self.print_fn = print_fn or logger.warning
        self._steps = 0
        self._last = {}

    def _report(self, where):
        counts = {k: v for k, v in self.counter.counts().items() if v}
        if counts != self._last:
            self._last = counts
            self.print_fn(f"data {self.counter.name} after {where}: skipped or repaired {counts}")
        return counts

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self.every_steps and self._steps % self.every_steps == 0:
            self._report(f"step {self._steps}")
        if logs is not None:
            logs["skipped"] = float(self.counter.total_skipped())

    def on_epoch_end(self, epoch, logs=None):
        self._report(f"epoch {epoch + 1}")
        if logs is not None:
            logs["skipped"] = float(self.counter.total_skipped())
