"""Caption tokenization: bert-base-uncased WordPiece, padded, no special tokens."""

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from keras_m3ae.data.constants import DEFAULT_VOCABULARY
from keras_m3ae.data.constants import MAX_TEXT_LENGTH
from keras_m3ae.data.constants import PAD_TOKEN_ID

# BERT's BasicTokenizer, as the reference M3AE ran it (transformers 4.x
# `BertTokenizer`): tab, newline, return and space separators (Zs) become
# spaces; other control, format, private-use and surrogate characters (C*)
# and U+FFFD vanish, joining their neighbours; Python's `str.split` also
# splits on the line and paragraph separators.
_WHITESPACE = r"[\t\n\r\p{Zs}\x{2028}\x{2029}]"
_REMOVED = r"[\x{0}\x{FFFD}\p{Cc}\p{Cf}\p{Co}\p{Cs}]"
# The CJK Unified Ideographs blocks BERT puts spaces around.
_CJK = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
    r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
# Punctuation: every non-alphanumeric printable ASCII character and Unicode P*.
_PUNCTUATION = r"[!-/:-@\[-`{-~\p{P}]"
# WordPiece gives words longer than this many characters one [UNK].
_MAX_WORD_CHARS = 100


def bert_words(captions):
    """Splits captions into words exactly as BERT's uncased BasicTokenizer.

    Clean-up of control and invisible characters, spaces around CJK
    ideographs, lower-casing character by character (no NFKC folding:
    "Straße" keeps its ß, "ﬁ" stays a ligature, full-width letters stay
    full-width), NFD accent stripping, then a split on whitespace and around
    punctuation (kept as words).

    Args:
        captions: tf.string tensor of rank 1.

    Returns:
        A `tf.RaggedTensor` of words, `(batch, None)`.
    """
    text = tf.strings.regex_replace(captions, _WHITESPACE, " ")
    text = tf.strings.regex_replace(text, _REMOVED, "")
    text = tf.strings.regex_replace(text, _CJK, r" \0 ")
    # transformers' BertTokenizer lower-cases one character at a time, so a
    # capital sigma is always σ, never the word-final ς that a context-aware
    # lower-casing (Python's `str.lower`, `tf.strings.lower`) gives; every
    # other character maps as in Python (İ -> i + combining dot).
    text = tf.strings.regex_replace(text, "Σ", "σ")
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf_text.normalize_utf8(text, "NFD")
    text = tf.strings.regex_replace(text, r"\p{Mn}", "")
    return tf_text.regex_split(text, r"\s|" + _PUNCTUATION, _PUNCTUATION)


class M3AETokenizer:
    """Turns captions into `token_ids` and `padding_mask` for M3AE.

    M3AE tokenizes captions with the bert-base-uncased WordPiece vocabulary
    and feeds the ids without [CLS]/[SEP]. Words are split as BERT's own
    uncased tokenizer splits them (`bert_words`), so ids equal those of the
    Hugging Face `BertTokenizer` the reference M3AE used, on ordinary text
    and on odd characters alike (tested on 59 tricky strings); one
    deliberate difference: a caption that literally contains "[PAD]" or
    "[CLS]" is tokenized as text, never as that special token. WordPiece
    runs through `tensorflow_text.FastWordpieceTokenizer`; words longer
    than 100 characters become [UNK], as in BERT. Ids are truncated or
    padded with `PAD_TOKEN_ID` to `max_text_length` and the padding mask
    derived (True = real token). An empty caption gives all-padding ids and
    an all-False mask.

    It works inside `tf.data` (returns tf tensors) and eagerly (returns numpy
    arrays). Build it once and reuse it: loading the vocabulary is the costly
    part.

    Args:
        vocabulary: str. Path of a WordPiece vocabulary file, one token per
            line, `[PAD]` first and containing `[UNK]`. Defaults to the
            bundled bert-base-uncased vocabulary.
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
        with tf.io.gfile.GFile(self.vocabulary, "r") as f:
            self._tokens = [line.rstrip("\n") for line in f]
        if not self._tokens or self._tokens[PAD_TOKEN_ID] != "[PAD]":
            raise ValueError(
                f"Vocabulary {self.vocabulary!r} must have [PAD] as id "
                f"{PAD_TOKEN_ID} (its first line)."
            )
        if "[UNK]" not in self._tokens:
            raise ValueError(f"Vocabulary {self.vocabulary!r} has no [UNK] token.")
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=self._tokens,
            suffix_indicator="##",
            # Length is limited in characters below, as BERT does; bytes
            # only bound the work per word.
            max_bytes_per_word=4 * _MAX_WORD_CHARS,
            token_out_type=tf.int32,
            unknown_token="[UNK]",
            no_pretokenization=True,
        )

    @property
    def vocabulary_size(self):
        """Number of tokens in the vocabulary."""
        return len(self._tokens)

    def __call__(self, captions):
        """Tokenizes a string or a batch of strings.

        Args:
            captions: str, list of str, or tf.string tensor of rank 0 or 1.

        Returns:
            A tuple `(token_ids, padding_mask)`: int32 and bool, shape
            (T,) for a scalar input or (B, T) for a batch.
        """
        eager = not isinstance(captions, tf.Tensor)
        captions = tf.convert_to_tensor(captions, tf.string)
        scalar = captions.shape.rank == 0
        words = bert_words(tf.reshape(captions, [-1]))
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > _MAX_WORD_CHARS
        words = words.with_flat_values(tf.where(too_long, "[UNK]", words.flat_values))
        pieces = self._wordpiece.tokenize(words).merge_dims(1, 2)
        token_ids = pieces[:, : self.max_text_length].to_tensor(
            default_value=PAD_TOKEN_ID, shape=[None, self.max_text_length]
        )
        if scalar:
            token_ids = token_ids[0]
        padding_mask = tf.not_equal(token_ids, PAD_TOKEN_ID)
        if eager:
            return token_ids.numpy(), padding_mask.numpy()
        return token_ids, padding_mask

    def detokenize(self, token_ids):
        """Turns ids back into text, dropping padding (for inspection)."""
        token_ids = np.asarray(token_ids)
        squeeze = token_ids.ndim == 1
        rows = token_ids[None] if squeeze else token_ids
        texts = []
        for row in rows:
            tokens = [self._tokens[int(i)] for i in row if i != PAD_TOKEN_ID]
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
