"""Glue shared by the classification examples: data and a quick pretraining."""

import argparse
import os
import tempfile
import time

import keras
import numpy as np

import keras_m3ae
from keras_m3ae import demo
from keras_m3ae.finetune.datasets import dataset_to_numpy
from keras_m3ae.finetune.datasets import default_classification_data
from keras_m3ae.finetune.datasets import tfds_classification_dataset

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
                   help="Pretrained backbone preset directory. Default: pretrain "
                        "the tiny demo model on the built-in data first.")
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--pretrain_epochs", type=int, default=demo.EPOCHS,
                   help="Epochs of the demo pretraining when no --preset is given.")
    p.add_argument("--num_examples", type=int, default=1024,
                   help="Size of the built-in dataset.")
    p.add_argument("--base_lr", type=float, default=None,
                   help="Base learning rate (per 256 examples); default: the recipe's.")
    p.add_argument("--seed", type=int, default=0)
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


def quick_pretrain(epochs, seed=0, num_examples=demo.NUM_EXAMPLES):
    """Pretrains the demo's tiny M3AE (as `python -m keras_m3ae` does); returns its preset."""
    directory = tempfile.mkdtemp(prefix="m3ae_pretrained_")
    shards, vocabulary = demo.write_demo_data(directory, num_examples, seed=seed)
    start = time.time()
    pretrainer, history = demo.pretrain_demo(shards, vocabulary, num_examples, epochs=epochs,
                                             seed=seed, verbose=2)
    logs = {k: round(float(v[-1]), 4) for k, v in history.history.items()}
    print(f"pretrained {epochs} epochs in {time.time() - start:.0f} s: {logs}")
    path = os.path.join(directory, "preset")
    pretrainer.backbone.save_to_preset(path)
    return path


def random_preset(like, seed=0):
    """A randomly initialised encoder of the same architecture as preset `like`."""
    keras.utils.set_random_seed(seed + 1)
    path = os.path.join(tempfile.mkdtemp(prefix="m3ae_random_"), "preset")
    keras_m3ae.M3AEBackbone.from_preset(like, load_weights=False).save_to_preset(path)
    return path


def accuracy(classifier, x, y=None, batch_size=128):
    if y is None:
        x, y = dataset_to_numpy(x)
    logits = classifier.predict(x, batch_size=batch_size, verbose=0)
    return float((logits.argmax(1) == np.asarray(y).reshape(-1)).mean())
