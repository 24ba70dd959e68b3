"""The embedded demo: `python -m keras_m3ae`.

Renders a small captioned-shapes dataset as img2dataset-style TFRecords,
pretrains a tiny M3AE on it through the same tf.data reader used for CC12M,
saves the encoder as a preset, and draws reconstruction triplets. Runs on
whatever `KERAS_BACKEND` selects.
"""

import argparse
import os
import time


def _parser():
    parser = argparse.ArgumentParser(prog="python -m keras_m3ae", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="m3ae_demo_output", help="where everything is written")
    parser.add_argument("--num_examples", type=int, default=2048, help="images in the bundled dataset")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _caption_words():
    from keras_m3ae.data import shapes

    words = {"a", "in", "the", "on", "background"}
    words |= set(shapes.SIZES) | set(shapes.COLORS) | set(shapes.SHAPE_CLASS_NAMES)
    words |= {word for name, _, _ in shapes.POSITIONS for word in name.split()}
    return sorted(words)


def main(argv=None):
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    import keras_m3ae
    from keras_m3ae import data

    start = time.time()
    keras.utils.set_random_seed(args.seed)
    out = os.path.abspath(args.output_dir)
    data_dir, preset_dir = os.path.join(out, "data"), os.path.join(out, "preset")
    os.makedirs(out, exist_ok=True)

    print(f"[1/4] Rendering {args.num_examples} captioned images into {data_dir}")
    shards = data.write_shapes_dataset(data_dir, num_examples=args.num_examples, image_size=64, seed=args.seed)
    # The captions use a few dozen words: a matching WordPiece vocabulary
    # keeps the text head small (any vocabulary file works; CC12M uses the
    # bundled bert-base-uncased one).
    vocabulary = os.path.join(out, "vocabulary.txt")
    with open(vocabulary, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]"] + _caption_words()) + "\n")
    text_length = 16

    backbone = keras_m3ae.M3AEBackbone.from_preset(
        "m3ae_vit_tiny_demo", vocabulary_size=len(open(vocabulary).read().split()),
        max_text_length=text_length,
    )
    pretrainer = keras_m3ae.M3AEPretrainer(
        backbone, decoder_hidden_dim=128, decoder_num_layers=2, decoder_num_heads=4, seed=args.seed
    )
    steps = args.num_examples // args.batch_size
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps * args.epochs, warmup_target=args.learning_rate, warmup_steps=steps
    )
    pretrainer.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.05, beta_2=0.95))
    train = data.image_text_dataset(
        shards, image_size=64, max_text_length=text_length, vocabulary=vocabulary,
        batch_size=args.batch_size, training=True, seed=args.seed,
        shuffle_buffer=args.num_examples, repeat=True,
    )
    print(
        f"[2/4] Pretraining a tiny M3AE ({backbone.count_params():,} encoder parameters) "
        f"for {args.epochs} epochs on the {keras.config.backend()} backend"
    )
    history = pretrainer.fit(train, epochs=args.epochs, steps_per_epoch=steps)

    print(f"[3/4] Saving the encoder preset to {preset_dir}")
    backbone.save_to_preset(preset_dir)

    print("[4/4] Drawing reconstructions, attention maps and feature clusters")
    evaluation = data.image_text_dataset(
        shards, image_size=64, max_text_length=text_length, vocabulary=vocabulary,
        batch_size=6, training=False,
    )
    batch = next(iter(evaluation.take(1)))
    batch = {k: np.asarray(v) for k, v in batch.items()}
    tokenizer = data.M3AETokenizer(vocabulary, max_text_length=text_length)
    captions = [tokenizer.detokenize(ids[mask]) for ids, mask in zip(batch["token_ids"], batch["padding_mask"])]
    result = pretrainer.reconstruct(batch)
    figure_path = os.path.join(out, "reconstructions.png")
    keras_m3ae.analysis.plot_reconstructions(result, figure_path, captions=captions)
    attention_path = os.path.join(out, "attention.png")
    maps = keras_m3ae.analysis.cross_modal_attention(backbone, batch)
    words = [tokenizer.detokenize(i[None]) for i in batch["token_ids"][0][batch["padding_mask"][0]]]
    keras_m3ae.analysis.plot_text_to_image_attention(batch["images"], maps, words, attention_path)
    labelled = data.image_text_dataset(
        shards, image_size=64, max_text_length=text_length, vocabulary=vocabulary,
        batch_size=128, training=False, label_key="label",
    )
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
    print(f"  data (img2dataset-style TFRecords): {data_dir}")
    print(f"  encoder preset:                     {preset_dir}")
    print(f"  reconstructions (original / masked / reconstruction): {figure_path}")
    print(f"  attention of each caption word over the image:        {attention_path}")
    print(f"  t-SNE of CLS features by shape class:                 {tsne_path}")
    print(f"Load the encoder with keras_m3ae.M3AEBackbone.from_preset({preset_dir!r}).")


if __name__ == "__main__":
    main()
