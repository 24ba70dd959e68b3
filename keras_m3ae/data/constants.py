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
