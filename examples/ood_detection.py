"""Out-of-distribution detection with encoder features (M3AE Fig. 6).

    python examples/ood_detection.py                     # built-in data, the demo's encoder
    python examples/ood_detection.py --dataset cifar100 --data_dir ~/tensorflow_datasets \
        --preset /path/to/finetuned_or_pretrained_preset

In-distribution: the dataset's classes (CIFAR-100 for the paper); out: CIFAR-10
(with `--dataset cifar100`) or, for the built-in data, four of the eight shape
classes held out of training. Mahalanobis scores use the frozen encoder's CLS
features; max-softmax uses a linear probe trained on top. Prints AUROC.
With no `--preset` it uses the demo's encoder (`m3ae_demo_output/preset`,
written by `python -m keras_m3ae`; pretrained here first if it is not there).
The same is done with a randomly initialised encoder of the same
architecture (the baseline), and both encoders' AUROCs are printed.
"""

import keras
import numpy as np

from common import default_preset, load_default, load_tfds, parser, tune_host
from keras_m3ae.analysis import MahalanobisDetector
from keras_m3ae.analysis import auroc
from keras_m3ae.analysis import extract_features
from keras_m3ae.analysis import max_softmax_score
from keras_m3ae.finetune.datasets import dataset_to_numpy
from keras_m3ae.models import M3AEImageClassifier


def main():
    args = parser(__doc__).parse_args()
    tune_host(args)
    if args.dataset == "default":
        args.epochs = args.epochs or 30
        data, (x_train, y_train), (x_test, y_test) = load_default(args.num_examples, args.seed)
        inside = lambda y: y < 4  # noqa: E731  shapes 0-3 in, 4-7 out
        x_in_train, y_in_train = x_train[inside(y_train)], y_train[inside(y_train)]
        x_in, x_out = x_test[inside(y_test)], x_test[~inside(y_test)]
        num_classes = 4
        preset = default_preset(args)
        image_size = None
    else:
        if args.preset is None:
            raise SystemExit("Give --preset: a pretrained backbone.")
        args.epochs = args.epochs or 90
        image_size = args.image_size or 224
        train, test_in, num_classes = load_tfds(args.dataset, args.data_dir, image_size, args.batch_size)
        out_name = "cifar10" if args.dataset != "cifar10" else "cifar100"
        _, test_out, _ = load_tfds(out_name, args.data_dir, image_size, args.batch_size)
        x_in_train, y_in_train = dataset_to_numpy(train)
        x_in, _ = dataset_to_numpy(test_in)
        x_out, _ = dataset_to_numpy(test_out)
        preset = args.preset
    print(f"in: {len(x_in)}  out: {len(x_out)}")
    for name, load_weights in (("pretrained", True), ("random init", False)):
        keras.utils.set_random_seed(args.seed)
        clf = M3AEImageClassifier.from_preset(
            preset, num_classes=num_classes, fine_tune_blocks=0, image_size=image_size,
            load_weights=load_weights,
        )
        steps = int(np.ceil(len(y_in_train) / args.batch_size))
        clf.compile(batch_size=args.batch_size, epochs=args.epochs, steps_per_epoch=steps,
                    base_learning_rate=args.base_lr or 6.4 * 256 / args.batch_size)
        clf.fit(x_in_train, y_in_train, batch_size=args.batch_size, epochs=args.epochs,
                verbose=0)
        train_features, _ = extract_features(clf, x_in_train)
        in_features, in_logits = extract_features(clf, x_in)
        out_features, out_logits = extract_features(clf, x_out)
        detector = MahalanobisDetector().fit(train_features, y_in_train)
        mahalanobis = auroc(detector.score(in_features), detector.score(out_features))
        softmax = auroc(max_softmax_score(in_logits), max_softmax_score(out_logits))
        print(f"{name} encoder: AUROC Mahalanobis: {mahalanobis:.3f}  "
              f"AUROC max-softmax: {softmax:.3f}  (chance 0.500)", flush=True)

if __name__ == "__main__":
    main()
