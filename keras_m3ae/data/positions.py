"""Where a training stream stands, so that a restarted run continues it exactly.

A resumed run must see exactly the batches the interrupted one would have
seen next. The number of steps K done gives the number of examples consumed
(K x the per-host batch, the stream being infinite with dropped
remainders), but not the number of RAW records consumed: records whose image
is broken are dropped after decoding, and tf.data and Keras read ahead of
training. Skipping K batches of the finished stream would be exact but
decodes every skipped image; skipping raw records reads bytes only.

`DataPosition` keeps a small ledger inside the pipeline: every raw record
carries its index in the host's (deterministic) raw stream through
decoding and filtering, and the n-th example that survives writes its raw
index into slot `n % capacity` of a ring buffer held in `tf.Variable`s.
After K steps, slot `K * batch - 1` says how many raw records the consumed
batches came from, however far the pipeline has read ahead (as long as that
is less than `capacity` examples). A new iterator of the dataset starts at
the position last `set`, reading and discarding raw records before it
without decoding them.
"""

import numpy as np
import tensorflow as tf


class DataPosition:
    """The ledger of one host's training stream (see the module docstring).

    Pass one as the `position` reader option of `image_text_dataset` or
    `image_dataset` (with `repeat=True`, `deterministic=True` and a
    `seed`); `keras_m3ae.training.TrainingCheckpoint` saves `state(steps)`
    and restores it with `set`.

    Args:
        capacity: int or None. Examples the ring buffer remembers; must
            exceed what the pipeline and the trainer read ahead of training
            (a few batches of prefetch). None: 64 batches (at least 4096).

    Example:
    >>> position = DataPosition()
    >>> ds = image_text_dataset(files, batch_size=64, repeat=True,
    ...                         deterministic=True, seed=0, position=position)
    >>> position.state(steps=100)  # after 100 training steps
    {'raw_records': 6412, 'examples': 6400}
    """

    def __init__(self, capacity=None):
        if capacity is not None and capacity < 1:
            raise ValueError(f"`capacity` must be positive; got {capacity}.")
        self.capacity = capacity
        self.batch_size = None
        self._ring = None
        with tf.init_scope(), tf.device("/CPU:0"):
            # Where the next iterator starts: raw records to pass over, and
            # the number of examples they held.
            self._start = tf.Variable(tf.zeros([2], tf.int64), trainable=False)
            # Iterators started so far; each tags its ledger entries, so a
            # read-ahead iterator Keras drew one batch from cannot be mistaken
            # for the one that trains.
            self._iterators = tf.Variable(tf.constant(0, tf.int64), trainable=False)

    def attach(self, batch_size, options):
        """Checks the reader options a position needs; called by the builders."""
        problems = []
        if batch_size is None:
            problems.append("a batch_size (not None)")
        if not options.repeat:
            problems.append("repeat=True")
        if not options.drop_remainder:
            problems.append("drop_remainder=True")
        if problems:
            raise ValueError(
                "A dataset with a `position` needs " + ", ".join(problems)
                + " (an infinite stream of full batches, so that steps count examples).")
        if self.batch_size is not None and self.batch_size != batch_size:
            raise ValueError(f"This position already belongs to a dataset with batch_size "
                             f"{self.batch_size}; got {batch_size}. Use one position per dataset.")
        self.batch_size = int(batch_size)
        if self._ring is None:
            self.capacity = int(self.capacity or max(4096, 64 * self.batch_size))
            with tf.init_scope(), tf.device("/CPU:0"):
                # Ring buffer: [iterator, example number, raw index] per slot.
                self._ring = tf.Variable(tf.fill([self.capacity, 3], tf.constant(-1, tf.int64)),
                                         trainable=False)

    def _per_iterator(self, make):
        """An infinite repeat of `make()`, evaluated when an iterator starts.

        Zipped beside a pipeline, it hands each iterator values read at its
        start without nesting the pipeline in a `flat_map` (where tf.data's
        autotuning does not reach).
        """
        return tf.data.Dataset.range(1).flat_map(
            lambda _: tf.data.Dataset.from_tensors(make()).repeat())

    def indexed(self, raw):
        """`(raw_index, record)` pairs from the position last `set`, per iterator.

        The start is read when an iterator begins, so setting it between
        `fit` calls (or before the first) moves the next iterator. The
        records before it are passed over undecoded.
        """
        start = self._per_iterator(lambda: self._start.read_value()[0])
        ds = tf.data.Dataset.zip(start, raw.enumerate())
        ds = ds.filter(lambda first, item: item[0] >= first)
        return ds.map(lambda first, item: item)

    def record(self, kept):
        """Writes the ledger for `kept`, a dataset of `(raw_index, *rest)`; yields `rest`.

        Must come after every filter and before batching; it runs in order
        (no parallelism), so example n is the n-th one the batches hold.
        """
        header = self._per_iterator(
            lambda: tf.stack([self._iterators.assign_add(1), self._start.read_value()[1]]))

        def write(header, item):
            n, (raw_index, *rest) = item
            number = header[1] + n
            slot = tf.math.floormod(number, self.capacity)
            entry = tf.stack([header[0], number, tf.cast(raw_index, tf.int64)])
            written = self._ring.scatter_nd_update([[slot]], entry[None])
            with tf.control_dependencies([written]):
                return tuple(tf.nest.map_structure(tf.identity, rest))

        return tf.data.Dataset.zip(header, kept.enumerate()).map(write)

    def state(self, steps):
        """The position after `steps` batches of the current iterator.

        Args:
            steps: int. Batches consumed since the position last `set`
                plus the batches the position held then (the global step
                count when the run started from the stream's beginning).

        Returns:
            dict with `raw_records` (raw records the consumed batches came
            from, the ones filtered out between them included) and
            `examples` (examples they held).

        Raises:
            RuntimeError: the ledger no longer (or not yet) holds that
                entry: the pipeline read more than `capacity` examples
                ahead, or `steps` is wrong.
        """
        if self.batch_size is None:
            raise RuntimeError("This position belongs to no dataset yet.")
        examples = int(steps) * self.batch_size
        start_raw, start_examples = self._start.numpy().tolist()
        if examples == start_examples:
            return {"raw_records": start_raw, "examples": examples}
        iterator = int(self._iterators.numpy())
        entry = self._ring[(examples - 1) % self.capacity].numpy().tolist()
        if entry[:2] != [iterator, examples - 1]:
            raise RuntimeError(
                f"The data position ledger has no entry for example {examples - 1} of "
                f"iterator {iterator} (slot holds example {entry[1]} of iterator {entry[0]}). "
                f"The pipeline read more than capacity={self.capacity} examples ahead, "
                "or the step count does not match this dataset; raise `capacity`.")
        return {"raw_records": entry[2] + 1, "examples": examples}

    def set(self, state):
        """Makes the next iterator start at `state` (from `state()`); None: the beginning."""
        state = state or {"raw_records": 0, "examples": 0}
        self._start.assign(np.array([state["raw_records"], state["examples"]], np.int64))
