import keras
import numpy as np
import pytest
from keras import ops

import numpy_reference as ref
from keras_m3ae import layers
from keras_m3ae.layers import transformer


def test_sincos_2d_matches_specification():
    table = layers.sincos_2d((3, 5), 16)
    np.testing.assert_allclose(table, ref.sincos_2d(3, 5, 16), atol=1e-6)
    # First half encodes the column: patches in one column share it.
    np.testing.assert_allclose(table[0, :8], table[5, :8])
    assert not np.allclose(table[0, 8:], table[5, 8:])


def test_sincos_1d_matches_specification():
    np.testing.assert_allclose(layers.sincos_1d(range(7), 12), ref.sincos_1d(range(7), 12), atol=1e-6)


def test_sincos_resampling_to_the_same_grid_is_identity_and_stretches_otherwise():
    np.testing.assert_allclose(layers.sincos_2d((4, 4), 16, (4, 4)), layers.sincos_2d((4, 4), 16), atol=1e-6)
    # 8x8 over a 4x4 source: centre-aligned positions (i + .5) / 2 - .5.
    stretched = layers.sincos_2d((8, 8), 16, (4, 4))
    pos = (np.arange(8) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(stretched[:8, :8], layers.sincos_1d(pos, 8), atol=1e-6)


def test_sincos_rejects_bad_width():
    with pytest.raises(ValueError, match="divisible by 4"):
        layers.sincos_2d((2, 2), 6)


def test_patchify_order_and_round_trip():
    images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype("float32")
    patches = ops.convert_to_numpy(layers.patchify(images, 4))
    np.testing.assert_allclose(patches, ref.patchify(images, 4), atol=0)
    back = ops.convert_to_numpy(layers.unpatchify(patches, 4, (2, 3)))
    np.testing.assert_array_equal(back, images)


def test_random_masking_invariants():
    noise = keras.random.uniform((6, 20), seed=3)
    keep, restore, visible = (ops.convert_to_numpy(t) for t in layers.random_masking(noise, 5))
    assert keep.shape == (6, 5) and restore.shape == (6, 20)
    np.testing.assert_array_equal(visible.sum(1), 5)
    # Kept ids are the visible positions, and are the 5 lowest-noise ones.
    n = ops.convert_to_numpy(noise)
    for e in range(6):
        assert set(keep[e]) == set(np.flatnonzero(visible[e]))
        assert set(keep[e]) == set(np.argsort(n[e])[:5])
    # Per-example masks differ.
    assert len({tuple(sorted(k)) for k in keep}) == 6
    # Un-shuffling restores the original order.
    tokens = np.arange(20, dtype="float32")[None, :, None] * np.ones((6, 1, 2), "float32")
    shuffled = np.take_along_axis(tokens, np.argsort(n, 1)[..., None], 1)
    restored = ops.convert_to_numpy(layers.gather_tokens(shuffled, restore))
    np.testing.assert_array_equal(restored, tokens)


def test_random_masking_num_visible():
    noise = np.array([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.4, 0.6]], "float32")
    keep, _, visible = layers.random_masking(noise, 3, num_visible=np.array([1, 3]))
    np.testing.assert_array_equal(ops.convert_to_numpy(keep), [[1, 3, 0], [0, 2, 3]])
    np.testing.assert_array_equal(
        ops.convert_to_numpy(visible), [[False, True, False, False], [True, False, True, True]]
    )


def test_random_text_masking_matches_numpy():
    rng = np.random.default_rng(0)
    noise = rng.random((5, 8)).astype("float32")
    padding_mask = np.arange(8)[None, :] < np.array([[8], [5], [3], [1], [0]])
    keep, restore, visible = (
        ops.convert_to_numpy(t) for t in layers.random_text_masking(noise, padding_mask, 0.5, 4)
    )
    assert keep.shape == (5, 4) and restore.shape == (5, 8)
    for e in range(5):
        visible_ids, slots = ref.text_masking(noise[e], padding_mask[e], 0.5, 4)
        np.testing.assert_array_equal(keep[e], slots)
        np.testing.assert_array_equal(np.flatnonzero(visible[e]), np.sort(visible_ids))
    # Each caption keeps its own share: int(real * 0.5) visible, never padding.
    np.testing.assert_array_equal(visible.sum(1), [4, 2, 1, 0, 0])
    assert not (visible & ~padding_mask).any()


