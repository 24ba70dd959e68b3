"""Exact resumption: data positions, `TrainingCheckpoint`, `fit_resumable`, the pretrain command killed."""

import io
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from records import serialize_example
from records import write_records

from conftest import Crash
from conftest import CrashAt
from conftest import tiny_backbone
from conftest import tiny_pretrainer
import keras_m3ae
from keras_m3ae import data
from keras_m3ae.data.positions import DataPosition
from keras_m3ae.training import NonFiniteLossGuard
from keras_m3ae.training import TrainingCheckpoint
from keras_m3ae.training import fit_resumable
from keras_m3ae.training.checkpoints import KILL_ENV
from keras_m3ae.training.checkpoints import TERM_ENV
from keras_m3ae.training.resume import read_checkpoint_arrays
from keras_m3ae.training.resume import read_checkpoint_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jpeg(value, size=20):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value % 256, (255 - value) % 256, (3 * value) % 256)).save(
        buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(directory, num_files=3, per_file=7):
    """Shards with one undecodable record each (dropped after decoding)."""
    os.makedirs(directory, exist_ok=True)
    for f in range(num_files):
        records = [serialize_example(jpg=jpeg(10 * f + i), txt=f"caption {f} {i}")
                   for i in range(per_file)]
        records.insert(3, serialize_example(jpg=b"not an image", txt="broken"))
        write_records(os.path.join(directory, f"{f:05d}.tfrecord"), records)
    return os.path.join(directory, "*.tfrecord")


def stream(pattern, position, image_size=16, batch_size=4):
    return data.image_text_dataset(pattern, image_size=image_size, max_text_length=8,
                                   batch_size=batch_size, repeat=True, seed=3, shuffle_buffer=5,
                                   position=position)


@pytest.mark.backend_independent
def test_a_restarted_stream_continues_with_exactly_the_next_batches(tmp_path):
    pattern = write_shards(str(tmp_path / "data"))
    position = DataPosition(capacity=256)
    ds = stream(pattern, position)
    first = [b["images"].numpy() for b, _ in zip(ds, range(10))]
    # A second iterator reads the same stream (a seeded reshuffle would not).
    again = [b["images"].numpy() for b, _ in zip(ds, range(10))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    iterator = iter(ds)
    for _ in range(4):
        next(iterator)  # the iterator reads ahead of these 4 batches
    state = position.state(4)
    # 16 examples from 16 good records and the broken ones between them.
    assert state["examples"] == 16 and 17 <= state["raw_records"] <= 19
    fresh = DataPosition(capacity=256)
    fresh.set(state)
    resumed = [b["images"].numpy() for b, _ in zip(stream(pattern, fresh), range(6))]
    assert all(np.array_equal(a, b) for a, b in zip(first[4:], resumed))
    # A ledger too small for the read-ahead says so instead of guessing.
    small = DataPosition(capacity=2)
    iterator = iter(stream(pattern, small))
    for _ in range(3):
        next(iterator)
    with pytest.raises(RuntimeError, match="capacity=2"):
        small.state(1)
    with pytest.raises(ValueError, match="repeat=True"):
        data.image_text_dataset(pattern, image_size=16, batch_size=4, position=DataPosition())


def train(pattern, out, pretrainer, epochs=2, steps_per_epoch=3, crash_at=None, extra=()):
    position = DataPosition(capacity=256)
    ds = stream(pattern, position)
    checkpoint = TrainingCheckpoint(os.path.join(out, "checkpoint"), every_steps=2,
                                    positions=[position], skip_counters=[ds.skip_counter],
                                    config={"batch_size": 4},
                                    log_path=os.path.join(out, "steps.jsonl"))
    callbacks = [NonFiniteLossGuard()] + ([CrashAt(crash_at)] if crash_at else []) + list(extra)
    fit_resumable(pretrainer, ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                  checkpoint=checkpoint, callbacks=callbacks, verbose=0)
    return checkpoint


def every_variable(model):
    return model.variables + model.optimizer.variables + model.metrics_variables


def uninterrupted_run(pattern, out):
    """A tiny pretrainer trained without interruption into `out`, then put back to its start.

    One model serves every run of a test (one compilation): its whole state
    is restored between the uninterrupted run and the interrupted one.

    Returns:
        `(pretrainer, reference)`: the model at its start, and every variable's
        value (`every_variable`) after the uninterrupted run.
    """
    pretrainer = tiny_pretrainer(tiny_backbone(vocabulary_size=30522))
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    pretrainer.optimizer.build(pretrainer.trainable_variables)
    start = [keras.ops.convert_to_numpy(v) for v in every_variable(pretrainer)]
    train(pattern, out, pretrainer)
    reference = [keras.ops.convert_to_numpy(v) for v in every_variable(pretrainer)]
    for variable, value in zip(every_variable(pretrainer), start):
        variable.assign(value)
    return pretrainer, reference


def test_fit_resumable_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    pattern = write_shards(str(tmp_path / "data"))
    pretrainer, reference = uninterrupted_run(pattern, str(tmp_path / "reference"))

    # Crashes during step 4 (epoch 2, batch 1): the last checkpoint is the
    # one of step 2, mid-epoch, and step 3 is in the log but not saved; the
    # restore must undo step 3 in the weights, the optimizer, the masking
    # seed and the metrics, and the data must continue after batch 2.
    out = str(tmp_path / "run")
    with pytest.raises(Crash):
        train(pattern, out, pretrainer, crash_at=4)
    manifest = read_checkpoint_metadata(os.path.join(out, "checkpoint"))
    assert manifest["step"] == 2 and manifest["positions"][0][0]["examples"] == 8
    assert manifest["skip_counts"][0][0]["image_not_decodable"] >= 1
    checkpoint = train(pattern, out, pretrainer)
    assert checkpoint.step == 6
    resumed = [keras.ops.convert_to_numpy(v) for v in every_variable(pretrainer)]
    assert len(resumed) == len(reference)
    for a, b, variable in zip(reference, resumed, every_variable(pretrainer)):
        np.testing.assert_array_equal(a, b, err_msg=variable.path)
    assert int(keras.ops.convert_to_numpy(pretrainer.optimizer.iterations)) == 6
    log = open(os.path.join(out, "steps.jsonl")).read()
    assert log == open(os.path.join(tmp_path, "reference", "steps.jsonl")).read()
    assert [json.loads(line)["step"] for line in log.splitlines()] == list(range(1, 7))
    # A changed setting is refused rather than resumed into a different run.
    with pytest.raises(ValueError, match="batch_size: 4 then, 8 now"):
        TrainingCheckpoint(os.path.join(out, "checkpoint"), positions=[DataPosition()],
                           config={"batch_size": 8}).load()


def run_pretrain(args, kill=None, timeout=600, env=None):
    extra = env or {}
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), PYTHONPATH=ROOT,
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop(KILL_ENV, None)
    env.pop(TERM_ENV, None)
    env.update(extra)
    if kill:
        env[KILL_ENV] = kill
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", "pretrain.py")] + args,
                          env=env, capture_output=True, text=True, timeout=timeout)


