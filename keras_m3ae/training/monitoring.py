"""Seeing a long run: TensorBoard scalars, a final summary line, writing on process 0 only.

The reconstruction pictures of a fixed batch come from
`keras_m3ae.analysis.ReconstructionSnapshots` (the analysis layer makes
the pictures and sits above training).
"""

import logging
import os
import time

import keras
import numpy as np

from keras_m3ae.data.skips import SKIP_REASONS
from keras_m3ae.data.skips import skipped_counts
from keras_m3ae.training import hosts

logger = logging.getLogger("keras_m3ae.training")


def writes_here(chief=None):
    """`chief` if given, else whether this process is the one that writes (process 0)."""
    return hosts.is_chief() if chief is None else bool(chief)


class SummaryWriter:
    """TensorBoard event files written with TensorFlow core alone.

    `tf.summary.scalar` and `tf.summary.image` need the `tensorboard`
    package, which Keras' `TensorBoard` callback relies on; this writes the
    same records (scalars and PNG images, with the plugin metadata that
    TensorBoard reads) through `tf.summary.write`, so runs on any backend
    need nothing beyond the data pipeline's TensorFlow.

    Args:
        folder: str. Directory of the event file.

    Example:
    >>> writer = SummaryWriter("run/tb/train")
    >>> writer.scalars({"loss": 0.5}, step=100)
    """

    def __init__(self, folder):
        # Imported here: only a writing process needs TensorFlow's summary ops.
        import tensorflow as tf

        self._tf = tf
        self.folder = folder
        self._writer = tf.summary.create_file_writer(folder)

    def _metadata(self, plugin_name):
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = plugin_name
        return metadata

    def scalars(self, values, step, prefix=""):
        """Writes each float of the dict `values` as the scalar `prefix + name`."""
        tf = self._tf
        with self._writer.as_default():
            for name, value in values.items():
                tf.summary.write(prefix + name, tf.constant(float(value), tf.float32),
                                 step=int(step), metadata=self._metadata("scalars"))
        self._writer.flush()

    def image(self, tag, image, step):
        """Writes `image`, float `(H, W, 3)` in [0, 1], as a PNG image summary."""
        tf = self._tf
        pixels = tf.constant((np.clip(image, 0.0, 1.0) * 255).round().astype("uint8"))
        height, width = image.shape[:2]
        tensor = tf.stack([tf.constant(str(width)), tf.constant(str(height)),
                           tf.io.encode_png(pixels)])
        with self._writer.as_default():
            tf.summary.write(tag, tensor, step=int(step), metadata=self._metadata("images"))
        self._writer.flush()

    def close(self):
        self._writer.close()


def _floats(logs):
    values = {}
    for name, value in (logs or {}).items():
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            continue
    return values


