"""Command line: write TFRecord shards in the img2dataset schema.

    python -m keras_m3ae.data write --images DIR --captions captions.tsv --output OUT
    python -m keras_m3ae.data write --webdataset shard-000.tar shard-001.tar --output OUT
    python -m keras_m3ae.data shapes --output OUT --num-examples 512
"""

import argparse
import sys


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_m3ae.data",
        description="Write image-caption TFRecord shards (img2dataset schema).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    write = commands.add_parser(
        "write", help="From a folder + captions file, or webdataset tar shards.",
        description="Write image-caption pairs as TFRecord shards in the img2dataset schema "
        "(`jpg` bytes, `caption` text), the format `keras_m3ae.data.image_text_dataset` reads. "
        "The pairs come either from a folder of images with a captions file (--images and "
        "--captions: TSV lines `relative/path.jpg<TAB>caption`, or JSONL with `file` and "
        "`caption`) or from img2dataset webdataset tar shards (--webdataset). Images are "
        "checked as they are read; unreadable or missing ones are skipped and counted, and the "
        "counts are printed at the end.",
    )
    source = write.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="Folder of images (needs --captions).")
    source.add_argument("--webdataset", nargs="+", metavar="TAR",
                        help="img2dataset webdataset tar shard(s).")
    write.add_argument("--captions", help="TSV (file<TAB>caption) or JSONL captions file.")
    write.add_argument("--output", required=True, help="Output directory of the shards.")
    write.add_argument("--examples-per-shard", type=int, default=10_000)
    write.add_argument("--overwrite", action="store_true",
                       help="Replace the shards already in --output (else it must be empty).")
    write.add_argument("--allow-outside-images", action="store_true",
                       help="Accept caption-file paths that leave --images (absolute or '..').")
    write.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")

    shapes = commands.add_parser(
        "shapes", help="Render the synthetic shapes dataset.",
        description="Render the synthetic captioned-shapes dataset (one coloured shape per image, "
        "captioned 'a small red star in the top left on a blue background', the shape class as "
        "an int64 `label`) as TFRecord shards in the img2dataset schema.",
    )
    shapes.add_argument("--output", required=True)
    shapes.add_argument("--num-examples", type=int, default=512)
    shapes.add_argument("--image-size", type=int, default=64)
    shapes.add_argument("--num-shards", type=int, default=4)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--overwrite", action="store_true",
                        help="Replace the shards already in --output (else it must be empty).")
    return parser


def main(argv=None):
    """Runs the command line; returns the exit status (0 only if examples were written)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (OSError, ValueError) as error:
        # One clear line, no traceback: these are the user's paths and files.
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args):
    # Imported after parsing so that `--help` answers without loading TF.
    from keras_m3ae.data import shapes
    from keras_m3ae.data import writer

    if args.command == "shapes":
        paths = shapes.write_shapes_dataset(
            args.output, args.num_examples, args.image_size, args.num_shards, args.seed,
            overwrite=args.overwrite,
        )
        print(f"Wrote {args.num_examples} examples in {len(paths)} shard(s) to {args.output}.")
        return 0
    if args.images:
        if not args.captions:
            raise ValueError("--images needs --captions")
        examples = writer.folder_examples(args.images, args.captions,
                                          allow_outside=args.allow_outside_images)
    else:
        examples = writer.webdataset_examples(args.webdataset)
    summary = writer.write_tfrecords(
        examples, args.output, args.examples_per_shard, progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(summary)
    if not summary.written:
        print("error: no example was written (see the skip counts above).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
