"""Glue shared by the classification examples: data, and the demo's encoder.

Without `--preset`, the examples use the encoder that `python -m keras_m3ae`
saves (`m3ae_demo_output/preset`); where there is none yet they pretrain it
first, the same way, into the same folder, so the next run reuses it.
Nothing is written to the system temporary folder.
"""

import argparse
import os
import time

import keras
import numpy as np

import keras_m3ae
from keras_m3ae import demo
from keras_m3ae.finetune.datasets import dataset_to_numpy
from keras_m3ae.finetune.datasets import default_classification_data
from keras_m3ae.finetune.datasets import tfds_classification_dataset

DEMO_OUTPUT = "m3ae_demo_output"
DEMO_PRESET = os.path.join(DEMO_OUTPUT, "preset")
SPLITS = {
    "cifar10": ("train", "test", 10),
    "cifar100": ("train", "test", 100),
    "imagenet2012": ("train", "validation", 1000),
}


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", default="default", choices=["default"] + list(SPLITS))
    p.add_argument("--data_dir", default=None, help="TFDS data directory.")
    p.add_argument("--preset", default=None,
                   help="Pretrained backbone preset directory. Default: the demo's "
                        f"encoder, {DEMO_PRESET} (pretrained first if it is not there).")
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--pretrain_epochs", type=int, default=demo.EPOCHS,
                   help=f"Epochs of the demo pretraining, when {DEMO_PRESET} is pretrained here.")
    p.add_argument("--num_examples", type=int, default=1024,
                   help="Size of the built-in dataset.")
    p.add_argument("--base_lr", type=float, default=None,
                   help="Base learning rate (per 256 examples); default: the recipe's.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tune-cpu-host", action="store_true",
                   help="call keras_m3ae.tune_cpu_host() also on the built-in data (the demo's "
                        "tiny encoder, where it measured slower; TFDS runs always call it)")
    return p


def load_default(num_examples, seed=0, train_fraction=0.75):
    """The labelled shapes data (a different draw from the pretraining one)."""
    data = default_classification_data(num_examples=num_examples, image_size=demo.IMAGE_SIZE,
                                       max_text_length=demo.TEXT_LENGTH, seed=seed + 1,
                                       layout=demo.LAYOUT)
    n = int(len(data["labels"]) * train_fraction)
    print(f"data: {len(data['labels'])} labelled shapes, {n} to train, {len(data['labels']) - n} to test")
    return data, (data["images"][:n], data["labels"][:n]), (data["images"][n:], data["labels"][n:])


def load_tfds(name, data_dir, image_size, batch_size, augment=None, crop_scale=(0.08, 1.0)):
    train_split, test_split, num_classes = SPLITS[name]
    train = tfds_classification_dataset(
        name, train_split, batch_size, image_size, data_dir=data_dir, training=True,
        augment=augment, crop_scale=crop_scale,
    )
    test = tfds_classification_dataset(name, test_split, batch_size, image_size, data_dir=data_dir)
    return train, test, num_classes


def tune_host(args):
    """`keras_m3ae.tune_cpu_host()`, with a line saying what it did.

    Left uncalled, with a line saying why, on the built-in data (the demo's
    tiny encoder, where it measured slower) unless `--tune-cpu-host`.
    """
    if args.dataset == "default" and not args.tune_cpu_host:
        from keras_m3ae.host_tuning import NOT_AT_TINY_SIZE

        print(NOT_AT_TINY_SIZE)
        return
    print(keras_m3ae.tune_cpu_host(verbose=False))


def default_preset(args):
    """`--preset`, else the demo's encoder (pretrained here first if it is not there yet)."""
    if args.preset is not None:
        return args.preset
    if args.dataset != "default":
        raise SystemExit("Give --preset: a pretrained backbone for this dataset.")
    if os.path.isdir(DEMO_PRESET):
        print(f"encoder: the demo's, from {DEMO_PRESET} (written by `python -m keras_m3ae`)")
        return DEMO_PRESET
    steps = args.pretrain_epochs * demo.NUM_EXAMPLES // 64
    print(f"encoder: no {DEMO_PRESET} yet, so the demo's tiny M3AE is pretrained first, as "
          f"`python -m keras_m3ae` does ({args.pretrain_epochs} epochs, {steps} steps; at the "
          "default 24 epochs about 8-10 minutes on 2 CPU cores with JAX, longer with TensorFlow "
          f"or torch), and saved to {DEMO_PRESET} for the next run")
    return quick_pretrain(args.pretrain_epochs, seed=args.seed)


def quick_pretrain(epochs, seed=0, num_examples=demo.NUM_EXAMPLES, directory=DEMO_OUTPUT):
    """Pretrains the demo's tiny M3AE (as `python -m keras_m3ae` does); returns its preset."""
    shards, vocabulary = demo.write_demo_data(directory, num_examples, seed=seed)
    start = time.time()
    pretrainer, history = demo.pretrain_demo(shards, vocabulary, num_examples, epochs=epochs,
                                             seed=seed)
    logs = {k: round(float(v[-1]), 4) for k, v in history.history.items()}
    print(f"pretrained {epochs} epochs in {time.time() - start:.0f} s: {logs}")
    path = os.path.join(directory, "preset")
    pretrainer.backbone.save_to_preset(path)
    return path


def accuracy(classifier, x, y=None, batch_size=128):
    if y is None:
        x, y = dataset_to_numpy(x)
    logits = classifier.predict(x, batch_size=batch_size, verbose=0)
    return float((logits.argmax(1) == np.asarray(y).reshape(-1)).mean())
