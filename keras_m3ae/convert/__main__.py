"""`python -m keras_m3ae.convert SRC DST`: checkpoint -> keras-hub preset.

SRC is a reference M3AE/MAE pickle, an official MAE `.pth` or a Hugging
Face ViTMAE directory; DST is a new preset directory holding the encoder
(`M3AEBackbone.from_preset(DST)`) and the decoder
(`keras_m3ae.convert.load_checkpoint(DST)` to continue pretraining).
With `--classifier`, SRC is a fine-tuned classifier (reference
`finetune_main.py` pickle or official MAE fine-tuned `.pth`) and DST a
classifier preset for `M3AEImageClassifier.from_preset(DST)`.

Example:
    python -m keras_m3ae.convert checkpoint-799.pth mae_vit_large/ \
        --set num_heads=16 --set decoder_num_heads=16
"""

import argparse
import json
import sys


def _parse_override(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = json.loads(value)
    except ValueError:
        pass  # a plain string
    return key.strip(), value


def main(argv=None):
    """Runs the converter command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_m3ae.convert",
        description="Convert a reference M3AE/MAE pickle, an official MAE .pth or a "
        "Hugging Face ViTMAE directory into a keras-hub preset directory.",
    )
    parser.add_argument("src", help="checkpoint file or directory")
    parser.add_argument("dst", help="preset directory to write")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=_parse_override,
        metavar="KEY=VALUE",
        help="architecture override, e.g. num_heads=16 or decoder_num_heads=16 (repeatable)",
    )
    parser.add_argument(
        "--classifier",
        action="store_true",
        help="SRC is a fine-tuned classifier; write an M3AEImageClassifier preset",
    )
    args = parser.parse_args(argv)

    from keras_m3ae.convert.api import CheckpointError
    from keras_m3ae.convert.api import load_checkpoint
    from keras_m3ae.convert.api import load_classifier
    from keras_m3ae.convert.api import save_preset

    try:
        if args.classifier:
            classifier = load_classifier(args.src, **dict(args.overrides))
        else:
            pretrainer = load_checkpoint(args.src, **dict(args.overrides))
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.classifier:
        classifier.save_to_preset(args.dst)
        print(
            f"wrote {args.dst}: M3AEImageClassifier num_classes={classifier.num_classes} "
            f"pooling={classifier.pooling} feature_norm={classifier.feature_norm} "
            f"final_norm={classifier.final_norm}"
        )
        return 0
    save_preset(pretrainer, args.dst)
    backbone = pretrainer.backbone
    print(
        f"wrote {args.dst}: {type(backbone).__name__} hidden_dim={backbone.hidden_dim} "
        f"num_layers={backbone.num_layers} num_heads={backbone.num_heads} "
        f"({'M3AE' if backbone.has_text else 'MAE'}), decoder "
        f"{pretrainer.decoder_hidden_dim}x{pretrainer.decoder_num_layers}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
