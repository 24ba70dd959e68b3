"""Reconstructions of a fixed batch while a run trains: TensorBoard images and PNGs.

The callback lives with the pictures, in the analysis layer, because it is
made of them (`reconstruct`, `to_pixels`): analysis may use training (its
process-0 test), training may not use analysis.
"""

import os

import keras
import numpy as np

from keras_m3ae.analysis.visualization import pixel_mask
from keras_m3ae.analysis.visualization import reconstruct
from keras_m3ae.analysis.visualization import to_pixels
from keras_m3ae.data.constants import CC12M_MEAN
from keras_m3ae.data.constants import CC12M_STD
from keras_m3ae.training import hosts
from keras_m3ae.training import paths
from keras_m3ae.training.monitoring import SummaryWriter
from keras_m3ae.training.monitoring import writes_here


def reconstruction_grid(result, max_rows=4, mean=CC12M_MEAN, std=CC12M_STD):
    """One picture of rows original | masked (grey) | reconstruction.

    Args:
        result: dict from `reconstruct`.
        max_rows: int. At most this many examples.
        mean: per-channel mean the images were normalised with.
        std: per-channel std the images were normalised with.

    Returns:
        float32 array `(rows * H, 3 * W, 3)` with values in [0, 1].

    Example:
    >>> grid = reconstruction_grid(reconstruct(pretrainer, batch))
    """
    rows = []
    for r in range(min(len(result["images"]), max_rows)):
        original = to_pixels(result["images"][r], mean, std)
        masked = to_pixels(result["masked_images"][r], mean, std)
        masked = np.where(pixel_mask(result["image_mask"][r], masked.shape), 0.5, masked)
        rebuilt = to_pixels(result["reconstructions"][r], mean, std)
        rows.append(np.concatenate([original, masked, rebuilt], axis=1))
    return np.concatenate(rows, axis=0).astype("float32")


