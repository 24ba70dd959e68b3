"""Checkpoint converters: parity with the original code's own outputs.

The fixtures in tests/data/convert/ were written by the ORIGINAL code
(reference JAX M3AE/MAE, official PyTorch MAE, Hugging Face ViTMAE) with
`tests/data/convert/make_fixtures.py`; every weight was perturbed after
initialisation, so a dropped or swapped tensor shows. Each `.npz` holds the
original's encoder output on all tokens and its decoder outputs for given
masking noise; the converted model must agree within 1e-4 (max abs).
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from conftest import write_safetensors

import keras_m3ae
from keras_m3ae.convert import CheckpointError
from keras_m3ae.convert import reference_m3ae

DATA = os.path.join(os.path.dirname(__file__), "data", "convert")
TOLERANCE = 1e-4
TINY_DECODER = dict(decoder_hidden_dim=32, decoder_num_layers=2, decoder_num_heads=2)

# name -> (checkpoint, outputs, overrides, has decoder, needs torch)
CASES = {
    "reference_m3ae": ("m3ae_tiny.pkl", "m3ae_tiny.npz", {}, True, False),
    "reference_mae": ("mae_reference_tiny.pkl", "mae_reference_tiny.npz", {}, True, False),
    "official_mae": (
        "mae_official_tiny.pth", "mae_official_tiny.npz",
        dict(num_heads=4, decoder_num_heads=2), True, True,
    ),
    "official_mae_encoder_only": (
        "mae_official_encoder_tiny.pth", "mae_official_tiny.npz",
        dict(num_heads=4, **TINY_DECODER), False, True,
    ),
    "hf_vitmae": ("vitmae_hf_tiny", "vitmae_hf_tiny.npz", {}, True, False),
}


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _load(name):
    checkpoint, outputs, overrides, _, needs_torch = CASES[name]
    if needs_torch:
        pytest.importorskip("torch")
    with pytest.warns(UserWarning, match="encoder only") if not CASES[name][3] else _nullcontext():
        pretrainer = keras_m3ae.convert.load_checkpoint(os.path.join(DATA, checkpoint), **overrides)
    return pretrainer, dict(np.load(os.path.join(DATA, outputs)))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _encoder_inputs(backbone, ref):
    inputs = {"images": ref["images"]}
    if backbone.has_text:
        inputs["token_ids"] = ref["token_ids"]
        inputs["padding_mask"] = ref["padding_mask"].astype("int32")
    return inputs


def check_parity(pretrainer, ref, has_decoder=True):
    """Max abs differences against the original's outputs (asserted <= 1e-4)."""
    backbone = pretrainer.backbone
    diffs = {}
    encoded = _np(backbone(_encoder_inputs(backbone, ref)))
    diffs["encoder"] = float(np.abs(encoded - ref["encoder_output"]).max())
    if has_decoder:
        inputs = {"images": ref["images"]}
        text_noise = None
        if backbone.has_text:
            inputs["token_ids"] = ref["masked_token_ids"]
            inputs["padding_mask"] = np.ones_like(ref["masked_token_ids"])
            text_noise = ref["text_noise"]
        out = pretrainer(inputs, image_noise=ref["image_noise"], text_noise=text_noise)
        np.testing.assert_array_equal(_np(out["image_mask"]), ref["image_mask"])
        diffs["image_predictions"] = float(
            np.abs(_np(out["image_predictions"]) - ref["image_predictions"]).max()
        )
        if backbone.has_text:
            np.testing.assert_array_equal(_np(out["text_mask"]), ref["text_mask"])
            diffs["text_logits"] = float(np.abs(_np(out["text_logits"]) - ref["text_logits"]).max())
    for key, value in diffs.items():
        assert value <= TOLERANCE, f"{key}: max abs difference {value:.3g}"
    return diffs


@pytest.mark.parametrize("name", sorted(CASES))
def test_parity_with_original_code(name):
    pretrainer, ref = _load(name)
    assert isinstance(pretrainer, keras_m3ae.M3AEPretrainer)
    diffs = check_parity(pretrainer, ref, has_decoder=CASES[name][3])
    print(f"\nparity {name} [{keras.backend.backend()}]: " + ", ".join(
        f"{k} {v:.2e}" for k, v in diffs.items()))


