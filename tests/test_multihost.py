"""Two JAX processes on this machine: keras.distribution.initialize, per-host data, DataParallel.

`tests/multihost_check.py` holds the workers; this test writes their data,
starts both with a free localhost port for the coordinator, runs the
single-device reference in the pytest process meanwhile, and compares. JAX
only (it runs in the jax pass; the other backends skip it).
"""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import multihost_check as mh
from keras_m3ae.training.resume import read_checkpoint_arrays
from keras_m3ae.training.resume import read_checkpoint_metadata

jax_only = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution.initialize is exercised on the JAX backend",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds for both workers. A two-host pretraining run with Orbax checkpoints
# took 328 s on the loaded 2-core machine (load average ~18).
TIMEOUT = 900


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs, logs):
    """Kills the processes still running, waits for all, closes their logs."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    for log in logs:
        log.close()


def run_workers(tmp_path, data_dir):
    """Starts both workers, runs the reference meanwhile; returns (results, reference)."""
    port = free_port()
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    procs, logs = [], []
    for i in range(mh.NUM_PROCESSES):
        log = open(tmp_path / f"worker{i}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "multihost_check.py"), "worker",
             "--port", str(port), "--process_id", str(i), "--data", str(data_dir),
             "--out", str(tmp_path / f"worker{i}.json"),
             "--weights", str(tmp_path / f"worker{i}.npz")],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        ))
    deadline = time.monotonic() + TIMEOUT
    try:
        reference = mh.reference(str(data_dir))
        # Stop waiting as soon as one worker fails: the other would wait for
        # it at the next collective until the timeout.
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.returncode for p in procs):
                break
            time.sleep(0.2)
    finally:
        stop(procs, logs)
    for i, p in enumerate(procs):
        tail = (tmp_path / f"worker{i}.log").read_text()[-4000:]
        assert p.returncode == 0, f"worker {i} exited with {p.returncode}:\n{tail}"
    results = [json.loads((tmp_path / f"worker{i}.json").read_text())
               for i in range(mh.NUM_PROCESSES)]
    weights = [np.load(tmp_path / f"worker{i}.npz") for i in range(mh.NUM_PROCESSES)]
    return results, weights, reference


@pytest.mark.multidevice
@jax_only
def test_two_processes_shard_data_and_train_like_one_device(tmp_path):
    data_dir = tmp_path / "data"
    mh.write_data(str(data_dir))
    start = time.monotonic()
    results, worker_weights, (reference, initial, final) = run_workers(tmp_path, data_dir)
    print(f"multihost: {time.monotonic() - start:.1f} s; worker stages (s since start):",
          [r["times"] for r in results])
    r0, r1 = results

    # initialize: one 2-process job with 4 global devices, 2 per process.
    for i, r in enumerate(results):
        assert r["process_count"] == r["keras_num_processes"] == 2
        assert r["process_index"] == i
        assert len(r["devices"]) == 4 and r["devices"] == r0["devices"]
        assert len(r["local_devices"]) == 2
    assert sorted(r0["local_devices"] + r1["local_devices"]) == sorted(r0["devices"])
    # initialize() agreed on one random seed through a cross-process psum.
    assert r0["agreed_seed"] is not None and r0["agreed_seed"] == r1["agreed_seed"]

    # The pipeline's default sharding is (process_index, process_count):
    # every other file, and every record exactly once over both hosts.
    assert r0["default_shard"] == [0, 2] and r1["default_shard"] == [1, 2]
    assert r0["files"] == ["00000.tfrecord", "00002.tfrecord"]
    assert r1["files"] == ["00001.tfrecord", "00003.tfrecord"]
    seen = [[k for b in r["batches"] for k in b] for r in results]
    num_records = mh.NUM_FILES * mh.RECORDS_PER_FILE
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(num_records))
    assert all(len(b) == mh.PER_HOST_BATCH for r in results for b in r["batches"])
    assert len(r0["batches"]) == len(r1["batches"])  # equal step counts, or a host hangs

    # Keras's DataParallel takes a dataset for the global one: with its
    # default auto_shard_dataset=True it rebatches this host's batches to
    # half and keeps every other piece, so half the records are never seen.
    # auto_shard_dataset=False passes the per-host dataset through.
    for i, r in enumerate(results):
        assert r["distribute_dataset_auto_shard_False"] == r["batches"]
        half = mh.PER_HOST_BATCH // 2
        assert r["distribute_dataset_auto_shard_True"] == [
            b[i * half:(i + 1) * half] for b in r["batches"]]
        # ... and an evaluation pipeline keeping its remainder has no static
        # batch size, which auto-sharding refuses.
        assert "batch size" in r["auto_shard_unknown_batch_error"]
    # The other way round: every host reads all files in global batches, and
    # auto-sharding gives each host its half of every global batch.
    split = [r["distribute_dataset_global"] for r in results]
    assert all(len(b) == mh.PER_HOST_BATCH for s in split for b in s)
    assert len(split[0]) == len(split[1]) == num_records // mh.GLOBAL_BATCH
    assert sorted(k for s in split for b in s for k in b) == list(range(num_records))

    # Each global batch is host 0's batch then host 1's: process 0's devices
    # hold rows 0-3, process 1's rows 4-7.
    assert r0["global_rows"] == [[0, 2], [2, 4]] and r1["global_rows"] == [[4, 6], [6, 8]]
    assert reference["global_batches"] == [b0 + b1 for b0, b1 in
                                           zip(r0["batches"], r1["batches"])]

    # Training: same start, same per-step logs as one device on the global
    # batches, replicas identical, weights equal to the reference's.
    assert r0["initial_checksum"] == pytest.approx(reference["initial_checksum"], rel=1e-9)
    assert r1["initial_checksum"] == pytest.approx(reference["initial_checksum"], rel=1e-9)
    assert r0["variables_replicated"] and r1["variables_replicated"]
    assert r0["logs"] == r1["logs"]
    steps = len(reference["logs"])
    assert steps == len(r0["batches"]) == len(r0["logs"])
    for key in ("loss", "image_loss", "text_loss"):
        np.testing.assert_allclose([s[key] for s in r0["logs"]],
                                   [s[key] for s in reference["logs"]], rtol=1e-5, err_msg=key)
    assert reference["logs"][-1]["loss"] < reference["logs"][0]["loss"]
    w0 = [worker_weights[0][f"final_{i}"] for i in range(len(final))]
    w1 = [worker_weights[1][f"final_{i}"] for i in range(len(final))]
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    assert max(np.linalg.norm(f - i) / np.linalg.norm(f) for f, i in zip(final, initial)) > 1e-2
    distance = max(np.linalg.norm(w - f) / max(np.linalg.norm(f), 1e-12) for w, f in zip(w0, final))
    assert distance < 1e-5, distance
    # The update itself agrees to 0.1 %, not just the (large) weights.
    update = max(np.linalg.norm(w - f) / max(np.linalg.norm(f - i), 1e-12)
                 for w, f, i in zip(w0, final, initial))
    assert update < 1e-3, update
    print(f"multihost: weights {distance:.1e}, update {update:.1e} relative to one device")


def run_pretrain_hosts(data_pattern, out, log_dir, kill=None, extra=(), term=None):
    """`examples/pretrain.py` as two hosts; returns their exit codes.

    When one host dies (a kill), the other would wait for it at the next
    collective: it is stopped a few seconds later. `term`: `(process,
    "step:N")` sends that process a SIGTERM at the beginning of its N-th step.
    """
    port = free_port()
    procs, logs = [], []
    for i in range(mh.NUM_PROCESSES):
        env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={mh.LOCAL_DEVICES}",
                   KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES=str(mh.NUM_PROCESSES),
                   KERAS_DISTRIBUTION_PROCESS_ID=str(i))
        env.pop("KERAS_M3AE_TEST_KILL", None)
        env.pop("KERAS_M3AE_TEST_TERM", None)
        if kill:
            env["KERAS_M3AE_TEST_KILL"] = kill
        if term and term[0] == i:
            env["KERAS_M3AE_TEST_TERM"] = term[1]
        log = open(os.path.join(log_dir, f"pretrain{i}.log"), "a")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "examples", "pretrain.py"), "--data", data_pattern,
             "--output_dir", out, *extra], stdout=log, stderr=subprocess.STDOUT, env=env))
    deadline = time.monotonic() + TIMEOUT
    first_exit = None
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if first_exit is None and any(p.poll() is not None for p in procs):
                first_exit = time.monotonic()
            if first_exit is not None and time.monotonic() > first_exit + 20:
                break
            time.sleep(0.2)
    finally:
        stop(procs, logs)
    return [p.returncode for p in procs]


def two_host_run_setup(tmp_path, save_every_steps, snapshot_every_steps, distribution=None):
    """Data, a tiny preset and `examples/pretrain.py`'s arguments for two hosts.

    4 files, 24 records: 3 global steps of 8 per epoch, 2 epochs; each host
    reads its 2 files, 4 records per step.
    """
    import keras_m3ae

    data_dir = tmp_path / "data"
    mh.write_data(str(data_dir))
    preset = str(tmp_path / "tiny")
    # The command tokenizes with bert-base-uncased: its vocabulary size.
    keras_m3ae.M3AEBackbone(image_size=mh.IMAGE_SIZE, patch_size=4, vocabulary_size=30522,
                            max_text_length=mh.TEXT, hidden_dim=32, num_layers=1,
                            num_heads=4).save_to_preset(preset)
    args = ["--preset", preset, "--num_examples", "24", "--batch_size", "8", "--epochs", "2",
            "--decoder_hidden_dim", "16", "--decoder_num_layers", "1",
            "--decoder_num_heads", "2", "--warmup_epochs", "0.5",
            "--save_every_steps", str(save_every_steps), "--base_learning_rate", "0.5",
            "--snapshot_every_steps", str(snapshot_every_steps)]
    if distribution:
        args += ["--distribution", distribution]
    return str(data_dir / "*.tfrecord"), args


def assert_same_run(reference, out):
    """The two runs' final checkpoints and per-step logs are identical."""
    a = read_checkpoint_arrays(os.path.join(reference, "checkpoint"))
    b = read_checkpoint_arrays(os.path.join(out, "checkpoint"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    log = open(os.path.join(out, "steps.jsonl")).read()
    assert log == open(os.path.join(reference, "steps.jsonl")).read()
    return a, log


@pytest.mark.slow
@pytest.mark.multidevice
@jax_only
def test_two_host_pretraining_killed_and_rerun_finishes_like_an_uninterrupted_run(tmp_path):
    pattern, args = two_host_run_setup(tmp_path, save_every_steps=2, snapshot_every_steps=3)
    reference = str(tmp_path / "reference")
    logs = str(tmp_path)
    codes = run_pretrain_hosts(pattern, reference, logs, extra=args)
    assert codes == [0, 0], (codes, open(tmp_path / "pretrain0.log").read()[-3000:])
    out = str(tmp_path / "run")
    codes = run_pretrain_hosts(pattern, out, logs, kill="step:4", extra=args)
    assert -9 in codes, codes
    manifest = read_checkpoint_metadata(os.path.join(out, "checkpoint"))
    # Saved after step 2, with both hosts' positions: 8 of each host's
    # records (no record is broken here).
    assert manifest["step"] == 2
    assert manifest["positions"] == [[{"raw_records": 8, "examples": 8}]] * 2
    codes = run_pretrain_hosts(pattern, out, logs, extra=args)
    assert codes == [0, 0], (codes, open(tmp_path / "pretrain1.log").read()[-3000:])

    _, log = assert_same_run(reference, out)
    assert len(log.splitlines()) == 6
    # Only process 0 wrote: one log, one preset, no per-host leftovers.
    assert sorted(os.listdir(out)) == ["checkpoint", "log.csv", "preset", "steps.jsonl",
                                       "tensorboard"]
    # Pictures on several hosts, by process 0 (every host read the weights),
    # at steps 3 and 6 (and the weights above are equal with them); the
    # killed and rerun run numbers them from the restored step.
    pictures = sorted(os.listdir(os.path.join(reference, "tensorboard", "reconstructions")))
    assert pictures == ["step_00000003.png", "step_00000006.png"]
    assert sorted(os.listdir(os.path.join(out, "tensorboard", "reconstructions"))) == pictures
    from PIL import Image

    grid = np.asarray(Image.open(os.path.join(reference, "tensorboard", "reconstructions",
                                              pictures[-1])))
    # 4 rows (max_rows) of original | masked | reconstruction, not blank.
    assert grid.shape == (4 * mh.IMAGE_SIZE, 3 * mh.IMAGE_SIZE, 3) and grid.std() > 0


@pytest.mark.slow
@pytest.mark.multidevice
@jax_only
def test_two_hosts_save_at_the_same_step_on_sigterm_to_one_and_resume_exactly(tmp_path):
    # `--distribution model`: a (2, 2) mesh ("batch", "model") over both
    # hosts' devices, kernels split over the hosts, so no host holds the
    # whole model: each writes its own shards of the checkpoint, and the
    # preset and the pictures read the weights with every host. 6 steps;
    # periodic saves every 4, pictures every 3.
    pattern, args = two_host_run_setup(tmp_path, save_every_steps=4, snapshot_every_steps=3,
                                       distribution="model")
    reference = str(tmp_path / "reference")
    codes = run_pretrain_hosts(pattern, reference, str(tmp_path), extra=args)
    assert codes == [0, 0], (codes, open(tmp_path / "pretrain0.log").read()[-3000:])
    out = str(tmp_path / "run")
    # SIGTERM to host 1 alone, during step 2: both hosts save step 2 and exit with 143.
    began = time.monotonic()
    codes = run_pretrain_hosts(pattern, out, str(tmp_path), extra=args, term=(1, "step:2"))
    assert codes == [143, 143], (codes, open(tmp_path / "pretrain1.log").read()[-3000:])
    print(f"preempted two-host run: {time.monotonic() - began:.0f} s")
    manifest = read_checkpoint_metadata(os.path.join(out, "checkpoint"))
    assert manifest["step"] == 2
    assert manifest["positions"] == [[{"raw_records": 8, "examples": 8}]] * 2
    log0 = open(tmp_path / "pretrain0.log").read()
    assert "Preempted: saved the checkpoint of step 2" in log0
    codes = run_pretrain_hosts(pattern, out, str(tmp_path), extra=args)
    assert codes == [0, 0], (codes, open(tmp_path / "pretrain0.log").read()[-3000:])
    assert "step 2 (epoch 1)." in open(tmp_path / "pretrain0.log").read()
    arrays, _ = assert_same_run(reference, out)
    # The weights were sharded over the hosts; the preset holds all of them,
    # equal to the final checkpoint's encoder.
    import keras_m3ae

    trained = keras_m3ae.M3AEBackbone.from_preset(os.path.join(out, "preset"))
    initial = keras_m3ae.M3AEBackbone.from_preset(str(tmp_path / "tiny"))
    by_shape = {}
    for value in arrays.values():
        by_shape.setdefault(value.shape, []).append(value)
    for variable in trained.weights:
        value = keras.ops.convert_to_numpy(variable)
        assert any(np.array_equal(value, saved) for saved in by_shape.get(value.shape, [])), \
            variable.path
    assert any(not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
               for a, b in zip(trained.weights, initial.weights))
    pictures = sorted(os.listdir(os.path.join(out, "tensorboard", "reconstructions")))
    assert pictures == ["step_00000003.png", "step_00000006.png"]
