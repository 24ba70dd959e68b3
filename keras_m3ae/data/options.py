"""The reader options every builder of `keras_m3ae.data` shares, defined once."""

import dataclasses

import numpy as np

from keras_m3ae.data.tfrecord import normalize_compression
from keras_m3ae.data.files import default_shard
from keras_m3ae.data.positions import DataPosition  # noqa: F401 (annotation)
from keras_m3ae.data.skips import SkipCounter


def order_defaults(training, deterministic=None, drop_remainder=None):
    """`(deterministic, drop_remainder)` with their defaults filled in.

    Training reads in whatever order is fastest and drops the last partial
    batch (static shapes); evaluation keeps the order and every example.
    """
    if deterministic is None:
        deterministic = not training
    if drop_remainder is None:
        drop_remainder = training
    return bool(deterministic), bool(drop_remainder)


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
    """How a source is read: sharding, order, shuffling, caching, batching.

    `image_text_dataset`, `image_dataset` and `text_dataset` take these as
    keyword arguments (`**options`) and build one `ReaderOptions` from
    them; unset defaults are resolved once, here.

    Args:
        training: bool. Shuffling, non-deterministic order and dropped
            remainder by default when True.
        shard_index: int or None. This host's index among `num_shards`;
            defaults to `jax.process_index()` on JAX, else 0 (see
            `default_shard`).
        num_shards: int or None. Number of hosts sharing the files.
        shuffle_buffer: int. Examples in the shuffle buffer (training only).
        cache: bool or str. Cache the encoded records in memory (True) or in
            a file with this path prefix; augmentation stays random.
        compression_type: str or None. "GZIP" or "ZLIB" for compressed
            TFRecord (or text) files, "" for uncompressed; None detects it
            from the first TFRecord file (text files: uncompressed).
        seed: int or None. Seed of file order, shuffling and augmentation
            (None: a random one). Hosts with the same seed still draw
            different augmentations.
        deterministic: bool or None. Keep element order reproducible;
            defaults to `not training`.
        repeat: bool. Repeat forever (needed as a source of `mix_datasets`
            to keep its proportions).
        drop_remainder: bool or None. Drop the last partial batch; defaults
            to `training`.
        skip_counter: `SkipCounter` or None. Where to count skips; a new one
            is made by default.
        num_parallel_files: int. Files read at once.
        position: `keras_m3ae.data.positions.DataPosition` or None. Keeps the
            stream's position for exact resumption (TFRecord image sources;
            needs `repeat=True`); `deterministic` then defaults to True.
    """

    training: bool = True
    shard_index: "int | None" = None
    num_shards: "int | None" = None
    shuffle_buffer: int = 10_000
    cache: "bool | str" = False
    compression_type: "str | None" = None
    seed: "int | None" = None
    deterministic: "bool | None" = None
    repeat: bool = False
    drop_remainder: "bool | None" = None
    skip_counter: "SkipCounter | None" = None
    num_parallel_files: int = 16
    position: "DataPosition | None" = None

    def __post_init__(self):
        shard_index, num_shards = default_shard(self.shard_index, self.num_shards)
        deterministic = self.deterministic
        if deterministic is None and self.position is not None:
            deterministic = True
        deterministic, drop_remainder = order_defaults(
            self.training, deterministic, self.drop_remainder)
        object.__setattr__(self, "compression_type",
                           normalize_compression(self.compression_type))
        seed = self.seed
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**31))
        resolved = dict(shard_index=shard_index, num_shards=num_shards, seed=seed,
                        deterministic=deterministic, drop_remainder=drop_remainder)
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    @property
    def host_seed(self):
        """The seed of this host's file order, shuffling and augmentation."""
        return self.seed * 1000003 + self.shard_index

    def counter(self, kind):
        """The `skip_counter` given, or a new one named after `kind` and the shard."""
        return self.skip_counter or SkipCounter(
            name=f"{kind}[{self.shard_index}/{self.num_shards}]")
