"""The embedded default: a captioned-shapes dataset and a tiny M3AE on it.

Used by `python -m keras_m3ae` and by the classification examples, so the
encoder they probe is the one the demo pretrains. The data is the shapes
set's `centered` layout (one large shape, 8 classes, in one of 8 colours on
a background of another, captioned "a red star on a blue background"), and
the recipe (3072 steps of AdamW) lifts a linear probe on the encoder's CLS
feature well above a random encoder's.

Keras and the data pipeline are imported where they are used, so that the
demo's `--help` answers at once.
"""

import os
import time

import numpy as np

IMAGE_SIZE = 32
TEXT_LENGTH = 8
LAYOUT = "centered"
NUM_EXAMPLES = 8192
EPOCHS = 24  # 24 x 8192 / 64 = 3072 steps
# Where the words of a "a {colour} {shape} on a {background} background"
# caption are (one token per word with the demo vocabulary).
WORD_POSITIONS = {"colour": 1, "shape": 2, "background colour": 5}


def caption_words():
    """Every word the shapes captions use (both layouts)."""
    from keras_m3ae.data import shapes

    words = {"a", "an", "in", "the", "on", "background"}
    words |= set(shapes.SIZES) | set(shapes.COLORS) | set(shapes.SHAPE_CLASS_NAMES)
    words |= {word for name, _, _ in shapes.POSITIONS for word in name.split()}
    return sorted(words)


def write_vocabulary(path):
    """Writes the demo's WordPiece vocabulary (the caption words) to `path`."""
    with open(path, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]"] + caption_words()) + "\n")
    return path


def write_demo_data(directory, num_examples=NUM_EXAMPLES, seed=0):
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
    from keras_m3ae import data

    shards = data.write_shapes_dataset(
        os.path.join(directory, "data"), num_examples=num_examples, image_size=IMAGE_SIZE,
        seed=seed, overwrite=True, layout=LAYOUT,  # same seed, same bytes: a rerun rewrites them
    )
    return shards, write_vocabulary(os.path.join(directory, "vocabulary.txt"))


def demo_dataset(shards, vocabulary, batch_size, training, **kwargs):
    """`image_text_dataset` at the demo's image size and text length."""
    from keras_m3ae import data

    return data.image_text_dataset(
        shards, image_size=IMAGE_SIZE, max_text_length=TEXT_LENGTH, vocabulary=vocabulary,
        batch_size=batch_size, training=training, **kwargs,
    )


def demo_backbone(vocabulary_size):
    """The demo's encoder: `m3ae_vit_tiny_demo` at 32 px (16 patches of 8)."""
    from keras_m3ae.models import M3AEBackbone

    return M3AEBackbone.from_preset(
        "m3ae_vit_tiny_demo", image_size=IMAGE_SIZE, vocabulary_size=vocabulary_size,
        max_text_length=TEXT_LENGTH,
    )


def _progress_callback():
    import keras

    class Progress(keras.callbacks.Callback):
        """One line per epoch; the time left is estimated from the steps after the first.

        The first step includes compiling the training step (tens of seconds
        on a CPU), so an estimate that counts it is far too long.
        """

        def on_train_begin(self, logs=None):
            self.start = time.time()
            self.first_step_end = None
            self.steps_after_first = 0
            print("  compiling and running the first step...", flush=True)

        def on_train_batch_end(self, batch, logs=None):
            if self.first_step_end is None:
                self.first_step_end = time.time()
                print(f"  first step done in {self.first_step_end - self.start:.0f} s "
                      "(mostly compilation)", flush=True)
            else:
                self.steps_after_first += 1

        def on_epoch_end(self, epoch, logs=None):
            epochs, steps = self.params["epochs"], self.params["steps"]
            now = time.time()
            left = ""
            if self.steps_after_first:
                per_step = (now - self.first_step_end) / self.steps_after_first
                remaining = per_step * (epochs - epoch - 1) * steps
                left = f", about {remaining / 60:.1f} min left"
            print(f"  epoch {epoch + 1}/{epochs}: loss {logs['loss']:.3f}, "
                  f"{now - self.start:.0f} s so far{left}", flush=True)

    return Progress()


