"""Throughput of the training input pipeline: crop-aware decode vs full decode.

Writes JPEG shards of natural-looking random images (smooth colour fields
with edges and noise, like photos in size and compressibility), then times
`keras_m3ae.data.image_text_dataset` (validation of every record, RandomResizedCrop
decoding only the crop window, bicubic resize, flip, normalisation and
tokenization of whole batches) against two baselines that decode the full
image before cropping:

- "plain": a minimal pipeline doing the same work (parse, full decode, crop,
  bicubic resize, flip, batch, normalise and tokenize per batch) with no
  bad-data handling at all;
- "same pipeline, full decode": `image_text_dataset` itself with only the
  crop-aware decode swapped for decode-then-crop, so the ratio measures the
  decode strategy alone;
- "ours without DCT scaling": `image_text_dataset(jpeg_dct_scaling=False)`,
  crop-aware but always at full resolution (the share of the DCT scaling).

Pipelines are timed in alternation, `--repeats` times; medians are printed.
`--stages` also prints the cost of each stage in isolation (one thread, data
in memory).

    python benchmarks/data_pipeline.py --single-thread-only --stages   # one core
    python benchmarks/data_pipeline.py                                 # all cores
"""

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

if "--single-thread-only" in sys.argv and hasattr(os, "sched_setaffinity"):
    # Before TensorFlow is imported, so that every thread it ever starts
    # (thread pools, tf.data runner and prefetch threads) inherits the mask.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from PIL import ImageFilter  # noqa: E402

from keras_m3ae import data  # noqa: E402
from keras_m3ae.data import crops as crop_rules  # noqa: E402
from keras_m3ae.data import examples as examples_lib  # noqa: E402
from keras_m3ae.data import transforms  # noqa: E402
from keras_m3ae.data.skips import SkipCounter  # noqa: E402
from keras_m3ae.data.tokenizer import M3AETokenizer  # noqa: E402


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


def full_decode_crop(image_bytes, crop_seed):
    """Decodes the whole JPEG (same IDCT as ours), then cuts the RandomResizedCrop window."""
    image = tf.io.decode_jpeg(image_bytes, channels=3, dct_method=transforms.JPEG_DCT_METHOD)
    window = crop_rules.sample_crop_window(tf.shape(image), crop_seed)
    return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])


def full_decode_random_resized_crop(image_bytes, image_size, seed, fmt=None, dct_scaling=None):
    """`transforms.decode_random_resized_crop` with decode-then-crop for every format.

    Same crop window, flip (of the uint8 crop) and resize; only the decode
    differs: the whole image at full resolution, whatever `dct_scaling` says.
    """
    crop_seed, flip_seed = crop_rules.crop_seeds(seed)
    crop = tf.image.stateless_random_flip_left_right(
        full_decode_crop(image_bytes, crop_seed), flip_seed)
    return crop_rules.resize_crop(crop, image_size)


@contextlib.contextmanager
def full_decode_in_library():
    """Builds `image_text_dataset` with the crop-aware decode swapped out."""
    original = transforms.decode_random_resized_crop
    transforms.decode_random_resized_crop = full_decode_random_resized_crop
    try:
        yield
    finally:
        transforms.decode_random_resized_crop = original


def library_dataset(paths, args, full_decode=False, dct_scaling=True):
    with full_decode_in_library() if full_decode else contextlib.nullcontext():
        return data.image_text_dataset(
            paths, image_size=args.image_size, batch_size=args.batch_size, training=True,
            shuffle_buffer=256, seed=0, jpeg_dct_scaling=dct_scaling)


def plain_dataset(paths, args):
    """Same work as the library pipeline, no bad-data handling, full decode first."""
    tokenizer = M3AETokenizer(max_text_length=64)
    features = {"jpg": tf.io.FixedLenFeature([], tf.string),
                "txt": tf.io.FixedLenFeature([], tf.string)}

    def load(index, record):
        parsed = tf.io.parse_single_example(record, features)
        seed = tf.stack([tf.constant(0, tf.int64), index])
        image = full_decode_random_resized_crop(parsed["jpg"], args.image_size, seed)
        return image, parsed["txt"]

    def prepare(images, captions):
        token_ids, padding_mask = tokenizer(captions)
        return {"images": transforms.normalize_image(images), "token_ids": token_ids,
                "padding_mask": padding_mask,
                "has_image": tf.ones([args.batch_size], tf.bool)}

    ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
        tf.data.TFRecordDataset, cycle_length=len(paths), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False)
    ds = ds.shuffle(256, seed=0)
    ds = ds.enumerate().map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(args.batch_size, drop_remainder=True)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def with_threads(ds, threads):
    options = tf.data.Options()
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def measure(ds, epochs):
    """Returns (images/s, CPU time / wall time of the process)."""
    for _ in ds.take(2):  # warm-up: tracing, file open, autotune start
        pass
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for batch in ds:
            count += int(batch["images"].shape[0])
    wall = time.perf_counter() - start
    return count / wall, (time.process_time() - cpu) / wall


