"""Seeing a long run: TensorBoard scalars and pictures, the summary line, skip counts."""

import glob
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import set_random_weights
from conftest import tiny_batch
from conftest import tiny_pretrainer
from keras_m3ae import data
from keras_m3ae.analysis import ReconstructionSnapshots
from keras_m3ae.analysis import reconstruction_grid
from keras_m3ae.analysis import to_pixels
from keras_m3ae.training import RunSummary
from keras_m3ae.training import SkipCountLogger
from keras_m3ae.training import TensorBoardScalars


def _tags(folder):
    tags = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_monitoring_writes_pictures_scalars_and_a_summary_without_changing_the_run(tmp_path):
    pretrainer = tiny_pretrainer()
    set_random_weights(pretrainer, seed=3)
    pretrainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    pretrainer.optimizer.build(pretrainer.trainable_variables)
    state = pretrainer.variables + pretrainer.optimizer.variables
    start = [np.array(v) for v in state]
    batches = [tiny_batch(2, seed=i) for i in range(3)]
    x = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def fit(callbacks):
        """Runs from the same start (the compiled step is reused); returns the end state."""
        for variable, value in zip(state, start):
            variable.assign(value)
        pretrainer.fit(x, batch_size=2, epochs=1, shuffle=False, callbacks=callbacks, verbose=0)
        return [np.array(v) for v in state]

    log_dir = str(tmp_path / "tb")
    fixed = tiny_batch(3, seed=7)
    counter = data.SkipCounter(name="monitor")
    lines = []
    snapshots = ReconstructionSnapshots(fixed, log_dir, every_steps=2, max_rows=2)
    elsewhere = ReconstructionSnapshots(fixed, str(tmp_path / "other"), every_steps=1, chief=False)
    summary = RunSummary(batch_size=2, counters=[counter], outputs={"tensorboard": log_dir},
                         print_fn=lines.append)
    watched = fit([SkipCountLogger(counter, every_steps=1, print_fn=lines.append),
                   TensorBoardScalars(log_dir, every_steps=1), snapshots, elsewhere, summary])
    plain = fit([])
    # The run is bit-identical with and without the callbacks: every weight,
    # the optimizer state and the masking SeedGenerator state.
    assert any(not np.array_equal(a, b) for a, b in zip(start, plain))
    for variable, a, b in zip(state, watched, plain):
        np.testing.assert_array_equal(a, b, err_msg=variable.path)

    # Pictures at step 2 (every 2 steps) and at the end (step 3), on process 0 only.
    assert [os.path.basename(p) for p in snapshots.written] == ["step_00000002.png",
                                                                "step_00000003.png"]
    assert not os.path.exists(tmp_path / "other") and elsewhere.written == []
    png = np.asarray(Image.open(snapshots.written[-1]), np.float32) / 255
    assert png.shape == (2 * 16, 3 * 16, 3)
    np.testing.assert_allclose(png[:16, :16], to_pixels(fixed["images"][0]), atol=0.5 / 255)
    assert _tags(os.path.join(log_dir, "images"))["reconstructions"] == [2, 3]
    scalars = _tags(os.path.join(log_dir, "train"))
    for tag in ("batch_loss", "batch_image_loss", "batch_text_loss", "batch_skipped",
                "epoch_loss", "epoch_skipped"):
        assert tag in scalars, sorted(scalars)
    assert len(scalars["batch_loss"]) == 3

    assert summary.summary["steps"] == 3 and summary.summary["examples_per_second"] > 0
    assert summary.summary["logs"]["loss"] == pytest.approx(
        summary.summary["logs"]["image_loss"] + 0.5 * summary.summary["logs"]["text_loss"],
        rel=1e-5)
    assert lines[-1].startswith("run summary: 3 steps in ")
    assert "examples/s after the first step; final" in lines[-1]
    assert "0 examples skipped {}" in lines[-1] and f"wrote tensorboard: {log_dir}" in lines[-1]