def test_reference_m3ae_architecture_from_variant():
    pretrainer, _ = _load("reference_m3ae")
    backbone = pretrainer.backbone
    assert backbone.gelu_approximate and backbone.use_type_embedding
    assert (backbone.hidden_dim, backbone.num_layers, backbone.num_heads) == (32, 2, 4)
    assert (backbone.vocabulary_size, backbone.max_text_length, backbone.patch_size) == (100, 16, 8)
    assert (pretrainer.decoder_hidden_dim, pretrainer.decoder_num_heads) == (32, 2)
    assert pretrainer.text_loss_weight == 0.1  # from the run's flags
    mae, _ = _load("reference_mae")
    assert not mae.backbone.has_text and not mae.backbone.use_type_embedding
    assert not any("type_embedding" in v.path for v in mae.weights)


def test_tanh_gelu_matters():
    """The reference M3AE's flax `nn.gelu` is the tanh form: exact GELU misses."""
    pretrainer, ref = _load("reference_m3ae")
    config = pretrainer.backbone.get_config()
    config["gelu_approximate"] = False
    exact = keras_m3ae.M3AEBackbone.from_config(config)
    exact.set_weights(pretrainer.backbone.get_weights())
    encoded = _np(exact(_encoder_inputs(exact, ref)))
    assert np.abs(encoded - ref["encoder_output"]).max() > 1e-4


def test_model_type_table_overrides_stored_flags():
    """With `model_type` set, the reference ignores the width flags it stored."""
    variant = {
        "patch_size": 16, "data.image_size": 224, "data.tokenizer_max_length": 64,
        "m3ae.model_type": "base", "m3ae.emb_dim": 1024, "m3ae.depth": 24,
        "m3ae.num_heads": 16, "m3ae.dec_emb_dim": 512, "m3ae.dec_depth": 8,
        "m3ae.dec_num_heads": 16, "m3ae.mlp_ratio": 4, "m3ae.output_head_depth": 0,
        "m3ae.use_type_embedding": True,
    }
    params = {
        "image_embedding/kernel": np.zeros((768, 768), "float32"),
        "text_embedding/embedding": np.zeros((30522, 768), "float32"),
    }
    backbone, pretrainer = reference_m3ae.read_config("model.pkl", variant, params, {})
    assert (backbone["hidden_dim"], backbone["num_layers"], backbone["num_heads"]) == (768, 12, 12)
    assert (pretrainer["decoder_hidden_dim"], pretrainer["decoder_num_heads"]) == (512, 16)
    assert backbone["vocabulary_size"] == 30522 and backbone["gelu_approximate"]
    variant["m3ae.output_head_depth"] = 2
    with pytest.raises(CheckpointError, match="model.pkl: .*output_head_depth"):
        reference_m3ae.read_config("model.pkl", variant, params, {})


def test_keyword_overrides():
    pretrainer = keras_m3ae.convert.load_checkpoint(
        os.path.join(DATA, "mae_reference_tiny.pkl"), image_mask_ratio=0.5, layer_norm_epsilon=1e-5
    )
    assert pretrainer.image_mask_ratio == 0.5
    assert pretrainer.backbone.layer_norm_epsilon == 1e-5


def test_hf_transformers_4_key_names(tmp_path):
    """Hub / transformers 4.x files name decoder blocks `decoder.decoder_layers.N`."""
    from keras_m3ae.convert.hf_vitmae import read_safetensors

    source = os.path.join(DATA, "vitmae_hf_tiny")
    tensors = read_safetensors(os.path.join(source, "model.safetensors"))
    renamed = {k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."): v
               for k, v in tensors.items()}
    assert any("decoder_layers" in k for k in renamed)
    shutil.copy(os.path.join(source, "config.json"), tmp_path / "config.json")
    write_safetensors(tmp_path / "model.safetensors", renamed)
    pretrainer = keras_m3ae.convert.load_checkpoint(str(tmp_path))
    check_parity(pretrainer, dict(np.load(os.path.join(DATA, "vitmae_hf_tiny.npz"))))


