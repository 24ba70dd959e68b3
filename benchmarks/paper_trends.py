"""M3AE's central claims, reproduced in miniature on synthetic captioned shapes.

    python benchmarks/paper_trends.py --quick --json trends.json   # <= 30 min on 2 CPU cores
    python benchmarks/paper_trends.py --json trends.json           # the recorded run

Three experiments, each over several seeds (mean and spread printed):

1. Linear probe of the pretrained encoder: random init vs MAE vs M3AE, same
   encoder, same pretraining budget, same probe (M3AE Table 1, Fig. 3).
2. Text mask ratio 0.15 / 0.5 / 0.75 / 0.9 (M3AE Fig. 5).
3. Paired fraction: share of training images that keep their caption,
   0 / 0.1 / 1.0 (M3AE Fig. 3).

The data: `keras_m3ae.data.shapes` in its `centered` layout, one large shape
(8 classes) in one of 8 colours on a background of another, 32 px, captioned
"a {colour} {shape} on a {background} background". The label is the shape.
Per-patch normalised pixels (norm-pix loss) leave the colours out of the image
loss; what remains is the outline, which MAE learns from pixels alone and
M3AE also from the one caption word that names it. With 16 patches and 7-word
captions one run is a few minutes on one core.

The probe is the papers' (frozen encoder, CLS feature of the image alone,
BatchNorm without affine -> linear classifier), fitted in closed form by
scikit-learn's logistic regression on standardised features (standardising is
what the non-affine BatchNorm does), on held-out images of a separate render.

Writes `--json PATH` as
`{"probe": {"random": [...], "mae": [...], "m3ae": [...]}, "text_mask_ratio":
{"0.15": [...], ...}, "paired_fraction": {"0.0": [...], "0.1": [...], "1.0":
[...]}, "chance": 0.125, ...}` (top-1 test accuracies, one per seed) and a
plot (`--plot`). Runs configurations in parallel worker processes
(`--workers`, default the number of cores), each single-threaded.
Claim 3 is tested as a paired comparison (`paired_fraction_test` in the
JSON): a seed gives the 0 % and 10 % runs the same initial weights, data
order and masks, so each seed's difference is one observation; the printed
line gives their mean, a paired t-test's one-sided p and the seeds that
improve, for the CLS and the mean-pooled probe. `--paired_seeds` (default
`--seeds`; 8 with `--quick`) runs those two arms on more seeds.
`--experiments paired_per_token` runs a diagnostic: 10 % paired with the text
loss averaged over masked tokens (`text_loss_reduction="per_token"`), so the
few captions are not diluted by the caption-less examples of each batch.
Recorded figures: `benchmarks/RESULTS.md`.

MAE's ablations and the efficient-MAE recipe (`--experiments efficient_mae`,
or any of its names; `all` runs everything):

    python benchmarks/paper_trends.py --quick --experiments efficient_mae --json e.json --plot e.png

Image-only MAE runs on the same shapes at 24 px with 4-px patches (36
patches: mask 0.9 keeps 3, where 32 / 8 px would keep 1 of 16), the same
encoder, norm-pix loss, `--mae_steps` steps each; every run is probed as
above and some are fine-tuned (`M3AEImageClassifier`, its `compile` recipe,
`--finetune_epochs` on the probe's training images, top-1 on its test images):

4. `mae_mask_ratio`: mask 0.5 / 0.75 / 0.9, 1-block decoder, probe (MAE Fig. 5).
5. `decoder_depth`: 1 / 4 decoder blocks at mask 0.75: probe and pretraining
   wall time (MAE Table 1a).
6. `partial_finetune`: 0 / 1 / 2 / all blocks fine-tuned from the
   mask-0.75, 1-block run (MAE Fig. 9). "0 blocks" is MAE's linear probe,
   here the run's closed-form probe (the same measure as every other
   probe figure; the classifier's LARS probe recipe is meant for 90
   epochs and sits at chance after `--finetune_epochs`).
7. `efficient_vs_standard`: the efficient recipe (mask 0.9, 1 block,
   fine-tuning layer decay 0.82; `keras_m3ae.recipes`) against the standard
   one in miniature (mask 0.75, 4 blocks, layer decay 0.75) at the same
   steps: probe, fine-tune, pretraining wall time. Beside it,
   `efficient_same_wall_clock`: the efficient recipe trained for as many
   steps as the standard one's take (step times measured in the same process).
8. `llrd`: fine-tuning the efficient run with layer decay 0.82 (`on`) or
   none (`off`) (Efficient MAE Sec. 4.2).
9. `data_fraction`: pretraining on 20 % or all of the images for the same
   steps (Efficient MAE Sec. 5.2), fine-tuned.

These add the keys `mae_mask_ratio`, `decoder_depth`, `partial_finetune`,
`efficient_vs_standard`, `llrd`, `data_fraction` and
`efficient_same_wall_clock` to the JSON; the JSON is rewritten after every
run (whole seeds only, marked `partial`), and `worker_cpu_seconds` sums the
workers' CPU time (on an otherwise idle machine the wall time is that over
the number of workers).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TEXT_MASK_RATIOS = (0.15, 0.5, 0.75, 0.9)
PAIRED_FRACTIONS = (0.0, 0.1, 1.0)
# The paper's three claims; `paired_per_token` is a diagnostic: 10 % paired
# with the text loss averaged over the captioned examples' tokens only.
EXPERIMENTS = ("probe", "text_mask_ratio", "paired_fraction")
DIAGNOSTICS = ("paired_per_token",)
# MAE's ablations and the efficient-MAE recipe's claims (image-only runs).
MAE_EXPERIMENTS = ("mae_mask_ratio", "decoder_depth", "partial_finetune",
                   "efficient_vs_standard", "llrd", "data_fraction")
GROUPS = {"m3ae": EXPERIMENTS, "efficient_mae": MAE_EXPERIMENTS,
          "all": EXPERIMENTS + MAE_EXPERIMENTS}
MAE_MASK_RATIOS = (0.5, 0.75, 0.9)
DECODER_DEPTHS = (1, 4)
PARTIAL_BLOCKS = ("0", "1", "2", "all")
DATA_FRACTIONS = (0.2, 1.0)
# The recipes in miniature: the standard one's deep decoder is 4 blocks (the
# encoder has 3; MAE's 8-block decoder is a third of ViT-L's depth), its
# fine-tuning layer decay MAE Table 8's; the efficient one's from
# `keras_m3ae.recipes` (mask 0.9, 1 block, layer decay 0.82).
STANDARD = {"image_mask_ratio": 0.75, "decoder_layers": 4, "layer_decay": 0.75}
EFFICIENT = {"image_mask_ratio": 0.9, "decoder_layers": 1, "layer_decay": 0.82}


# --- Data (parent process) ---


def render(num_examples, image_size, seed, layout="centered"):
    """Images uint8 `(N, S, S, 3)`, captions, labels of the shapes set."""
    from keras_m3ae.data.shapes import render_shape_example

    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    for _ in range(num_examples):
        pixels, caption, label = render_shape_example(rng, image_size, layout=layout)
        images.append(pixels)
        captions.append(caption)
        labels.append(label)
    return np.stack(images), captions, np.asarray(labels, "int32")


def make_data(directory, args, prefix="", image_size=None, pretrain_examples=None):
    """Renders the pretraining and probe sets once; workers load the .npz."""
    from keras_m3ae.data.tokenizer import M3AETokenizer
    from keras_m3ae.demo import caption_words

    vocabulary = os.path.join(directory, "vocabulary.txt")
    with open(vocabulary, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]"] + caption_words()) + "\n")
    tokenizer = M3AETokenizer(vocabulary, max_text_length=args.text_length)
    sets = {
        "pretrain": (pretrain_examples or args.pretrain_examples, 1000),
        "probe_train": (args.probe_examples, 2000),
        "probe_test": (args.probe_test_examples, 3000),
    }
    for name, (count, seed) in sets.items():
        images, captions, labels = render(count, image_size or args.image_size, seed, args.layout)
        token_ids, padding_mask = tokenizer(captions)
        np.savez(os.path.join(directory, f"{prefix}{name}.npz"), images=images, labels=labels,
                 token_ids=token_ids, padding_mask=padding_mask)
    return vocabulary, tokenizer.vocabulary_size


# --- One configuration (worker process) ---


def _normalise(images):
    from keras_m3ae.data.constants import CC12M_MEAN
    from keras_m3ae.data.constants import CC12M_STD

    return ((images.astype("float32") / 255.0 - np.asarray(CC12M_MEAN, "float32"))
            / np.asarray(CC12M_STD, "float32"))


def _features(backbone, images, batch_size=512):
    """CLS and mean-of-patches features of the images alone, compiled."""
    import keras
    from keras import ops

    class Features(keras.Model):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def call(self, images):
            encoded = self.backbone.encode(self.backbone.embed_images(images))
            return ops.concatenate([encoded[:, 0], ops.mean(encoded[:, 1:], axis=1)], axis=-1)

    features = Features(backbone).predict(_normalise(images), batch_size=batch_size, verbose=0)
    width = backbone.hidden_dim
    return {"token": features[:, :width], "mean": features[:, width:]}


def probe_accuracy(backbone, directory, prefix=""):
    """Logistic regression on standardised features; test top-1 per pooling."""
    from keras_m3ae.analysis import linear_probe_accuracy

    train = np.load(os.path.join(directory, f"{prefix}probe_train.npz"))
    test = np.load(os.path.join(directory, f"{prefix}probe_test.npz"))
    train_features = _features(backbone, train["images"])
    test_features = _features(backbone, test["images"])
    return {pooling: linear_probe_accuracy(train_features[pooling], train["labels"],
                                           test_features[pooling], test["labels"])
            for pooling in ("token", "mean")}


def run_config(config):
    """Runs one configuration; adds the CPU seconds it took in this process."""
    cpu = time.process_time()
    run = run_mae_ablation if config["kind"] == "mae_ablation" else run_m3ae
    result = run(config)
    result["cpu_seconds"] = round(time.process_time() - cpu, 1)
    return result


def run_m3ae(config):
    """Pretrains one configuration (or none, for `random`) and probes it."""
    import keras

    from keras_m3ae.models import M3AEBackbone
    from keras_m3ae.models import M3AEPretrainer
    from keras_m3ae.optimizers import pretrain_optimizer

    start = time.time()
    keras.utils.set_random_seed(config["seed"])
    kind = config["kind"]
    backbone = M3AEBackbone(
        image_size=config["image_size"], patch_size=config["patch_size"],
        vocabulary_size=None if kind == "mae" else config["vocabulary_size"],
        max_text_length=config["text_length"], hidden_dim=config["hidden_dim"],
        num_layers=config["num_layers"], num_heads=config["num_heads"],
    )
    history = {}
    if kind != "random":
        data = np.load(os.path.join(config["directory"], "pretrain.npz"))
        x = {"images": _normalise(data["images"])}
        if kind == "m3ae":
            token_ids, padding_mask = data["token_ids"], data["padding_mask"].copy()
            # A fixed, seeded subset of the images keeps its caption.
            rng = np.random.default_rng(config["seed"])
            unpaired = rng.permutation(len(token_ids))[
                int(round(config["paired_fraction"] * len(token_ids))):]
            padding_mask[unpaired] = False
            x["token_ids"] = np.where(padding_mask, token_ids, 0).astype("int32")
            x["padding_mask"] = padding_mask
        pretrainer = M3AEPretrainer(
            backbone, decoder_hidden_dim=config["decoder_dim"], decoder_num_layers=1,
            decoder_num_heads=4, text_mask_ratio=config.get("text_mask_ratio", 0.75),
            text_loss_reduction=config.get("text_loss_reduction", "per_example"),
            norm_pix_loss=True, seed=config["seed"],
        )
        batch_size, steps = config["batch_size"], config["steps"]
        steps_per_epoch = len(x["images"]) // batch_size
        epochs = -(-steps // steps_per_epoch)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=steps_per_epoch * epochs - steps // 20,
            warmup_target=config["learning_rate"], warmup_steps=steps // 20,
        )
        pretrainer.compile(optimizer=pretrain_optimizer(schedule))
        fit = pretrainer.fit(x, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
        history = {k: float(v[-1]) for k, v in fit.history.items()}
    accuracies = probe_accuracy(backbone, config["directory"])
    return {**config, "accuracy": accuracies["token"], "accuracy_mean_pool": accuracies["mean"],
            "final_logs": history,
            "seconds": round(time.time() - start, 1)}


# --- MAE ablations and the efficient recipe (worker process) ---


def _mae_pretrainer(config, mask_ratio, decoder_layers):
    """A fresh MAE (image-only) backbone and pretrainer, seeded by the config."""
    import keras

    from keras_m3ae.models import M3AEBackbone
    from keras_m3ae.models import M3AEPretrainer

    keras.utils.set_random_seed(config["seed"])
    backbone = M3AEBackbone(
        image_size=config["image_size"], patch_size=config["patch_size"], vocabulary_size=None,
        hidden_dim=config["hidden_dim"], num_layers=config["num_layers"],
        num_heads=config["num_heads"],
    )
    pretrainer = M3AEPretrainer(
        backbone, decoder_hidden_dim=config["decoder_dim"], decoder_num_layers=decoder_layers,
        decoder_num_heads=4, image_mask_ratio=mask_ratio, norm_pix_loss=True,
        seed=config["seed"],
    )
    return backbone, pretrainer


def _compile_pretrainer(pretrainer, config, steps, steps_per_epoch):
    import keras

    from keras_m3ae.optimizers import pretrain_optimizer

    epochs = -(-steps // steps_per_epoch)
    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps_per_epoch * epochs - warmup,
        warmup_target=config["learning_rate"], warmup_steps=warmup,
    )
    pretrainer.compile(optimizer=pretrain_optimizer(schedule))
    return epochs


def step_seconds(config, mask_ratio, decoder_layers, images, repeats=20):
    """CPU seconds per pretraining step of one setting, measured in this process."""
    _, pretrainer = _mae_pretrainer(config, mask_ratio, decoder_layers)
    _compile_pretrainer(pretrainer, config, 1000, 100)
    batch = {"images": images[: config["batch_size"]]}
    for _ in range(3):  # compile and warm up
        pretrainer.train_on_batch(batch)
    start = time.process_time()
    for _ in range(repeats):
        pretrainer.train_on_batch(batch)
    return (time.process_time() - start) / repeats


def fine_tune_accuracy(backbone, config, blocks, layer_decay):
    """Trains an `M3AEImageClassifier` on a copy of the encoder; test top-1.

    `blocks`: "1", "2" (partial) or "all" ("0 blocks", the linear probe, is
    the run's closed-form probe); the classifier's fine-tuning `compile`
    recipe with `layer_decay` (1.0: none).
    """
    import keras

    from keras_m3ae.models import M3AEBackbone
    from keras_m3ae.models import M3AEImageClassifier

    prefix = config.get("data_prefix", "")
    train = np.load(os.path.join(config["directory"], f"{prefix}probe_train.npz"))
    test = np.load(os.path.join(config["directory"], f"{prefix}probe_test.npz"))
    copy = M3AEBackbone.from_config(backbone.get_config())
    copy.set_weights(backbone.get_weights())
    keras.utils.set_random_seed(config["seed"] + 1)
    classifier = M3AEImageClassifier(
        copy, num_classes=8, fine_tune_blocks=None if blocks == "all" else int(blocks),
        compile=False,
    )
    batch_size, epochs = config["batch_size"], config["finetune_epochs"]
    steps_per_epoch = -(-len(train["labels"]) // batch_size)
    # The recipe's rules at the miniature's peak rate (as the pretraining's):
    # the papers' base rates are for 100-epoch runs of ViT-B.
    base_rate = config["finetune_learning_rate"] * 256 / batch_size
    classifier.compile(batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
                       warmup_epochs=max(1, epochs // 10),
                       base_learning_rate=base_rate, layer_decay=layer_decay)
    # Shuffled each epoch here: a Task's `fit` batches arrays in order.
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((_normalise(train["images"]), train["labels"]))
    dataset = dataset.shuffle(len(train["labels"]), seed=config["seed"],
                              reshuffle_each_iteration=True).batch(batch_size)
    classifier.fit(dataset, epochs=epochs, verbose=0)
    logits = classifier.predict(_normalise(test["images"]), batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == test["labels"]))


def run_mae_ablation(config):
    """Pretrains one MAE setting, probes it and fine-tunes copies of it.

    `seconds` / `cpu_seconds` time the pretraining `fit` alone. With
    `budget="time"` the run's steps are `steps` times the ratio of the
    standard recipe's step time to this setting's, both measured here
    first, so it trains as long as the standard recipe's `steps` take.
    """
    start = time.time()
    prefix = config.get("data_prefix", "")
    data = np.load(os.path.join(config["directory"], f"{prefix}pretrain.npz"))
    images = _normalise(data["images"])
    if config["data_fraction"] < 1:
        keep = np.random.default_rng(config["seed"]).permutation(len(images))
        images = images[keep[: int(round(config["data_fraction"] * len(images)))]]
    # Whole batches only, so the schedule's length is the steps `fit` takes.
    images = images[: len(images) // config["batch_size"] * config["batch_size"]]
    steps, ratio = config["steps"], None
    if config.get("budget") == "time":
        standard = step_seconds(config, STANDARD["image_mask_ratio"], STANDARD["decoder_layers"],
                                images)
        own = step_seconds(config, config["image_mask_ratio"], config["decoder_layers"], images)
        ratio = standard / own
        steps = int(round(steps * ratio))
    backbone, pretrainer = _mae_pretrainer(config, config["image_mask_ratio"],
                                           config["decoder_layers"])
    batch_size = config["batch_size"]
    steps_per_epoch = len(images) // batch_size
    epochs = _compile_pretrainer(pretrainer, config, steps, steps_per_epoch)
    wall, cpu = time.time(), time.process_time()
    fit = pretrainer.fit({"images": images}, batch_size=batch_size, epochs=epochs, shuffle=True,
                         verbose=0)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    probe = probe_accuracy(backbone, config["directory"], prefix)
    finetune = {}
    for spec in config["finetunes"]:
        blocks, layer_decay = spec.split(":")
        finetune[spec] = fine_tune_accuracy(backbone, config, blocks, float(layer_decay))
    return {**config, "accuracy": probe["token"], "accuracy_mean_pool": probe["mean"],
            "finetune": finetune, "pretrain_steps": steps_per_epoch * epochs,
            "step_time_ratio": ratio, "pretrain_seconds": round(wall, 1),
            "pretrain_cpu_seconds": round(cpu, 1),
            "final_logs": {k: float(v[-1]) for k, v in fit.history.items()},
            "seconds": round(time.time() - start, 1)}


def step_costs(args, directory, repeats=30):
    """CPU seconds per step of each MAE setting and fine-tuning protocol.

    Process time in this (single-threaded) process, `repeats` steps after 3
    warm-up steps, so other load on the machine does not count; with the
    set-up and compile time of each. Used to size `--quick` and to compare
    the recipes' step costs.
    """
    import keras

    from keras_m3ae.models import M3AEImageClassifier

    make_data(directory, args, prefix="mae_", image_size=args.mae_image_size)
    config = configurations(args, None, directory)[0]
    images = _normalise(np.load(os.path.join(directory, "mae_pretrain.npz"))["images"])
    costs = {}
    for mask, depth in ((0.5, 1), (0.75, 1), (0.9, 1), (0.75, 4)):
        start = time.process_time()
        step = step_seconds(config, mask, depth, images, repeats)
        costs[f"pretrain mask {mask} decoder {depth}"] = {
            "step": step, "setup_and_compile": time.process_time() - start - repeats * step}
    backbone, _ = _mae_pretrainer(config, 0.75, 1)
    train = np.load(os.path.join(directory, "mae_probe_train.npz"))
    x, y = _normalise(train["images"][: args.batch_size]), train["labels"][: args.batch_size]
    for blocks in (0, 1, 2, None):
        start = time.process_time()
        copy = backbone.__class__.from_config(backbone.get_config())
        classifier = M3AEImageClassifier(copy, num_classes=8, fine_tune_blocks=blocks,
                                         compile=False)
        classifier.compile(batch_size=args.batch_size, epochs=4, steps_per_epoch=64,
                           layer_decay=None if blocks == 0 else STANDARD["layer_decay"])
        for _ in range(3):
            classifier.train_on_batch(x, y)
        timed = time.process_time()
        for _ in range(repeats):
            classifier.train_on_batch(x, y)
        step = (time.process_time() - timed) / repeats
        costs[f"fine-tune {'all' if blocks is None else blocks} blocks"] = {
            "step": step, "setup_and_compile": timed - start}
    keras.backend.clear_session()
    return costs


def _worker(path):
    with open(path) as f:
        configs = json.load(f)
    for config in configs:
        result = run_config(config)
        print("RESULT " + json.dumps(result), flush=True)


# --- The experiments (parent process) ---


def configurations(args, vocabulary_size, directory):
    """Every run: one per (setting, seed); shared settings run once."""
    base = dict(
        image_size=args.image_size, patch_size=args.patch_size, text_length=args.text_length,
        hidden_dim=args.hidden_dim, num_layers=args.num_layers, num_heads=args.num_heads,
        decoder_dim=args.decoder_dim, batch_size=args.batch_size, steps=args.steps,
        learning_rate=args.learning_rate, vocabulary_size=vocabulary_size, directory=directory,
    )
    runs = {}
    experiments = expand(args.experiments)
    mae_base = dict(
        base, kind="mae_ablation", image_size=args.mae_image_size,
        patch_size=args.mae_patch_size, steps=args.mae_steps,
        finetune_epochs=args.finetune_epochs, data_prefix="mae_",
        finetune_learning_rate=args.finetune_learning_rate,
    )
    for name in ("text_length", "vocabulary_size"):
        mae_base.pop(name)
    for seed in range(args.seeds):
        def mae(image_mask_ratio, decoder_layers, data_fraction=1.0, budget="steps",
                finetunes=()):
            settings = dict(image_mask_ratio=image_mask_ratio, decoder_layers=decoder_layers,
                            data_fraction=data_fraction, budget=budget)
            key = ("mae_ablation", tuple(sorted(settings.items())), seed)
            run = runs.setdefault(key, dict(mae_base, seed=seed, finetunes=[], **settings))
            run["finetunes"] = sorted(set(run["finetunes"]) | set(finetunes))

        # The baseline of the ablations: MAE's mask 0.75 with a 1-block decoder.
        if "mae_mask_ratio" in experiments:
            for ratio in MAE_MASK_RATIOS:
                mae(ratio, 1)
        if "decoder_depth" in experiments:
            for depth in DECODER_DEPTHS:
                mae(0.75, depth)
        if "partial_finetune" in experiments:
            # "0" is the run's own closed-form probe (see `collect`).
            mae(0.75, 1,
                finetunes=[f"{b}:{STANDARD['layer_decay']}" for b in PARTIAL_BLOCKS[1:]])
        if "efficient_vs_standard" in experiments:
            for recipe in (STANDARD, EFFICIENT):
                mae(recipe["image_mask_ratio"], recipe["decoder_layers"],
                    finetunes=[f"all:{recipe['layer_decay']}"])
            mae(EFFICIENT["image_mask_ratio"], EFFICIENT["decoder_layers"], budget="time",
                finetunes=[f"all:{EFFICIENT['layer_decay']}"])
        if "llrd" in experiments:
            mae(EFFICIENT["image_mask_ratio"], EFFICIENT["decoder_layers"],
                finetunes=[f"all:{EFFICIENT['layer_decay']}", "all:1.0"])
        if "data_fraction" in experiments:
            for fraction in DATA_FRACTIONS:
                mae(0.75, 1, data_fraction=fraction, finetunes=[f"all:{STANDARD['layer_decay']}"])

        def add(kind, **extra):
            if kind == "m3ae":
                extra.setdefault("text_loss_reduction", "per_example")
            key = (kind, tuple(sorted(extra.items())), seed)
            runs.setdefault(key, dict(base, kind=kind, seed=seed, **extra))

        if "probe" in experiments:
            add("random")
            add("mae")
            add("m3ae", text_mask_ratio=0.75, paired_fraction=1.0)
        if "text_mask_ratio" in experiments:
            for ratio in TEXT_MASK_RATIOS:
                add("m3ae", text_mask_ratio=ratio, paired_fraction=1.0)
        if "paired_fraction" in experiments:
            for fraction in PAIRED_FRACTIONS:
                add("m3ae", text_mask_ratio=0.75, paired_fraction=fraction)
    # The claim "10 % paired beats none" is a paired comparison: the same seed
    # gives both arms the same initial weights, data order and masks, and more
    # seeds of those two arms only are what its small effect needs (see
    # `paired_test`).
    if "paired_fraction" in experiments:
        for seed in range(args.seeds, max(args.seeds, args.paired_seeds)):
            for fraction in PAIRED_FRACTIONS[:2]:
                extra = dict(text_mask_ratio=0.75, paired_fraction=fraction,
                             text_loss_reduction="per_example")
                key = ("m3ae", tuple(sorted(extra.items())), seed)
                runs.setdefault(key, dict(base, kind="m3ae", seed=seed, **extra))
        if "paired_per_token" in experiments:
            add("m3ae", text_mask_ratio=0.75, paired_fraction=0.1,
                text_loss_reduction="per_token")
    # Seed by seed, so a cut-short run has whole seeds; longest first within one.
    return sorted(runs.values(), key=lambda c: (c["seed"], c["kind"] == "random", -_cost(c)))


def _cost(config):
    """A rough order of a run's length, for scheduling only."""
    if config["kind"] != "mae_ablation":
        return 1.0
    cost = 1.0 + 0.3 * config["decoder_layers"] + (1.0 if config["budget"] == "time" else 0.0)
    return cost + 0.5 * len(config["finetunes"])


def expand(experiments):
    """`--experiments` as a list: names and group names (`GROUPS`)."""
    names = []
    for name in experiments.split(","):
        for each in GROUPS.get(name, (name,)):
            if each not in EXPERIMENTS + DIAGNOSTICS + MAE_EXPERIMENTS:
                known = EXPERIMENTS + DIAGNOSTICS + MAE_EXPERIMENTS
                raise SystemExit(f"Unknown experiment {each!r}; choose from {known} "
                                 f"or {tuple(GROUPS)}.")
            if each not in names:
                names.append(each)
    return names


def run_all(configs, workers, log, on_result=None, cache=None):
    """Runs the configurations in `workers` single-threaded processes.

    `on_result(results)` is called after each result (to save partial
    figures); `cache` is a folder for JAX's compilation cache, shared by the
    workers, so each program compiles once for all seeds.
    """
    chunks = [configs[i::workers] for i in range(workers)]
    extra = {}
    if cache:
        extra = {"JAX_COMPILATION_CACHE_DIR": cache,
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env = dict(os.environ, **extra, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    for index, chunk in enumerate(chunks):
        if not chunk:
            continue
        path = os.path.join(configs[0]["directory"], f"worker{index}.json")
        with open(path, "w") as f:
            json.dump(chunk, f)
        procs.append(subprocess.Popen([sys.executable, __file__, "--_worker", path], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    total = len(configs)
    import selectors

    selector = selectors.DefaultSelector()
    for proc in procs:
        selector.register(proc.stdout, selectors.EVENT_READ, proc)
    tails = {proc.pid: [] for proc in procs}
    open_streams = len(procs)
    while open_streams:
        for key, _ in selector.select():
            line = key.fileobj.readline()
            if not line:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                results.append(result)
                log(f"[{len(results)}/{total}] {describe(result)}: "
                    f"probe {result['accuracy']:.3f}"
                    + "".join(f", fine-tune {k} {v:.3f}"
                              for k, v in result.get("finetune", {}).items())
                    + f" ({result['seconds']:.0f} s, {result['cpu_seconds']:.0f} s CPU)")
                if on_result is not None:
                    on_result(results)
            else:
                tails[key.data.pid] = (tails[key.data.pid] + [line])[-30:]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"A worker failed (exit {proc.returncode}):\n" + "".join(tails[proc.pid]))
    return results


def describe(config):
    if config["kind"] == "mae_ablation":
        return (f"mae mask {config['image_mask_ratio']} decoder {config['decoder_layers']} "
                f"data {config['data_fraction']} budget {config['budget']}"
                f"{' fine-tunes ' + ','.join(config['finetunes']) if config['finetunes'] else ''}"
                f" seed {config['seed']}")
    if config["kind"] != "m3ae":
        return f"{config['kind']} seed {config['seed']}"
    reduction = config.get("text_loss_reduction", "per_example")
    return (f"m3ae text mask {config['text_mask_ratio']} paired {config['paired_fraction']}"
            f"{'' if reduction == 'per_example' else ' ' + reduction} seed {config['seed']}")


def collect(results, experiments=EXPERIMENTS):
    """Accuracies per experiment and setting, one per seed (seed order)."""
    def accuracies(**match):
        match.setdefault("text_loss_reduction", "per_example")
        found = [r for r in results
                 if all(r.get(k, "per_example" if k == "text_loss_reduction" else None) == v
                        for k, v in match.items())]
        return [r["accuracy"] for r in sorted(found, key=lambda r: r["seed"])]

    def mae_runs(image_mask_ratio, decoder_layers, data_fraction=1.0, budget="steps"):
        found = [r for r in results if r["kind"] == "mae_ablation"
                 and r["image_mask_ratio"] == image_mask_ratio
                 and r["decoder_layers"] == decoder_layers
                 and r["data_fraction"] == data_fraction and r["budget"] == budget]
        return sorted(found, key=lambda r: r["seed"])

    def probes(*setting, **kw):
        return [r["accuracy"] for r in mae_runs(*setting, **kw)]

    def tuned(spec, *setting, **kw):
        return [r["finetune"][spec] for r in mae_runs(*setting, **kw)]

    def recipe(settings, **kw):
        runs = mae_runs(settings["image_mask_ratio"], settings["decoder_layers"], **kw)
        return {"probe": [r["accuracy"] for r in runs],
                "finetune": [r["finetune"][f"all:{settings['layer_decay']}"] for r in runs],
                "seconds": [r["pretrain_seconds"] for r in runs]}

    standard_ld, efficient_ld = STANDARD["layer_decay"], EFFICIENT["layer_decay"]
    efficient = (EFFICIENT["image_mask_ratio"], EFFICIENT["decoder_layers"])
    everything = {
        "mae_mask_ratio": lambda: {str(r): probes(r, 1) for r in MAE_MASK_RATIOS},
        "decoder_depth": lambda: {
            str(d): {"probe": probes(0.75, d),
                     "seconds": [r["pretrain_seconds"] for r in mae_runs(0.75, d)]}
            for d in DECODER_DEPTHS
        },
        # 0 blocks is a linear probe (MAE Fig. 9): the run's closed-form one.
        "partial_finetune": lambda: {
            b: probes(0.75, 1) if b == "0" else tuned(f"{b}:{standard_ld}", 0.75, 1)
            for b in PARTIAL_BLOCKS
        },
        "efficient_vs_standard": lambda: {
            "efficient": recipe(EFFICIENT), "standard": recipe(STANDARD),
        },
        "llrd": lambda: {
            "on": tuned(f"all:{efficient_ld}", *efficient),
            "off": tuned("all:1.0", *efficient),
        },
        "data_fraction": lambda: {
            str(f): tuned(f"all:{standard_ld}", 0.75, 1, data_fraction=f) for f in DATA_FRACTIONS
        },
        "probe": lambda: {
            "random": accuracies(kind="random"),
            "mae": accuracies(kind="mae"),
            "m3ae": accuracies(kind="m3ae", text_mask_ratio=0.75, paired_fraction=1.0),
        },
        "text_mask_ratio": lambda: {
            str(r): accuracies(kind="m3ae", text_mask_ratio=r, paired_fraction=1.0)
            for r in TEXT_MASK_RATIOS
        },
        "paired_fraction": lambda: {
            str(f): accuracies(kind="m3ae", text_mask_ratio=0.75, paired_fraction=f)
            for f in PAIRED_FRACTIONS
        },
        "paired_per_token": lambda: {
            "0.1": accuracies(kind="m3ae", text_mask_ratio=0.75, paired_fraction=0.1,
                              text_loss_reduction="per_token"),
        },
    }
    summary = {name: everything[name]() for name in experiments}
    if "paired_fraction" in experiments:
        summary["paired_fraction_test"] = paired_test(results)
    if "efficient_vs_standard" in experiments:
        # The efficient recipe trained as long as the standard one's steps take.
        same_time = mae_runs(*efficient, budget="time")
        summary["efficient_same_wall_clock"] = dict(
            recipe(EFFICIENT, budget="time"),
            steps=[r["pretrain_steps"] for r in same_time],
            step_time_ratio=[r["step_time_ratio"] for r in same_time],
        )
    return summary


def paired_test(results, low=0.0, high=0.1):
    """10 % paired minus none, seed by seed, for each probe pooling.

    Returns, per pooling (`token`: the papers' CLS probe; `mean`), the
    per-seed differences, their mean and standard deviation, the paired
    t statistic and its one-sided p-value (H1: `high` beats `low`), and how
    many seeds improve.
    """
    from scipy import stats

    def by_seed(fraction, key):
        return {r["seed"]: r[key] for r in results
                if r["kind"] == "m3ae" and r.get("text_mask_ratio") == 0.75
                and r.get("text_loss_reduction", "per_example") == "per_example"
                and r.get("paired_fraction") == fraction}

    test = {}
    for pooling, key in (("token", "accuracy"), ("mean", "accuracy_mean_pool")):
        a, b = by_seed(low, key), by_seed(high, key)
        seeds = sorted(set(a) & set(b))
        differences = [b[s] - a[s] for s in seeds]
        entry = {"seeds": seeds, "differences": differences}
        if len(seeds) >= 2:
            std = float(np.std(differences, ddof=1))
            t = p = None
            if std > 1e-9:  # identical differences: no t statistic
                t, p = stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds],
                                       alternative="greater")
                t, p = float(t), float(p)
            entry.update(mean=float(np.mean(differences)), std=std, t=t, p_one_sided=p,
                         improved=int(np.sum(np.array(differences) > 0)))
        test[pooling] = entry
    return test


def table(summary):
    lines = [f"{'experiment':<18} {'setting':<8} {'mean':>6} {'std':>6}  per seed"]
    for experiment in EXPERIMENTS + DIAGNOSTICS:
        for setting, values in summary.get(experiment, {}).items():
            per_seed = " ".join(f"{v:.3f}" for v in values)
            lines.append(f"{experiment:<18} {setting:<8} {np.mean(values):6.3f} "
                         f"{np.std(values):6.3f}  {per_seed}")
    for experiment in MAE_EXPERIMENTS + ("efficient_same_wall_clock",):
        for setting, values in _flat(summary.get(experiment, {})):
            if not values or values[0] is None:
                continue
            per_seed = " ".join(f"{v:.3f}" if v < 10 else f"{v:.0f}" for v in values)
            lines.append(f"{experiment:<18} {setting:<8} {np.mean(values):6.3f} "
                         f"{np.std(values):6.3f}  {per_seed}")
    for pooling, entry in summary.get("paired_fraction_test", {}).items():
        if "t" in entry:
            test = ("no spread, no t" if entry["t"] is None else
                    f"t {entry['t']:.2f}, one-sided p {entry['p_one_sided']:.3f}")
            lines.append(f"paired 0.1 - 0.0 ({pooling} probe, {len(entry['seeds'])} seeds): "
                         f"{entry['mean']:+.4f} +- {entry['std']:.4f}, {test}, "
                         f"{entry['improved']}/{len(entry['seeds'])} seeds improve")
    lines.append(f"chance: {summary['chance']:.3f}")
    return "\n".join(lines)


def _flat(group, prefix=""):
    """`(setting, values)` pairs of a possibly nested experiment dict."""
    for key, value in group.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key} ")
        else:
            yield f"{prefix}{key}", value


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if any(e in summary for e in MAE_EXPERIMENTS):
        if not any(e in summary for e in EXPERIMENTS + DIAGNOSTICS):
            return plot_mae(summary, path)
        plot_mae(summary, os.path.splitext(path)[0] + "_efficient.png")
    shown = [e for e in EXPERIMENTS + DIAGNOSTICS if e in summary]
    figure, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.6), squeeze=False)
    axes = axes[0]
    titles = {"probe": "Linear probe (Table 1)", "text_mask_ratio": "Text mask ratio (Fig. 5)",
              "paired_fraction": "Paired fraction (Fig. 3)",
              "paired_per_token": "10 % paired, per-token text loss"}
    for axis, experiment in zip(axes, shown):
        settings = list(summary[experiment])
        values = [summary[experiment][s] for s in settings]
        means = [np.mean(v) for v in values]
        axis.bar(range(len(settings)), means, color="#7aa6c2",
                 yerr=[np.std(v) for v in values], capsize=4)
        for i, v in enumerate(values):
            axis.scatter([i] * len(v), v, color="black", s=10, zorder=3)
        axis.axhline(summary["chance"], color="grey", linestyle="--", label="chance")
        axis.set_xticks(range(len(settings)), settings)
        axis.set_title(titles[experiment])
        axis.set_ylabel("probe top-1")
        axis.set_ylim(0, 1)
    axes[0].legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_mae(summary, path):
    """Mean and spread (std over seeds, dots per seed) of each MAE experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []  # (title, y label, settings, values)
    if "mae_mask_ratio" in summary:
        group = summary["mae_mask_ratio"]
        panels.append(("Mask ratio (MAE Fig. 5)", "probe top-1", list(group), list(group.values())))
    if "decoder_depth" in summary:
        group = summary["decoder_depth"]
        panels.append(("Decoder depth (MAE Tab. 1a)", "probe top-1", list(group),
                       [group[d]["probe"] for d in group]))
        panels.append(("Decoder depth: pretrain time", "seconds", list(group),
                       [group[d]["seconds"] for d in group]))
    if "partial_finetune" in summary:
        group = summary["partial_finetune"]
        panels.append(("Blocks fine-tuned (MAE Fig. 9)", "top-1 (0 blocks: the probe)", list(group),
                       list(group.values())))
    if "efficient_vs_standard" in summary:
        group = dict(summary["efficient_vs_standard"])
        if "efficient_same_wall_clock" in summary:
            group["eff. same time"] = summary["efficient_same_wall_clock"]
        names = list(group)
        for measure, label in (("probe", "probe top-1"), ("finetune", "fine-tune top-1"),
                               ("seconds", "pretrain seconds")):
            panels.append((f"Efficient vs standard: {measure}", label, names,
                           [group[n][measure] for n in names]))
    if "llrd" in summary:
        group = summary["llrd"]
        panels.append(("Layer-wise lr decay (Eff. MAE)", "fine-tune top-1", list(group),
                       list(group.values())))
    if "data_fraction" in summary:
        group = summary["data_fraction"]
        panels.append(("Pretraining images (Eff. MAE)", "fine-tune top-1", list(group),
                       list(group.values())))
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.3 * rows),
                                squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for axis, (title, label, settings, values) in zip(axes.flat, panels):
        means = [np.mean(v) for v in values]
        axis.bar(range(len(settings)), means, color="#7aa6c2",
                 yerr=[np.std(v) for v in values], capsize=4)
        for i, v in enumerate(values):
            axis.scatter([i] * len(v), v, color="black", s=10, zorder=3)
        if label != "seconds" and "seconds" not in label:
            axis.axhline(summary["chance"], color="grey", linestyle="--")
            low = min(min(v) for v in values)
            axis.set_ylim(max(0.0, low - 0.15), min(1.0, max(max(v) for v in values) + 0.05))
        axis.set_xticks(range(len(settings)), settings, fontsize=8)
        axis.set_title(title, fontsize=9)
        axis.set_ylabel(label, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smaller budget (<= 30 min on 2 cores).")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--paired_seeds", type=int, default=None,
                        help="seeds of the paired-fraction claim's 0.0 and 0.1 arms "
                             "(default: --seeds; --quick: 8)")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS),
                        help="comma-separated, from " + ", ".join(EXPERIMENTS + DIAGNOSTICS))
    parser.add_argument("--steps", type=int, default=None, help="Pretraining steps per run.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None, help="Write the accuracies here.")
    parser.add_argument("--plot", default=None, help="Save the bar plot here (PNG).")
    parser.add_argument("--layout", default="centered", choices=("centered", "grid"),
                        help="shapes layout (keras_m3ae.data.shapes.render_shape_example)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--text_length", type=int, default=8)
    parser.add_argument("--hidden_dim", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--decoder_dim", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--pretrain_examples", type=int, default=8192)
    parser.add_argument("--probe_examples", type=int, default=4096)
    parser.add_argument("--probe_test_examples", type=int, default=2048)
    parser.add_argument("--mae_image_size", type=int, default=24,
                        help="image side of the MAE experiments")
    parser.add_argument("--mae_patch_size", type=int, default=4,
                        help="patch of the MAE experiments (24 / 4: 36 patches, 3 kept at "
                             "mask 0.9)")
    parser.add_argument("--mae_steps", type=int, default=None,
                        help="pretraining steps of the MAE experiments' runs")
    parser.add_argument("--finetune_epochs", type=int, default=None,
                        help="epochs of each fine-tuning (MAE experiments)")
    parser.add_argument("--finetune_learning_rate", type=float, default=1e-3,
                        help="peak AdamW rate of partial and full fine-tuning (the probe keeps "
                             "LARS's recipe)")
    parser.add_argument("--step_costs", action="store_true",
                        help="only measure the CPU seconds per step of the MAE settings "
                             "(single-threaded) and print / write them (--json)")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 1500 if args.quick else 3000
    if args.paired_seeds is None:
        args.paired_seeds = 8 if args.quick else args.seeds
    if args.mae_steps is None:
        args.mae_steps = 600 if args.quick else 2000
    if args.finetune_epochs is None:
        args.finetune_epochs = 4 if args.quick else 12
    expand(args.experiments)
    return args


def summarise(results, experiments, args, start, complete=True, planned=None):
    """The JSON: figures per experiment, settings, timing and every run.

    With `complete=False`, only the seeds whose `planned` runs (all
    configurations) have all finished enter the figures.
    """
    if complete:
        summary = collect(results, experiments)
    else:  # whole seeds only
        expected, done = {}, {}
        for c in planned or results:
            expected[c["seed"]] = expected.get(c["seed"], 0) + 1
        for r in results:
            done[r["seed"]] = done.get(r["seed"], 0) + 1
        whole = {seed for seed, n in done.items() if n == expected[seed]}
        summary = collect([r for r in results if r["seed"] in whole], experiments)
        summary["partial"] = f"{len(results)} runs done; seeds {sorted(whole)} complete"
    summary["chance"] = 1 / 8
    summary["settings"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    summary["backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    summary["seconds"] = round(time.time() - start)
    summary["worker_cpu_seconds"] = round(sum(r.get("cpu_seconds", 0) for r in results))
    summary["runs"] = [{k: v for k, v in r.items() if k != "directory"} for r in results]
    return summary


def main():
    args = parse_args()
    if args._worker:
        return _worker(args._worker)
    if args.step_costs:
        with tempfile.TemporaryDirectory(prefix="m3ae_trends_") as directory:
            costs = step_costs(args, directory)
        for name, cost in costs.items():
            print(f"{name:<32} {cost['step']:.4f} s/step  set-up {cost['setup_and_compile']:.1f} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"step_costs": costs, "backend": os.environ.get("KERAS_BACKEND"),
                           "settings": {k: v for k, v in vars(args).items()
                                        if not k.startswith("_")}}, f, indent=1)
        return None
    start = time.time()

    def log(message):
        print(f"{time.time() - start:7.0f} s  {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="m3ae_trends_") as directory:
        experiments = expand(args.experiments)
        vocabulary_size = None
        if any(e in EXPERIMENTS + DIAGNOSTICS for e in experiments):
            log(f"rendering {args.pretrain_examples} + {args.probe_examples} + "
                f"{args.probe_test_examples} images of {args.image_size} px")
            _, vocabulary_size = make_data(directory, args)
        if any(e in MAE_EXPERIMENTS for e in experiments):
            log(f"rendering the MAE experiments' images at {args.mae_image_size} px")
            make_data(directory, args, prefix="mae_", image_size=args.mae_image_size)
        configs = configurations(args, vocabulary_size, directory)
        steps = " / ".join(
            f"{n} steps" for n, group in ((args.steps, EXPERIMENTS + DIAGNOSTICS),
                                          (args.mae_steps, MAE_EXPERIMENTS))
            if any(e in group for e in experiments))
        log(f"{len(configs)} runs ({steps} of {args.batch_size} each) "
            f"on {args.workers} workers, backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}")

        def save_partial(results):
            if args.json:
                partial = summarise(results, experiments, args, start, complete=False,
                                    planned=configs)
                with open(args.json, "w") as f:
                    json.dump(partial, f, indent=1)

        results = run_all(configs, args.workers, log, on_result=save_partial,
                          cache=os.path.join(directory, "xla_cache"))
    summary = summarise(results, experiments, args, start)
    print(table(summary))
    print(f"total {summary['seconds']} s; the workers' CPU time {summary['worker_cpu_seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if args.plot:
        plot(summary, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