class TensorBoardScalars(keras.callbacks.Callback):
    """The step and epoch logs of a run as TensorBoard scalars, on the writing process only.

    Every `every_steps` optimizer steps the step logs (losses, `skipped`
    from a `SkipCountLogger` placed before this callback) are written as
    `batch_<name>`, and at each epoch end the epoch logs as `epoch_<name>`
    (validation ones included), under `log_dir/train`, as Keras'
    `TensorBoard` names them. Unlike that callback it needs no `tensorboard`
    package (see `SummaryWriter`) and works the same on every backend.

    Args:
        log_dir: str. TensorBoard directory.
        every_steps: int. Write the step logs every this many steps.
        chief: bool or None. Whether this process writes; None: process 0
            of a multi-process JAX run, any process otherwise.

    Example:
    >>> callbacks = [SkipCountLogger(ds.skip_counter, 1000), TensorBoardScalars("run/tb", 100)]
    """

    def __init__(self, log_dir, every_steps=100, chief=None):
        super().__init__()
        if every_steps < 1:
            raise ValueError(f"`every_steps` must be >= 1; got {every_steps}.")
        self.log_dir = str(log_dir)
        self.every_steps = int(every_steps)
        self.chief = chief
        self._writer = None
        self._step = 0

    def on_train_begin(self, logs=None):
        if writes_here(self.chief) and self._writer is None:
            self._writer = SummaryWriter(os.path.join(self.log_dir, "train"))
        # The optimizer's step, so that a resumed run continues the curves.
        self._step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._writer is not None and self._step % self.every_steps == 0:
            self._writer.scalars(_floats(logs), self._step, prefix="batch_")

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is not None:
            self._writer.scalars(_floats(logs), epoch, prefix="epoch_")

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunSummary(keras.callbacks.Callback):
    """One line at the end of `fit`: steps, examples/s, final losses, skips, outputs.

    The rate leaves out the first step of the run (it builds and compiles
    the step function). Written on the writing process only (see
    `writes_here`).

    Args:
        batch_size: int or None. Global batch size, for examples/s.
        counters: list of `SkipCounter`s, or None for every counter of this
            process (`keras_m3ae.data.skipped_counts`).
        outputs: dict name -> path of what the run writes (TensorBoard
            directory, preset, checkpoints), shown in the line.
        print_fn: callable taking a line; default logs at INFO level on the
            `keras_m3ae.training` logger.
        chief: bool or None. Whether this process writes the line.

    Example:
    >>> summary = RunSummary(batch_size=256, counters=[ds.skip_counter],
    ...                      outputs={"tensorboard": "run/tb", "preset": "run/preset"})
    >>> pretrainer.fit(ds, epochs=50, callbacks=[..., summary])
    >>> summary.summary["examples_per_second"]
    """

    def __init__(self, batch_size=None, counters=None, outputs=None, print_fn=None, chief=None):
        super().__init__()
        self.batch_size = batch_size
        self.counters = counters
        self.outputs = dict(outputs or {})
        self.print_fn = print_fn or logger.info
        self.chief = chief
        self.summary = None
        self._steps = 0
        self._start = None
        self._first_step_end = None
        self._logs = {}
        self._defer = False
        self._carry = False

    def continue_in_next_fit(self):
        """The next `fit` prints no line, and the `fit` after it continues its counts.

        `fit_resumable` calls this when it finishes an interrupted epoch and
        the remaining epochs in two `fit` calls: one run, one line.
        """
        self._defer = True

    def end_run(self):
        """Prints the line held back by `continue_in_next_fit` (a run that stopped early)."""
        self._carry = False
        if self.summary is not None and writes_here(self.chief):
            self.print_fn(self.line())

    def on_train_begin(self, logs=None):
        if self._carry:
            self._carry = False
            return
        self._steps = 0
        self._start = time.perf_counter()
        self._first_step_end = None

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._first_step_end is None:
            self._first_step_end = time.perf_counter()
        self._logs = dict(logs or {})

    def on_epoch_end(self, epoch, logs=None):
        # Epoch logs hold the validation losses as well.
        self._logs.update(logs or {})

    def _skipped(self):
        if self.counters is None:
            counts = skipped_counts()
        else:
            counts = {}
            for counter in self.counters:
                for reason, value in counter.counts().items():
                    counts[reason] = counts.get(reason, 0) + value
        return {reason: value for reason, value in counts.items() if value}

    def on_train_end(self, logs=None):
        end = time.perf_counter()
        timed_steps = self._steps - 1
        rate = None
        if self.batch_size and timed_steps > 0 and end > self._first_step_end:
            rate = timed_steps * self.batch_size / (end - self._first_step_end)
        losses = _floats(self._logs)
        skipped = self._skipped()
        self.summary = {
            "steps": self._steps,
            "seconds": end - self._start if self._start is not None else 0.0,
            "examples_per_second": rate,
            "logs": losses,
            "skipped": skipped,
            "outputs": dict(self.outputs),
        }
        if self._defer:
            self._defer = False
            self._carry = True
            return
        if writes_here(self.chief):
            self.print_fn(self.line())

    def line(self):
        """The summary as one line of text (after training ended)."""
        s = self.summary
        rate = ("" if s["examples_per_second"] is None
                else f", {s['examples_per_second']:.1f} examples/s after the first step")
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(s["logs"].items()))
        dropped = sum(v for k, v in s["skipped"].items() if k in SKIP_REASONS)
        outputs = ", ".join(f"{k}: {v}" for k, v in s["outputs"].items()) or "nothing"
        return (f"run summary: {s['steps']} steps in {s['seconds']:.1f} s{rate}; final "
                f"{shown or 'logs: none'}; {dropped} examples skipped "
                f"{s['skipped'] or '{}'}; wrote {outputs}")
