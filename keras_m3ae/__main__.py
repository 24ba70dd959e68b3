"""The embedded demo: `python -m keras_m3ae`.

Renders a captioned-shapes dataset (8192 images of 32 px, "a red star on a
blue background") as img2dataset-style TFRecords, pretrains a tiny M3AE on
it for 3072 steps through the same tf.data reader used for CC12M, saves the
encoder as a preset, and measures what it learned on held-out images
against a random encoder of the same size (linear probe, nearest
neighbours, where each caption word's attention falls). With
`--tune-cpu-host` it calls `keras_m3ae.tune_cpu_host()` first and prints
what that did (at this tiny size it measured slower, so by default it says
so and leaves the process as it is). On 2 CPU cores
it takes about 8-10 minutes on JAX (longer on TensorFlow and torch);
`--epochs` and `--num_examples` shorten it.

Writes to `--output_dir` (default `m3ae_demo_output/`): `data/` (the
TFRecords), `preset/` (the encoder, for `M3AEBackbone.from_preset` and the
examples), `reconstructions.png`, `attention.png`, `tsne.png`,
`tsne_by_colour.png`, `tsne_one_colour.png` and `what_it_learned.json`.
Runs on whatever `KERAS_BACKEND` selects. It prints its own progress lines
only: TensorFlow's start-up log lines are kept off the screen
(`TF_CPP_MIN_LOG_LEVEL=0` shows them).
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time

_KNOWN_NOISE = re.compile(
    "|".join(
        [
            r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            # absl INFO lines: `I0000 00:00:1796.93 12600 cudart_stub.cc:31] ...`.
            r"I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ",
            # The continuation of cpu_feature_guard's INFO line.
            r"To enable the following instructions: .* rebuild TensorFlow",
            # No GPU on this machine; not an error for the demo.
            r"E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit",
        ]
    )
)


def is_known_noise(line):
    """Whether a captured stderr line is a known, harmless TensorFlow start-up message."""
    return bool(_KNOWN_NOISE.match(line))


def load_tensorflow_quietly():
    """Loads TensorFlow with its start-up log lines filtered out of stderr.

    Loading TensorFlow (keras-hub and the data pipeline need it) writes absl's
    pre-init banner, CUDA stub INFO lines and "failed call to cuInit" straight
    to file descriptor 2, beyond the reach of Python's `logging` and
    `warnings`. The demo loads it with file descriptor 2 captured, then writes
    back every captured line that is not one of those known messages, so real
    errors still show. oneDNN is left as it is (`TF_ENABLE_ONEDNN_OPTS`
    changes numerics). Only the demo's process does this.
    """
    import importlib.util

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or importlib.util.find_spec("tensorflow") is None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA initialises (and reports) here
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
        sys.stderr.write("".join(line for line in lines if not is_known_noise(line)))
        sys.stderr.flush()
        captured.close()


def _parser():
    from keras_m3ae import demo  # light: Keras and the data pipeline load when used

    parser = argparse.ArgumentParser(
        prog="python -m keras_m3ae", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output_dir", default="m3ae_demo_output", help="where everything is written")
    parser.add_argument("--num_examples", type=int, default=demo.NUM_EXAMPLES,
                        help="images in the pretraining set (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=demo.EPOCHS, help="default %(default)s")
    parser.add_argument("--batch_size", type=int, default=64, help="default %(default)s")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="default %(default)s")
    parser.add_argument("--pixel_loss", action="store_true",
                        help="plain pixel targets instead of per-patch normalised ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tune-cpu-host", action="store_true",
                        help="call keras_m3ae.tune_cpu_host() first (measured slower at this "
                             "tiny size; benchmarks/RESULTS.md, section 11)")
    return parser


def _report(learned, random):
    """The table printed at the end: pretrained against random init."""
    rows = [
        ("linear probe, shape (8 classes, chance 0.125)", "probe"),
        ("10 nearest neighbours with the same shape", "shape_neighbours"),
        ("10 nearest neighbours with the same colour", "colour_neighbours"),
        ("  the same shape, all white on black", "one_colour_shape_neighbours"),
    ]
    lines = [f"  {'':52s} {'pretrained':>10s} {'random':>8s}"]
    lines += [f"  {label:52s} {learned[key]:10.3f} {random[key]:8.3f}" for label, key in rows]
    blocks = len(learned["attention"]["shape"])
    lines.append(f"  share of a word's image attention on the shape's patches, blocks 1-{blocks} "
                 f"(evenly spread: {learned['object_patches']:.2f}):")
    for word in learned["attention"]:
        values = [" ".join(f"{x:.2f}" for x in model["attention"][word]) for model in (learned, random)]
        lines.append(f"    {word:20s} pretrained {values[0]}   random {values[1]}")
    return "\n".join(lines)


def main(argv=None):
    args = _parser().parse_args(argv)
    load_tensorflow_quietly()
    import keras
    import numpy as np

    import keras_m3ae
    from keras_m3ae import analysis
    from keras_m3ae import data
    from keras_m3ae import demo
    from keras_m3ae.data import shapes

    start = time.time()
    if args.tune_cpu_host:
        print(keras_m3ae.tune_cpu_host(verbose=False))
    else:
        from keras_m3ae.host_tuning import NOT_AT_TINY_SIZE

        print(NOT_AT_TINY_SIZE)
    out = os.path.abspath(args.output_dir)
    preset_dir = os.path.join(out, "preset")
    os.makedirs(out, exist_ok=True)

    print(f"[1/5] Rendering {args.num_examples} captioned images into {out}/data")
    shards, vocabulary = demo.write_demo_data(out, args.num_examples, seed=args.seed)
    print(f"[2/5] Pretraining a tiny M3AE for {args.epochs} epochs on the {keras.config.backend()} backend")
    pretrainer, history = demo.pretrain_demo(
        shards, vocabulary, args.num_examples, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, norm_pix_loss=not args.pixel_loss, seed=args.seed,
    )
    backbone = pretrainer.backbone

    print(f"[3/5] Saving the encoder preset to {preset_dir}")
    backbone.save_to_preset(preset_dir)

    print("[4/5] Measuring what it learned on held-out images, against a random encoder")
    step = time.time()
    evaluation = demo.evaluation_data(out, vocabulary, seed=args.seed + 1)
    one_colour = demo.one_colour_images(seed=args.seed + 2)
    print(f"  rendered {len(evaluation['labels'])} held-out images ({time.time() - step:.0f} s)", flush=True)
    step = time.time()
    learned = demo.what_it_learned(backbone, evaluation, one_colour=one_colour)
    print(f"  the pretrained encoder: features, probe, neighbours, attention ({time.time() - step:.0f} s)",
          flush=True)
    step = time.time()
    keras.utils.set_random_seed(args.seed + 1)
    random = demo.what_it_learned(demo.demo_backbone(backbone.vocabulary_size), evaluation,
                                  one_colour=one_colour)
    print(f"  a random encoder of the same size: the same ({time.time() - step:.0f} s)", flush=True)

    print("[5/5] Drawing reconstructions, attention maps and feature clusters")
    batch = {k: evaluation[k][:6] for k in ("images", "token_ids", "padding_mask")}
    figure_path = os.path.join(out, "reconstructions.png")
    result = analysis.reconstruct(pretrainer, batch)
    analysis.plot_reconstructions(result, figure_path, captions=evaluation["captions"][:6])
    attention_path = os.path.join(out, "attention.png")
    blocks = range(backbone.num_layers)
    maps = [analysis.cross_modal_attention(backbone, batch, layer=layer) for layer in blocks]
    analysis.plot_text_to_image_attention(
        batch["images"], maps, evaluation["captions"][0].split(), attention_path,
        row_labels=[f"block {layer + 1}" for layer in blocks])
    test = slice(len(evaluation["labels"]) - 512, None)
    tsne_path = os.path.join(out, "tsne.png")
    embedding, _ = analysis.plot_tsne(
        learned["features"][test], evaluation["labels"][test], data.SHAPE_CLASS_NAMES, tsne_path,
        title="t-SNE of CLS features, by shape")
    tsne_colour_path = os.path.join(out, "tsne_by_colour.png")
    analysis.plot_tsne(
        learned["features"][test], evaluation["colours"][test], list(shapes.COLORS),
        tsne_colour_path, title="the same map, by the shape's colour", embedding=embedding,
        palette=[np.asarray(rgb) / 255 for rgb in shapes.COLORS.values()])

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, (name, model) in zip(axes, (("pretrained", learned), ("random init", random))):
        analysis.plot_tsne(model["one_colour_features"], one_colour[1], data.SHAPE_CLASS_NAMES, ax=ax,
                           title=f"{name}, white shapes on black\nsame shape among the 10 nearest "
                                 f"neighbours: {model['one_colour_shape_neighbours']:.2f}")
    fig.tight_layout()
    tsne_one_colour_path = os.path.join(out, "tsne_one_colour.png")
    fig.savefig(tsne_one_colour_path, dpi=120)

    def numbers(model):
        return {k: v for k, v in model.items() if not k.endswith("features")}

    summary = {"pretrained": numbers(learned), "random": numbers(random)}
    with open(os.path.join(out, "what_it_learned.json"), "w") as f:
        json.dump(summary, f, indent=1)
    logs = history.history
    print(
        f"\nDone in {time.time() - start:.0f} s. Loss {logs['loss'][0]:.3f} -> {logs['loss'][-1]:.3f} "
        f"(image {logs['image_loss'][-1]:.3f}, text {logs['text_loss'][-1]:.3f}, "
        f"text accuracy {logs['text_accuracy'][-1]:.2f}).\n"
        f"What the encoder learned (held-out images, the image alone):\n{_report(learned, random)}"
    )
    print(f"  data (img2dataset-style TFRecords): {out}/data")
    print(f"  encoder preset:                     {preset_dir}")
    print(f"  reconstructions (original / masked / reconstruction): {figure_path}")
    print(f"  attention of each caption word over the image, by block: {attention_path}")
    print(f"  t-SNE of CLS features by shape and by colour:         {tsne_path}, {tsne_colour_path}")
    print(f"  the same for one colour pair, pretrained and random:  {tsne_one_colour_path}")
    print(f"  these numbers:                                        {out}/what_it_learned.json")
    print(f"Load the encoder with keras_m3ae.M3AEBackbone.from_preset({preset_dir!r}).")


if __name__ == "__main__":
    main()
