import re

import keras
import numpy as np
import pytest
from keras import ops

import keras_m3ae
import numpy_reference as ref
from conftest import set_random_weights
from conftest import tiny_backbone
from conftest import tiny_batch
from conftest import tiny_pretrainer
from keras_m3ae.models.m3ae.m3ae_losses import image_reconstruction_loss
from keras_m3ae.models.m3ae.m3ae_losses import normalize_patches
from keras_m3ae.models.m3ae.m3ae_losses import text_prediction_loss

CFG = dict(patch_size=4, num_layers=2, num_heads=2, decoder_num_layers=1, decoder_num_heads=2,
           image_mask_ratio=0.75, text_mask_ratio=0.5, image_loss_weight=1.0, text_loss_weight=0.5)


def _noise(batch_size=4, seed=7):
    rng = np.random.default_rng(seed)
    return rng.random((batch_size, 16)).astype("float32"), rng.random((batch_size, 8)).astype("float32")


def _losses(pretrainer, batch, image_noise, text_noise):
    out = pretrainer(batch, image_noise=image_noise, text_noise=text_noise)
    return {k: float(ops.convert_to_numpy(v)) for k, v in pretrainer.compute_losses(batch, out).items()}, out


def test_pretrainer_matches_numpy_reference():
    """Same weights and noise give the numbers of an independent numpy M3AE.

    Every backend runs this against the same oracle, so the three backends
    agree with each other for the same weights and noise.
    """
    pretrainer = tiny_pretrainer(text_mask_ratio=0.5)
    set_random_weights(pretrainer, seed=3)
    batch = tiny_batch()
    image_noise, text_noise = _noise()
    losses, out = _losses(pretrainer, batch, image_noise, text_noise)
    weights = {v.path: ops.convert_to_numpy(v).astype("float64") for v in pretrainer.weights}
    # Keras numbers auto-named models (m3ae_pretrainer_3/...): drop the prefix.
    weights = {re.sub(r"^m3ae_pretrainer(_\d+)?/", "", k): v for k, v in weights.items()}
    expected = ref.pretrain_losses(weights, batch, image_noise, text_noise, CFG)
    np.testing.assert_array_equal(ops.convert_to_numpy(out["image_mask"]), expected["image_mask"])
    np.testing.assert_array_equal(ops.convert_to_numpy(out["text_mask"]), expected["text_mask"])
    for key in ("image_loss", "text_loss", "text_accuracy", "loss"):
        assert losses[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    # The same forward pass under the other text reduction: only the text numbers move.
    pretrainer.text_loss_reduction = "per_token"
    per_token = {k: float(ops.convert_to_numpy(v)) for k, v in pretrainer.compute_losses(batch, out).items()}
    expected_per_token = ref.pretrain_losses(
        weights, batch, image_noise, text_noise, dict(CFG, text_loss_reduction="per_token")
    )
    for key in ("image_loss", "text_loss", "text_accuracy", "loss"):
        assert per_token[key] == pytest.approx(expected_per_token[key], rel=1e-4, abs=1e-6), key
    assert abs(expected_per_token["text_loss"] - expected["text_loss"]) > 1e-3


def test_mask_counts_per_example():
    pretrainer = tiny_pretrainer(text_mask_ratio=0.75)
    batch = tiny_batch(seed=2)
    out = pretrainer(batch)
    image_mask = ops.convert_to_numpy(out["image_mask"])
    np.testing.assert_array_equal(image_mask.sum(1), 16 - 4)
    assert len({tuple(m) for m in image_mask}) > 1  # one mask per example
    text_mask = ops.convert_to_numpy(out["text_mask"])
    real = batch["padding_mask"].sum(1)
    # The ratio applies to each caption's own real tokens.
    np.testing.assert_array_equal(text_mask.sum(1), real - (real * 0.25).astype(int))
    assert not (text_mask & ~batch["padding_mask"]).any()


def test_padding_never_visible_while_real_tokens_remain():
    pretrainer = tiny_pretrainer(text_mask_ratio=0.0, allow_zero_mask_ratio=True)
    batch = tiny_batch(seed=4)
    image_noise, text_noise = _noise(seed=1)
    text_noise[:] = 0.0  # padding would win every tie if the model let it
    out = pretrainer(batch, image_noise=image_noise, text_noise=text_noise)
    # Ratio 0: every real token visible, nothing to predict, no padding kept.
    assert not ops.convert_to_numpy(out["text_mask"]).any()
    losses = pretrainer.compute_losses(batch, out)
    assert float(ops.convert_to_numpy(losses["text_loss"])) == 0.0


def test_loss_only_on_masked_positions():
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(2, 6, 12)).astype("float32")
    pred = rng.normal(size=(2, 6, 12)).astype("float32")
    mask = np.array([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]], "float32")
    base = float(image_reconstruction_loss(pred, patches, mask))
    expected = (((pred - patches) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert base == pytest.approx(expected, rel=1e-6)
    visible_changed = pred + (1 - mask)[..., None] * 5.0
    assert float(image_reconstruction_loss(visible_changed, patches, mask)) == pytest.approx(base, rel=1e-6)
    masked_changed = pred + mask[..., None] * 5.0
    assert float(image_reconstruction_loss(masked_changed, patches, mask)) > base + 1.0


def test_norm_pix_loss_uses_unbiased_patch_statistics():
    rng = np.random.default_rng(1)
    patches = rng.normal(3.0, 2.0, size=(2, 4, 48)).astype("float32")
    normed, mean, std = (ops.convert_to_numpy(t) for t in normalize_patches(patches))
    exp_std = np.sqrt(patches.var(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normed, (patches - patches.mean(-1, keepdims=True)) / exp_std, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(normed * std + mean, patches, rtol=1e-5, atol=1e-5)
    mask = np.ones((2, 4), "float32")
    loss = float(image_reconstruction_loss(np.zeros_like(patches), patches, mask, norm_pix_loss=True))
    assert loss == pytest.approx((normed**2).mean(), rel=1e-5)


def test_text_loss_and_accuracy():
    logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]]], "float32"))
    ids = np.array([[0, 1, 1]], "int32")
    mask = np.array([[1, 1, 0]], "float32")
    loss, acc = text_prediction_loss(logits, ids, mask)
    assert float(loss) == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2, rel=1e-5)
    assert float(acc) == pytest.approx(0.5)