def test_snapshots_from_a_local_copy_draw_what_the_model_draws(tmp_path):
    # The multi-host path, on one host: the picture comes from a copy of the
    # model loaded with the run's weights at each picture step.
    pretrainer = tiny_pretrainer()
    set_random_weights(pretrainer, seed=3)
    fixed = tiny_batch(2, seed=7)
    direct = ReconstructionSnapshots(fixed, str(tmp_path / "direct"), png=False,
                                     tensorboard=False, chief=True, local_copy=False)
    copied = ReconstructionSnapshots(fixed, str(tmp_path / "copied"), tensorboard=False,
                                     chief=True, local_copy=True)
    for callback in (direct, copied):
        callback.set_model(pretrainer)
    np.testing.assert_allclose(copied.snapshot(1), direct.snapshot(1), atol=1e-6)
    # Later pictures follow the run's weights, not the copy's first ones.
    first = copied.snapshot(1)
    set_random_weights(pretrainer, seed=4)
    expected = direct.snapshot(2)
    assert np.abs(expected - first).max() > 1e-2
    np.testing.assert_allclose(copied.snapshot(2), expected, atol=1e-6)
    assert copied._copy is not pretrainer
    assert [os.path.basename(p) for p in copied.written] == [
        "step_00000001.png", "step_00000001.png", "step_00000002.png"]


def test_snapshots_number_pictures_from_a_step_restored_at_the_first_epoch(tmp_path):
    # `fit_resumable`'s checkpoint restores the optimizer step in
    # `on_epoch_begin`, after every `on_train_begin`: the hooks as `fit`
    # calls them, without the cost of a compiled step.
    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    pretrainer.optimizer.build(pretrainer.trainable_variables)
    snapshots = ReconstructionSnapshots(tiny_batch(1, seed=7), str(tmp_path), every_steps=5,
                                        tensorboard=False, chief=True)
    snapshots.set_model(pretrainer)
    snapshots.on_train_begin()
    pretrainer.optimizer.iterations.assign(5)  # restored 4, then one step
    snapshots.on_train_batch_end(0)
    snapshots.on_train_end()
    assert [os.path.basename(p) for p in snapshots.written] == ["step_00000005.png"]


@pytest.mark.backend_independent
def test_reconstruction_grid_rows_are_original_masked_reconstruction():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 8, 8, 3)).astype("float32")
    mask = np.zeros((3, 4), bool)
    mask[:, 1] = True  # the top-right 4x4 patch is masked
    result = {"images": images, "masked_images": images * 0, "reconstructions": images + 1,
              "image_mask": mask}
    grid = reconstruction_grid(result, max_rows=2)
    assert grid.shape == (16, 24, 3)
    np.testing.assert_allclose(grid[8:16, :8], to_pixels(images[1]))
    np.testing.assert_allclose(grid[:4, 8 + 4:16], 0.5)  # masked patch in grey
    np.testing.assert_allclose(grid[4:8, 8:16], to_pixels(images[0] * 0)[4:8])
    np.testing.assert_allclose(grid[:8, 16:], to_pixels(images[0] + 1))


@pytest.mark.backend_independent
def test_skip_count_logger_reports_every_reason_into_the_logs(tmp_path):
    from records import serialize_example
    from records import write_records

    def jpeg(value):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (value, value, value)).save(buffer, format="JPEG")
        return buffer.getvalue()

    garbage_body = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
    records = [serialize_example(jpg=jpeg(40), txt="fine"),
               serialize_example(jpg=garbage_body, txt="decoder fails"),
               serialize_example(jpg=b"", txt="no image"),
               serialize_example(jpg=jpeg(90), txt="")]
    path = write_records(tmp_path / "a.tfrecord", records)
    ds = data.image_text_dataset(path, image_size=8, max_text_length=4, batch_size=1,
                                 training=False)
    assert len(list(ds)) == 2
    lines = []
    logger = SkipCountLogger(ds.skip_counter, every_steps=2, print_fn=lines.append)
    step_logs, epoch_logs = {"loss": 1.0}, {"loss": 1.0}
    logger.on_train_batch_end(0, step_logs)
    assert lines == [] and step_logs["skipped"] == 2.0  # in the logs at every step
    logger.on_train_batch_end(1, {})
    logger.on_epoch_end(0, epoch_logs)
    assert epoch_logs["skipped"] == 2.0
    assert len(lines) == 1 and lines[0].startswith("data image_text[0/1] after step 2:")
    assert ("{'image_missing': 1, 'image_decode_error': 1, 'caption_empty': 1}"
            in lines[0])