def final_state(out):
    return read_checkpoint_arrays(os.path.join(out, "checkpoint"))


@pytest.mark.slow
def test_pretrain_command_killed_at_any_moment_finishes_like_an_uninterrupted_run(tmp_path):
    pattern = write_shards(str(tmp_path / "data"), num_files=2, per_file=9)
    preset = str(tmp_path / "tiny")
    tiny_backbone(vocabulary_size=30522, image_size=16, patch_size=8).save_to_preset(preset)
    common = ["--data", pattern, "--num_examples", "16", "--batch_size", "4", "--epochs", "2",
              "--preset", preset, "--decoder_hidden_dim", "16", "--decoder_num_layers", "1",
              "--decoder_num_heads", "2", "--warmup_epochs", "0.5", "--save_every_steps", "3",
              "--base_learning_rate", "0.5"]
    reference = str(tmp_path / "reference")
    done = run_pretrain(common + ["--output_dir", reference])
    assert done.returncode == 0, done.stderr[-3000:]

    out = str(tmp_path / "run")
    # 8 steps, checkpoints after steps 3 and 6, presets after steps 4 and 8.
    # Each kill below comes before the checkpoint of step 6 is complete
    # (Orbax commits a step once its asynchronous write is done), so every
    # restart goes back to step 3.
    kills = [
        "step:5",  # during step 5
        "write:preset:1",  # writing the preset of epoch 1 (after step 4 of the resumed run)
        "write:checkpoint:1",  # just after the write of step 6's checkpoint started
        "swap:preset:1",  # between the two renames of the preset's swap
    ]
    for kill in kills:
        killed = run_pretrain(common + ["--output_dir", out], kill=kill)
        assert killed.returncode == -signal.SIGKILL, (kill, killed.stderr[-3000:])
        # The last good checkpoint is loadable at every moment.
        manifest = read_checkpoint_metadata(os.path.join(out, "checkpoint"))
        assert manifest is None or manifest["step"] == 3, (kill, manifest)
    finished = run_pretrain(common + ["--output_dir", out])
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Resuming from" in finished.stderr

    expected, got = final_state(reference), final_state(out)
    assert sorted(expected) == sorted(got)
    for key in expected:
        np.testing.assert_array_equal(expected[key], got[key], err_msg=key)
    log = open(os.path.join(out, "steps.jsonl")).read()
    assert log == open(os.path.join(reference, "steps.jsonl")).read()
    assert len(log.splitlines()) == 8
    a = keras_m3ae.M3AEBackbone.from_preset(os.path.join(reference, "preset")).get_weights()
    b = keras_m3ae.M3AEBackbone.from_preset(os.path.join(out, "preset")).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(os.listdir(out)) == sorted(os.listdir(reference))  # no leftovers