def pretrain_demo(shards, vocabulary, num_examples, epochs=EPOCHS, batch_size=64, learning_rate=1e-3,
                  norm_pix_loss=True, seed=0, verbose=True):
    """Pretrains the tiny M3AE (`demo_backbone`) on the shapes data.

    AdamW with warmup (5 % of the steps) and cosine decay, the papers' mask
    ratios and loss weights, per-patch normalised pixel targets.

    Args:
        verbose: bool. Print one progress line per epoch (with the time left,
            estimated without the first step's compilation).

    Returns:
        `(pretrainer, history)`; the encoder is `pretrainer.backbone`.
    """
    import keras

    from keras_m3ae.models import M3AEPretrainer
    from keras_m3ae.optimizers import pretrain_optimizer

    keras.utils.set_random_seed(seed)
    with open(vocabulary) as f:
        vocabulary_size = len(f.read().split())
    pretrainer = M3AEPretrainer(
        demo_backbone(vocabulary_size), decoder_hidden_dim=128, decoder_num_layers=1,
        decoder_num_heads=4, norm_pix_loss=norm_pix_loss, seed=seed,
    )
    steps = max(1, num_examples // batch_size)
    warmup = max(1, steps * epochs // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps * epochs - warmup), warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    pretrainer.compile(optimizer=pretrain_optimizer(schedule))
    train = demo_dataset(shards, vocabulary, batch_size, training=True, seed=seed,
                         shuffle_buffer=num_examples, repeat=True)
    callbacks = [_progress_callback()] if verbose else []
    history = pretrainer.fit(train, epochs=epochs, steps_per_epoch=steps, verbose=0,
                             callbacks=callbacks)
    return pretrainer, history


def evaluation_data(directory, vocabulary, num_examples=3072, seed=1):
    """Held-out labelled shapes (another seed), read as the model reads data.

    Returns:
        dict of numpy arrays: normalised `images`, `token_ids`,
        `padding_mask`, shape `labels`, `colours` (the shape's colour, an
        index into `shapes.COLORS`), `object_masks` (bool, per pixel) and
        `captions` (list of str).
    """
    from keras_m3ae import data
    from keras_m3ae.data import shapes
    from keras_m3ae.finetune.datasets import default_classification_data

    result = default_classification_data(
        num_examples, image_size=IMAGE_SIZE, max_text_length=TEXT_LENGTH, seed=seed,
        vocabulary=vocabulary, directory=os.path.join(directory, "evaluation"), layout=LAYOUT,
    )
    result["captions"] = data.M3AETokenizer(vocabulary, TEXT_LENGTH).detokenize(result["token_ids"])
    result["object_masks"] = shapes.object_mask(result["images"], result["captions"])
    result["images"] = np.asarray(data.normalize_image(result["images"].astype("float32")))
    names = list(shapes.COLORS)
    result["colours"] = np.asarray([names.index(c.split()[1]) for c in result["captions"]])
    return result


def one_colour_images(num_examples=512, colors=("white", "black"), seed=2):
    """Shapes of one colour on one background, normalised as the model reads them.

    With colour held fixed, what remains to tell the images apart is the
    shape (and its size and place): a map of their features shows what the
    encoder knows about shape.

    Returns:
        `(images, labels)`: float32 `(N, S, S, 3)`, int `(N,)`.
    """
    from keras_m3ae import data
    from keras_m3ae.data import shapes

    rng = np.random.default_rng(seed)
    examples = [shapes.render_shape_example(rng, IMAGE_SIZE, LAYOUT, colors=colors)
                for _ in range(num_examples)]
    pixels = np.stack([pixels for pixels, _, _ in examples]).astype("float32")
    return np.asarray(data.normalize_image(pixels)), np.asarray([label for _, _, label in examples])


def what_it_learned(backbone, evaluation, num_train=2048, attention_examples=256, one_colour=None):
    """Numbers for what the pictures show, on held-out images.

    Args:
        backbone: an `M3AEBackbone` of the demo's size.
        evaluation: dict from `evaluation_data`.
        num_train: int. The first `num_train` examples fit the probe; the
            rest test it.
        attention_examples: int. Examples whose attention is measured.
        one_colour: optional `(images, labels)` from `one_colour_images`.

    Returns:
        dict: `probe` (linear-probe top-1 on the CLS feature of the image
        alone), `shape_neighbours` / `colour_neighbours` (share of each
        test image's 10 nearest CLS neighbours with the same shape / the
        same colour), `attention` (per word of `WORD_POSITIONS`, one value
        per block: the mean share of its image attention, heads averaged,
        on the shape's patches) and `object_patches` (the mean share of
        patches the shape covers: what evenly spread attention puts there);
        with `one_colour`, also `one_colour_shape_neighbours` and the
        `one_colour_features`.
    """
    from keras_m3ae import analysis

    features = analysis.cls_features(backbone, evaluation["images"], batch_size=256)
    labels = evaluation["labels"]
    test = slice(num_train, None)
    batch = {k: evaluation[k][:attention_examples] for k in ("images", "token_ids", "padding_mask")}
    region = analysis.patch_region(evaluation["object_masks"][:attention_examples], backbone.grid_size)
    shares = np.stack([
        analysis.attention_share(analysis.cross_modal_attention(backbone, batch, layer=layer), region)
        for layer in range(backbone.num_layers)
    ]).mean(axis=1)  # (blocks, tokens)
    result = {}
    if one_colour is not None:
        result["one_colour_features"] = analysis.cls_features(backbone, one_colour[0], batch_size=256)
        result["one_colour_shape_neighbours"] = analysis.neighbour_agreement(
            result["one_colour_features"], one_colour[1])
    return {
        **result,
        "probe": analysis.linear_probe_accuracy(features[:num_train], labels[:num_train],
                                                features[test], labels[test]),
        "shape_neighbours": analysis.neighbour_agreement(features[test], labels[test]),
        "colour_neighbours": analysis.neighbour_agreement(features[test], evaluation["colours"][test]),
        "attention": {word: [float(x) for x in shares[:, i]] for word, i in WORD_POSITIONS.items()},
        "object_patches": float(region.mean()),
        "features": features,
    }