def test_text_accuracy_counts_a_target_tied_for_the_highest_logit():
    # Position 0: the target (1) ties token 0 for the highest logit, a hit
    # although argmax says 0. Position 1: tokens 0 and 2 tie above the
    # target, a miss. Position 2: the target alone is highest, a hit.
    logits = np.array([[[2.0, 2.0, 0.0], [3.0, 1.0, 3.0], [0.0, 0.5, 1.0]]], "float32")
    ids = np.array([[1, 1, 2]], "int32")
    _, acc = text_prediction_loss(logits, ids, np.ones((1, 3), "float32"))
    assert float(acc) == pytest.approx(2 / 3)


def _toy_captions():
    """Captions of 40, 4 and 0 real tokens; 30, 3 and 0 of them masked.

    The first caption's masked tokens get probability 0.02 on their target
    (and argmax elsewhere), the second's 0.5 (and argmax on it).
    """
    vocab, length = 5, 40
    ids = np.zeros((3, length), "int32")
    probs = np.full((3, length, vocab), 0.25, "float32")
    probs[..., 0] = 0.0
    probs[0, :, :] = [0.02, 0.49, 0.49 - 1e-3, 1e-3, 0.0]
    probs[1, :, :] = [0.5, 0.2, 0.2, 0.1, 0.0]
    mask = np.zeros((3, length), "float32")
    mask[0, :30] = 1.0
    mask[1, :3] = 1.0
    return np.log(np.maximum(probs, 1e-9)), ids, mask


@pytest.mark.parametrize(
    "reduction, expected_loss, expected_accuracy",
    [
        # Each caption's mean, then the batch's (the empty one counts 0).
        ("per_example", (-np.log(0.02) - np.log(0.5) + 0.0) / 3, (0.0 + 1.0 + 0.0) / 3),
        # One mean over the 33 masked tokens.
        ("per_token", (-30 * np.log(0.02) - 3 * np.log(0.5)) / 33, 3 / 33),
    ],
)
def test_text_loss_reduction_on_captions_of_unequal_length(reduction, expected_loss, expected_accuracy):
    logits, ids, mask = _toy_captions()
    loss, accuracy = text_prediction_loss(logits, ids, mask, reduction=reduction)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    assert float(accuracy) == pytest.approx(expected_accuracy, rel=1e-5)
    # The numpy oracle's reduction agrees.
    ce = -np.take_along_axis(logits, ids[..., None], -1)[..., 0]
    assert ref.text_mean(ce, mask, reduction) == pytest.approx(expected_loss, rel=1e-5)


