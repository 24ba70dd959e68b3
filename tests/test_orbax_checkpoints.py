"""Orbax checkpoints: damaged steps reported and skipped, old formats refused, runs on `ram://`."""

import json
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Crash
from conftest import tiny_pretrainer
from test_resume import every_variable
from test_resume import train
from test_resume import uninterrupted_run
from test_resume import write_shards

import keras_m3ae
from keras_m3ae.training import TrainingCheckpoint
from keras_m3ae.training import paths
from keras_m3ae.training.resume import read_checkpoint_metadata


def saved_steps(directory, pretrainer, steps):
    """Checkpoints of `steps`, variable 0 holding the step number; returns that variable."""
    variable = pretrainer.variables[0]
    checkpoint = TrainingCheckpoint(directory, max_to_keep=None)
    checkpoint.set_model(pretrainer)
    for step in steps:
        variable.assign(np.full(variable.shape, step, "float32"))
        checkpoint.step = step
        checkpoint.save()
    checkpoint.close()
    return variable


def restored_value(directory, pretrainer, variable):
    checkpoint = TrainingCheckpoint(directory)
    checkpoint.set_model(pretrainer)
    meta = checkpoint.load()
    checkpoint.on_epoch_begin(0)
    checkpoint.close()
    return meta, float(keras.ops.convert_to_numpy(variable).flat[0])


@pytest.mark.backend_independent
def test_a_damaged_checkpoint_is_reported_by_name_and_the_previous_good_one_is_used(
        tmp_path, caplog):
    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer="adam")
    directory = str(tmp_path / "checkpoint")
    variable = saved_steps(directory, pretrainer, [3, 5, 7])
    assert sorted(os.listdir(directory)) == ["3", "5", "7"]

    # One bit flipped in step 7's metadata: "step": 7 becomes "step": 6.
    metadata = os.path.join(directory, "7", "meta", "metadata")
    text = open(metadata, "rb").read()
    at = text.index(b'"step": 7')
    flipped = text[:at + 8] + bytes([text[at + 8] ^ 1]) + text[at + 9:]
    assert flipped != text and b'"step": 6' in flipped
    open(metadata, "wb").write(flipped)
    with caplog.at_level(logging.WARNING, "keras_m3ae.training"):
        meta, value = restored_value(directory, pretrainer, variable)
    assert meta["step"] == 5 and value == 5.0
    messages = caplog.text
    assert f"Checkpoint step 7 in {directory} is damaged: its metadata does not match its " \
           "SHA-256" in messages
    assert "Using the previous good checkpoint, step 5" in messages
    # Moved aside, so the resumed run can write its step 7 again.
    assert sorted(os.listdir(directory)) == ["3", "5", "damaged_step_7"]

    # Step 5's metadata deleted: reported, step 3 used.
    os.remove(os.path.join(directory, "5", "meta", "metadata"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, "keras_m3ae.training"):
        meta, value = restored_value(directory, pretrainer, variable)
    assert meta["step"] == 3 and value == 3.0
    assert "Checkpoint step 5" in caplog.text and "cannot be read" in caplog.text
    assert "Using the previous good checkpoint, step 3" in caplog.text

    # Nothing good left: said so, and the run starts over.
    metadata = os.path.join(directory, "3", "meta", "metadata")
    open(metadata, "w").write("{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, "keras_m3ae.training"):
        assert TrainingCheckpoint(directory).load() is None
    assert "Checkpoint step 3" in caplog.text and "No good checkpoint left" in caplog.text
    assert sorted(os.listdir(directory)) == ["damaged_step_3", "damaged_step_5",
                                             "damaged_step_7"]


@pytest.mark.backend_independent
def test_a_checkpoint_of_the_earlier_format_is_refused_with_a_clear_error(tmp_path):
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    (directory / "manifest.json").write_text(json.dumps({"format": 1, "step": 4}))
    (directory / "state.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="earlier version.*manifest.json"):
        TrainingCheckpoint(str(directory)).load()


def test_a_run_on_ram_urls_writes_everything_there_and_resumes_from_there(tmp_path):
    # TensorFlow's in-memory file system: a non-local `tf.io.gfile` URL that
    # works offline (it lives as long as this process). Orbax's arrays go
    # through a local staging copy there (only local paths and gs:// are
    # native to it); presets, logs, TensorBoard and pictures go to ram://.
    pattern = write_shards(str(tmp_path / "data"))
    pretrainer, reference = uninterrupted_run(pattern, str(tmp_path / "reference"))

    out = f"ram://{tmp_path.name}/run"
    batch = {"images": np.zeros((2, 16, 16, 3), "float32"),
             "token_ids": np.ones((2, 8), "int32"), "padding_mask": np.ones((2, 8), bool)}
    extra = [keras_m3ae.training.SavePreset(pretrainer.backbone, f"{out}/preset"),
             keras_m3ae.training.TensorBoardScalars(f"{out}/tensorboard", every_steps=1),
             keras_m3ae.analysis.ReconstructionSnapshots(batch, f"{out}/tensorboard",
                                                         every_steps=2)]
    with pytest.raises(Crash):
        train(pattern, out, pretrainer, crash_at=4, extra=extra)
    gfile = tf.io.gfile
    assert read_checkpoint_metadata(f"{out}/checkpoint")["step"] == 2
    assert not os.path.exists("ram:")  # nothing landed in a local folder named after the URL
    train(pattern, out, pretrainer, extra=extra)
    resumed = [keras.ops.convert_to_numpy(v) for v in every_variable(pretrainer)]
    for a, b in zip(reference, resumed):
        np.testing.assert_array_equal(a, b)
    with gfile.GFile(f"{out}/steps.jsonl") as f:
        log = f.read()
    assert log == open(tmp_path / "reference" / "steps.jsonl").read()
    assert [json.loads(line)["step"] for line in log.splitlines()] == list(range(1, 7))
    assert read_checkpoint_metadata(f"{out}/checkpoint")["step"] == 6
    assert sorted(name.rstrip("/") for name in gfile.listdir(f"{out}/checkpoint")) == ["4", "6"]
    assert gfile.exists(f"{out}/preset/model.weights.h5")
    # Loaded from a local copy: keras-hub's `from_preset` caches what it
    # downloads from a URL by file name, so a second load in this process
    # would return the first download.
    paths.copy_tree(f"{out}/preset", str(tmp_path / "preset_copy"))
    weights = keras_m3ae.M3AEBackbone.from_preset(str(tmp_path / "preset_copy")).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(weights, pretrainer.backbone.get_weights()))
    events = gfile.listdir(f"{out}/tensorboard/train")
    assert len(events) >= 1 and gfile.stat(f"{out}/tensorboard/train/{events[0]}").length > 0
    pictures = gfile.listdir(f"{out}/tensorboard/reconstructions")
    assert {"step_00000002.png", "step_00000006.png"} <= set(pictures)
