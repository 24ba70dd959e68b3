"""Hand-made TFRecords for the data tests.

Built without the library's writer on purpose, so tests can make records
the writer never would (missing features, odd types).
"""

import tensorflow as tf


def serialize_example(**features):
    """A serialized `tf.train.Example`: int -> int64, str/bytes -> bytes."""
    feature = {}
    for name, value in features.items():
        if isinstance(value, int):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            value = value.encode() if isinstance(value, str) else value
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_records(path, records):
    """Writes serialized records to one TFRecord file; returns its path."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)
