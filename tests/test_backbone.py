
import keras
import numpy as np
import pytest
from keras import ops

import keras_m3ae
import numpy_reference as ref
from conftest import set_random_weights
from conftest import tiny_backbone
from conftest import tiny_batch


def _weights(model):
    return {v.path: ops.convert_to_numpy(v).astype("float64") for v in model.weights}


def test_backbone_matches_numpy_reference():
    backbone = tiny_backbone()
    set_random_weights(backbone)
    batch = tiny_batch()
    out = ops.convert_to_numpy(backbone(batch))
    expected = ref.encode_all(
        _weights(backbone), batch["images"], batch["token_ids"], batch["padding_mask"], 4, 2, 2
    )
    assert out.shape == (4, 1 + 16 + 8, 16)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_padding_tokens_do_not_change_real_outputs():
    backbone = tiny_backbone()
    batch = tiny_batch()
    out = ops.convert_to_numpy(backbone(batch))
    changed = dict(batch, token_ids=np.where(batch["padding_mask"], batch["token_ids"], 7).astype("int32"))
    out2 = ops.convert_to_numpy(backbone(changed))
    real = np.concatenate([np.ones((4, 17), bool), batch["padding_mask"]], 1)
    np.testing.assert_allclose(out2[real], out[real], atol=1e-5)


def test_image_only_backbone_is_mae():
    mae = tiny_backbone(vocabulary_size=None)
    assert not mae.has_text and mae.input_names == ["images"]
    assert not any("token_embedding" in v.path for v in mae.weights)
    images = tiny_batch()["images"]
    # `predict` takes bare images for MAE: the same compiled function, bit for bit. (An eager
    # call differs from the compiled one by float32 rounding, 2e-6 under jax 0.10's XLA.)
    np.testing.assert_array_equal(mae.predict(images, verbose=0),
                                  mae.predict({"images": images}, verbose=0))
    np.testing.assert_allclose(mae.predict(images, verbose=0),
                               ops.convert_to_numpy(mae({"images": images})), atol=1e-5)


def test_parameter_layout_is_convertible():
    backbone = tiny_backbone()
    shapes = {v.path: tuple(v.shape) for v in backbone.weights}
    assert shapes["encoder/block_0/attention/qkv/kernel"] == (16, 48)  # fused, (in, out)
    assert shapes["encoder/block_0/attention/qkv/bias"] == (48,)
    assert shapes["patch_embedding/projection/kernel"] == (4 * 4 * 3, 16)
    assert shapes["encoder/block_1/fc1/kernel"] == (16, 64)
    assert backbone.encoder.blocks[0].norm1.epsilon == 1e-6
    assert backbone.encoder.norm.epsilon == 1e-6


def test_text_embedding_initialised_with_unit_std():
    backbone = tiny_backbone(vocabulary_size=4000, hidden_dim=32)
    std = float(np.std(ops.convert_to_numpy(backbone.token_embedding.embeddings)))
    assert 0.95 < std < 1.05


def test_no_weight_decay_variables():
    backbone = tiny_backbone()
    names = {v.path for v in backbone.no_weight_decay_variables()}
    assert "token_embedding/embeddings" in names
    assert "cls_token/cls_token" in names and "image_position_type/type_embedding" in names
    assert "encoder/block_0/attention/qkv/bias" in names and "encoder/norm/gamma" in names
    assert "encoder/block_0/attention/qkv/kernel" not in names


@pytest.mark.parametrize("vocabulary_size", [50, None])
def test_structure_places_every_variable_once_in_depth_order(vocabulary_size):
    backbone = tiny_backbone(vocabulary_size=vocabulary_size)
    structure = backbone.structure()
    groups = structure.depth_groups()
    assert len(groups) == backbone.num_layers + 2
    placed = [id(v) for group in groups for v in group]
    assert sorted(placed) == sorted(id(v) for v in backbone.weights)
    assert [v.path for v in groups[1]] == [v.path for v in structure.blocks[0].weights]
    assert all(v.path.startswith("encoder/block_0/") for v in groups[1])
    assert {v.path for v in groups[-1]} == {"encoder/norm/gamma", "encoder/norm/beta"}
    text = {v.path for layer in structure.text for v in layer.weights}
    matrices = [v.path for v in structure.embedding_matrices]
    if vocabulary_size:
        assert text == {"token_embedding/embeddings", "text_position_type/type_embedding"}
        assert matrices == ["token_embedding/embeddings"]
    else:
        assert text == set() and matrices == []


def test_variable_outside_the_structure_fails_loudly():
    backbone = tiny_backbone()
    backbone.add_weight(shape=(3,), name="stray")
    with pytest.raises(ValueError, match="stray.*belong to no part"):
        backbone.structure()