def test_num_kept_follows_mae():
    assert layers.num_kept(196, 0.75) == 49
    assert layers.num_kept(64, 0.75) == 16
    assert layers.num_kept(10, 0.0) == 10


def test_attention_fast_and_explicit_paths_agree_with_padding(monkeypatch):
    layer = layers.MultiHeadSelfAttention(16, 2)
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    # The default path: the explicit softmax on JAX's CPU, `dot_product_attention` elsewhere.
    default = ops.convert_to_numpy(layer(x, attention_mask=mask))
    monkeypatch.setattr(transformer, "_jax_on_cpu", lambda: False)
    fast = ops.convert_to_numpy(layer(x, attention_mask=mask))
    np.testing.assert_allclose(default, fast, atol=1e-5)
    slow, scores = layer(x, attention_mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(fast, ops.convert_to_numpy(slow), atol=1e-5)
    scores = ops.convert_to_numpy(scores)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert np.all(scores[0, :, :, 3:] < 1e-6)  # padding never receives attention
    # A padded key's value cannot change the output.
    x2 = x.copy()
    x2[0, 4] += 10.0
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x2, attention_mask=mask))[0, :3], fast[0, :3], atol=1e-5
    )


torch_only = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch backend's fast path")


@pytest.fixture
def fast_path_switch():
    """`set_torch_fast_path`, restored to on afterwards."""
    yield layers.set_torch_fast_path
    layers.set_torch_fast_path(True)


def _randomised_stack(dtype="float32", **kwargs):
    keras.utils.set_random_seed(0)
    stack = layers.TransformerStack(3, 16, 2, drop_path_rate=0.5, dtype=dtype, **kwargs)
    stack.build((3, 5, 16))
    rng = np.random.default_rng(1)
    for v in stack.trainable_weights:  # no zero biases or unit gammas: every weight counts
        v.assign(v + rng.normal(0, 0.1, v.shape))
    return stack


_X = np.random.default_rng(2).normal(size=(3, 5, 16)).astype("float32")
_MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)


def test_fast_path_is_chosen_for_torch_only_and_switched_off_by_one_call(fast_path_switch):
    stack = _randomised_stack()
    on_torch = keras.backend.backend() == "torch"
    assert (layers.fast_path_for(stack) is not None) == on_torch
    fast_path_switch(False)
    assert layers.fast_path_for(stack) is None
    fast_path_switch(True)
    assert (layers.fast_path_for(stack) is not None) == on_torch