def test_backbone_from_hf_directory():
    backbone = keras_m3ae.M3AEBackbone.from_preset(os.path.join(DATA, "vitmae_hf_tiny"))
    ref = np.load(os.path.join(DATA, "vitmae_hf_tiny.npz"))
    assert backbone.layer_norm_epsilon == 1e-12
    encoded = _np(backbone({"images": ref["images"]}))
    assert np.abs(encoded - ref["encoder_output"]).max() <= TOLERANCE


def test_cli_writes_preset_that_loads(tmp_path, capsys):
    from keras_m3ae.convert.__main__ import main

    dst = str(tmp_path / "preset")
    assert main([os.path.join(DATA, "m3ae_tiny.pkl"), dst]) == 0
    assert "wrote" in capsys.readouterr().out
    ref = dict(np.load(os.path.join(DATA, "m3ae_tiny.npz")))
    backbone = keras_m3ae.M3AEBackbone.from_preset(dst)
    assert backbone.gelu_approximate and backbone.use_type_embedding
    encoded = _np(backbone(_encoder_inputs(backbone, ref)))
    assert np.abs(encoded - ref["encoder_output"]).max() <= TOLERANCE
    # The decoder travels too: pretraining continues from the preset.
    pretrainer = keras_m3ae.convert.load_checkpoint(dst)
    check_parity(pretrainer, ref)


def test_cli_overrides_and_errors(tmp_path, capsys):
    pytest.importorskip("torch")
    from keras_m3ae.convert.__main__ import main

    src = os.path.join(DATA, "mae_official_tiny.pth")
    assert main([src, str(tmp_path / "bad")]) == 2
    assert "num_heads" in capsys.readouterr().err
    dst = str(tmp_path / "mae")
    assert main([src, dst, "--set", "num_heads=4", "--set", "decoder_num_heads=2"]) == 0
    ref = dict(np.load(os.path.join(DATA, "mae_official_tiny.npz")))
    check_parity(keras_m3ae.convert.load_checkpoint(dst), ref)


# --- Fine-tuned classifiers ---

CLASSIFIERS = {
    "reference": ("classifier_reference_tiny.pkl", {}, ("mean", "layer_norm", True)),
    "official_mae": ("classifier_official_tiny.pth", dict(num_heads=4), ("mean", "layer_norm", False)),
}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_parity(name, tmp_path):
    checkpoint, overrides, head = CLASSIFIERS[name]
    if checkpoint.endswith(".pth"):
        pytest.importorskip("torch")
    clf = keras_m3ae.convert.load_classifier(os.path.join(DATA, checkpoint), **overrides)
    assert isinstance(clf, keras_m3ae.M3AEImageClassifier)
    assert (clf.pooling, clf.feature_norm, clf.final_norm) == head
    ref = np.load(os.path.join(DATA, checkpoint.rsplit(".", 1)[0] + ".npz"))
    diff = float(np.abs(_np(clf(ref["images"])) - ref["logits"]).max())
    print(f"\nparity classifier {name} [{keras.backend.backend()}]: logits {diff:.2e}")
    assert diff <= TOLERANCE
    # Written as a classifier preset (the CLI), the head and its pooling come back.
    from keras_m3ae.convert.__main__ import main

    extra = [f"--set=num_heads={overrides['num_heads']}"] if overrides else []
    assert main([os.path.join(DATA, checkpoint), str(tmp_path / "clf"), "--classifier"] + extra) == 0
    restored = keras_m3ae.M3AEImageClassifier.from_preset(str(tmp_path / "clf"))
    assert (restored.pooling, restored.feature_norm, restored.final_norm) == head
    assert float(np.abs(_np(restored(ref["images"])) - ref["logits"]).max()) <= TOLERANCE


def test_classifier_heads_selectable_from_scratch():
    backbone = keras_m3ae.M3AEBackbone(
        image_size=32, patch_size=8, vocabulary_size=None, hidden_dim=32, num_layers=2,
        num_heads=4, use_type_embedding=False)
    clf = keras_m3ae.M3AEImageClassifier(
        backbone, num_classes=3, pooling="mean", feature_norm="layer_norm", final_norm=False)
    config = clf.get_config()
    assert config["feature_norm"] == "layer_norm" and config["final_norm"] is False
    assert _np(clf(np.zeros((2, 32, 32, 3), "float32"))).shape == (2, 3)
    with pytest.raises(ValueError, match="linear probe"):
        keras_m3ae.M3AEImageClassifier(backbone, num_classes=3, fine_tune_blocks=0,
                                       feature_norm="layer_norm")


