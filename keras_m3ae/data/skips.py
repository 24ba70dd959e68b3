"""Counting and logging the examples a pipeline skips or repairs.

Web-scale image-text data always holds some broken records. The pipeline never
crashes on them and never hides them: every skip is counted under a reason that
the user can read at any time and that is logged every `log_every` events.
"""

import logging
import threading
import weakref

import tensorflow as tf

logger = logging.getLogger("keras_m3ae.data")

# Reasons an example is dropped from the stream.
SKIP_REASONS = (
    "image_missing",  # no image feature, or empty bytes
    "image_not_decodable",  # bytes are not a known image format
    "image_truncated",  # JPEG without end-of-image marker, PNG without IEND
    "image_corrupt",  # the header declares far more pixels than the bytes can hold
    "image_non_finite",  # the decoded image holds NaN or inf
    "image_decode_error",  # the decoder failed on bytes that looked valid
    "label_missing",  # `label_key` was requested but the record has none
    "text_empty_line",  # text-only source: a blank line
)
# Reasons an example is kept without its caption (`padding_mask` all False).
CAPTION_REASONS = (
    "caption_empty",  # empty or missing caption
    "caption_invalid_utf8",  # caption bytes are not valid UTF-8
)
# Reasons a whole file, or its tail, is lost, or is read unlike the others.
FILE_REASONS = (
    "file_empty",  # zero-byte shard
    "file_truncated",  # a record file that ends inside a record, or has a bad CRC
    "compression_mismatch",  # compressed unlike the first files: read with its own (not lost)
)
REASONS = SKIP_REASONS + CAPTION_REASONS + FILE_REASONS

_ALL_COUNTERS = weakref.WeakSet()
_LOCK = threading.Lock()


