"""Linear probe of an M3AE encoder (frozen encoder, BatchNorm + linear head, LARS).

    python examples/linear_probe.py                       # built-in data, the demo's encoder
    python examples/linear_probe.py --dataset cifar10 --data_dir ~/tensorflow_datasets \
        --preset /path/to/pretrained_preset --epochs 90 --batch_size 1024

The probe runs on the encoder and on a randomly initialised one of the same
architecture (the baseline), and prints both accuracies. With no `--preset`
it uses the demo's encoder (`m3ae_demo_output/preset`, written by `python -m
keras_m3ae`; pretrained here first if it is not there). On the built-in data
each probe takes about a minute on 2 CPU cores.
"""

import time

import keras
import numpy as np

from common import accuracy, default_preset, load_default, load_tfds, parser, tune_host
from keras_m3ae.models import M3AEImageClassifier


def probe(preset, train, test, num_classes, args, image_size=None, load_weights=True):
    keras.utils.set_random_seed(args.seed)
    clf = M3AEImageClassifier.from_preset(
        preset, num_classes=num_classes, fine_tune_blocks=0, image_size=image_size,
        load_weights=load_weights,
    )
    if isinstance(train, tuple):
        steps = int(np.ceil(len(train[1]) / args.batch_size))
        if args.dataset == "default":
            # LARS (the papers' probe) is tuned for thousands of large-batch
            # steps; 768 images give a few hundred small ones, in which it
            # barely moves the head. Adam converges here.
            clf.compile(optimizer=keras.optimizers.Adam(args.base_lr or 1e-3))
        else:
            clf.compile(batch_size=args.batch_size, epochs=args.epochs, steps_per_epoch=steps,
                        base_learning_rate=args.base_lr)
        clf.fit(*train, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
        return accuracy(clf, *test)
    steps = int(train.cardinality())
    clf.compile(batch_size=args.batch_size, epochs=args.epochs, steps_per_epoch=steps,
                base_learning_rate=args.base_lr)
    clf.fit(train, validation_data=test, epochs=args.epochs, verbose=2,
            shuffle=False)  # the tf.data pipeline shuffles
    return accuracy(clf, test)


def main():
    args = parser(__doc__).parse_args()
    tune_host(args)
    start = time.time()
    if args.dataset == "default":
        args.epochs = args.epochs or 100
        args.batch_size = 64
        data, train, test = load_default(args.num_examples, args.seed)
        num_classes = int(data["labels"].max()) + 1
        image_size = None
    else:
        args.epochs = args.epochs or 90
        image_size = args.image_size or 224
        train, test, num_classes = load_tfds(
            args.dataset, args.data_dir, image_size, args.batch_size
        )
    preset = default_preset(args)
    results = {}
    for name, load_weights in (("pretrained", True), ("random init", False)):
        step = time.time()
        print(f"probing the {name} encoder ({args.epochs} epochs)...", flush=True)
        results[name] = probe(preset, train, test, num_classes, args, image_size, load_weights)
        print(f"  {name}: {results[name]:.3f} ({time.time() - step:.0f} s)", flush=True)
    print(f"linear probe accuracy: pretrained {results['pretrained']:.3f}  random init "
          f"{results['random init']:.3f}  (chance {1 / num_classes:.3f}; {args.epochs} epochs; "
          f"{time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
