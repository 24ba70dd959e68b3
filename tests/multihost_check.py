"""Two JAX processes on one machine: `keras.distribution.initialize`, per-host data, DataParallel.

Used by `tests/test_multihost.py`, which writes a few TFRecord shards and a
small WordPiece vocabulary (`write_data`), launches two workers

    python tests/multihost_check.py worker --port P --process_id 0 --data DIR --out r0.json --weights w0.npz
    python tests/multihost_check.py worker --port P --process_id 1 --data DIR --out r1.json --weights w1.npz

and meanwhile runs `reference(DIR)` in its own process on one device
(`python tests/multihost_check.py reference --data DIR --out ref.json
--weights ref.npz` does the same from the command line).

Each worker simulates one host with 2 CPU devices
(`--xla_force_host_platform_device_count=2`, set before JAX is imported), so
the two together have 4 global devices. A worker

- selects gloo cross-process CPU collectives and calls
  `keras.distribution.initialize(job_addresses="127.0.0.1:P",
  num_processes=2, process_id=i)` (Keras then agrees on one random seed
  across the processes with a `psum` over all 4 devices: already a
  cross-process collective);
- reads its share of the shards with `keras_m3ae.data.image_text_dataset`
  with the default sharding (`jax.process_index()` of
  `jax.process_count()`) and a per-host batch of `GLOBAL_BATCH // 2`;
- reports what `DataParallel.distribute_dataset` makes of that per-host
  dataset with `auto_shard_dataset=True` (Keras's default, which takes it
  for the global dataset and shards it again) and `False`;
- trains a tiny `M3AEPretrainer` for one epoch under `DataParallel` over the
  4 devices with `auto_shard_dataset=False`, so that Keras assembles each
  global batch from the two per-host batches
  (`jax.make_array_from_process_local_data`), and reports the per-step logs
  and the final weights.

The reference reads each host's share explicitly (`shard_index`,
`num_shards`), concatenates host 0's and host 1's batch of every step into
the global batch (host 0's rows first: they lie on `cpu:0, cpu:1`, host 1's
on `cpu:2048, cpu:2049`) and trains the same model from the same seed (same
weights, same masks) on one device.
"""

import argparse
import io
import json
import os
import sys
import time

# This checkout, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NUM_PROCESSES = 2
LOCAL_DEVICES = 2
GLOBAL_BATCH = 8
PER_HOST_BATCH = GLOBAL_BATCH // NUM_PROCESSES
NUM_FILES = 4
RECORDS_PER_FILE = 6  # 24 records: 3 global batches of 8, 3 per-host batches of 4 per host
IMAGE_SIZE = 16
TEXT = 8
FILLERS = 30
# WordPiece vocabulary: [PAD] must be id 0. Record i's caption starts with the
# token `r{i}`, so a batch's token_ids tell which records it holds.
VOCAB_TOKENS = (["[PAD]", "[UNK]"] + [f"r{i}" for i in range(NUM_FILES * RECORDS_PER_FILE)]
                + [f"w{i}" for i in range(FILLERS)])
VOCAB = len(VOCAB_TOKENS)
FIRST_RECORD_ID = 2
START = time.time()
TIMES = {}


def mark(stage):
    """Seconds since the process started, by stage (reported in the JSON)."""
    TIMES[stage] = round(time.time() - START, 2)


def write_data(directory):
    """Writes the vocabulary and the shards; returns the record captions."""
    import numpy as np
    from PIL import Image

    from keras_m3ae import data

    rng = np.random.default_rng(0)
    examples, captions = [], []
    for i in range(NUM_FILES * RECORDS_PER_FILE):
        pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        fillers = rng.integers(0, FILLERS, size=rng.integers(1, TEXT))
        caption = " ".join([f"r{i}"] + [f"w{j}" for j in fillers])
        captions.append(caption)
        examples.append({"image": buffer.getvalue(), "caption": caption, "key": f"{i:05d}"})
    data.write_tfrecords(examples, directory, examples_per_shard=RECORDS_PER_FILE, progress=False)
    # After the shards: the writer wants an empty directory.
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCAB_TOKENS) + "\n")
    return captions


