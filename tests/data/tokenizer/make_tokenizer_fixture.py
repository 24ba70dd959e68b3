"""Writes bert_uncased_ids.json: Hugging Face bert-base-uncased ids for tricky strings.

Run once, in a throwaway environment with `transformers` 4.x installed (CI
needs neither this script nor that package):

    python -m venv /tmp/tok && /tmp/tok/bin/pip install "transformers<5"
    /tmp/tok/bin/python tests/data/tokenizer/make_tokenizer_fixture.py

The reference M3AE tokenizes captions with `transformers.BertTokenizer`
("bert-base-uncased", `add_special_tokens=False`): in transformers 4.x that
is the pure-Python port of BERT's own BasicTokenizer + WordPiece (5.x backs
the same class with the Rust `tokenizers`, which differs on a few
characters). The ids stored (`ids`) are that tokenizer's on the bundled
vocabulary. Its `tokenize` turns a literal "[PAD]" or "[CLS]" inside a
caption into that special token; we deliberately read it as text (a "[PAD]"
in a caption must not become padding), so for such strings `ids_as_text`
holds the ids with the special tokens split as text (the Rust tokenizer
with `split_special_tokens=True`, which agrees with the Python one on every
other string here).
"""

import json
import os

from transformers import BertTokenizer
from transformers import BertTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = os.path.join(HERE, "..", "..", "..", "keras_m3ae", "vocab", "bert-base-uncased-vocab.txt")

STRINGS = [
    # Ordinary captions.
    "A red circle on a blue background",
    "Two dogs playing in the snow, 2019.",
    "don't stop believin' -- it's \"fine\"",
    "https://example.com/path?q=1&x=y #hashtag @user",
    "C++ vs. C# (and F#) 3.14 1,000,000 $5.99 50%",
    # Accents and case.
    "Café Crème Brûlée naïve résumé",
    "ÀÉÎÕÜ àéîõü Ññ Çç Øø Åå",
    "Ελληνικά ΑΘΗΝΑ ΟΔΥΣΣΕΥΣ ΣΑΣ",
    "İstanbul ıi IĞDIR",
    "Straße STRASSE ẞ",
    "МОСКВА Москва ёлка",
    "Tiếng Việt có dấu",
    "ǅ ǈ ǋ ǲ",
    # Compatibility characters (NFKC would change these; BERT does not).
    "ﬁnancial ﬂow ﬀ ﬃ",
    "ＦＵＬＬ ｗｉｄｔｈ １２３",
    "x² + y³ = z¹ H₂O",
    "½ ¼ ¾ ⅓",
    "Ⅻ Ⅸ ⅻ chapter Ⅳ",
    "① ② ⓐ Ⓐ",
    "㎏ ㎞ ℃ № ™",
    "ℌ𝔢𝔩𝔩𝔬 𝐁𝐨𝐥𝐝",
    # Invisible and control characters.
    "zero\u200bwidth space",
    "zero\u200dwidth joiner",
    "soft\u00adhyphen",
    "\ufeffbyte order mark",
    "null\x00byte and bell\x07 and escape\x1b[0m",
    "form\x0cfeed and vertical\x0btab",
    "tab\tnew\nline\rreturn",
    "no\u00a0break\u00a0space",
    "ideographic\u3000space and em\u2003space",
    "left\u200eright\u200fmarks",
    "replacement \ufffd char",
    "private \ue000 use",
    "line\u2028separator\u2029paragraph",
    # Other scripts.
    "中文字符测试 東京タワー",
    "ひらがな カタカナ がぎぐ",
    "한국어 텍스트",
    "العربية مُشَكَّلَة",
    "עִבְרִית",
    "हिन्दी भाषा",
    "ภาษาไทย",
    "ქართული",
    # Symbols and emoji.
    "I ❤ NY ☺ ★",
    "emoji 😀 👍🏽 👨‍👩‍👧 🇫🇷",
    "quotes “curly” ‘single’ «guillemets» „low“",
    "dash – em — ellipsis… bullet •",
    "math ± × ÷ ≤ ≥ ≠ ∞ √ ∑",
    "currency € £ ¥ ₹ ₿ ¢",
    "arrows → ← ↑ ↓ ⇒",
    "§ ¶ † ‡ © ® ° µ",
    # Word length and spacing.
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101,
    "ж" * 60 + " short",
    "é" * 120,
    "   leading and trailing   ",
    "",
    "    ",
    "MiXeD CaSe WoRdS",
    "unaffable unbelievable antidisestablishmentarianism",
    "[CLS] [SEP] [MASK] [PAD] [UNK] literal brackets",
]


def main():
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise SystemExit("Use transformers<5: its BertTokenizer is the pure-Python one.")
    slow = BertTokenizer(VOCAB, do_lower_case=True)
    fast = BertTokenizerFast(VOCAB, do_lower_case=True, split_special_tokens=True)
    special = set(slow.all_special_tokens)
    rows = []
    for text in STRINGS:
        row = {"text": text, "ids": slow.encode(text, add_special_tokens=False)}
        if any(token in text for token in special):
            row["ids_as_text"] = fast.encode(text, add_special_tokens=False)
        elif fast.encode(text, add_special_tokens=False) != row["ids"]:
            raise SystemExit(f"The Python and Rust tokenizers disagree on {text!r}.")
        rows.append(row)
    out = os.path.join(HERE, "bert_uncased_ids.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"source": f"transformers {transformers.__version__} BertTokenizer "
                             "(do_lower_case=True), bundled vocabulary", "rows": rows},
                  f, ensure_ascii=True, indent=1)
    print(f"wrote {len(rows)} strings to {out}")


if __name__ == "__main__":
    main()
