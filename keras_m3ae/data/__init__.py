"""Input pipelines: image-caption TFRecords -> model-ready batches."""

from keras_m3ae import command_line

# `python -m keras_m3ae.data ...`: its `__main__` imports what it uses (see
# `keras_m3ae.command_line`); every other import loads the names below.
if not command_line.is_starting(__name__):
    from keras_m3ae.data.constants import CC12M_MEAN
    from keras_m3ae.data.constants import CC12M_STD
    from keras_m3ae.data.constants import DEFAULT_VOCABULARY
    from keras_m3ae.data.constants import MAX_TEXT_LENGTH
    from keras_m3ae.data.constants import PAD_TOKEN_ID
    from keras_m3ae.data.mixing import mix_datasets
    from keras_m3ae.data.datasets import image_dataset
    from keras_m3ae.data.datasets import image_text_dataset
    from keras_m3ae.data.datasets import text_dataset
    from keras_m3ae.data.files import default_shard
    from keras_m3ae.data.files import resolve_files
    from keras_m3ae.data.files import shard_files
    from keras_m3ae.data.skips import REASONS
    from keras_m3ae.data.skips import SkipCounter
    from keras_m3ae.data.skips import skipped_counts
    from keras_m3ae.data.tokenizer import M3AETokenizer
    from keras_m3ae.data.tokenizer import tokenize
    from keras_m3ae.data.transforms import denormalize_image
    from keras_m3ae.data.transforms import normalize_image
    from keras_m3ae.data.shapes import SHAPE_CLASS_NAMES
    from keras_m3ae.data.shapes import write_shapes_dataset
    from keras_m3ae.data.writer import WriteSummary
    from keras_m3ae.data.writer import folder_examples
    from keras_m3ae.data.writer import make_example
    from keras_m3ae.data.writer import webdataset_examples
    from keras_m3ae.data.writer import write_tfrecords
