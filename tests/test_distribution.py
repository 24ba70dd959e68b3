"""keras.distribution on JAX: layout maps, DataParallel and ModelParallel.

The training comparison runs `tests/multidevice_check.py` in its own
`KERAS_BACKEND=jax` process with 8 simulated CPU devices (the device count is
fixed when JAX is imported), so it runs in the jax pass only.
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_m3ae
from keras_m3ae.models.m3ae import m3ae_distribution

jax_only = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution is exercised on the JAX backend",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pretrainer():
    """One model for the tests here: they only read its variables' paths."""
    backbone = keras_m3ae.M3AEBackbone(
        image_size=16, patch_size=4, vocabulary_size=64, max_text_length=8,
        hidden_dim=32, num_layers=2, num_heads=4,
    )
    return keras_m3ae.M3AEPretrainer(
        backbone, decoder_hidden_dim=16, decoder_num_layers=1, decoder_num_heads=2
    )


@jax_only
def test_layout_map_covers_blocks_embedding_and_head_once(pretrainer):
    devices = keras.distribution.list_devices()[:1]
    mesh = keras.distribution.DeviceMesh((1, 1), ["batch", "model"], devices)
    layout_map = keras_m3ae.M3AEPretrainer.get_layout_map(mesh)
    specs = {}
    for variable in pretrainer.weights:
        # Raises if a path matched two patterns.
        layout = layout_map[variable.path]
        if layout is not None:
            # Decoder paths start with the pretrainer's (numbered) name.
            path = variable.path
            path = path[path.index("decoder/"):] if "decoder/" in path else path
            specs[path] = tuple(layout.axes)
    expected_per_block = {
        "attention/qkv/kernel": ("batch", "model"),
        "attention/proj/kernel": ("model", "batch"),
        "fc1/kernel": ("batch", "model"),
        "fc2/kernel": ("model", "batch"),
    }
    expected = {"token_embedding/embeddings": ("model", "batch"),
                "decoder/text_head/kernel": ("batch", "model")}
    for prefix in ("encoder/block_0/", "encoder/block_1/", "decoder/transformer/block_0/"):
        expected.update({prefix + k: v for k, v in expected_per_block.items()})
    assert specs == expected
    # The backbone's map has no decoder head.
    backbone_map = keras_m3ae.M3AEBackbone.get_layout_map(mesh)
    assert backbone_map["m3ae_pretrainer/decoder/text_head/kernel"] is None
    assert tuple(backbone_map["encoder/block_3/fc2/kernel"].axes) == ("model", "batch")


@jax_only
def test_layout_map_rejects_unknown_axis():
    devices = keras.distribution.list_devices()[:1]
    mesh = keras.distribution.DeviceMesh((1, 1), ["data", "model"], devices)
    with pytest.raises(ValueError, match="'batch' is not an axis"):
        keras_m3ae.M3AEBackbone.get_layout_map(mesh)
    with pytest.raises(ValueError, match="DeviceMesh"):
        keras_m3ae.M3AEPretrainer.get_layout_map("not a mesh")
    layout_map = keras_m3ae.M3AEBackbone.get_layout_map(mesh, data_parallel_dim_name="data")
    assert tuple(layout_map["encoder/block_0/fc1/kernel"].axes) == ("data", "model")


def test_layout_patterns_come_from_layer_names(pretrainer):
    # Backend independent: the patterns, matched as LayoutMap matches them.
    blocks = list(pretrainer.backbone.structure().blocks) + list(pretrainer.decoder.transformer.blocks)
    column = [k for b in blocks for k in (b.attention.qkv.kernel, b.fc1.kernel)]
    row = [k for b in blocks for k in (b.attention.proj.kernel, b.fc2.kernel)]
    expected = {id(k): ("batch", "model") for k in column + [pretrainer.decoder.text_head.kernel]}
    expected.update({id(k): ("model", "batch") for k in row})
    expected[id(pretrainer.backbone.token_embedding.embeddings)] = ("model", "batch")
    specs = m3ae_distribution.layout_specs(
        token_embedding=keras_m3ae.M3AEBackbone.TOKEN_EMBEDDING,
        text_head=keras_m3ae.M3AEDecoder.TEXT_HEAD,
    )
    found = {}
    for variable in pretrainer.weights:
        matches = [axes for pattern, axes in specs.items() if re.fullmatch(pattern, variable.path)]
        assert len(matches) <= 1, variable.path
        if matches:
            found[id(variable)] = matches[0]
    assert found == expected
    backbone_specs = m3ae_distribution.layout_specs(
        token_embedding=keras_m3ae.M3AEBackbone.TOKEN_EMBEDDING
    )
    assert not any(re.fullmatch(p, pretrainer.decoder.text_head.kernel.path) for p in backbone_specs)


@pytest.mark.multidevice
@jax_only
def test_data_and_model_parallel_match_single_device():
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "multidevice_check.py"), "--steps", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["num_devices"] == 8
    single = result["single"]
    assert single["weight_change"] > 1e-2  # training really moved the weights
    assert single["losses"][-1] < single["losses"][0]
    for name in ("data_parallel", "model_parallel"):
        run = result[name]
        np.testing.assert_allclose(run["losses"], single["losses"], rtol=1e-5)
        assert run["weight_distance"] < 1e-5, (name, run["weight_distance"])
        # The update itself agrees to 0.1 %, not just the (large) weights.
        assert run["update_distance"] < 1e-3, (name, run["update_distance"])
    shardings = result["model_parallel"]["shardings"]
    assert shardings["encoder/block_0/attention/qkv/kernel"] == ["batch", "model"]
    assert shardings["encoder/block_0/attention/proj/kernel"] == ["model", "batch"]
    assert shardings["decoder/text_head/kernel"] == ["batch", "model"]
    assert shardings["token_embedding/embeddings"] == ["model", "batch"]
    assert all(axes == [None, None] for axes in result["data_parallel"]["shardings"].values())
