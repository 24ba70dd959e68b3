"""The caption tokenizer gives the ids of Hugging Face's bert-base-uncased `BertTokenizer`."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_m3ae import data
from keras_m3ae.data.tokenizer import bert_words

pytestmark = pytest.mark.backend_independent

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "tokenizer", "bert_uncased_ids.json")


def fixture_rows():
    with open(FIXTURE, encoding="utf-8") as f:
        return json.load(f)["rows"]


def test_ids_equal_the_reference_bert_tokenizer_on_tricky_strings():
    rows = fixture_rows()
    assert len(rows) >= 50
    tokenizer = data.M3AETokenizer(max_text_length=128)
    ids, mask = tokenizer([row["text"] for row in rows])
    wrong = []
    for row, row_ids, row_mask in zip(rows, ids, mask):
        expected = row.get("ids_as_text", row["ids"])
        # Padding only after the real tokens: the mask is the ids' support.
        assert row_mask.tolist() == [True] * int(row_mask.sum()) + [False] * (128 - row_mask.sum())
        if row_ids[row_mask].tolist() != expected[:128]:
            wrong.append(row["text"])
    assert not wrong, wrong


def test_literal_special_tokens_are_text_not_special_ids():
    # The one deliberate difference from BertTokenizer: "[PAD]" inside a
    # caption must not become the padding id.
    (special,) = [row for row in fixture_rows() if "ids_as_text" in row]
    assert 0 in special["ids"] and 0 not in special["ids_as_text"]
    ids, mask = data.M3AETokenizer(max_text_length=32)(special["text"])
    assert mask.sum() == len(special["ids_as_text"]) and 0 not in ids[mask]


@pytest.mark.parametrize("text, words", [
    ("Straße ﬁne Ｘ²", ["straße", "ﬁne", "ｘ²"]),  # no NFKC folding
    ("ΟΔΥΣΣΕΥΣ", ["οδυσσευσ"]),  # capital sigma lowered one character at a time
    ("a\u200bb c\x00d e\ufffdf", ["ab", "cd", "ef"]),  # invisible characters vanish
    ("a\u00a0b\u3000c\u2028d", ["a", "b", "c", "d"]),  # Unicode spaces separate
    ("naïve,東京!", ["naive", ",", "東", "京", "!"]),  # accents, punctuation, CJK
])
def test_bert_word_splitting(text, words):
    got = bert_words(tf.constant([text]))[0].numpy().tolist()
    assert [w.decode() for w in got] == words


def test_words_over_100_characters_are_one_unknown_token():
    tokenizer = data.M3AETokenizer(max_text_length=8)
    ids, mask = tokenizer(["a" * 100, "a" * 101, "ж" * 60])
    unk = 100
    assert ids[1].tolist() == [unk] + [0] * 7
    assert ids[0][0] != unk and ids[2][0] != unk  # 100 characters, 120 bytes: not too long


def test_inside_tf_data_equals_eager():
    rows = fixture_rows()
    tokenizer = data.M3AETokenizer(max_text_length=16)
    texts = [row["text"] for row in rows]
    eager_ids, eager_mask = tokenizer(texts)
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(7).map(tokenizer)
    ids = np.concatenate([i for i, _ in ds.as_numpy_iterator()])
    mask = np.concatenate([m for _, m in ds.as_numpy_iterator()])
    np.testing.assert_array_equal(ids, eager_ids)
    np.testing.assert_array_equal(mask, eager_mask)
    scalar_ids, scalar_mask = tokenizer(texts[0])
    np.testing.assert_array_equal(scalar_ids, eager_ids[0])
    assert scalar_ids.shape == (16,) and scalar_mask.dtype == bool