def test_classifier_positions_learned_or_fixed(tmp_path):
    """timm learns `pos_embed` in fine-tuning: a moved table becomes a weight."""
    torch = pytest.importorskip("torch")
    import argparse

    from keras_m3ae.layers.sincos import sincos_2d

    source = os.path.join(DATA, "classifier_official_tiny.pth")
    clf = keras_m3ae.convert.load_classifier(source, num_heads=4)
    assert clf.backbone.learned_positions
    positions = clf.backbone.image_position_type.positions
    assert any(v is positions for v in clf.no_weight_decay_variables())
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(source, weights_only=True)
    table = np.concatenate([np.zeros((1, 32), "float32"), sincos_2d((4, 4), 32)])
    checkpoint["model"]["pos_embed"] = torch.from_numpy(table)[None]
    path = tmp_path / "checkpoint-99.pth"
    torch.save(checkpoint, path)
    fixed = keras_m3ae.convert.load_classifier(str(path), num_heads=4)
    assert not fixed.backbone.learned_positions
    assert not any("positions" in v.path for v in fixed.weights)
    with pytest.raises(CheckpointError, match="load_classifier"):
        keras_m3ae.convert.load_checkpoint(source, num_heads=4)


def test_classifier_pickle_sent_to_load_checkpoint_is_explained():
    with pytest.raises(CheckpointError, match="classifier_reference_tiny.pkl: .*load_classifier"):
        keras_m3ae.convert.load_checkpoint(os.path.join(DATA, "classifier_reference_tiny.pkl"))


def test_hf_without_qkv_bias(tmp_path):
    from keras_m3ae.convert.hf_vitmae import read_safetensors

    source = os.path.join(DATA, "vitmae_hf_tiny")
    tensors = read_safetensors(os.path.join(source, "model.safetensors"))
    tensors = {k: v for k, v in tensors.items()
               if not (k.endswith(("query.bias", "key.bias", "value.bias")))}
    config = json.load(open(os.path.join(source, "config.json")))
    config["qkv_bias"] = False
    json.dump(config, open(tmp_path / "config.json", "w"))
    write_safetensors(tmp_path / "model.safetensors", tensors)
    pretrainer = keras_m3ae.convert.load_checkpoint(str(tmp_path))
    biases = [v for v in pretrainer.weights if v.path.endswith("qkv/bias")]
    assert biases and all(not np.any(_np(v)) for v in biases)


def test_reference_classifier_from_m3ae_encoder(tmp_path):
    """`finetune_main.py` on M3AE weights: the base model keeps unused text parameters."""
    import pickle

    from keras_m3ae.convert import safe_pickle

    data = safe_pickle.load_pickle(os.path.join(DATA, "classifier_reference_tiny.pkl"))
    params = data["state"].state["params"]["params"]
    params["base_model"]["text_embedding"] = {"embedding": np.ones((100, 32), "float32")}
    params["base_model"]["encoder_text_type_embedding"] = np.ones((1, 1, 32), "float32")
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"variant": data["variant"], "state": {"params": {"params": params}}}))
    clf = keras_m3ae.convert.load_classifier(str(path))
    ref = np.load(os.path.join(DATA, "classifier_reference_tiny.npz"))
    assert np.abs(_np(clf(ref["images"])) - ref["logits"]).max() <= TOLERANCE


def test_official_classifier_token_pooling(tmp_path):
    """`global_pool=False`: the final norm's CLS output feeds the head."""
    torch = pytest.importorskip("torch")
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(os.path.join(DATA, "classifier_official_tiny.pth"), weights_only=True)
    model = checkpoint["model"]
    model["norm.weight"], model["norm.bias"] = model.pop("fc_norm.weight"), model.pop("fc_norm.bias")
    torch.save(checkpoint, tmp_path / "token.pth")
    clf = keras_m3ae.convert.load_classifier(str(tmp_path / "token.pth"), num_heads=4)
    assert (clf.pooling, clf.feature_norm, clf.final_norm) == ("token", None, True)
    np.testing.assert_allclose(_np(clf.backbone.encoder.norm.gamma), model["norm.weight"].numpy())