class ReconstructionSnapshots(keras.callbacks.Callback):
    """Every N steps, the reconstruction of one FIXED batch, as a TensorBoard image and a PNG.

    The batch and its masking noise are fixed when the callback is made, so
    successive pictures differ only by what the model learned. The model is
    called with that noise and `training=False`: the masking
    `SeedGenerator`, dropout and every other state of the run are left
    untouched, so a run's weights are bit-identical with and without this
    callback. Writes on the writing process only (`writes_here`).

    On several hosts the run's variables are global arrays that only a
    computation on every host can use, so the picture is drawn from a copy:
    at each picture step every host reads the weights (a collective for
    variables sharded over hosts, a local read for replicated ones), and the
    writing process alone loads them into its own copy of the model, made
    outside the run's `keras.distribution` on its local device, and calls
    that. The other hosts go on training; the copy costs the writing
    process one more set of weights in memory.

    Args:
        batch: dict of arrays, a batch as the pretrainer takes it (the first
            `max_rows` examples are used).
        log_dir: str. A local directory or a `tf.io.gfile` URL. Images go to `log_dir/images` (TensorBoard, tag
            `reconstructions`) and, with `png`, to
            `log_dir/reconstructions/step_NNNNNNNN.png`.
        every_steps: int. Take a picture every this many optimizer steps
            (and at the end of training).
        max_rows: int. Examples shown.
        seed: int. Seed of the fixed masking noise.
        png: bool. Also write PNG files.
        tensorboard: bool. Write TensorBoard image summaries.
        chief: bool or None. Whether this process writes; None: process 0.
        local_copy: bool or None. Draw from a copy of the model outside the
            distribution (see above); None: when there are several hosts.

    Example:
    >>> batch = next(iter(ds.take(1)))
    >>> pretrainer.fit(ds, callbacks=[ReconstructionSnapshots(batch, "run/tb", 1000)])
    """

    def __init__(self, batch, log_dir, every_steps=1000, max_rows=4, seed=0, png=True,
                 tensorboard=True, chief=None, local_copy=None):
        super().__init__()
        if every_steps < 1:
            raise ValueError(f"`every_steps` must be >= 1; got {every_steps}.")
        self.batch = {k: np.asarray(keras.ops.convert_to_numpy(v))[:max_rows]
                      for k, v in dict(batch).items()}
        self.log_dir = str(log_dir)
        self.every_steps = int(every_steps)
        self.max_rows = max_rows
        self.seed = seed
        self.png = png
        self.tensorboard = tensorboard
        self.chief = chief
        self.local_copy = local_copy
        self.written = []
        self._noise = None
        self._copy = None
        self._writer = None
        self._last_step = None
        self._step = None

    def _fixed_noise(self):
        """Masking noise for the fixed batch, drawn once from its own numpy RNG."""
        if self._noise is None:
            backbone = self.model.backbone
            rng = np.random.default_rng(self.seed)
            rows = len(self.batch["images"])
            image = rng.random((rows, backbone.num_patches), dtype=np.float32)
            text = (rng.random((rows, backbone.max_text_length), dtype=np.float32)
                    if backbone.has_text else None)
            self._noise = (image, text)
        return self._noise

    def _reconstruct_copy(self, weights):
        """`reconstruct` by this process's own copy of the model, loaded with `weights`."""
        image_noise, text_noise = self._fixed_noise()
        # Made and called with no distribution: its variables and every
        # intermediate stay on this process's default device.
        distribution = keras.distribution.distribution()
        keras.distribution.set_distribution(None)
        try:
            if self._copy is None:
                # From its config alone: not compiled, no optimizer state.
                self._copy = type(self.model).from_config(self.model.get_config())
                # Builds every variable; the same call as below, so cheap.
                self._copy(self.batch, training=False, image_noise=image_noise,
                           text_noise=text_noise)
            self._copy.set_weights(weights)
            return reconstruct(self._copy, self.batch, image_noise=image_noise,
                               text_noise=text_noise)
        finally:
            keras.distribution.set_distribution(distribution)

    def snapshot(self, step):
        """Writes the picture for `step`; returns the grid (or None off process 0).

        With `local_copy` (by default on several hosts) a collective: every
        host must call it at the same step.
        """
        local_copy = hosts.process_count() > 1 if self.local_copy is None else self.local_copy
        # Read on every host, before the writer check: a variable sharded
        # over hosts is gathered by all of them.
        weights = [hosts.to_numpy(v) for v in self.model.weights] if local_copy else None
        # On every host: `on_train_end` decides from it whether to take part
        # in one more snapshot (a collective), so all hosts must agree.
        self._last_step = step
        if not writes_here(self.chief):
            return None
        if local_copy:
            result = self._reconstruct_copy(weights)
        else:
            image_noise, text_noise = self._fixed_noise()
            result = reconstruct(self.model, self.batch, image_noise=image_noise,
                                 text_noise=text_noise)
        grid = reconstruction_grid(result, self.max_rows)
        if self.png:
            self._write_png(grid, step)
        if self.tensorboard:
            self._write_summary(grid, step)
        return grid

    def _write_png(self, grid, step):
        from PIL import Image

        folder = paths.join(self.log_dir, "reconstructions")
        paths.makedirs(folder)
        path = paths.join(folder, f"step_{step:08d}.png")
        with paths.open_file(path, "wb") as f:
            Image.fromarray((grid * 255).round().astype("uint8")).save(f, format="PNG")
        self.written.append(path)

    def _write_summary(self, grid, step):
        if self._writer is None:
            self._writer = SummaryWriter(os.path.join(self.log_dir, "images"))
        self._writer.image("reconstructions", grid, step)

    def _optimizer_step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        self._step = None

    def on_train_batch_end(self, batch, logs=None):
        # Counted from the optimizer's step, so a resumed run keeps numbering;
        # read once per `fit`, after its first step: a checkpoint restores the
        # step at the first epoch's beginning, after `on_train_begin`
        # (`fit_resumable`), and on JAX `self.model` syncs every variable back
        # to the model, which only a snapshot step should pay for.
        self._step = self._optimizer_step() if self._step is None else self._step + 1
        if self._step % self.every_steps == 0:
            self.snapshot(self._step)

    def on_train_end(self, logs=None):
        if self._step is None:
            self._step = self._optimizer_step()
        if self._step != self._last_step:
            self.snapshot(self._step)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
