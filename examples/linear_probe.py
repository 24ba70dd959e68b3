"""Linear probe of an M3AE encoder (frozen encoder, BatchNorm + linear head, LARS).

    python examples/linear_probe.py                       # built-in data (pretrains the demo model first)
    python examples/linear_probe.py --dataset cifar10 --data_dir ~/tensorflow_datasets \
        --preset /path/to/pretrained_preset --epochs 90 --batch_size 1024

With no `--preset`, the tiny demo M3AE is pretrained briefly on the built-in
image-caption data; the probe then runs on that encoder and on a randomly
initialised one, and both accuracies are printed.
"""

import time

import keras
import numpy as np

from common import accuracy, load_default, load_tfds, parser, quick_pretrain, random_preset
from keras_m3ae.models import M3AEImageClassifier


def probe(preset, train, test, num_classes, args, image_size=None):
    keras.utils.set_random_seed(args.seed)
    clf = M3AEImageClassifier.from_preset(
        preset, num_classes=num_classes, fine_tune_blocks=0, image_size=image_size
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
    clf.fit(train, validation_data=test, epochs=args.epochs, verbose=2)
    return accuracy(clf, test)


def main():
    args = parser(__doc__).parse_args()
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
    if args.preset is None:
        if args.dataset != "default":
            raise SystemExit("Give --preset: a pretrained backbone for this dataset.")
        pretrained = quick_pretrain(args.pretrain_epochs, seed=args.seed)
        random = random_preset(pretrained, args.seed)
        acc_pre = probe(pretrained, train, test, num_classes, args)
        acc_rand = probe(random, train, test, num_classes, args)
        print(f"linear probe accuracy: pretrained {acc_pre:.3f}  random init {acc_rand:.3f}  "
              f"(chance {1 / num_classes:.3f}; {args.epochs} epochs; {time.time() - start:.0f} s)")
    else:
        acc = probe(args.preset, train, test, num_classes, args, image_size)
        print(f"linear probe accuracy: {acc:.4f}")


if __name__ == "__main__":
    main()
