"""A save on preemption: SIGTERM or `request_preemption_save()` saves at that step and stops."""

import os
import signal
import time

import keras
import numpy as np
import pytest
from conftest import tiny_backbone
from test_resume import every_variable
from test_resume import run_pretrain
from test_resume import train
from test_resume import uninterrupted_run
from test_resume import write_shards

from keras_m3ae.training import PREEMPTED_EXIT_CODE
from keras_m3ae.training import Preempted
from keras_m3ae.training import request_preemption_save
from keras_m3ae.training.checkpoints import TERM_ENV
from keras_m3ae.training.resume import read_checkpoint_arrays
from keras_m3ae.training.resume import read_checkpoint_metadata


class AtStep(keras.callbacks.Callback):
    """Calls `action` at the beginning of the `step`-th training step it sees."""

    def __init__(self, step, action):
        super().__init__()
        self.step, self.action, self.seen = step, action, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            self.action()


def test_sigterm_and_the_programmatic_trigger_save_at_that_step_and_resume_exactly(tmp_path):
    pattern = write_shards(str(tmp_path / "data"))
    pretrainer, reference = uninterrupted_run(pattern, str(tmp_path / "reference"))

    out = str(tmp_path / "run")
    checkpoints = os.path.join(out, "checkpoint")
    handler = signal.getsignal(signal.SIGTERM)
    # A real SIGTERM during step 3 (periodic saves come every 2 steps): the
    # step completes, is saved, and `fit` stops.
    with pytest.raises(Preempted, match="checkpoint of step 3") as stopped:
        train(pattern, out, pretrainer, extra=[
            AtStep(3, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    assert stopped.value.step == 3 and stopped.value.directory == checkpoints
    assert read_checkpoint_metadata(checkpoints)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is handler  # put back
    # The programmatic trigger, during the second step of the resumed run (step 5).
    with pytest.raises(Preempted) as stopped:
        train(pattern, out, pretrainer, extra=[AtStep(2, request_preemption_save)])
    assert stopped.value.step == 5 and read_checkpoint_metadata(checkpoints)["step"] == 5
    train(pattern, out, pretrainer)
    resumed = [keras.ops.convert_to_numpy(v) for v in every_variable(pretrainer)]
    for a, b, variable in zip(reference, resumed, every_variable(pretrainer)):
        np.testing.assert_array_equal(a, b, err_msg=variable.path)
    log = open(os.path.join(out, "steps.jsonl")).read()
    assert log == open(os.path.join(tmp_path, "reference", "steps.jsonl")).read()


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="one backend is enough for the "
                    "command; the in-process test above covers all three")
def test_pretrain_command_saves_on_sigterm_exits_143_and_the_rerun_finishes_the_run(tmp_path):
    pattern = write_shards(str(tmp_path / "data"), num_files=2, per_file=9)
    preset = str(tmp_path / "tiny")
    tiny_backbone(vocabulary_size=30522, image_size=16, patch_size=8).save_to_preset(preset)
    common = ["--data", pattern, "--num_examples", "16", "--batch_size", "4", "--epochs", "2",
              "--preset", preset, "--decoder_hidden_dim", "16", "--decoder_num_layers", "1",
              "--decoder_num_heads", "2", "--warmup_epochs", "0.5", "--save_every_steps", "4",
              "--base_learning_rate", "0.5", "--snapshot_every_steps", "0"]
    reference = str(tmp_path / "reference")
    done = run_pretrain(common + ["--output_dir", reference])
    assert done.returncode == 0, done.stderr[-3000:]

    out = str(tmp_path / "run")
    began = time.monotonic()
    stopped = run_pretrain(common + ["--output_dir", out], env={TERM_ENV: "step:3"})
    assert stopped.returncode == PREEMPTED_EXIT_CODE == 143, stopped.stderr[-3000:]
    assert "Preempted: saved the checkpoint of step 3" in stopped.stdout
    assert read_checkpoint_metadata(os.path.join(out, "checkpoint"))["step"] == 3
    finished = run_pretrain(common + ["--output_dir", out])
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Resuming from " + os.path.join(out, "checkpoint") + ": step 3 (epoch 1)." \
        in finished.stderr
    expected = read_checkpoint_arrays(os.path.join(reference, "checkpoint"))
    got = read_checkpoint_arrays(os.path.join(out, "checkpoint"))
    assert sorted(expected) == sorted(got)
    for key in expected:
        np.testing.assert_array_equal(expected[key], got[key], err_msg=key)
    assert open(os.path.join(out, "steps.jsonl")).read() == \
        open(os.path.join(reference, "steps.jsonl")).read()
    print(f"preemption test: {time.monotonic() - began:.0f} s for the two runs")
