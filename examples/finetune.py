"""Partial or full fine-tuning of an M3AE encoder (AdamW, layer decay, mixup/cutmix).

    python examples/finetune.py                          # built-in data, the demo's encoder
    python examples/finetune.py --dataset imagenet2012 --data_dir ~/tensorflow_datasets \
        --preset /path/to/pretrained_preset --epochs 100 --batch_size 1024
    python examples/finetune.py --fine_tune_blocks 2     # partial: last 2 blocks

Recipe (MAE Table 8): AdamW base lr 1e-3 * batch / 256, weight decay 0.05,
betas (0.9, 0.999), layer decay 0.75, warmup 5 epochs + cosine, drop path
0.1, label smoothing 0.1, RandAugment, mixup 0.8 / cutmix 1.0 (TFDS runs).

With no `--preset` it fine-tunes the demo's encoder (`m3ae_demo_output/preset`,
written by `python -m keras_m3ae`; pretrained here first if it is not there).
The same recipe then trains a randomly initialised encoder of the same
architecture (the baseline; `--skip_baseline` leaves it out, e.g. on
ImageNet), and both accuracies are printed.
"""

import time

import keras
import numpy as np

import keras_m3ae
from common import accuracy, default_preset, load_default, load_tfds, parser, tune_host
from keras_m3ae.finetune.augment import FineTuneAugmentation
from keras_m3ae.models import M3AEImageClassifier


def main():
    p = parser(__doc__)
    p.add_argument("--fine_tune_blocks", type=int, default=None)
    p.add_argument("--layer_decay", type=float, default=None)
    p.add_argument("--drop_path_rate", type=float, default=0.1)
    p.add_argument("--recipe", default="standard", choices=["standard", "efficient"],
                   help="layer decay 0.75 (standard) or 0.82 (efficient; docs/recipes.md) "
                        "unless --layer_decay is given")
    p.add_argument("--skip_baseline", action="store_true",
                   help="do not also fine-tune a randomly initialised encoder")
    args = p.parse_args()
    tune_host(args)
    if args.layer_decay is None:
        args.layer_decay = keras_m3ae.recipes.get(args.recipe).fine_tune.layer_decay
    start = time.time()
    image_size = args.image_size
    if args.dataset == "default":
        args.epochs = args.epochs or 10
        data, train, test = load_default(args.num_examples, args.seed)
        num_classes = int(data["labels"].max()) + 1
        preset = default_preset(args)
    else:
        if args.preset is None:
            raise SystemExit("Give --preset: a pretrained backbone for this dataset.")
        args.epochs = args.epochs or 100
        preset, image_size = args.preset, image_size or 224
        # Mixup/CutMix need the class count; fetch it from the split table.
        num_classes = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}[args.dataset]
        train, test, _ = load_tfds(
            args.dataset, args.data_dir, image_size, args.batch_size,
            augment=FineTuneAugmentation(num_classes, seed=args.seed),
        )
    mode = "full" if args.fine_tune_blocks is None else f"last {args.fine_tune_blocks} blocks"
    runs = [("pretrained", True)] + ([] if args.skip_baseline else [("random init", False)])
    results = {}
    for name, load_weights in runs:
        step = time.time()
        print(f"fine-tuning ({mode}) the {name} encoder ({args.epochs} epochs)...", flush=True)
        results[name] = fine_tune(preset, train, test, num_classes, image_size, args,
                                  load_weights)
        print(f"  {name}: {results[name]:.4f} ({time.time() - step:.0f} s)", flush=True)
    baseline = ("" if args.skip_baseline else f"  random init {results['random init']:.4f}")
    print(f"fine-tuning ({mode}) accuracy: pretrained {results['pretrained']:.4f}{baseline}  "
          f"(chance {1 / num_classes:.4f}; {time.time() - start:.0f} s)")


def fine_tune(preset, train, test, num_classes, image_size, args, load_weights=True):
    """Fine-tunes one classifier on the preset's encoder (or a random one); test top-1."""
    keras.utils.set_random_seed(args.seed)
    clf = M3AEImageClassifier.from_preset(
        preset, num_classes=num_classes, fine_tune_blocks=args.fine_tune_blocks,
        drop_path_rate=args.drop_path_rate, image_size=image_size, load_weights=load_weights,
    )
    if isinstance(train, tuple):
        steps = int(np.ceil(len(train[1]) / args.batch_size))
        clf.compile(batch_size=args.batch_size, epochs=args.epochs, steps_per_epoch=steps,
                    layer_decay=args.layer_decay, base_learning_rate=args.base_lr)
        clf.fit(*train, batch_size=args.batch_size, epochs=args.epochs,
                validation_data=test, verbose=2)
        return accuracy(clf, *test)
    clf.compile(batch_size=args.batch_size, epochs=args.epochs,
                steps_per_epoch=int(train.cardinality()),
                layer_decay=args.layer_decay, base_learning_rate=args.base_lr)
    clf.fit(train, validation_data=test, epochs=args.epochs, verbose=2,
            shuffle=False)  # the tf.data pipeline shuffles
    return accuracy(clf, test)

if __name__ == "__main__":
    main()
