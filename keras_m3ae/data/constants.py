"""Numbers of the M3AE data recipe (M3AE paper, Appendix A.4)."""

import os

# Per-channel pixel statistics of CC12M, used to normalise images in [0, 1].
CC12M_MEAN = (0.5762, 0.5503, 0.5213)
CC12M_STD = (0.3207, 0.3169, 0.3307)

# Captions are cut or padded to this many WordPiece tokens, no special tokens.
MAX_TEXT_LENGTH = 64

# bert-base-uncased WordPiece vocabulary, shipped as package data.
DEFAULT_VOCABULARY = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "vocab",
    "bert-base-uncased-vocab.txt",
)
# Its size (lines of that file; a test checks it).
BERT_VOCABULARY_SIZE = 30522
# Padding id of that vocabulary ([PAD] is its first line).
PAD_TOKEN_ID = 0


def normalization_affine(value_range=(0, 255), mean=CC12M_MEAN, std=CC12M_STD):
    """The per-channel multiply-add that normalises pixels: `x * scale + offset`.

    Equals `((x - low) / (high - low) - mean) / std`, the CC12M recipe for
    `value_range=(0, 255)`: every place that normalises images (the
    `tf.data` pipeline, the models' image converter) takes its numbers from
    here. Computed in Python floats (double precision), so callers that
    cast to float32 all get the same constants.

    Args:
        value_range: `(low, high)` pixel range of the input.
        mean: per-channel mean of the pixels scaled to [0, 1].
        std: per-channel standard deviation of the pixels scaled to [0, 1].

    Returns:
        `(scale, offset)`, two lists of floats, one value per channel.

    Example:

    >>> scale, offset = normalization_affine()
    >>> len(scale), len(offset)
    (3, 3)
    """
    low, high = (float(v) for v in value_range)
    if high <= low:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}.")
    width = high - low
    scale = [1.0 / (width * float(s)) for s in std]
    offset = [(-low / width - float(m)) / float(s) for m, s in zip(mean, std)]
    return scale, offset
