"""Which records this host reads, and in what order.

File discovery (`resolve_files`), host sharding (`default_shard`,
`shard_files`), zero-byte files, TFRecord reading that counts truncated
files, and the file-level pipeline: parallel interleave over files ->
optional cache -> repeat -> shuffle. Yields encoded records (or text lines,
or image file paths); `examples` turns them into examples.
"""

import concurrent.futures
import logging

import keras
import tensorflow as tf

from keras_m3ae.data import tfrecord

logger = logging.getLogger("keras_m3ae.data")

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# Bytes a TFRecord adds around each record: length, CRC of length, CRC of data.
_TFRECORD_OVERHEAD = 16
_GLOB_CHARS = "*?["


def resolve_files(file_pattern, default_glob="*.tfrecord"):
    """Expands a pattern, path, directory or list of them into sorted files.

    Works on any `tf.io.gfile` path (local, `gs://`, ...).

    Args:
        file_pattern: str or list of str. Glob patterns, file paths, or
            directories (then `default_glob` is matched inside).
        default_glob: str. Pattern used inside a directory.

    Returns:
        A sorted list of unique file paths.

    Raises:
        ValueError: a pattern matches no file, or a path does not exist.
    """
    patterns = [file_pattern] if isinstance(file_pattern, (str, bytes)) else list(file_pattern)
    if not patterns:
        raise ValueError("No file pattern given (empty list).")
    files = set()
    for pattern in patterns:
        pattern = pattern.decode() if isinstance(pattern, bytes) else str(pattern)
        if any(char in pattern for char in _GLOB_CHARS):
            matches = tf.io.gfile.glob(pattern)
            if not matches:
                raise ValueError(f"No files match the pattern {pattern!r}.")
            files.update(matches)
        elif tf.io.gfile.isdir(pattern):
            inner = pattern.rstrip("/") + "/" + default_glob
            matches = tf.io.gfile.glob(inner)
            if not matches:
                raise ValueError(
                    f"Directory {pattern!r} holds no files matching {default_glob!r}."
                )
            files.update(matches)
        elif tf.io.gfile.exists(pattern):
            files.add(pattern)
        else:
            raise ValueError(f"File not found: {pattern!r}.")
    return sorted(files)


def default_shard(shard_index=None, num_shards=None):
    """Returns this host's `(shard_index, num_shards)`.

    With the JAX backend the defaults are `jax.process_index()` and
    `jax.process_count()`, so each host of a pod reads its own files; on
    other backends (one process per input pipeline) `(0, 1)`.

    Args:
        shard_index: int or None.
        num_shards: int or None.

    Returns:
        A tuple of two ints.
    """
    if (shard_index is None) != (num_shards is None):
        raise ValueError(
            "Pass both `shard_index` and `num_shards`, or neither "
            f"(got shard_index={shard_index}, num_shards={num_shards})."
        )
    if shard_index is None:
        if keras.config.backend() == "jax":
            # Imported here: this module must not pull jax in on other backends.
            import jax

            return jax.process_index(), jax.process_count()
        return 0, 1
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"Need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}.")
    return int(shard_index), int(num_shards)


def shard_files(files, shard_index, num_shards):
    """This host's files: every `num_shards`-th file from `shard_index`.

    The shares of all hosts are disjoint and together hold every file.

    Args:
        files: sorted list of paths (the same list on every host).
        shard_index: int. This host's index.
        num_shards: int. Number of hosts.

    Returns:
        A list of paths.
    """
    if num_shards > len(files):
        raise ValueError(
            f"{len(files)} files cannot be split across {num_shards} hosts; "
            "write the data into at least as many shards as hosts."
        )
    if len(files) % num_shards:
        logger.warning(
            "%d files over %d hosts: hosts get unequal shares, so epoch "
            "lengths differ; prefer a multiple of the host count.",
            len(files),
            num_shards,
        )
    return list(files[shard_index::num_shards])


def _file_sizes(files):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda path: tf.io.gfile.stat(path).length, files))


