"""Glue shared by the classification examples: data and a quick pretraining."""

import argparse
import os
import tempfile
import time

import keras
import numpy as np

import keras_m3ae
from keras_m3ae.models import M3AEImageConverter
from keras_m3ae.training.datasets import dataset_to_numpy
from keras_m3ae.training.datasets import default_classification_data
from keras_m3ae.training.datasets import tfds_classification_dataset

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
    p.add_argument("--pretrain_seconds", type=float, default=90.0)
    p.add_argument("--num_examples", type=int, default=1024,
                   help="Size of the built-in dataset.")
    p.add_argument("--base_lr", type=float, default=None,
                   help="Base learning rate (per 256 examples); default: the recipe's.")
    p.add_argument("--seed", type=int, default=0)
    return p


# The built-in demo runs the tiny M3AE at 32 px (16 patches) to fit a CPU.
DEFAULT_IMAGE_SIZE = 32


def load_default(num_examples, seed=0, train_fraction=0.75):
    data = default_classification_data(
        num_examples=num_examples, image_size=DEFAULT_IMAGE_SIZE, seed=seed
    )
    n = int(len(data["labels"]) * train_fraction)
    print(f"data: {len(data['labels'])} labelled examples from {data['source']}")
    return data, (data["images"][:n], data["labels"][:n]), (data["images"][n:], data["labels"][n:])


def load_tfds(name, data_dir, image_size, batch_size, augment=None, crop_scale=(0.08, 1.0)):
    train_split, test_split, num_classes = SPLITS[name]
    train = tfds_classification_dataset(
        name, train_split, batch_size, image_size, data_dir=data_dir, training=True,
        augment=augment, crop_scale=crop_scale,
    )
    test = tfds_classification_dataset(name, test_split, batch_size, image_size, data_dir=data_dir)
    return train, test, num_classes


def quick_pretrain(data, seconds, batch_size=64, seed=0):
    """Pretrains the tiny demo M3AE on images + captions for about `seconds`."""
    keras.utils.set_random_seed(seed)
    backbone = keras_m3ae.M3AEBackbone.from_preset(
        "m3ae_vit_tiny_demo", image_size=DEFAULT_IMAGE_SIZE
    )
    pretrainer = keras_m3ae.M3AEPretrainer(
        backbone, decoder_hidden_dim=128, decoder_num_layers=2, decoder_num_heads=4, seed=seed
    )
    pretrainer.compile(
        optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05, beta_1=0.9, beta_2=0.95)
    )
    converter = M3AEImageConverter(image_size=backbone.image_size)
    images = keras.ops.convert_to_numpy(converter(data["images"].astype("float32")))
    inputs = {
        "images": images,
        "token_ids": data["token_ids"][:, : backbone.max_text_length],
        "padding_mask": data["padding_mask"][:, : backbone.max_text_length],
    }
    start, epochs = time.time(), 0
    while time.time() - start < seconds:
        history = pretrainer.fit(inputs, batch_size=batch_size, epochs=1, verbose=0)
        epochs += 1
    logs = {k: round(float(v[-1]), 4) for k, v in history.history.items()}
    print(f"pretrained {epochs} epochs in {time.time() - start:.0f} s: {logs}")
    path = os.path.join(tempfile.mkdtemp(prefix="m3ae_pretrained_"), "preset")
    backbone.save_to_preset(path)
    return path


def random_preset(seed=0):
    keras.utils.set_random_seed(seed + 1)
    path = os.path.join(tempfile.mkdtemp(prefix="m3ae_random_"), "preset")
    keras_m3ae.M3AEBackbone.from_preset(
        "m3ae_vit_tiny_demo", image_size=DEFAULT_IMAGE_SIZE
    ).save_to_preset(path)
    return path


def accuracy(classifier, x, y=None, batch_size=128):
    if y is None:
        x, y = dataset_to_numpy(x)
    logits = classifier.predict(x, batch_size=batch_size, verbose=0)
    return float((logits.argmax(1) == np.asarray(y).reshape(-1)).mean())
