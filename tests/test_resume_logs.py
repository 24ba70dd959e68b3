"""What a resumed run writes for people: one CSV row per epoch, one summary line."""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Crash
from conftest import CrashAt

from keras_m3ae.training import RunSummary
from keras_m3ae.training import TrainingCheckpoint
from keras_m3ae.training import fit_resumable
from keras_m3ae.training.resume import trim_csv_logs


def epochs_logged(path):
    with open(path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_a_run_resumed_mid_epoch_logs_each_epoch_once_and_prints_one_summary(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    features = np.arange(12, dtype="float32").reshape(4, 3) / 10
    ds = tf.data.Dataset.from_tensor_slices((features, features[:, :1])).batch(2).repeat()
    log = str(tmp_path / "log.csv")

    def run(crash_at=None):
        lines = []
        callbacks = [keras.callbacks.CSVLogger(log, append=True),
                     RunSummary(batch_size=2, print_fn=lines.append, chief=True)]
        if crash_at:
            callbacks.insert(0, CrashAt(crash_at))
        checkpoint = TrainingCheckpoint(str(tmp_path / "checkpoint"), every_steps=2)
        fit_resumable(model, ds, epochs=3, steps_per_epoch=3, checkpoint=checkpoint,
                      callbacks=callbacks, verbose=0)
        return lines

    # Killed at step 4: epoch 0 (steps 1-3) has its row, the last save is
    # step 2, so the rerun redoes step 3 and ends epoch 0 again.
    with pytest.raises(Crash):
        run(crash_at=4)
    assert epochs_logged(log) == [0]
    lines = run()
    assert epochs_logged(log) == [0, 1, 2]
    # Two fits (the rest of epoch 0, then epochs 1-2), one line for both.
    assert len(lines) == 1 and lines[0].startswith("run summary: 7 steps in "), lines


def test_a_summary_held_for_a_next_fit_is_printed_when_the_run_stops_instead():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    lines = []
    summary = RunSummary(print_fn=lines.append, chief=True)
    summary.continue_in_next_fit()
    x = np.ones((4, 2), "float32")
    model.fit(x, x[:, :1], batch_size=2, epochs=1, verbose=0, callbacks=[summary])
    assert lines == []
    summary.end_run()
    assert len(lines) == 1 and lines[0].startswith("run summary: 2 steps in ")
    # Not held: the next fit starts its own count and prints at its end.
    model.fit(x, x[:, :1], batch_size=1, epochs=1, verbose=0, callbacks=[summary])
    assert len(lines) == 2 and lines[1].startswith("run summary: 4 steps in ")


@pytest.mark.backend_independent
def test_trimming_keeps_the_header_and_the_epochs_before_the_resumed_one(tmp_path):
    path = str(tmp_path / "log.csv")
    with open(path, "w") as f:
        f.write("epoch;loss\n0;1.5\n1;1.2\n2;1.1\n1;1.25\n")
    other = str(tmp_path / "other.csv")
    with open(other, "w") as f:
        f.write("epoch,loss\n0,1.5\n1,1.2\n")
    trim_csv_logs([keras.callbacks.CSVLogger(path, separator=";", append=True),
                   # Not appending: it rewrites its file anyway; left alone.
                   keras.callbacks.CSVLogger(other, append=False)], first_epoch=1)
    assert open(path).read() == "epoch;loss\n0;1.5\n"
    assert open(other).read() == "epoch,loss\n0,1.5\n1,1.2\n"
    assert not os.path.exists(path + ".tmp")