def record_ids(batch):
    """The record index of each row of a batch (from its first token)."""
    return [int(t) - FIRST_RECORD_ID for t in batch["token_ids"][:, 0]]


def host_dataset(directory, drop_remainder=True, batch_size=PER_HOST_BATCH, **shard):
    """Evaluation-mode reading (file order, no augmentation).

    `drop_remainder=True` gives the batches a static size, which Keras's
    `distribute_dataset` needs (it raises on an unknown batch size).
    """
    from keras_m3ae import data

    return data.image_text_dataset(
        directory, image_size=IMAGE_SIZE, max_text_length=TEXT, batch_size=batch_size,
        training=False, drop_remainder=drop_remainder,
        vocabulary=os.path.join(directory, "vocab.txt"), **shard,
    )


def make_pretrainer():
    import keras

    import keras_m3ae

    backbone = keras_m3ae.M3AEBackbone(
        image_size=IMAGE_SIZE, patch_size=4, vocabulary_size=VOCAB, max_text_length=TEXT,
        hidden_dim=32, num_layers=1, num_heads=4,
    )
    pretrainer = keras_m3ae.M3AEPretrainer(
        backbone, decoder_hidden_dim=16, decoder_num_layers=1, decoder_num_heads=2, seed=7,
    )
    # SGD, as in multidevice_check.py: Adam would amplify the rounding noise
    # of the key bias's (exactly zero) gradient.
    pretrainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    return pretrainer