def test_text_loss_reduction_option():
    with pytest.raises(ValueError, match="per_caption"):
        tiny_pretrainer(text_loss_reduction="per_caption")
    pretrainer = tiny_pretrainer(text_loss_reduction="per_token")
    config = pretrainer.get_config()
    assert config["text_loss_reduction"] == "per_token"
    assert keras_m3ae.M3AEPretrainer.from_config(config).text_loss_reduction == "per_token"
    # Configs saved before the option existed load with the reference's reduction.
    del config["text_loss_reduction"]
    assert keras_m3ae.M3AEPretrainer.from_config(config).text_loss_reduction == "per_example"
    assert tiny_pretrainer().text_loss_reduction == "per_example"


def test_text_only_and_image_only_examples_add_nothing_of_the_absent_modality():
    pretrainer = tiny_pretrainer()
    set_random_weights(pretrainer, seed=6)
    batch = tiny_batch(batch_size=4, seed=5)
    batch["has_image"] = np.array([True, False, True, True])  # example 1: text only
    batch["padding_mask"][2] = False  # example 2: image only
    image_noise, text_noise = _noise()
    losses, out = _losses(pretrainer, batch, image_noise, text_noise)
    assert not ops.convert_to_numpy(out["image_mask"])[1].any()
    assert not ops.convert_to_numpy(out["text_mask"])[2].any()
    # The absent image and the absent caption change nothing anywhere.
    other = dict(batch)
    other["images"] = batch["images"].copy()
    other["images"][1] = 100.0
    other["token_ids"] = batch["token_ids"].copy()
    other["token_ids"][2] = 3
    losses2, out2 = _losses(pretrainer, other, image_noise, text_noise)
    for key in losses:
        assert losses2[key] == pytest.approx(losses[key], rel=1e-5), key
    np.testing.assert_allclose(ops.convert_to_numpy(out2["text_logits"]), ops.convert_to_numpy(out["text_logits"]), atol=1e-4)


def test_image_only_and_text_only_batches_train():
    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    # One input structure for both batches: one compiled train step.
    image_only = tiny_batch(seed=1)
    image_only["padding_mask"][:] = False
    image_only["has_image"] = np.ones(4, bool)
    text_only = tiny_batch(seed=2)
    text_only["has_image"] = np.zeros(4, bool)
    logs_i = pretrainer.train_on_batch(image_only, return_dict=True)
    assert logs_i["text_loss"] == 0.0 and logs_i["image_loss"] > 0
    pretrainer.reset_metrics()
    logs_t = pretrainer.train_on_batch(text_only, return_dict=True)
    assert logs_t["image_loss"] == 0.0 and logs_t["text_loss"] > 0
    assert all(np.isfinite(v) for v in list(logs_i.values()) + list(logs_t.values()))


def test_mae_pretrainer():
    pretrainer = tiny_pretrainer(tiny_backbone(vocabulary_size=None), norm_pix_loss=True)
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    images = {"images": tiny_batch()["images"]}
    history = pretrainer.fit(images, batch_size=2, epochs=2, verbose=0).history
    assert set(history) == {"loss", "image_loss"}
    assert history["loss"] == pytest.approx(history["image_loss"])


def test_reproducible_masking():
    batch = tiny_batch()
    a = ops.convert_to_numpy(tiny_pretrainer(seed=3)(batch)["image_mask"])
    b = ops.convert_to_numpy(tiny_pretrainer(seed=3)(batch)["image_mask"])
    np.testing.assert_array_equal(a, b)
    pretrainer = tiny_pretrainer()
    image_noise, text_noise = _noise()
    first = pretrainer(batch, image_noise=image_noise, text_noise=text_noise)
    second = pretrainer(batch, image_noise=image_noise, text_noise=text_noise)
    for key in ("image_predictions", "text_logits", "image_mask", "text_mask"):
        np.testing.assert_array_equal(ops.convert_to_numpy(first[key]), ops.convert_to_numpy(second[key]))


def test_fit_reduces_loss():
    # Learnable data: smooth colour ramps and one repeated caption, so both
    # losses can fall far below their starting values (noise could not).
    keras.utils.set_random_seed(0)
    pretrainer = tiny_pretrainer(image_mask_ratio=0.5, text_mask_ratio=0.5)
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.05, beta_2=0.95))
    ramp = np.linspace(-1, 1, 16, dtype="float32")
    colours = np.random.default_rng(0).uniform(-1, 1, (8, 1, 1, 3)).astype("float32")
    batch = {
        "images": ramp[None, :, None, None] * colours + ramp[None, None, :, None],
        "token_ids": np.tile(np.arange(1, 9, dtype="int32"), (8, 1)),
        "padding_mask": np.ones((8, 8), bool),
    }
    history = pretrainer.fit(batch, batch_size=8, epochs=40, verbose=0).history
    assert set(history) == {"loss", "image_loss", "text_loss", "text_accuracy"}
    assert all(np.isfinite(history["loss"]))
    for key in ("image_loss", "text_loss"):
        assert np.mean(history[key][-5:]) < 0.5 * np.mean(history[key][:5]), key
    assert history["text_accuracy"][-1] > 0.5


