"""What a checkpoint costs a run: the training stall per save, its size and write time.

Two measurements (JAX):

`single`: an M3AE pretrainer of a given size (ViT-B by default) with AdamW
state trains a few steps of `fit` on one process; `TrainingCheckpoint`
saves at one step, synchronously (`asynchronous=False`: the step waits for
the whole write) and then asynchronously (the step waits for the copy off
the device; the write goes on beside the next steps). Reported: the median
step time without a save, the extra time of the saving step in each mode,
the slowdown of the steps that run while an asynchronous write is in
flight, the time from the save's start to its commit, and the size of the
step directory.

    nice -n 5 python benchmarks/checkpoint_stall.py single --size base --steps 6

`hosts`: two JAX processes with 4 simulated CPU devices each train a small
pretrainer under `ModelParallel` whose model axis spans the two processes
(each host holds half of every sharded kernel) and save one checkpoint;
reported: the bytes each host wrote (Orbax's per-process OCDBT directories)
against the whole state.

    nice -n 5 python benchmarks/checkpoint_stall.py hosts

Prints one JSON object.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = {
    "tiny": dict(image_size=64, patch_size=8, hidden_dim=128, num_layers=4, num_heads=4,
                 decoder=(128, 2, 4)),
    "small": dict(image_size=224, patch_size=16, hidden_dim=384, num_layers=12, num_heads=6,
                  decoder=(512, 8, 16)),
    "base": dict(image_size=224, patch_size=16, hidden_dim=768, num_layers=12, num_heads=12,
                 decoder=(512, 8, 16)),
}


def build(size, seed=0):
    import keras

    import keras_m3ae

    config = dict(SIZES[size])
    width, depth, heads = config.pop("decoder")
    keras.utils.set_random_seed(seed)
    backbone = keras_m3ae.M3AEBackbone(vocabulary_size=30522, max_text_length=32, **config)
    pretrainer = keras_m3ae.M3AEPretrainer(backbone, decoder_hidden_dim=width,
                                           decoder_num_layers=depth, decoder_num_heads=heads,
                                           seed=seed)
    pretrainer.compile(optimizer=keras_m3ae.optimizers.AdamW(1e-4, weight_decay=0.05))
    return pretrainer


def dataset(pretrainer, batch_size, seed=0):
    import numpy as np
    import tensorflow as tf

    backbone = pretrainer.backbone
    rng = np.random.default_rng(seed)
    size, length = backbone.image_size, backbone.max_text_length
    data = {
        "images": rng.normal(size=(batch_size, size, size, 3)).astype("float32"),
        "token_ids": rng.integers(1, backbone.vocabulary_size, (batch_size, length)).astype(
            "int32"),
        "padding_mask": np.ones((batch_size, length), bool),
    }
    return tf.data.Dataset.from_tensors(data).repeat()


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, files in os.walk(path) for name in files)


class StepTimes:
    """Wall time of every step, callbacks (the save) included: `first` and `last` callbacks."""

    def __init__(self):
        import keras

        self.times = []
        marks = {}
        times = self.times

        class First(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                marks["start"] = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])  # the step's result is ready

        class Last(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter() - marks["start"])

        self.first, self.last = First(), Last()


def single(args):
    import keras

    from keras_m3ae.training import TrainingCheckpoint

    pretrainer = build(args.size)
    data = dataset(pretrainer, args.batch_size)
    result = {"size": args.size, "batch_size": args.batch_size, "backend": keras.backend.backend()}
    root = tempfile.mkdtemp(prefix="checkpoint_stall_", dir=args.dir)
    try:
        # Compiles the step, and one save pays the one-time costs (the
        # finite check's compilation, Orbax and tensorstore set-up).
        pretrainer.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
        warm = TrainingCheckpoint(os.path.join(root, "warmup"), every_steps=None,
                                  asynchronous=False, save_on_preemption=False)
        warm.set_model(pretrainer)
        warm.step = 1
        warm.save()
        warm.close()
        for mode in ("synchronous", "asynchronous"):
            directory = os.path.join(root, mode)
            checkpoint = TrainingCheckpoint(directory, every_steps=None, max_to_keep=1,
                                            asynchronous=mode == "asynchronous",
                                            save_on_preemption=False)
            timer = StepTimes()
            marks = {}
            original_save = checkpoint.save

            def timed_save(checkpoint=checkpoint, original_save=original_save, marks=marks):
                marks["start"] = time.perf_counter()
                original_save()
                marks["returned"] = time.perf_counter()

            checkpoint.save = timed_save
            save_at = args.save_at

            class SaveAt(keras.callbacks.Callback):
                def on_train_batch_end(self, batch, logs=None):
                    checkpoint.step += 1
                    if checkpoint.step == save_at:
                        checkpoint.save()

            # Timer first, then the step counter and save, then the timer's end.
            checkpoint.set_model(pretrainer)
            pretrainer.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0,
                           callbacks=[timer.first, SaveAt(), timer.last])
            wait = time.perf_counter()
            checkpoint.wait()
            marks["committed"] = time.perf_counter()
            checkpoint.close()
            times = timer.times
            # The saving step is save_at; in asynchronous mode the write
            # overlaps the steps after it.
            plain = [t for i, t in enumerate(times, 1) if i != save_at
                     and not (mode == "asynchronous" and i > save_at)]
            after = times[save_at:]
            steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
            result[mode] = {
                "step_seconds": [round(t, 3) for t in times],
                "median_step_without_save": round(statistics.median(plain), 3),
                "saving_step_extra_seconds": round(times[save_at - 1] - statistics.median(plain),
                                                   3),
                "save_call_seconds": round(marks["returned"] - marks["start"], 3),
                "steps_after_save_seconds": [round(t, 3) for t in after],
                "start_to_commit_seconds": round(marks["committed"] - marks["start"], 3),
                "waited_after_fit_seconds": round(marks["committed"] - wait, 3),
                "checkpoint_bytes": directory_bytes(os.path.join(directory, str(steps[-1]))),
            }
            print(json.dumps({mode: result[mode]}), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    import numpy as np

    variables = pretrainer.variables + pretrainer.optimizer.variables
    result["state_bytes"] = int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize
                                    for v in variables))
    result["parameters"] = int(sum(np.prod(v.shape) for v in pretrainer.trainable_variables))
    print(json.dumps(result, indent=1))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hosts(args):
    port = free_port()
    out = tempfile.mkdtemp(prefix="checkpoint_hosts_", dir=args.dir)
    procs = []
    for i in range(2):
        env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT,
                   XLA_FLAGS="--xla_force_host_platform_device_count=4", TF_CPP_MIN_LOG_LEVEL="2")
        procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "worker", "--port", str(port),
             "--process_id", str(i), "--dir", out, "--size", args.size],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    try:
        for p, output in zip(procs, outputs):
            if p.returncode:
                raise SystemExit(f"worker failed ({p.returncode}):\n{output[-4000:]}")
        results = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
        state = os.path.join(out, "checkpoint", str(results[0]["step"]), "state")
        per_process = {name: directory_bytes(os.path.join(state, name))
                       for name in sorted(os.listdir(state)) if name.startswith("ocdbt.process")}
        total = directory_bytes(os.path.join(out, "checkpoint", str(results[0]["step"])))
        print(json.dumps({"size": args.size, "workers": results,
                          "bytes_by_process_directory": per_process,
                          "step_directory_bytes": total,
                          "state_bytes": results[0]["state_bytes"],
                          "sharded_state_bytes": results[0]["sharded_state_bytes"]}, indent=1))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def worker(args):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    from keras_m3ae.training import TrainingCheckpoint

    keras.distribution.initialize(job_addresses=f"127.0.0.1:{args.port}", num_processes=2,
                                  process_id=args.process_id)
    import keras_m3ae

    devices = np.array(jax.devices())  # process 0's 4, then process 1's 4
    # (batch 4, model 2) with the model axis across the processes: device
    # (b, m) is process m's b-th device.
    grid = devices.reshape(2, 4).T
    mesh = keras.distribution.DeviceMesh((4, 2), ["batch", "model"],
                                         [f"cpu:{d.id}" for d in grid.reshape(-1)])
    keras.distribution.set_distribution(keras.distribution.ModelParallel(
        layout_map=keras_m3ae.M3AEPretrainer.get_layout_map(mesh), batch_dim_name="batch",
        auto_shard_dataset=False))
    pretrainer = build(args.size)
    data = dataset(pretrainer, 4)
    pretrainer.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    checkpoint = TrainingCheckpoint(os.path.join(args.dir, "checkpoint"), every_steps=None,
                                    save_on_preemption=False)
    checkpoint.set_model(pretrainer)
    checkpoint.step = 2
    start = time.perf_counter()
    checkpoint.save()
    returned = time.perf_counter()
    checkpoint.close()
    committed = time.perf_counter()
    variables = pretrainer.variables + pretrainer.optimizer.variables
    sizes = [int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables]
    sharded = [s for v, s in zip(variables, sizes)
               if not v.value.sharding.is_fully_replicated]
    print(json.dumps({
        "process": args.process_id, "step": 2,
        "save_call_seconds": round(returned - start, 3),
        "start_to_commit_seconds": round(committed - start, 3),
        "state_bytes": sum(sizes), "sharded_state_bytes": sum(sharded),
        "sharded_variables": len(sharded), "variables": len(variables),
    }), flush=True)
    jax.distributed.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["single", "hosts", "worker"])
    parser.add_argument("--size", default=None, choices=sorted(SIZES))
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--save_at", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where checkpoints are written (a temp dir)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()
    if args.mode == "single":
        os.environ.setdefault("KERAS_BACKEND", "jax")
        args.size = args.size or "base"
        single(args)
    elif args.mode == "hosts":
        args.size = args.size or "small"
        hosts(args)
    else:
        worker(args)


if __name__ == "__main__":
    main()
