"""Caption tokenization: bert-base-uncased WordPiece, padded, no special tokens."""

import keras_hub
import numpy as np
import tensorflow as tf

from keras_m3ae.data.constants import DEFAULT_VOCABULARY
from keras_m3ae.data.constants import MAX_TEXT_LENGTH
from keras_m3ae.data.constants import PAD_TOKEN_ID


class M3AETokenizer:
    """Turns captions into `token_ids` and `padding_mask` for M3AE.

    M3AE tokenizes captions with the bert-base-uncased WordPiece vocabulary
    and feeds the ids without [CLS]/[SEP]. This wraps keras-hub's
    `WordPieceTokenizer` with lower-casing and accent stripping (so ids equal
    those of the reference bert-base-uncased tokenizer: "Café" -> "cafe"),
    truncates or pads with `PAD_TOKEN_ID` to `max_text_length` and derives
    the padding mask (True = real token). An empty caption gives all-padding
    ids and an all-False mask.

    It works inside `tf.data` (returns tf tensors) and eagerly (returns numpy
    arrays). Build it once and reuse it: loading the vocabulary is the costly
    part.

    Args:
        vocabulary: str. Path of a WordPiece vocabulary file, one token per
            line. Defaults to the bundled bert-base-uncased vocabulary.
        max_text_length: int. Length T of the output sequences.

    Example:

    >>> tokenizer = M3AETokenizer(max_text_length=4)
    >>> token_ids, padding_mask = tokenizer(["Café"])
    >>> token_ids.tolist(), padding_mask.tolist()
    ([[7668, 0, 0, 0]], [[True, False, False, False]])
    """

    def __init__(self, vocabulary=None, max_text_length=MAX_TEXT_LENGTH):
        self.vocabulary = vocabulary or DEFAULT_VOCABULARY
        self.max_text_length = int(max_text_length)
        self._wordpiece = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=self.vocabulary,
            sequence_length=self.max_text_length,
            lowercase=True,
            strip_accents=True,
            dtype="int32",
        )
        if self._wordpiece.token_to_id("[PAD]") != PAD_TOKEN_ID:
            raise ValueError(
                f"Vocabulary {self.vocabulary!r} must have [PAD] as id "
                f"{PAD_TOKEN_ID} (its first line)."
            )

    @property
    def vocabulary_size(self):
        """Number of tokens in the vocabulary."""
        return self._wordpiece.vocabulary_size()

    def __call__(self, captions):
        """Tokenizes a string or a batch of strings.

        Args:
            captions: str, list of str, or tf.string tensor of rank 0 or 1.

        Returns:
            A tuple `(token_ids, padding_mask)`: int32 and bool, shape
            (T,) for a scalar input or (B, T) for a batch.
        """
        token_ids = self._wordpiece(captions)
        if isinstance(token_ids, tf.Tensor):
            token_ids = tf.cast(token_ids, tf.int32)
            return token_ids, tf.not_equal(token_ids, PAD_TOKEN_ID)
        token_ids = np.asarray(token_ids, dtype=np.int32)
        return token_ids, token_ids != PAD_TOKEN_ID

    def detokenize(self, token_ids):
        """Turns ids back into text, dropping padding (for inspection)."""
        token_ids = np.asarray(token_ids)
        squeeze = token_ids.ndim == 1
        rows = token_ids[None] if squeeze else token_ids
        texts = []
        for row in rows:
            tokens = [self._wordpiece.id_to_token(int(i)) for i in row if i != PAD_TOKEN_ID]
            texts.append(" ".join(tokens).replace(" ##", ""))
        return texts[0] if squeeze else texts


def tokenize(captions, max_text_length=MAX_TEXT_LENGTH, vocabulary=None):
    """One-off tokenization of captions; see `M3AETokenizer`.

    Builds a tokenizer on each call, so prefer `M3AETokenizer` in loops.

    Args:
        captions: str or list of str.
        max_text_length: int. Length T of the output sequences.
        vocabulary: str. Vocabulary path; defaults to bert-base-uncased.

    Returns:
        A tuple `(token_ids, padding_mask)` of numpy arrays.

    Example:

    >>> token_ids, padding_mask = tokenize(["a red circle"], max_text_length=8)
    >>> int(padding_mask.sum())
    3
    """
    return M3AETokenizer(vocabulary, max_text_length)(captions)
