"""Throughput of the training input pipeline: crop-aware decode vs full decode.

Writes JPEG shards of natural-looking random images (smooth colour fields
with edges and noise, like photos in size and compressibility), then times
`keras_m3ae.data.image_text_dataset` (RandomResizedCrop decoding only the
crop window, bicubic resize, flip, tokenization) against a baseline doing the
same work after decoding the full image, on one CPU thread and on all cores.

    python benchmarks/data_pipeline.py --single-thread-only   # one core
    python benchmarks/data_pipeline.py                        # all cores
"""

import argparse
import io
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image
from PIL import ImageFilter

from keras_m3ae import data
from keras_m3ae.data import transforms
from keras_m3ae.data.tokenizer import M3AETokenizer


def natural_image(rng, width, height):
    """A photo-like image: blurred colour blobs, a few shapes, sensor noise."""
    small = rng.integers(0, 255, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(3)), np.int16)
    for _ in range(4):
        y, x = rng.integers(0, height - 20), rng.integers(0, width - 20)
        h, w = rng.integers(10, height // 2), rng.integers(10, width // 2)
        pixels[y:y + h, x:x + w] = rng.integers(0, 255, 3)
    pixels += rng.normal(0, 6, pixels.shape).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_shards(directory, num_images, width, height, num_shards=8):
    rng = np.random.default_rng(0)
    words = "a photo of the red blue dog cat street house tree sky at night in".split()

    def examples():
        for index in range(num_images):
            buffer = io.BytesIO()
            natural_image(rng, width, height).save(buffer, format="JPEG", quality=90)
            caption = " ".join(rng.choice(words, size=rng.integers(5, 20)))
            yield {"image": buffer.getvalue(), "caption": caption, "key": f"{index:09d}"}

    per_shard = -(-num_images // num_shards)
    return data.write_tfrecords(examples(), directory, per_shard, progress=False).paths


def baseline_dataset(paths, image_size, batch_size, max_text_length):
    """Same work as the library pipeline, but decoding the whole image first."""
    tokenizer = M3AETokenizer(max_text_length=max_text_length)
    features = {"jpg": tf.io.FixedLenFeature([], tf.string),
                "txt": tf.io.FixedLenFeature([], tf.string)}

    def load(index, record):
        parsed = tf.io.parse_single_example(record, features)
        image = tf.io.decode_image(parsed["jpg"], channels=3, expand_animations=False)
        seed = tf.stack([tf.constant(0, tf.int64), index])
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=seed,
            min_object_covered=0.0, aspect_ratio_range=transforms.RANDOM_CROP_RATIO,
            area_range=transforms.RANDOM_CROP_SCALE, max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        image = tf.slice(image, begin, size)
        image = tf.clip_by_value(tf.image.resize(tf.cast(image, tf.float32),
                                                 [image_size, image_size], "bicubic"), 0, 255)
        image = tf.image.stateless_random_flip_left_right(image, seed)
        token_ids, padding_mask = tokenizer(parsed["txt"])
        return {"images": transforms.normalize_image(image), "token_ids": token_ids,
                "padding_mask": padding_mask, "has_image": tf.constant(True)}

    ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
        tf.data.TFRecordDataset, cycle_length=len(paths), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False)
    ds = ds.enumerate().map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def measure(ds, threads, epochs):
    options = tf.data.Options()
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
    for _ in ds.take(2):  # warm-up: tracing, file open, autotune start
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in ds:
            count += int(batch["images"].shape[0])
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=384)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir", help="Existing shards (*.tfrecord); default: write new.")
    parser.add_argument("--single-thread-only", action="store_true")
    args = parser.parse_args()

    if args.single_thread_only:
        # Must be set before TF runs any op.
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir:
            paths = data.resolve_files(args.data_dir)
        else:
            start = time.perf_counter()
            paths = write_shards(tmp, args.num_images, args.width, args.height)
            print(f"wrote {args.num_images} JPEGs {args.width}x{args.height} in "
                  f"{len(paths)} shards ({sum(os.path.getsize(p) for p in paths) / 1e6:.1f} MB)"
                  f" in {time.perf_counter() - start:.1f}s")
        settings = [("1 core", 1)] if args.single_thread_only else [
            (f"all cores ({os.cpu_count()})", None)]
        for label, threads in settings:
            ours = measure(data.image_text_dataset(
                paths, image_size=args.image_size, batch_size=args.batch_size, training=True,
                shuffle_buffer=256, seed=0), threads, args.epochs)
            base = measure(baseline_dataset(paths, args.image_size, args.batch_size, 64),
                           threads, args.epochs)
            print(f"{label}: crop-aware {ours:.0f} img/s, full-decode baseline {base:.0f} "
                  f"img/s, ratio {ours / base:.2f}x")


if __name__ == "__main__":
    main()
