"""The data/model contract is checked before the first step, naming both numbers."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import tiny_backbone
from conftest import tiny_batch
from conftest import tiny_pretrainer
from keras_m3ae import data
from keras_m3ae.data import checks
from records import serialize_example
from records import write_records


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    def jpeg(value):
        buffer = io.BytesIO()
        Image.new("RGB", (20, 20), (value, 255 - value, value)).save(buffer, format="JPEG")
        return buffer.getvalue()

    records = [serialize_example(jpg=jpeg(30 * i), txt=f"a photo number {i}") for i in range(4)]
    return write_records(tmp_path_factory.mktemp("contract") / "a.tfrecord", records)


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


@pytest.mark.backend_independent
def test_builders_attach_what_their_batches_promise(shard, tmp_path):
    ds = data.image_text_dataset(shard, image_size=16, max_text_length=8, batch_size=2,
                                 training=False)
    assert ds.data_spec.image_size == 16 and ds.data_spec.max_text_length == 8
    assert ds.data_spec.vocabulary_size == 30522  # bert-base-uncased
    low, high = ds.data_spec.image_range
    batch = next(iter(ds))
    assert int(tf.reduce_max(batch["token_ids"])) < 30522
    assert low <= float(tf.reduce_min(batch["images"])) <= float(tf.reduce_max(batch["images"])) \
        <= high
    images = data.image_dataset(shard, image_size=16, max_text_length=8, batch_size=None,
                                training=False)
    assert images.data_spec.vocabulary_size is None  # ids all padding: fits any vocabulary
    texts = tmp_path / "t.txt"
    texts.write_text("one caption\nanother one\n")
    text = data.text_dataset(str(texts), image_size=16, max_text_length=8, batch_size=None,
                             training=False)
    mixed = data.mix_datasets([images, text], [1, 1], batch_size=2, training=False)
    assert mixed.data_spec.vocabulary_size == 30522 and mixed.data_spec.image_size == 16


def test_a_dataset_that_does_not_fit_the_model_fails_before_the_first_step(shard):
    # The README tour's mistake: a 1000-id vocabulary fed BERT ids (up to 30521).
    pretrainer = tiny_pretrainer(tiny_backbone(vocabulary_size=1000))
    pretrainer.compile(optimizer="adam")
    before = _weights(pretrainer)
    ds = data.image_text_dataset(shard, image_size=16, max_text_length=8, batch_size=2,
                                 training=False)
    with pytest.raises(ValueError, match=r"tokenizer has 30522 token ids but the model's "
                                         r"vocabulary_size is 1000"):
        pretrainer.fit(ds, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="30522 token ids .* 1000"):
        pretrainer.evaluate(ds, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(pretrainer)))

    long_text = data.image_text_dataset(shard, image_size=16, max_text_length=12, batch_size=2,
                                        training=False)
    with pytest.raises(ValueError, match=r"sequences have length 12 but the model's "
                                         r"max_text_length is 8"):
        pretrainer.fit(long_text, verbose=0)
    big = data.image_text_dataset(shard, image_size=32, max_text_length=8, batch_size=2,
                                  training=False)
    with pytest.raises(ValueError, match=r"images are 32x32 but the model takes 16x16"):
        pretrainer.fit(big, verbose=0)


def test_bad_values_in_arrays_are_clear_errors():
    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer="adam")
    before = _weights(pretrainer)
    batch = tiny_batch(4)
    negative = dict(batch, token_ids=batch["token_ids"].copy())
    negative["token_ids"][1, 2] = -3
    with pytest.raises(ValueError, match=r"range over \[-3, .*outside the vocabulary \[0, 50\)"):
        pretrainer.fit(negative, batch_size=2, verbose=0)
    too_big = dict(batch, token_ids=batch["token_ids"] + 50)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 50\)"):
        pretrainer.train_on_batch(too_big)
    pixels = (np.random.default_rng(0).random((4, 16, 16, 3)) * 255).round()
    with pytest.raises(ValueError, match=r"`images` are uint8; the model takes float"):
        pretrainer.fit(dict(batch, images=pixels.astype("uint8")), batch_size=2, verbose=0)
    with pytest.raises(ValueError, match=r"`images` range over \[0, 25\d\]; .*normalize_image"):
        pretrainer.fit(dict(batch, images=pixels.astype("float32")), batch_size=2, verbose=0)
    with pytest.raises(ValueError, match=r"`token_ids` are float32; the model takes integer"):
        pretrainer.fit(dict(batch, token_ids=batch["token_ids"].astype("float32")), verbose=0)
    # A tf.data pipeline of uint8 images is refused by its element spec.
    uint8 = tf.data.Dataset.from_tensor_slices(dict(batch, images=pixels.astype("uint8")))
    with pytest.raises(ValueError, match="`images` are uint8"):
        pretrainer.fit(uint8.batch(2), verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(pretrainer)))
    # Normalised images pass; one NaN or inf pixel is refused, naming where.
    pretrainer._check_data(batch)
    for value in (np.nan, np.inf):
        bad = dict(batch, images=batch["images"].copy())
        bad["images"][1, 2, 3, 0] = value
        with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\) \(first at index "
                                             r"\(1, 2, 3, 0\)\)"):
            pretrainer.fit(bad, batch_size=2, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(pretrainer)))


@pytest.mark.backend_independent
def test_validate_batches_is_the_debug_check_of_other_datasets():
    batch = tiny_batch(4)
    negative = dict(batch, token_ids=batch["token_ids"].copy())
    negative["token_ids"][0, 0] = -1
    ok = checks.validate_batches(tf.data.Dataset.from_tensors(batch), vocabulary_size=50)
    np.testing.assert_array_equal(next(iter(ok))["token_ids"], batch["token_ids"])
    cases = [
        (negative, 50, "negative ids"),
        (batch, 10, r"reach past the vocabulary \(10 ids\)"),
        (dict(batch, images=batch["images"] * 0 + 200.0), 50, r"above 10: pixels in \[0, 255\]"),
    ]
    for values, vocabulary_size, message in cases:
        ds = checks.validate_batches(tf.data.Dataset.from_tensors(values), vocabulary_size)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            next(iter(ds))
    with pytest.raises(ValueError, match="`images` are uint8"):
        checks.validate_batches(tf.data.Dataset.from_tensors(
            dict(batch, images=np.zeros((4, 16, 16, 3), np.uint8))))


@pytest.mark.backend_independent
def test_contract_errors_name_both_numbers():
    spec = checks.DataSpec(image_size=224, max_text_length=64, vocabulary_size=30522)
    assert checks.contract_errors(spec, 224, 64, 30522) == []
    assert checks.contract_errors(spec, (224, 224), None, None) == []  # MAE: no text
    errors = checks.contract_errors(spec, 256, 32, 1000)
    assert len(errors) == 3
    assert "224x224" in errors[0] and "256x256" in errors[0]
    assert "64" in errors[1] and "32" in errors[1]
    assert "30522" in errors[2] and "1000" in errors[2]
    assert keras.config.backend()  # imported for the suite's backend parametrisation
