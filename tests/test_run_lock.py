"""One writer per run directory (`keras_m3ae.training.RunLock`)."""

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from keras_m3ae.training import RunLock
from keras_m3ae.training import RunLockError
from keras_m3ae.training.run_lock import lock_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dead_pid():
    """A pid that no process has: that of a child that exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.backend_independent
def test_second_lock_is_refused_naming_the_holder(tmp_path):
    directory = str(tmp_path / "run")
    with RunLock(directory) as held:
        assert os.path.exists(held.path) and held.path == str(tmp_path / ".run.lock")
        with pytest.raises(RunLockError) as refused:
            RunLock(directory).acquire()
        message = str(refused.value)
        assert f"process {os.getpid()} on host {socket.gethostname()!r}" in message
        assert "started 20" in message and f"delete {held.path}" in message
        # The refused one left the holder's lock alone.
        assert json.load(open(held.path))["token"] == held.token
    assert not os.path.exists(lock_path(directory))
    RunLock(directory).acquire().release()  # free again


@pytest.mark.backend_independent
def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    directory = str(tmp_path / "run")
    stale = {"host": socket.gethostname(), "pid": _dead_pid(), "started": "2020-01-01T00:00:00",
             "token": "0" * 32}
    with open(lock_path(directory), "w") as f:
        json.dump(stale, f)
    with caplog.at_level(logging.WARNING, "keras_m3ae.training"):
        lock = RunLock(directory).acquire()
    assert f"process {stale['pid']}" in caplog.text and "stale" in caplog.text
    assert json.load(open(lock.path))["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(lock.path)


@pytest.mark.backend_independent
def test_lock_of_another_host_is_never_taken_over(tmp_path):
    directory = str(tmp_path / "run")
    other = {"host": "other-machine", "pid": _dead_pid(), "started": "2020-01-01T00:00:00",
             "token": "1" * 32}
    with open(lock_path(directory), "w") as f:
        json.dump(other, f)
    with pytest.raises(RunLockError, match=f"process {other['pid']} on host 'other-machine'"):
        RunLock(directory).acquire()
    assert json.load(open(lock_path(directory))) == other


@pytest.mark.backend_independent
def test_release_leaves_a_lock_that_is_not_its_own(tmp_path):
    lock = RunLock(str(tmp_path / "run")).acquire()
    other = {"host": "h", "pid": 1, "started": "s", "token": "2" * 32}
    with open(lock.path, "w") as f:
        json.dump(other, f)
    lock.release()
    assert json.load(open(lock.path)) == other


@pytest.mark.backend_independent
def test_other_hosts_check_the_lock_process_0_took(tmp_path, monkeypatch):
    from keras_m3ae.training import run_lock

    directory = str(tmp_path / "run")
    token = "abcdef0123456789" * 2
    with open(lock_path(directory), "w") as f:
        json.dump({"host": "host-0", "pid": 7, "started": "s", "token": token}, f)
    shared = []
    monkeypatch.setattr(run_lock.hosts, "is_chief", lambda: False)
    monkeypatch.setattr(run_lock.hosts, "process_count", lambda: 2)
    monkeypatch.setattr(run_lock.hosts, "gather", lambda values: np.array([shared]))
    shared[:] = [int(token[:15], 16)]
    lock = RunLock(directory).acquire()  # process 0's token is in the file
    lock.release()
    assert os.path.exists(lock_path(directory))  # only process 0 removes it
    shared[:] = [int("f" * 15, 16)]  # process 0 took another lock than this file's
    with pytest.raises(RunLockError, match="process 7 on host 'host-0'"):
        RunLock(directory).acquire()
    shared[:] = [0]  # process 0 was refused
    with pytest.raises(RunLockError, match="Process 0 could not take the lock"):
        RunLock(directory).acquire()


# A tiny resumable run: writes its final weights; with a `wait` file it
# pauses after its first step until that file exists (the test starts the
# second run meanwhile).
_RUN = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import keras
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    from conftest import tiny_backbone, tiny_batch, tiny_pretrainer
    from keras_m3ae.training import TrainingCheckpoint, fit_resumable

    out, wait = sys.argv[1], sys.argv[2]
    keras.utils.set_random_seed(0)
    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    batch = tiny_batch(8)

    class Pause(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            deadline = time.time() + 300
            while step == 0 and not os.path.exists(wait) and time.time() < deadline:
                time.sleep(0.1)

    fit_resumable(pretrainer, batch, epochs=2, steps_per_epoch=2, batch_size=4,
                  checkpoint=TrainingCheckpoint(os.path.join(out, "checkpoint"), every_steps=2),
                  callbacks=[Pause()], verbose=0)
    np.savez(os.path.join(out, "weights.npz"),
             *[keras.ops.convert_to_numpy(v) for v in pretrainer.weights])
""")


@pytest.mark.slow  # three fresh processes (~1-5 minutes on a busy 2-core machine)
def test_two_runs_into_one_directory_one_is_refused_the_other_is_untouched(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_RUN.format(root=ROOT))
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")

    def start(out, wait):
        return subprocess.Popen([sys.executable, str(script), str(out), str(wait)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    shared, lone = tmp_path / "shared", tmp_path / "lone"
    go = tmp_path / "go"
    (tmp_path / "lone_go").write_text("")
    first = start(shared, go)
    alone = start(lone, tmp_path / "lone_go")  # the reference, in parallel
    lock = lock_path(str(shared / "checkpoint"))
    deadline = time.time() + 300
    while not os.path.exists(lock) and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert os.path.exists(lock), first.communicate()[0][-3000:]
    second = start(shared, go)
    refused = second.communicate(timeout=300)[0]
    go.write_text("")
    output = first.communicate(timeout=300)[0]
    assert alone.wait(timeout=300) == 0, alone.communicate()[0][-3000:]
    assert first.returncode == 0, output[-3000:]
    assert second.returncode != 0
    assert "RunLockError" in refused and f"process {first.pid} on host" in refused, refused[-3000:]
    assert not os.path.exists(lock)  # released at the end
    with np.load(shared / "weights.npz") as a, np.load(lone / "weights.npz") as b:
        assert len(a.files) == len(b.files) > 10
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