def test_torch_block_module_does_not_import_the_transformer_module():
    """No import cycle: `transformer` chooses `torch_block`, which never imports it back."""
    import ast
    import pathlib

    source = pathlib.Path(transformer.__file__).with_name("torch_block.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    assert not any("transformer" in name for name in imported), imported
    assert "keras_m3ae.layers.dense" in imported  # the walk sees its imports


@torch_only
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("gelu_approximate", [False, True])
def test_torch_fast_path_matches_the_keras_ops_forward(monkeypatch, fast_path_switch, dtype,
                                                       gelu_approximate):
    import torch

    from keras_m3ae.layers import torch_block

    stack = _randomised_stack(dtype, gelu_approximate=gelu_approximate)
    generators = [b.drop_path.seed_generator for b in stack.blocks[1:]]  # block 0's rate is 0
    states = [ops.convert_to_numpy(g.state) for g in generators]
    taken = []
    monkeypatch.setattr(
        torch_block, "call_stack", lambda *a, _call=torch_block.call_stack: taken.append(1) or _call(*a)
    )
    cases = ((False, True), (True, True), (True, False))  # (training, final_norm)
    results = {}
    for fast in (True, False):
        fast_path_switch(fast)
        for training, final_norm in cases:
            for generator, state in zip(generators, states):  # the same examples dropped
                generator.state.assign(state)
            for v in stack.trainable_weights:
                v.value.grad = None
            inputs = torch.tensor(_X, requires_grad=True)
            y = stack(inputs, attention_mask=_MASK, training=training, final_norm=final_norm)
            assert keras.backend.standardize_dtype(y.dtype) == stack.compute_dtype
            ops.sum(ops.square(ops.cast(y, "float32"))).backward()
            results[fast, training, final_norm] = [
                ops.convert_to_numpy(ops.cast(y, "float32")),
                ops.convert_to_numpy(inputs.grad),
                *[None if v.value.grad is None else ops.convert_to_numpy(v.value.grad)
                  for v in stack.trainable_weights],
            ]
    assert len(taken) == len(cases)  # the fast path ran for each call, and only when on
    for key in cases:
        for fast, slow in zip(results[(True, *key)], results[(False, *key)]):
            if slow is None:  # the final norm's weights without `final_norm`
                assert fast is None and not key[1]
            elif dtype == "float32":
                np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
            else:  # bfloat16: the fused bias add rounds once where Keras rounds twice
                np.testing.assert_allclose(fast, slow, rtol=0, atol=2**-5 * np.abs(slow).max())
    # Drop path and the final norm took part.
    fast_out = {k[1:]: v[0] for k, v in results.items() if k[0]}
    assert not np.allclose(fast_out[True, True], fast_out[False, True])
    assert not np.allclose(fast_out[True, True], fast_out[True, False])
    # Padded keys (example 0's last two tokens) never reach the others.
    fast_path_switch(True)
    x2 = _X.copy()
    x2[0, 3:] += 5.0
    y2 = ops.convert_to_numpy(ops.cast(stack(x2, attention_mask=_MASK), "float32"))
    np.testing.assert_allclose(y2[0, :3], fast_out[False, True][0, :3], rtol=1e-5, atol=1e-5)


@torch_only
def test_torch_fast_path_leaves_other_layer_settings_to_keras(fast_path_switch):
    stack = _randomised_stack()
    assert layers.fast_path_for(stack) is not None
    # LoRA reads through `Dense.kernel`: still the fast path, with the same result.
    fc1 = stack.blocks[1].fc1
    fc1.enable_lora(2)
    fc1.lora_kernel_b.assign(np.random.default_rng(0).normal(0, 1, (2, 64)))
    assert layers.fast_path_for(stack) is not None
    outputs = {}
    for fast in (True, False):
        fast_path_switch(fast)
        outputs[fast] = ops.convert_to_numpy(stack(_X))
    fc1.lora_enabled = False  # the adapter changes the output
    assert not np.allclose(ops.convert_to_numpy(stack(_X)), outputs[False], atol=1e-3)
    fc1.lora_enabled = True
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-5, atol=1e-6)
    fast_path_switch(True)
    norm2 = stack.blocks[0].norm2
    norm2.rms_scaling = True
    assert layers.fast_path_for(stack) is None
    norm2.rms_scaling = False
    fc2 = stack.blocks[2].fc2
    fc2.activation = keras.activations.relu
    assert layers.fast_path_for(stack) is None
    fc2.activation = keras.activations.linear
    assert layers.fast_path_for(stack) is not None

    class ScaledAttention(layers.MultiHeadSelfAttention):  # a subclass may compute otherwise
        pass

    other = layers.TransformerStack(3, 16, 2)
    other.blocks[1].attention = ScaledAttention(16, 2)
    other.build((3, 5, 16))
    assert layers.fast_path_for(other) is None


@torch_only
def test_torch_fast_path_reads_stateless_variables():
    stack = layers.TransformerStack(2, 16, 2)
    stack.build((2, 5, 16))
    assert layers.fast_path_for(stack) is not None
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
    rng = np.random.default_rng(1)
    values = [ops.convert_to_numpy(v) + rng.normal(0, 0.1, v.shape).astype("float32")
              for v in stack.trainable_variables]
    stateless, _ = stack.stateless_call(values, [], x)  # numpy input, as stateless_call passes it
    before = ops.convert_to_numpy(stack(x))
    for v, value in zip(stack.trainable_variables, values):
        v.assign(value)
    np.testing.assert_allclose(ops.convert_to_numpy(stateless), ops.convert_to_numpy(stack(x)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ops.convert_to_numpy(stateless), before, atol=1e-3)


@torch_only
def test_torch_fast_path_leaves_what_only_layer_calls_do_to_keras():
    def stack(**kwargs):
        s = layers.TransformerStack(2, 16, 2, **kwargs)
        s.build((2, 5, 16))
        return s

    assert layers.fast_path_for(stack()) is not None
    assert layers.fast_path_for(stack(dtype="mixed_bfloat16")) is not None
    with keras.RematScope(mode="full"):  # rematerialisation is applied by `Layer.__call__`
        assert layers.fast_path_for(stack()) is None
    regularised = stack()
    regularised.blocks[1].activity_regularizer = keras.regularizers.L2(0.1)
    assert layers.fast_path_for(regularised) is None
    other_dtype = stack()
    other_dtype.blocks[0] = layers.TransformerBlock(16, 2, dtype="bfloat16")
    other_dtype.blocks[0].build((2, 5, 16))
    assert layers.fast_path_for(other_dtype) is None

    class Block(layers.TransformerBlock):  # a subclass may compute otherwise
        pass

    subclassed = stack()
    subclassed.blocks[0] = Block(16, 2)
    subclassed.blocks[0].build((2, 5, 16))
    assert layers.fast_path_for(subclassed) is None


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible by `num_heads`"):
        layers.MultiHeadSelfAttention(10, 3)


def test_drop_path_statistics():
    layer = layers.DropPath(0.25, seed=0)
    x = np.ones((4000, 2, 3), "float32")
    y = ops.convert_to_numpy(layer(x, training=True))
    kept = y[:, 0, 0] > 0
    assert abs(kept.mean() - 0.75) < 0.03
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x, training=False)), x)


