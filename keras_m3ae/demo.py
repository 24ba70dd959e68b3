"""The embedded default: a captioned-shapes dataset and a tiny M3AE on it.

Used by `python -m keras_m3ae` and by the classification examples, so the
encoder they probe is the one the demo pretrains.
"""

import os

import keras

from keras_m3ae import data
from keras_m3ae.models import M3AEBackbone
from keras_m3ae.models import M3AEPretrainer
from keras_m3ae.optimizers import pretrain_optimizer

IMAGE_SIZE = 64
TEXT_LENGTH = 16


def caption_words():
    """Every word the shapes captions use."""
    from keras_m3ae.data import shapes

    words = {"a", "in", "the", "on", "background"}
    words |= set(shapes.SIZES) | set(shapes.COLORS) | set(shapes.SHAPE_CLASS_NAMES)
    words |= {word for name, _, _ in shapes.POSITIONS for word in name.split()}
    return sorted(words)


def write_demo_data(directory, num_examples=2048, seed=0):
    """Renders the shapes dataset and a matching WordPiece vocabulary.

    The captions use a few dozen words, so a vocabulary of just those keeps
    the text head small (any vocabulary file works; CC12M uses the bundled
    bert-base-uncased one).

    Args:
        directory: str. Output folder.
        num_examples: int. Images to render.
        seed: int. Same seed, same data.

    Returns:
        `(shard_paths, vocabulary_path)`.
    """
    shards = data.write_shapes_dataset(
        os.path.join(directory, "data"), num_examples=num_examples, image_size=IMAGE_SIZE,
        seed=seed, overwrite=True,  # same seed, same bytes: a rerun rewrites them
    )
    vocabulary = os.path.join(directory, "vocabulary.txt")
    with open(vocabulary, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]"] + caption_words()) + "\n")
    return shards, vocabulary


def demo_dataset(shards, vocabulary, batch_size, training, **kwargs):
    """`image_text_dataset` at the demo's image size and text length."""
    return data.image_text_dataset(
        shards, image_size=IMAGE_SIZE, max_text_length=TEXT_LENGTH, vocabulary=vocabulary,
        batch_size=batch_size, training=training, **kwargs,
    )


def pretrain_demo(shards, vocabulary, num_examples, epochs=16, batch_size=64, learning_rate=1e-3,
                  norm_pix_loss=True, seed=0, verbose="auto"):
    """Pretrains the tiny M3AE (`m3ae_vit_tiny_demo`) on the shapes data.

    AdamW with warmup (1 epoch) and cosine decay, the papers' mask ratios
    and loss weights, per-patch normalised pixel targets.

    Returns:
        `(pretrainer, history)`; the encoder is `pretrainer.backbone`.
    """
    keras.utils.set_random_seed(seed)
    with open(vocabulary) as f:
        vocabulary_size = len(f.read().split())
    backbone = M3AEBackbone.from_preset(
        "m3ae_vit_tiny_demo", image_size=IMAGE_SIZE, vocabulary_size=vocabulary_size,
        max_text_length=TEXT_LENGTH,
    )
    pretrainer = M3AEPretrainer(
        backbone, decoder_hidden_dim=128, decoder_num_layers=2, decoder_num_heads=4,
        norm_pix_loss=norm_pix_loss, seed=seed,
    )
    steps = max(1, num_examples // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps * max(epochs - 1, 1), warmup_target=learning_rate, warmup_steps=steps
    )
    pretrainer.compile(optimizer=pretrain_optimizer(schedule))
    train = demo_dataset(shards, vocabulary, batch_size, training=True, seed=seed,
                         shuffle_buffer=num_examples, repeat=True)
    history = pretrainer.fit(train, epochs=epochs, steps_per_epoch=steps, verbose=verbose)
    return pretrainer, history