def test_weight_decay_excludes_biases_norms_and_embeddings():
    pretrainer = tiny_pretrainer()
    optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.05)
    pretrainer.compile(optimizer=optimizer)
    decayed = {v.path for v in pretrainer.trainable_variables if optimizer._use_weight_decay(v)}
    assert "encoder/block_0/attention/qkv/kernel" in decayed
    assert any(p.endswith("decoder/text_head/kernel") for p in decayed)
    for name in ("token_embedding/embeddings", "cls_token/cls_token", "decoder/image_mask_token",
                 "encoder/norm/gamma", "decoder/transformer/block_0/fc1/bias"):
        assert not any(p.endswith(name) for p in decayed), name


def test_default_compile_follows_the_papers():
    pretrainer = tiny_pretrainer()
    pretrainer.compile()
    opt = pretrainer.optimizer
    assert isinstance(opt, keras.optimizers.AdamW)
    assert (float(opt.learning_rate), opt.weight_decay, opt.beta_1, opt.beta_2) == pytest.approx((1.5e-4, 0.05, 0.9, 0.95))


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_bad_mask_ratio(ratio):
    with pytest.raises(ValueError, match="must be in \\[0, 1\\)"):
        tiny_pretrainer(image_mask_ratio=ratio)
    with pytest.raises(ValueError, match="text_mask_ratio"):
        tiny_pretrainer(text_mask_ratio=ratio)


def test_fit_rejects_bad_data():
    pretrainer = tiny_pretrainer()
    pretrainer.compile()
    batch = tiny_batch()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pretrainer.fit(dict(batch, token_ids=batch["token_ids"] + 100), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="Missing input key"):
        pretrainer.fit({"images": batch["images"]}, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "entry_point",
    ["__call__", "evaluate", "predict", "train_on_batch", "test_on_batch", "predict_on_batch"],
)
def test_every_entry_point_rejects_bad_data(entry_point):
    pretrainer = tiny_pretrainer()
    pretrainer.compile()
    batch = tiny_batch()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        getattr(pretrainer, entry_point)(dict(batch, token_ids=batch["token_ids"] + 100))
    with pytest.raises(ValueError, match="Missing input key"):
        getattr(pretrainer, entry_point)({"images": batch["images"]})


def test_reconstruct_pastes_visible_patches():
    pretrainer = tiny_pretrainer(norm_pix_loss=True)
    batch = tiny_batch()
    result = keras_m3ae.analysis.reconstruct(pretrainer, batch)
    mask = np.repeat(np.repeat(result["image_mask"].reshape(4, 4, 4), 4, 1), 4, 2)
    np.testing.assert_allclose(result["reconstructions"][~mask], batch["images"][~mask], atol=1e-5)
    np.testing.assert_array_equal(result["masked_images"][mask], 0.0)
    np.testing.assert_allclose(result["reconstructions"][mask], result["predictions"][mask], atol=1e-6)


def test_pretrainer_config_and_keras_round_trip(tmp_path):
    pretrainer = tiny_pretrainer(norm_pix_loss=True, text_mask_ratio=0.5)
    set_random_weights(pretrainer, seed=9)
    clone = keras_m3ae.M3AEPretrainer.from_config(pretrainer.get_config())
    assert clone.get_config() == pretrainer.get_config()
    path = str(tmp_path / "pretrainer.keras")
    pretrainer.save(path)
    again = keras.saving.load_model(path)
    batch = tiny_batch()
    image_noise, text_noise = _noise()
    a, _ = _losses(pretrainer, batch, image_noise, text_noise)
    b, _ = _losses(again, batch, image_noise, text_noise)
    assert a == pytest.approx(b, rel=1e-6)


# Slow: test_scale.py's mixed-precision test checks the same (float32 variables,
# finite training, float32 losses) and more, in the default run.
@pytest.mark.slow
def test_mixed_bfloat16_pretraining():
    pretrainer = tiny_pretrainer(tiny_backbone(dtype="mixed_bfloat16"))
    assert all(v.dtype == "float32" for v in pretrainer.weights)
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    logs = pretrainer.train_on_batch(tiny_batch(), return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    out = pretrainer(tiny_batch())
    assert keras.backend.standardize_dtype(pretrainer.compute_losses(tiny_batch(), out)["loss"].dtype) == "float32"