@pytest.mark.parametrize(
    "layer",
    [
        layers.MultiHeadSelfAttention(16, 2),
        layers.TransformerBlock(16, 2, drop_path_rate=0.1),
        layers.TransformerStack(2, 16, 2, drop_path_rate=0.2),
        layers.PatchEmbedding(4, 16),
        layers.PositionTypeEmbedding((2, 3), 16, source_grid_size=(4, 4)),
        layers.ClassToken(16),
        layers.DropPath(0.3, seed=2),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def test_stack_drop_path_grows_linearly():
    stack = layers.TransformerStack(3, 16, 2, drop_path_rate=0.2)
    assert [b.drop_path_rate for b in stack.blocks] == pytest.approx([0.0, 0.1, 0.2])


def test_token_dense_equals_dense_on_sequences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4)).astype("float32")
    dense = keras.layers.Dense(3, activation="gelu")
    token_dense = layers.TokenDense(3, activation="gelu")
    dense.build((None, None, 4))
    token_dense.build((None, None, 4))
    token_dense.set_weights([w + 0.5 for w in dense.get_weights()])
    dense.set_weights(token_dense.get_weights())
    expected = np.asarray(ops.convert_to_numpy(dense(x)))
    got = ops.convert_to_numpy(token_dense(x))
    assert got.shape == (2, 5, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Reference: gelu(x @ W + b) by hand, and rank-2 inputs go straight through.
    kernel, bias = token_dense.get_weights()
    np.testing.assert_allclose(
        got[1, 2], ops.convert_to_numpy(ops.gelu(x[1, 2] @ kernel + bias, approximate=False)),
        rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ops.convert_to_numpy(token_dense(x[0])), got[0], rtol=1e-5, atol=1e-6)
    restored = layers.TokenDense.from_config(token_dense.get_config())
    assert isinstance(restored, layers.TokenDense) and restored.units == 3


def test_centered_layer_norm_equals_keras_layer_norm():
    rng = np.random.default_rng(0)
    # An offset far from zero: the two formulas round differently there.
    x = (rng.normal(size=(2, 5, 8)) * 3 + 10).astype("float32")
    norm = layers.CenteredLayerNorm(epsilon=1e-6)
    keras_norm = keras.layers.LayerNormalization(epsilon=1e-6)
    norm.build((None, None, 8))
    keras_norm.build((None, None, 8))
    norm.set_weights([rng.normal(size=8).astype("float32") for _ in range(2)])
    keras_norm.set_weights(norm.get_weights())
    got = ops.convert_to_numpy(norm(x))
    np.testing.assert_allclose(got, ops.convert_to_numpy(keras_norm(x)), rtol=1e-5, atol=1e-5)
    # By hand: (x - mean) / sqrt(var + eps) * gamma + beta.
    gamma, beta = norm.get_weights()
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + 1e-6) * gamma + beta, rtol=1e-5, atol=1e-5)
    # Mixed precision: float32 statistics, output in the compute dtype.
    half = layers.CenteredLayerNorm(epsilon=1e-6, dtype="mixed_bfloat16")
    half.build((None, None, 8))
    half.set_weights(norm.get_weights())
    out = half(ops.cast(x, "bfloat16"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(out, "float32")), got, atol=0.1)
    restored = layers.CenteredLayerNorm.from_config(norm.get_config())
    assert isinstance(restored, layers.CenteredLayerNorm) and restored.epsilon == 1e-6