def test_bert_vocabulary_size_matches_the_shipped_vocabulary():
    from keras_m3ae.data import constants

    with open(constants.DEFAULT_VOCABULARY, encoding="utf-8") as f:
        assert sum(1 for _ in f) == constants.BERT_VOCABULARY_SIZE
    config = keras_m3ae.M3AEBackbone.presets["m3ae_vit_base_patch16"]["config"]
    assert config["vocabulary_size"] == constants.BERT_VOCABULARY_SIZE
    assert config["max_text_length"] == constants.MAX_TEXT_LENGTH


def test_presets_are_in_keras_hub_registry():
    import keras_hub

    assert "m3ae_vit_base_patch16" in keras_hub.models.Backbone.presets
    assert "mae_vit_base_patch16" in keras_m3ae.M3AEImageClassifier.presets


def test_config_round_trip():
    backbone = tiny_backbone(drop_path_rate=0.1)
    clone = keras_m3ae.M3AEBackbone.from_config(backbone.get_config())
    assert clone.get_config() == backbone.get_config()


def test_preset_round_trip(tmp_path):
    backbone = tiny_backbone()
    set_random_weights(backbone, seed=4)
    batch = tiny_batch()
    backbone.save_to_preset(str(tmp_path / "preset"))
    assert (tmp_path / "preset" / "config.json").exists()
    again = keras_m3ae.M3AEBackbone.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(again.predict(batch, verbose=0), backbone.predict(batch, verbose=0), atol=1e-6)


def test_keras_file_round_trip(tmp_path):
    backbone = tiny_backbone()
    set_random_weights(backbone, seed=5)
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    again = keras.saving.load_model(path)
    batch = tiny_batch()
    np.testing.assert_allclose(ops.convert_to_numpy(again(batch)), ops.convert_to_numpy(backbone(batch)), atol=1e-6)


def test_named_presets():
    assert {"m3ae_vit_small_patch16", "m3ae_vit_base_patch16", "m3ae_vit_large_patch16",
            "m3ae_vit_huge_patch16", "m3ae_vit_tiny_demo"} <= set(keras_m3ae.M3AEBackbone.presets)
    base = keras_m3ae.M3AEBackbone.presets["m3ae_vit_base_patch16"]["config"]
    assert (base["hidden_dim"], base["num_layers"], base["num_heads"], base["patch_size"]) == (768, 12, 12, 16)
    huge = keras_m3ae.M3AEBackbone.presets["m3ae_vit_huge_patch16"]["config"]
    assert (huge["hidden_dim"], huge["num_layers"], huge["num_heads"]) == (1280, 32, 16)
    tiny = keras_m3ae.M3AEBackbone.from_preset("m3ae_vit_tiny_demo", num_layers=1)
    assert tiny.num_layers == 1 and tiny.hidden_dim == 128


def test_preset_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown preset"):
        keras_m3ae.M3AEBackbone.from_preset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="incomplete: no config.json"):
        keras_m3ae.M3AEBackbone.from_preset(str(tmp_path / "empty"))


def test_bad_construction():
    with pytest.raises(ValueError, match="not divisible by `patch_size`"):
        tiny_backbone(image_size=18)
    with pytest.raises(ValueError, match="divisible by `num_heads`"):
        tiny_backbone(hidden_dim=18, num_heads=4)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: {k: v for k, v in b.items() if k != "token_ids"}, "Missing input key"),
        (lambda b: dict(b, images=b["images"][..., :1]), "1 channels"),
        (lambda b: dict(b, images=b["images"][:, :12, :12]), "are 12x12"),
        (lambda b: dict(b, token_ids=np.full((4, 8), 50, "int32")), "outside the vocabulary"),
        (lambda b: dict(b, token_ids=np.full((4, 8), -1, "int32")), "outside the vocabulary"),
        (lambda b: dict(b, token_ids=np.ones((4, 9), "int32"), padding_mask=np.ones((4, 9), bool)), "longer than `max_text_length`"),
        (lambda b: b["images"], "must be a dict"),
    ],
)
def test_bad_inputs_get_clear_errors(change, message):
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match=message):
        backbone.predict(change(tiny_batch()), verbose=0)


def test_mixed_bfloat16_forward_close_to_float32():
    backbone = tiny_backbone()
    set_random_weights(backbone, seed=2, scale=0.1)
    batch = tiny_batch()
    expected = ops.convert_to_numpy(backbone(batch))
    mixed = tiny_backbone(dtype="mixed_bfloat16")
    mixed.set_weights(backbone.get_weights())
    assert all(v.dtype == "float32" for v in mixed.weights)
    out = ops.convert_to_numpy(ops.cast(mixed(batch), "float32"))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, atol=0.15)