@pytest.mark.backend_independent
def test_checkpoints_are_verified_never_non_finite_and_half_writes_are_ignored(tmp_path):
    from keras_m3ae.training import hosts

    assert hosts.multi_host_requested(None, {"KERAS_DISTRIBUTION_NUM_PROCESSES": "2"})
    assert not hosts.multi_host_requested(None, {})
    assert hosts.multi_host_requested(True, {}) and not hosts.multi_host_requested(False, {})
    np.testing.assert_array_equal(hosts.gather([3, 2**40]), [[3, 2**40]])

    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer="adam")
    directory = str(tmp_path / "checkpoint")
    checkpoint = TrainingCheckpoint(directory)
    checkpoint.set_model(pretrainer)
    checkpoint.step = 5
    checkpoint.save()
    variable = pretrainer.backbone.encoder.blocks[0].weights[0]
    good = keras.ops.convert_to_numpy(variable)
    variable.assign(np.full(variable.shape, np.inf, "float32"))
    checkpoint.step = 6
    with pytest.raises(ValueError, match=f"step 6: {variable.path} is not finite.*kept"):
        checkpoint.save()
    checkpoint.close()
    assert sorted(os.listdir(directory)) == ["5"]
    # A write killed half-way leaves Orbax's temporary directory: ignored and cleared.
    os.makedirs(os.path.join(directory, "6.orbax-checkpoint-tmp", "state"))
    assert TrainingCheckpoint(directory).load()["step"] == 5
    assert sorted(os.listdir(directory)) == ["5"]
    # The restore puts the saved value back.
    resumed = TrainingCheckpoint(directory)
    resumed.set_model(pretrainer)
    resumed.load()
    resumed.on_epoch_begin(0)
    resumed.close()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), good)
    np.testing.assert_array_equal(read_checkpoint_arrays(directory)["model/0"],
                                  keras.ops.convert_to_numpy(pretrainer.variables[0]))