def train(pretrainer, dataset):
    """One epoch of `fit`; returns the logs after every step (running means)."""
    import keras

    steps = []
    callback = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: steps.append({k: float(v) for k, v in logs.items()}))
    pretrainer.fit(dataset, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    return steps


def checksum(weights):
    return float(sum(float((w.astype("float64") ** 2).sum()) for w in weights))


def save_weights(path, **weights):
    """Saves lists of arrays as `{name}_{i}` entries of one `.npz` file."""
    import numpy as np

    np.savez(path, **{f"{name}_{i}": np.asarray(w)
                      for name, ws in weights.items() for i, w in enumerate(ws)})


def worker(args):
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={LOCAL_DEVICES}"
    )
    import jax

    # Cross-process collectives on CPU: gloo over TCP (the default of the
    # jax 0.10 we test with; set explicitly, as without cross-process
    # collectives no computation can span both processes).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np
    from keras.src.utils import rng_utils

    from keras_m3ae.data import files as data_files

    mark("imports")
    keras.distribution.initialize(
        job_addresses=f"127.0.0.1:{args.port}",
        num_processes=NUM_PROCESSES,
        process_id=args.process_id,
    )
    mark("initialize")
    result = {
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "devices": keras.distribution.list_devices(),
        "local_devices": [f"{d.platform}:{d.id}" for d in jax.local_devices()],
        # initialize() agrees on one seed with a psum over all processes.
        "agreed_seed": rng_utils.get_random_seed(),
        "default_shard": list(data_files.default_shard()),
        "files": [os.path.basename(f) for f in data_files.shard_files(
            data_files.resolve_files(args.data), *data_files.default_shard())],
    }

    # This host's data, with the default sharding.
    dataset = host_dataset(args.data)
    result["batches"] = [record_ids(b) for b in dataset.as_numpy_iterator()]

    # What Keras's DataParallel does to a per-host dataset.
    devices = keras.distribution.list_devices()
    for auto in (True, False):
        distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=auto)
        seen = [record_ids(b) for b in distribution.distribute_dataset(dataset).as_numpy_iterator()]
        result[f"distribute_dataset_auto_shard_{auto}"] = seen
    # The alternative: every host reads all files in global batches, and
    # Keras's auto-sharding hands each host its part of every batch.
    everything = host_dataset(args.data, batch_size=GLOBAL_BATCH, shard_index=0, num_shards=1)
    result["distribute_dataset_global"] = [record_ids(b) for b in keras.distribution.DataParallel(
        devices=devices).distribute_dataset(everything).as_numpy_iterator()]
    try:
        keras.distribution.DataParallel(devices=devices).distribute_dataset(
            host_dataset(args.data, drop_remainder=False))
        result["auto_shard_unknown_batch_error"] = None
    except ValueError as error:
        result["auto_shard_unknown_batch_error"] = str(error)
    mark("data")

    # DataParallel training: each global batch is both hosts' batches.
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    result["keras_num_processes"] = distribution.num_processes
    keras.distribution.set_distribution(distribution)
    # Built under the distribution from the same seed as the reference: the
    # initializers draw the same values, then Keras replicates them.
    keras.utils.set_random_seed(0)
    pretrainer = make_pretrainer()
    result["initial_checksum"] = checksum([np.asarray(w) for w in pretrainer.get_weights()])
    # The rows of a global batch that live on this process's devices.
    shape = (GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
    indices = distribution.get_data_layout(shape).backend_layout.addressable_devices_indices_map(shape)
    result["global_rows"] = sorted([i[0].start, i[0].stop] for i in indices.values())
    mark("build")
    result["logs"] = train(pretrainer, dataset)
    mark("fit")
    result["variables_replicated"] = all(
        v.value.sharding.is_fully_replicated for v in pretrainer.weights)
    # Replicated, so every process holds (and can read) the whole value.
    weights = [np.asarray(w) for w in pretrainer.get_weights()]
    result["final_checksum"] = checksum(weights)
    save_weights(args.weights, final=weights)
    # A barrier: the coordinator (process 0) must not leave first.
    jax.distributed.shutdown()
    mark("shutdown")
    result["times"] = TIMES
    with open(args.out, "w") as f:
        json.dump(result, f)


def reference(directory):
    """The single-device run; returns (result dict, initial weights, final weights).

    Runs in the calling process on its default device, with no
    distribution: `tests/test_multihost.py` calls it in the pytest process
    (JAX backend) while the workers run.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    hosts = [list(host_dataset(directory, shard_index=i, num_shards=NUM_PROCESSES)
                  .as_numpy_iterator()) for i in range(NUM_PROCESSES)]
    steps = min(len(h) for h in hosts)
    # Host 0's rows, then host 1's: the global batch's rows lie on the
    # devices in `list_devices()` order, and host 0 holds the first ones.
    global_batches = [
        {k: np.concatenate([h[step][k] for h in hosts]) for k in hosts[0][step]}
        for step in range(steps)
    ]
    dataset = tf.data.Dataset.from_tensor_slices(
        {k: np.concatenate([b[k] for b in global_batches]) for k in global_batches[0]}
    ).batch(GLOBAL_BATCH)
    keras.distribution.set_distribution(None)
    keras.utils.set_random_seed(0)
    pretrainer = make_pretrainer()
    initial = [np.asarray(w) for w in pretrainer.get_weights()]
    result = {
        "global_batches": [record_ids(b) for b in global_batches],
        "initial_checksum": checksum(initial),
        "logs": train(pretrainer, dataset),
    }
    final = [np.asarray(w) for w in pretrainer.get_weights()]
    result["final_checksum"] = checksum(final)
    return result, initial, final


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["worker", "reference", "write"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out")
    parser.add_argument("--weights")
    parser.add_argument("--port", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()
    if args.mode == "write":
        write_data(args.data)
    elif args.mode == "worker":
        worker(args)
    else:
        os.environ["KERAS_BACKEND"] = "jax"
        result, initial, final = reference(args.data)
        save_weights(args.weights, initial=initial, final=final)
        with open(args.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