def stage_costs(paths, args, repeats):
    """Milliseconds per image of each stage alone, on records held in memory."""
    records = [r for p in paths for r in tf.data.TFRecordDataset(p).as_numpy_iterator()]
    load = examples_lib.record_loader("jpg", "txt", None)
    parsed = [load(tf.constant(r)) for r in records]
    size, batch = args.image_size, args.batch_size
    jpegs = tf.constant([p[0].numpy() for p in parsed])
    captions = tf.constant([p[1].numpy() for p in parsed])
    count = len(records)
    indices = tf.range(count, dtype=tf.int64)
    items = tf.data.Dataset.from_tensor_slices((indices, jpegs, captions, records)).cache()
    counter = SkipCounter(name="stages")

    def seed(index):
        return tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(0, tf.int64), index]), 1)

    def crop_window(index, jpeg, dct_scaling=True):
        window = crop_rules.sample_crop_window(tf.image.extract_jpeg_shape(jpeg), seed(index))
        return transforms.decode_jpeg_window(jpeg, window, size, dct_scaling)

    def checks(index, jpeg, caption):
        fmt = transforms.image_format(jpeg)
        complete = transforms.is_complete_image(jpeg, fmt)
        caption, invalid, empty = examples_lib.caption_flags(caption)
        return counter.add_flags([(tf.equal(fmt, 0), "image_not_decodable"),
                                  (tf.logical_not(complete), "image_truncated"),
                                  (invalid, "caption_invalid_utf8"),
                                  (empty, "caption_empty")])

    crops = items.map(lambda i, j, c, r: crop_window(i, j, dct_scaling=False)).cache()
    scaled_crops = items.map(lambda i, j, c, r: crop_window(i, j)).cache()
    resized = crops.map(lambda x: crop_rules.resize_crop(x, size)).cache()
    tokenizer = M3AETokenizer(max_text_length=64)
    stages = [
        ("empty map (per-element overhead)", items.map(lambda i, j, c, r: i)),
        ("parse tf.train.Example", items.map(lambda i, j, c, r: load(r))),
        ("checks + skip counting", items.map(lambda i, j, c, r: checks(i, j, c))),
        ("decode crop window, DCT scaling (ours)",
         items.map(lambda i, j, c, r: crop_window(i, j))),
        ("decode crop window, full resolution",
         items.map(lambda i, j, c, r: crop_window(i, j, dct_scaling=False))),
        ("decode full image, crop (baseline)",
         items.map(lambda i, j, c, r: full_decode_crop(j, seed(i)))),
        (f"bicubic resize to {size} + clip (full-res crops)",
         crops.map(lambda x: crop_rules.resize_crop(x, size))),
        (f"bicubic resize to {size} + clip (DCT-scaled crops)",
         scaled_crops.map(lambda x: crop_rules.resize_crop(x, size))),
        ("random flip of the uint8 crop", crops.map(
            lambda x: tf.image.stateless_random_flip_left_right(x, [1, 2]))),
        ("normalise one image at a time", resized.map(transforms.normalize_image)),
        (f"batch {batch}", resized.batch(batch)),
        (f"batch {batch} + normalise per batch",
         resized.batch(batch).map(transforms.normalize_image)),
        (f"tokenize per batch of {batch}", items.map(lambda i, j, c, r: c).batch(batch)
         .map(tokenizer)),
    ]
    print(f"stage costs, 1 thread, {count} records in memory, median of {repeats}:")
    for name, ds in stages:
        ds = with_threads(ds, 1)
        for _ in ds:  # warm-up
            pass
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in ds:
                pass
            times.append((time.perf_counter() - start) / count * 1e3)
        print(f"  {name:48s} {np.median(times):6.3f} ms/img", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=384)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", help="Existing shards (*.tfrecord); default: write new.")
    parser.add_argument("--single-thread-only", action="store_true",
                        help="Pin the process to one CPU core and use one thread.")
    parser.add_argument("--stages", action="store_true", help="Also time each stage alone.")
    args = parser.parse_args()

    if args.single_thread_only:
        # The process is pinned to one core at import (above); TF thread
        # pools get one thread. Must be set before TF runs any op.
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
        if args.stages:
            stage_costs(paths, args, args.repeats)
        threads = 1 if args.single_thread_only else None
        label = "1 core" if threads else f"all cores ({len(os.sched_getaffinity(0))})"
        pipelines = {
            "ours": with_threads(library_dataset(paths, args), threads),
            "ours without DCT scaling": with_threads(
                library_dataset(paths, args, dct_scaling=False), threads),
            "same pipeline, full decode": with_threads(
                library_dataset(paths, args, full_decode=True), threads),
            "plain full-decode baseline": with_threads(plain_dataset(paths, args), threads),
        }
        rates = {name: [] for name in pipelines}
        cores_used = {name: [] for name in pipelines}
        for repeat in range(args.repeats):
            for name, ds in pipelines.items():
                rate, used = measure(ds, args.epochs)
                rates[name].append(rate)
                cores_used[name].append(used)
            print(f"  run {repeat + 1}: " + ", ".join(
                f"{name} {values[-1]:.0f}" for name, values in rates.items()) + " img/s",
                flush=True)
        ours = np.array(rates["ours"])
        print(f"{label}, medians of {args.repeats} runs:")
        for name, values in rates.items():
            values = np.array(values)
            ratio = "" if name == "ours" else (
                f", ours / this: {np.median(ours / values):.2f}x (median of per-run ratios)")
            per_cpu = np.median(values / np.array(cores_used[name]))
            print(f"  {name:28s} {np.median(values):5.0f} img/s{ratio}; "
                  f"CPU/wall {np.median(cores_used[name]):.2f}, {per_cpu:.0f} img per CPU-second")


if __name__ == "__main__":
    main()