def _drop_empty_files(files, counter):
    sizes = _file_sizes(files)
    kept = [(path, size) for path, size in zip(files, sizes) if size > 0]
    empty = len(files) - len(kept)
    if empty:
        counter.add_now("file_empty", empty)
        logger.warning("Skipping %d zero-byte file(s) of %d.", empty, len(files))
    if not kept:
        raise ValueError(f"All {len(files)} files are empty: {files[:3]}...")
    return [p for p, _ in kept], [s for _, s in kept]


def _read_record_file(path, size, counter, compression_type, block=64):
    """Records of one TFRecord file; a truncated or corrupt tail is counted.

    Compressed files end quietly at a bad record, uncounted: their size is
    not the size of the records they hold.

    `ignore_errors` ends the file at the first bad record but says nothing,
    so the bytes the good records account for are added up and compared with
    the file size when a sentinel after the last record arrives. The sum runs
    over blocks of `block` records (five tf.data stages per block instead of
    per record), which are split into single records again at the end.

    Args:
        path: scalar string tensor.
        size: scalar int64 tensor, the file's size in bytes.
        counter: `SkipCounter`.
        compression_type: scalar string tensor, this file's compression.
    """
    records = tf.data.TFRecordDataset(path, compression_type, buffer_size=1 << 20).ignore_errors()
    blocks = records.batch(block).map(lambda records: (records, False))
    sentinel = (tf.constant([], tf.string), True)
    blocks = blocks.concatenate(tf.data.Dataset.from_tensors(sentinel))
    plain = tf.equal(compression_type, "")

    def step(consumed, item):
        records, is_sentinel = item
        lengths = tf.cast(tf.strings.length(records), tf.int64) + _TFRECORD_OVERHEAD
        consumed += tf.reduce_sum(lengths)
        short = tf.logical_and(tf.logical_and(is_sentinel, plain), consumed != size)
        counted = counter.add_if(short, "file_truncated")
        with tf.control_dependencies([counted]):
            return consumed, (tf.identity(records), is_sentinel)

    blocks = blocks.scan(tf.constant(0, tf.int64), step)
    blocks = blocks.filter(lambda records, is_sentinel: tf.logical_not(is_sentinel))
    return blocks.map(lambda records, is_sentinel: records).unbatch()


def _file_compressions(files, compression, counter):
    """Each file's own compression; files unlike the rest are counted and named.

    A plain shard among GZIP ones (or the reverse) is read with its own
    compression, not lost, and counted as `compression_mismatch`: a mixed
    source usually means a writer changed its settings part way.
    """
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        found = list(pool.map(lambda path: tfrecord.file_compression(path, compression), files))
    odd = [(path, c) for path, c in zip(files, found) if c != compression]
    if odd:
        counter.add_now("compression_mismatch", len(odd))
        logger.warning(
            "%d of %d file(s) are not %s like the first ones; each is read with its own "
            "compression (first: %s, %s).", len(odd), len(files),
            tfrecord.describe(compression), odd[0][0], tfrecord.describe(odd[0][1]))
    return found


def _interleave(files, read_fn, options):
    """Parallel interleave of `read_fn` over files, then cache, repeat and shuffle."""
    ds = _file_order(files, options)
    ds = ds.interleave(
        read_fn,
        cycle_length=max(1, min(options.num_parallel_files, len(files))),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=options.deterministic,
    )
    if options.cache:
        # Encoded records are cached (small); augmentation stays random.
        ds = _cache(ds, options.cache)
        if options.repeat:
            ds = ds.repeat()
    if options.training and options.shuffle_buffer:
        ds = ds.shuffle(options.shuffle_buffer, seed=options.host_seed,
                        reshuffle_each_iteration=options.position is None)
    return ds


