"""Trains a tiny M3AE on 8 simulated JAX CPU devices; prints JSON results.

Run by `tests/test_distribution.py` in a subprocess, because the device
count must be fixed before JAX is imported. For each of: one device (no
distribution), `DataParallel` over 8 devices, and `ModelParallel` on a
`(4, 2)` mesh with `M3AEPretrainer.get_layout_map`, it starts from the same
weights, takes a few SGD steps with the same masking seed, and reports the
per-step losses, the final weights' distance to the single-device ones and
the sharding the layout map gave a few kernels.

    python tests/multidevice_check.py [--steps 3]
"""

import argparse
import json
import os
import sys

# This checkout, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_m3ae  # noqa: E402

BATCH = 8
VOCAB = 64
TEXT = 8
SHARDING_PROBES = (
    "encoder/block_0/attention/qkv/kernel",
    "encoder/block_0/attention/proj/kernel",
    "encoder/block_0/fc1/kernel",
    "encoder/block_0/fc2/kernel",
    "token_embedding/embeddings",
    "decoder/transformer/block_0/fc1/kernel",
    "decoder/text_head/kernel",
)


def make_pretrainer():
    backbone = keras_m3ae.M3AEBackbone(
        image_size=16,
        patch_size=4,
        vocabulary_size=VOCAB,
        max_text_length=TEXT,
        hidden_dim=32,
        num_layers=1,
        num_heads=4,
    )
    pretrainer = keras_m3ae.M3AEPretrainer(
        backbone,
        decoder_hidden_dim=16,
        decoder_num_layers=1,
        decoder_num_heads=2,
        seed=7,
    )
    # SGD, not Adam: the key bias gets a gradient that is zero in exact
    # arithmetic (softmax ignores it), and Adam would blow its rounding noise,
    # which differs between device layouts, up to full-size steps.
    pretrainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    return pretrainer


def make_data(steps):
    rng = np.random.default_rng(0)
    n = BATCH * steps
    lengths = rng.integers(2, TEXT + 1, size=n)
    return {
        "images": rng.uniform(size=(n, 16, 16, 3)).astype("float32"),
        "token_ids": rng.integers(1, VOCAB, size=(n, TEXT)).astype("int32"),
        "padding_mask": (np.arange(TEXT)[None] < lengths[:, None]).astype("int32"),
    }


def train(distribution, initial_weights, data, steps):
    keras.distribution.set_distribution(distribution)
    try:
        pretrainer = make_pretrainer()
        pretrainer.set_weights(initial_weights)
        losses = []
        for step in range(steps):
            batch = {k: v[step * BATCH : (step + 1) * BATCH] for k, v in data.items()}
            history = pretrainer.fit(batch, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
            losses.append(float(history.history["loss"][0]))
        shardings = {}
        for variable in pretrainer.weights:
            for probe in SHARDING_PROBES:
                spec = getattr(variable.value.sharding, "spec", None)
                if variable.path.endswith(probe) and spec is not None:
                    shardings[probe] = [
                        str(axis) if axis is not None else None
                        for axis in spec
                    ]
        weights = [np.asarray(w) for w in pretrainer.get_weights()]
        return losses, weights, shardings
    finally:
        keras.distribution.set_distribution(None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    devices = keras.distribution.list_devices()
    keras.utils.set_random_seed(0)
    initial = make_pretrainer().get_weights()
    data = make_data(args.steps)

    mesh = keras.distribution.DeviceMesh((4, 2), ["batch", "model"], devices)
    runs = {
        "single": None,
        "data_parallel": keras.distribution.DataParallel(devices=devices),
        "model_parallel": keras.distribution.ModelParallel(
            layout_map=keras_m3ae.M3AEPretrainer.get_layout_map(mesh),
            batch_dim_name="batch",
        ),
    }
    results = {"num_devices": len(devices)}
    reference = None
    for name, distribution in runs.items():
        losses, weights, shardings = train(distribution, initial, data, args.steps)
        if reference is None:
            reference = weights
        # Largest over variables of |w - w_single| / |w_single| (norms).
        distances = [
            float(np.linalg.norm(w - r) / max(np.linalg.norm(r), 1e-12))
            for w, r in zip(weights, reference)
        ]
        distance = max(distances)
        # ... and of the update: |w - w_single| / |w_single - w_initial|.
        update_distance = max(
            float(np.linalg.norm(w - r) / max(np.linalg.norm(r - i), 1e-12))
            for w, r, i in zip(weights, reference, initial)
        )
        moved = max(
            float(np.linalg.norm(w - i) / np.linalg.norm(w))
            for w, i in zip(weights, initial)
        )
        results[name] = {
            "losses": losses,
            "weight_distance": distance,
            "update_distance": update_distance,
            "weight_change": moved,
            "shardings": shardings,
        }
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
