"""The embedded demo: `python -m keras_m3ae`.

Renders a small captioned-shapes dataset as img2dataset-style TFRecords,
pretrains a tiny M3AE on it through the same tf.data reader used for CC12M,
saves the encoder as a preset, and draws reconstructions, cross-modal
attention and feature clusters. Runs on whatever `KERAS_BACKEND` selects.
It prints its own progress lines only: `keras_m3ae._startup` keeps
TensorFlow's start-up log lines out (`TF_CPP_MIN_LOG_LEVEL=0` shows them).
"""

import argparse
import os
import time


def _parser():
    parser = argparse.ArgumentParser(prog="python -m keras_m3ae", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="m3ae_demo_output", help="where everything is written")
    parser.add_argument("--num_examples", type=int, default=2048, help="images in the bundled dataset")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--pixel_loss", action="store_true",
                        help="plain pixel targets instead of per-patch normalised ones")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    import keras
    import numpy as np

    import keras_m3ae
    from keras_m3ae import data
    from keras_m3ae import demo

    start = time.time()
    out = os.path.abspath(args.output_dir)
    preset_dir = os.path.join(out, "preset")
    os.makedirs(out, exist_ok=True)

    print(f"[1/4] Rendering {args.num_examples} captioned images into {out}/data")
    shards, vocabulary = demo.write_demo_data(out, args.num_examples, seed=args.seed)
    print(f"[2/4] Pretraining a tiny M3AE for {args.epochs} epochs on the {keras.config.backend()} backend")
    pretrainer, history = demo.pretrain_demo(
        shards, vocabulary, args.num_examples, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, norm_pix_loss=not args.pixel_loss, seed=args.seed,
    )
    backbone = pretrainer.backbone

    print(f"[3/4] Saving the encoder preset to {preset_dir}")
    backbone.save_to_preset(preset_dir)

    print("[4/4] Drawing reconstructions, attention maps and feature clusters")
    batch = next(iter(demo.demo_dataset(shards, vocabulary, 6, training=False)))
    batch = {k: np.asarray(v) for k, v in batch.items()}
    tokenizer = data.M3AETokenizer(vocabulary, max_text_length=demo.TEXT_LENGTH)
    captions = tokenizer.detokenize(batch["token_ids"])
    figure_path = os.path.join(out, "reconstructions.png")
    result = keras_m3ae.analysis.reconstruct(pretrainer, batch)
    keras_m3ae.analysis.plot_reconstructions(result, figure_path, captions=captions)

    attention_path = os.path.join(out, "attention.png")
    maps = keras_m3ae.analysis.cross_modal_attention(backbone, batch)
    words = [tokenizer.detokenize(i[None]) for i in batch["token_ids"][0][batch["padding_mask"][0]]]
    keras_m3ae.analysis.plot_text_to_image_attention(batch["images"], maps, words, attention_path)

    labelled = demo.demo_dataset(shards, vocabulary, 128, training=False, label_key="label")
    images, labels = zip(*[(x["images"].numpy(), y.numpy()) for x, y in labelled.take(4)])
    features = keras_m3ae.analysis.cls_features(backbone, np.concatenate(images))
    tsne_path = os.path.join(out, "tsne.png")
    keras_m3ae.analysis.plot_tsne(features, np.concatenate(labels), data.SHAPE_CLASS_NAMES, tsne_path)

    logs = history.history
    print(
        f"\nDone in {time.time() - start:.0f} s. Loss {logs['loss'][0]:.3f} -> {logs['loss'][-1]:.3f} "
        f"(image {logs['image_loss'][-1]:.3f}, text {logs['text_loss'][-1]:.3f}, "
        f"text accuracy {logs['text_accuracy'][-1]:.2f})."
    )
    print(f"  data (img2dataset-style TFRecords): {out}/data")
    print(f"  encoder preset:                     {preset_dir}")
    print(f"  reconstructions (original / masked / reconstruction): {figure_path}")
    print(f"  attention of each caption word over the image:        {attention_path}")
    print(f"  t-SNE of CLS features by shape class:                 {tsne_path}")
    print(f"Load the encoder with keras_m3ae.M3AEBackbone.from_preset({preset_dir!r}).")


if __name__ == "__main__":
    main()