def _file_order(files, options):
    """File names in reading order: shuffled when training, repeated unless cached.

    With a `position` (a resumable stream) every iterator reads the same
    order: a seeded reshuffle draws each iterator's order from a generator
    shared by all iterators of the dataset (Keras draws one for building
    the model), so a restarted run would read a different stream. There
    each pass's order is a function of the seed and the pass number.
    """
    ds = tf.data.Dataset.from_tensor_slices(files)
    repeat = options.repeat and not options.cache
    if options.training and options.position is not None and repeat:
        names, seed = tf.constant(files), tf.constant(options.host_seed, tf.int64)

        def one_pass(number):
            order = tf.random.experimental.stateless_shuffle(names, tf.stack([seed, number]))
            return tf.data.Dataset.from_tensor_slices(order)

        return tf.data.Dataset.range(tf.int64.max).flat_map(one_pass)
    if options.training:
        ds = ds.shuffle(len(files), seed=options.host_seed,
                        reshuffle_each_iteration=options.position is None)
    return ds.repeat() if repeat else ds


def _cache(ds, cache):
    return ds.cache(cache if isinstance(cache, str) else "")


def read_tfrecords(file_pattern, options, counter, probe=None):
    """This host's TFRecord records, in the order and with the repeats of `options`.

    Zero-byte files are dropped (`file_empty`) and files that end in a
    truncated or corrupt record counted (`file_truncated`) in `counter`.
    The compression is `options.compression_type`, checked on the first
    files, or detected there when None (`tfrecord.detect_compression`);
    then each file's first bytes are read: a file compressed otherwise is
    read with its own compression and counted (`compression_mismatch`).

    Args:
        file_pattern: str or list of str, see `resolve_files`.
        options: `ReaderOptions`.
        counter: `SkipCounter`.
        probe: function or None. Called as `probe(files, compression_type)`
            before the pipeline is built, to fail fast on a source of which
            nothing can be read (`probe.probe_records`).

    Returns:
        A `tf.data.Dataset` of serialized records.
    """
    files = shard_files(resolve_files(file_pattern), options.shard_index, options.num_shards)
    files, sizes = _drop_empty_files(files, counter)
    compression = tfrecord.detect_compression(files, options.compression_type)
    if probe is not None:
        probe(files, compression)
    compressions = _file_compressions(files, compression, counter)
    size_of = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(files, tf.constant(sizes, tf.int64)), -1
    )
    compression_of = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(files, tf.constant(compressions, tf.string)), ""
    )
    return _interleave(
        files, lambda path: _read_record_file(path, size_of.lookup(path), counter,
                                              compression_of.lookup(path)), options)


def read_text_lines(file_pattern, options):
    """This host's lines of text files (`*.txt` inside directories)."""
    files = shard_files(resolve_files(file_pattern, "*.txt"), options.shard_index,
                        options.num_shards)
    compression = options.compression_type or ""
    return _interleave(files, lambda path: tf.data.TextLineDataset(path, compression), options)


def image_folders(sources):
    """The directories among `sources` that hold images rather than TFRecords.

    Raises:
        ValueError: `sources` mixes image folders and TFRecord patterns.
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    folders = [s for s in sources if tf.io.gfile.isdir(s) and not tf.io.gfile.glob(
        s.rstrip("/") + "/*.tfrecord")]
    if folders and len(folders) != len(sources):
        raise ValueError("Pass either image folders or TFRecord patterns, not both.")
    return folders


def read_image_files(folders, options):
    """This host's image files of `folders` (not recursive), and how to read one.

    Returns:
        A `tf.data.Dataset` of scalar strings and a function that maps one to
        the encoded image bytes: with `cache` the files are read before
        caching (the dataset holds bytes), otherwise the paths are read
        where the function runs, in the parallel example map.
    """
    files = []
    for folder in folders:
        names = tf.io.gfile.listdir(folder)
        files += [folder.rstrip("/") + "/" + n for n in names
                  if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {folders}.")
    files = shard_files(sorted(files), options.shard_index, options.num_shards)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if options.training:
        ds = ds.shuffle(len(files), seed=options.host_seed, reshuffle_each_iteration=True)
    read = tf.io.read_file
    if options.cache:
        ds = _cache(ds.map(tf.io.read_file, num_parallel_calls=AUTOTUNE), options.cache)
        read = tf.identity
    if options.repeat:
        ds = ds.repeat()
    return ds, read