class SkipCounter:
    """Per-reason counters of skipped data, updated from inside `tf.data`.

    Counts live in a `tf.Variable` so that the graph functions of `tf.data`
    can add to them without a Python call on the hot path; a Python callback
    runs only when something is skipped, to log every `log_every` events.

    `image_decode_error` is special: it is the number of examples that
    entered the decoder minus those that left it (a decoder error cannot be
    caught in graph code, so the failing element is dropped by
    `ignore_errors` and noticed by the gap). While an iterator is running the
    gap can include the few elements being decoded at that instant (at most
    the map's parallelism); once the iterator is exhausted it is exact.

    Args:
        log_every: int. Log the counts each time this many events happened.
        name: str. Shown in log lines, to tell several pipelines apart.

    Example:

    >>> counter = SkipCounter(name="train")
    >>> counter.counts()["image_missing"]
    0
    """

    def __init__(self, log_every=1000, name="data"):
        self.log_every = int(log_every)
        self.name = name
        with tf.init_scope(), tf.device("/CPU:0"):
            self._counts = tf.Variable(
                tf.zeros([len(REASONS)], tf.int64), trainable=False
            )
            # Examples that entered / left the decoder (see class docstring).
            self._decode_io = tf.Variable(tf.zeros([2], tf.int64), trainable=False)
        self._logged_total = 0
        with _LOCK:
            _ALL_COUNTERS.add(self)

    # Graph-side API, used inside dataset functions.

    def add_if(self, condition, reason):
        """Adds one to `reason` when the scalar bool `condition` is True.

        Args:
            condition: scalar bool tensor.
            reason: str, one of `REASONS`.

        Returns:
            A scalar bool tensor equal to `condition`, to chain control
            dependencies on.
        """
        index = REASONS.index(reason)

        def _add():
            self._counts.assign_add(
                tf.one_hot(index, len(REASONS), dtype=tf.int64)
            )
            tf.py_function(self._maybe_log, [], [])
            return tf.constant(True)

        def _noop():
            return tf.constant(False)

        with tf.control_dependencies([tf.cond(condition, _add, _noop)]):
            return tf.identity(condition)

    def add_flags(self, flags):
        """Adds one to each reason whose scalar bool condition is True.

        One `assign_add` of a count vector per call, and a Python callback
        (for logging) only when some condition holds: much cheaper per
        example than one `add_if` per reason.

        Args:
            flags: list of `(condition, reason)` pairs; conditions are
                scalar bool tensors, reasons are distinct `REASONS`.

        Returns:
            A scalar bool tensor, True when something was counted, to chain
            control dependencies on.
        """
        reasons = [reason for _, reason in flags]
        if len(set(reasons)) != len(reasons):
            raise ValueError(f"Reasons must be distinct, got {reasons}.")
        indices = tf.constant([[REASONS.index(reason)] for reason in reasons], tf.int64)
        conditions = tf.stack([tf.convert_to_tensor(c, tf.bool) for c, _ in flags])
        increments = tf.scatter_nd(indices, tf.cast(conditions, tf.int64), [len(REASONS)])
        added = self._counts.assign_add(increments)
        any_event = tf.reduce_any(conditions)

        def _log():
            tf.py_function(self._maybe_log, [], [])
            return tf.constant(True)

        with tf.control_dependencies([added]):
            logged = tf.cond(any_event, _log, lambda: tf.constant(False))
        with tf.control_dependencies([logged]):
            return tf.identity(any_event)

    def add_now(self, reason, amount=1):
        """Adds `amount` to `reason` eagerly (outside `tf.data`)."""
        index = REASONS.index(reason)
        self._counts.assign_add(
            tf.one_hot(index, len(REASONS), dtype=tf.int64) * amount
        )
        self._maybe_log()

    def enter_decoder(self):
        """Counts one example entering the decoder; returns the update op."""
        return self._decode_io.assign_add(tf.constant([1, 0], tf.int64))

    def leave_decoder(self):
        """Counts one example leaving the decoder; returns the update op."""
        return self._decode_io.assign_add(tf.constant([0, 1], tf.int64))

    # Python-side API.

    def _explicit_counts(self):
        return dict(zip(REASONS, self._counts.numpy().tolist()))

    def counts(self):
        """Returns a dict reason -> count (every reason, zeros included)."""
        values = self._counts.numpy().tolist()
        entered, left = self._decode_io.numpy().tolist()
        result = dict(zip(REASONS, values))
        result["image_decode_error"] += max(0, entered - left)
        return result

    def total_skipped(self):
        """Returns the number of examples dropped (not caption repairs)."""
        counts = self.counts()
        return sum(counts[reason] for reason in SKIP_REASONS)

    def reset(self):
        """Sets every count back to zero."""
        self._counts.assign(tf.zeros_like(self._counts))
        self._decode_io.assign(tf.zeros_like(self._decode_io))
        self._logged_total = 0

    def log(self, include_in_flight=True):
        """Logs the non-zero counts at WARNING level.

        Args:
            include_in_flight: bool. Include the decoder gap (see the class
                docstring); off when logging from inside the pipeline,
                where the element being processed is itself in flight.
        """
        counts = self.counts() if include_in_flight else self._explicit_counts()
        nonzero = {k: v for k, v in counts.items() if v}
        if nonzero:
            logger.warning("keras_m3ae.data[%s] skipped or repaired: %s", self.name, nonzero)

    def _maybe_log(self):
        total = int(tf.reduce_sum(self._counts).numpy())
        if total - self._logged_total >= self.log_every or self._logged_total == 0:
            self._logged_total = total
            self.log(include_in_flight=False)

    def __repr__(self):
        nonzero = {k: v for k, v in self.counts().items() if v}
        return f"SkipCounter(name={self.name!r}, counts={nonzero})"


def skipped_counts():
    """Returns the counts of all live `SkipCounter`s of this process, summed.

    Returns:
        dict reason -> count, with every reason in `REASONS`.

    Example:

    >>> from keras_m3ae.data import skipped_counts
    >>> sorted(skipped_counts())[:2]
    ['caption_empty', 'caption_invalid_utf8']
    """
    total = dict.fromkeys(REASONS, 0)
    with _LOCK:
        counters = list(_ALL_COUNTERS)
    for counter in counters:
        for reason, value in counter.counts().items():
            total[reason] += value
    return total
