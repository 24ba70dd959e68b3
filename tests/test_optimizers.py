"""keras_m3ae.optimizers.AdamW, the recipes' exemptions, and compile() leaving optimizers alone."""

import re
import warnings

import keras
import numpy as np
import pytest

from conftest import tiny_batch
from conftest import tiny_pretrainer
from keras_m3ae import optimizers
from keras_m3ae.optimizers import AdamW
from keras_m3ae.optimizers import _keras_internals
from keras_m3ae.optimizers import jax_update
from keras_m3ae.optimizers import torch_adam

BACKEND = keras.backend.backend()
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="JAX's compiled train step")

SHAPES = [(7, 5), (5,), (3, 4, 2), (4,)]


def _problem(dtypes=("float32",) * 4, steps=4, scales=(1.0, 1.0, 1.0, 1.0)):
    rng = np.random.default_rng(0)
    init = [rng.normal(size=s).astype(d) for s, d in zip(SHAPES, dtypes)]
    grads = [
        [(rng.normal(size=s) * c).astype(d) for s, d, c in zip(SHAPES, dtypes, scales)]
        for _ in range(steps)
    ]
    return init, grads


def _run(optimizer, init, grads, exclude=None):
    """Applies every step's gradients; returns the variables' final values."""
    names = ["kernel", "bias", "embeddings", "scale"]
    variables = [keras.Variable(x, dtype=x.dtype, name=n) for x, n in zip(init, names)]
    if exclude == "list":
        optimizer.exclude_from_weight_decay(var_list=[variables[1]])
    elif exclude == "names":
        optimizer.exclude_from_weight_decay(var_names=["^embeddings$"])
    for step in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def _fast_path_calls(monkeypatch):
    """Counts the calls that only the fast step makes on this backend."""
    if BACKEND == "torch":
        return _count_calls(monkeypatch, torch_adam, "update")
    if BACKEND == "jax":
        return _count_calls(monkeypatch, jax_update, "clip_by_global_norm")
    return []


# Several steps, decay exemptions by variable and by name, a schedule,
# clipping by global norm, by norm and by value, AMSGrad.
SETTINGS = {
    "decay, exempt list, schedule": dict(weight_decay=0.05, beta_2=0.95, exclude="list", schedule=True),
    "decay, exempt names, global clip": dict(weight_decay=0.1, exclude="names", global_clipnorm=0.5),
    "no decay, clipnorm": dict(weight_decay=0.0, clipnorm=0.3),
    "clipvalue, large decay": dict(weight_decay=0.5, clipvalue=0.2),
    "amsgrad": dict(weight_decay=0.05, amsgrad=True, global_clipnorm=100.0),
}


@pytest.mark.parametrize("fast_update", [True, False], ids=["fast", "stock"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_adamw_steps_are_keras_adamw_steps(monkeypatch, setting, fast_update):
    options = dict(SETTINGS[setting])
    exclude = options.pop("exclude", None)
    init, grads = _problem()

    def make(cls, **extra):
        lr = 1e-2
        if options.get("schedule"):
            lr = keras.optimizers.schedules.ExponentialDecay(1e-2, 2, 0.5)
        kwargs = {k: v for k, v in options.items() if k != "schedule"}
        return cls(lr, **kwargs, **extra)

    expected = _run(make(keras.optimizers.AdamW), init, grads, exclude)
    calls = _fast_path_calls(monkeypatch)
    got = _run(make(AdamW, fast_update=fast_update), init, grads, exclude)
    for want, ours, start in zip(expected, got, init):
        assert not np.allclose(want, start)
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    # The fast step was taken where it applies, and only there.
    takes_fast = fast_update and (
        (BACKEND == "torch" and not options.get("amsgrad"))
        or (BACKEND == "jax" and options.get("global_clipnorm"))
    )
    assert len(calls) == (len(grads) if takes_fast else 0)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's fused kernel and its in-place fallback")
@pytest.mark.parametrize("path", ["fused", "loop"])
@pytest.mark.parametrize("after", [False, True], ids=["keras-eps", "torch-eps"])
def test_torch_fused_and_loop_updates_match_the_per_variable_step(monkeypatch, path, after):
    import torch

    if path == "loop":  # the update for devices without PyTorch's fused kernel
        monkeypatch.setattr(torch_adam, "FUSED_DEVICES", ())
    fused_calls = []
    kernel = torch._fused_adamw_
    monkeypatch.setattr(
        torch, "_fused_adamw_", lambda *a, **k: fused_calls.append(len(a[0])) or kernel(*a, **k)
    )
    # float64: a group of its own in the kernel; tiny gradients: epsilon matters.
    init, grads = _problem(("float32", "float32", "float32", "float64"), scales=(1, 1e-7, 1e-3, 1))
    results = []
    for fast in (False, True):
        schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 3, 0.5)
        optimizer = AdamW(schedule, weight_decay=0.05, beta_2=0.95, epsilon=1e-8,
                          epsilon_after_bias_correction=after, fast_update=fast)
        results.append(_run(optimizer, init, grads, exclude="list"))
    # One kernel call per (device, dtype, decay) group and step.
    assert fused_calls == ([2, 1, 1] * len(grads) if path == "fused" else [])
    for stock, fast, start in zip(*results, init):
        assert fast.dtype == stock.dtype  # float64 stays so
        assert not np.allclose(stock, start)
        np.testing.assert_allclose(fast, stock, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fast_update", [True, False], ids=["fast", "stock"])
def test_epsilon_after_bias_correction_is_the_torch_and_optax_formula(fast_update):
    rng = np.random.default_rng(0)
    # Gradients from 1 down to epsilon's size: where the placements differ.
    grads = rng.normal(size=(6, 5)) * np.array([1e-3, 1e-5, 1e-6, 1e-8, 1.0])
    lr, wd, b1, b2, eps = 0.1, 0.05, 0.9, 0.95, 1e-8
    results = {}
    for after in (False, True):
        variable = keras.Variable(np.ones(5, "float32"))
        optimizer = AdamW(lr, weight_decay=wd, beta_1=b1, beta_2=b2, epsilon=eps,
                          epsilon_after_bias_correction=after, fast_update=fast_update)
        for g in grads:
            optimizer.apply([keras.ops.convert_to_tensor(g.astype("float32"))], [variable])
        results[after] = keras.ops.convert_to_numpy(variable)
    w, w_keras, m, v = np.ones(5), np.ones(5), np.zeros(5), np.zeros(5)
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        w = w * (1 - lr * wd) - lr * m_hat / (np.sqrt(v_hat) + eps)  # torch.optim.AdamW
        w_keras = w_keras * (1 - lr * wd) - lr * m_hat / (np.sqrt(v_hat) + eps / np.sqrt(1 - b2**t))
    np.testing.assert_allclose(results[True], w, rtol=1e-6)
    np.testing.assert_allclose(results[False], w_keras, rtol=1e-6)
    # The placements differ where gradients are near epsilon, agree where not.
    assert abs((1 - results[True][3]) / (1 - results[False][3]) - 1) > 0.1
    np.testing.assert_allclose(results[True][4], results[False][4], rtol=1e-6)


def test_adamw_is_a_keras_adamw_and_serialises():
    optimizer = optimizers.pretrain_optimizer(
        keras.optimizers.schedules.CosineDecay(1e-3, 100), recipe="m3ae", global_clipnorm=1.0
    )
    assert isinstance(optimizer, keras.optimizers.AdamW)
    config = keras.saving.serialize_keras_object(optimizer)
    assert config["registered_name"] == "keras_m3ae>AdamW"
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is AdamW
    assert again.get_config() == optimizer.get_config()
    assert again.epsilon_after_bias_correction and again.fast_update
    assert again.weight_decay_exempt_names == list(optimizers.M3AE_NO_DECAY_NAMES)
    # ... and the exemptions themselves come back with it.
    assert optimizers.has_weight_decay_exemptions(again)
    plain = AdamW()
    assert not optimizers.has_weight_decay_exemptions(plain)
    assert (plain.get_config()["epsilon_after_bias_correction"], plain.epsilon) == (False, 1e-7)


@pytest.mark.parametrize(
    "version, tested",
    [("3.15.1", True), ("3.15.0", True), ("3.15.2.dev0", True), ("3.14.0", False),
     ("3.16.0", False), ("4.0.0", False), ("nightly", False)],
)
def test_keras_version_check(version, tested):
    assert _keras_internals.is_tested(version) is tested


def test_untested_keras_takes_keras_step_with_one_warning(monkeypatch):
    monkeypatch.setattr(_keras_internals, "SUPPORTED", False)
    monkeypatch.setattr(_keras_internals, "_warned", False)
    init, grads = _problem()
    with pytest.warns(UserWarning, match="outside the tested range") as record:
        optimizer = AdamW(1e-2, weight_decay=0.05, global_clipnorm=0.5)
        AdamW(1e-3)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AdamW(fast_update=False)  # asks for no fast step: nothing to warn about
    calls = _fast_path_calls(monkeypatch)
    got = _run(optimizer, init, grads)
    expected = _run(keras.optimizers.AdamW(1e-2, weight_decay=0.05, global_clipnorm=0.5), init, grads)
    assert calls == []
    for ours, want in zip(got, expected):
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)


def test_layer_decay_copy_of_adamw_keeps_per_variable_rates():
    # The fast torch step updates all variables at one rate; a copy with
    # per-variable rates must take the per-variable step instead.
    init, grads = _problem()
    variables = [keras.Variable(x) for x in init]
    optimizer = optimizers.with_learning_rate_multipliers(
        AdamW(1e-2, weight_decay=0.05), [(variables[0], 0.0), (variables[2], 0.5)]
    )
    assert isinstance(optimizer, AdamW)
    for step in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    got = [keras.ops.convert_to_numpy(v) for v in variables]
    np.testing.assert_array_equal(got[0], init[0])  # rate 0: neither stepped nor decayed
    assert not np.allclose(got[1], init[1])
    half = _run(AdamW(5e-3, weight_decay=0.05), [init[2]] * 4, [[g[2]] * 4 for g in grads])[0]
    np.testing.assert_allclose(got[2], half, rtol=1e-5, atol=1e-7)


# --- compile() uses the optimizer as given ---


def _path(variable):
    """The variable's path without the pretrainer's own (numbered) name."""
    return re.sub(r"^m3ae_pretrainer(_\d+)?/", "", variable.path)


def _exempt_paths(model):
    """`(exempt, decayed)`: the paths of the variables the optimizer does not / does decay."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    decayed = {_path(v) for v in model.trainable_variables if _keras_internals.decays(optimizer, v)}
    return {_path(v) for v in model.trainable_variables} - decayed, decayed


def _matching(paths, pattern):
    return {p for p in paths if re.search(pattern, p)}


def test_compile_never_patches_a_given_optimizer():
    model = tiny_pretrainer()
    optimizer = keras.optimizers.AdamW(1e-3, global_clipnorm=1.0)
    cls, attributes = type(optimizer), set(vars(optimizer))
    model.compile(optimizer=optimizer)
    assert model.optimizer is optimizer and type(optimizer) is cls
    # Only the exemptions were added (this optimizer had none of its own).
    assert set(vars(optimizer)) - attributes == {
        "_exclude_from_weight_decay", "_exclude_from_weight_decay_pattern",
        "_exclude_from_weight_decay_cache"}
    exempt, _ = _exempt_paths(model)
    assert {_path(v) for v in model.no_weight_decay_variables()} == exempt


def test_compile_keeps_an_optimizers_own_exemptions():
    model = tiny_pretrainer()
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.exclude_from_weight_decay(var_names=["kernel"])
    model.compile(optimizer=optimizer)
    exempt, decayed = _exempt_paths(model)
    assert exempt == _matching(exempt | decayed, "kernel$")
    assert "backbone/cls_token/cls_token" not in exempt and "cls_token/cls_token" in decayed
    # Called with no arguments: decay everything.
    model = tiny_pretrainer()
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.exclude_from_weight_decay()
    model.compile(optimizer=optimizer)
    assert _exempt_paths(model)[0] == set()
    # A built optimizer is left as it is too.
    model = tiny_pretrainer()
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.build(model.trainable_variables)
    model.compile(optimizer=optimizer)
    assert _exempt_paths(model)[0] == set()


def test_compile_auto_is_the_library_adamw_with_its_default_exemptions():
    model = tiny_pretrainer()
    model.compile()
    optimizer = model.optimizer
    assert type(optimizer) is AdamW and optimizer.fast_update
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon, optimizer.weight_decay) == (
        0.9, 0.95, 1e-8, 0.05)
    assert not optimizer.epsilon_after_bias_correction
    exempt, decayed = _exempt_paths(model)
    # Rank <= 1 and the token embedding: the library's rule.
    ranks = {_path(v): len(v.shape) for v in model.trainable_variables}
    assert exempt == {p for p, r in ranks.items() if r <= 1} | {"token_embedding/embeddings"}
    assert "cls_token/cls_token" in exempt and "decoder/image_mask_token" in exempt


def test_recipe_exemptions_are_the_originals():
    model = tiny_pretrainer()
    model.compile(optimizer=optimizers.pretrain_optimizer(1e-3, recipe="mae"))
    assert model.optimizer.epsilon_after_bias_correction
    exempt, decayed = _exempt_paths(model)
    # timm's add_weight_decay: biases and LayerNorm scales and offsets (1-D there).
    assert exempt == _matching(exempt | decayed, "(bias|gamma|beta)$")
    assert {"cls_token/cls_token", "decoder/image_mask_token", "decoder/text_mask_token",
            "token_embedding/embeddings"} <= decayed

    model = tiny_pretrainer()
    model.compile(optimizer=optimizers.pretrain_optimizer(1e-3, recipe="m3ae"))
    exempt, decayed = _exempt_paths(model)
    # The reference M3AE's no_decay_list, mapped onto this library's paths.
    assert exempt == _matching(
        exempt | decayed,
        "(/bias|/beta|cls_token|type_embedding|mask_token|token_embedding/embeddings)$")
    assert "encoder/block_0/norm1/gamma" in decayed and "decoder/transformer/norm/gamma" in decayed
    assert "encoder/block_0/norm1/beta" in exempt
    assert "image_position_type/type_embedding" in exempt
    assert "decoder/text_position_type/type_embedding" in exempt
    assert "patch_embedding/projection/kernel" in decayed

    with pytest.raises(ValueError, match="recipe"):
        optimizers.pretrain_optimizer(recipe="bert")


@pytest.mark.parametrize("recipe", ["mae", "m3ae"])
def test_recipe_names_match_every_backends_variable_names(recipe):
    # Keras matches `variable.name`: "gamma" on JAX and torch; TensorFlow's
    # optimizer passes the tf.Variable, named by path with ":0".
    pattern = re.compile("|".join(optimizers.PRETRAIN_RECIPES[recipe]))
    for name in ("bias", "encoder/block_0/fc1/bias:0", "decoder/transformer/norm/beta:0"):
        assert pattern.search(name), name
    for name in ("kernel", "encoder/block_0/fc1/kernel:0", "text_bias_scale", "bias/kernel:0"):
        assert not pattern.search(name), name
    assert bool(pattern.search("encoder/norm/gamma:0")) == (recipe == "mae")
    assert bool(pattern.search("cls_token/cls_token:0")) == (recipe == "m3ae")


def test_recipes_hold_the_papers_betas_and_epsilon():
    for recipe in (None, "mae", "m3ae"):
        optimizer = optimizers.pretrain_optimizer(recipe=recipe)
        assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.95, 1e-8)
        assert optimizer.epsilon_after_bias_correction == (recipe is not None)
        assert optimizers.has_weight_decay_exemptions(optimizer) == (recipe is not None)
    assert optimizers.pretrain_optimizer(epsilon=1e-6, beta_2=0.99).beta_2 == 0.99
    assert optimizers.fine_tune_optimizer().epsilon == 1e-8


# --- JAX: the update ordering, in the compiled train step ---


def _compiled_train_step(model, data):
    import jax

    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                 optimizer_variables=True, metrics_variables=True)
    arrays = jax.tree.map(jax.numpy.asarray, data)
    return jax.jit(model.train_step, donate_argnums=0).lower(state, (arrays, None, None)).compile()


def _copied_state(hlo):
    """Shapes of the entry parameters (state arrays) that the program copies."""
    entry = hlo[hlo.index("\nENTRY"):]
    shapes = dict(re.findall(r"(state_[\w.]+): \w+\[([\d,]*)\]", entry))
    copied = re.findall(r"\} copy\(%(state_[\w.]+)\)", entry)
    return [tuple(int(d) for d in shapes[name].split(",") if d) for name in copied]


@jax_only
def test_jax_train_step_updates_state_in_place():
    copied = {}
    for fast in (True, False):
        model = tiny_pretrainer()
        model.compile(optimizer=optimizers.pretrain_optimizer(1e-3, fast_update=fast))
        model.optimizer.build(model.trainable_variables)
        compiled = _compiled_train_step(model, tiny_batch())
        copied[fast] = _copied_state(compiled.as_text())
    # Donated state is updated in place: no kernel is copied. XLA still
    # copies a few vectors (head biases, the seed state): bytes, not
    # model-sized. Keras's own update copies kernels here.
    assert [shape for shape in copied[True] if len(shape) > 1] == []
    assert sum(int(np.prod(shape)) for shape in copied[True]) < 0.01 * model.count_params()
    assert [shape for shape in copied[False] if len(shape) > 1] != []
    state_bytes = 4 * (model.count_params() + sum(
        int(np.prod(v.shape)) for v in model.optimizer.variables + model.non_trainable_variables))
    assert compiled.memory_analysis().alias_size_in_bytes >= 0.99 * state_bytes


def _without_key_bias(variable):
    """The variable's value; for a fused QKV bias, its query and value parts.

    The key bias's gradient is zero but for rounding noise, which Adam
    scales up to steps of about `lr`: differently rounded programs (the
    fast step's) move it differently.
    """
    value = keras.ops.convert_to_numpy(variable)
    if variable.path.endswith("qkv/bias"):
        query, _, value_part = np.split(value, 3)
        return np.concatenate([query, value_part])
    return value


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow takes Keras's step either way")
def test_pretrainer_trains_the_same_with_the_fast_and_stock_steps():
    data = tiny_batch()
    results = []
    for fast in (False, True):
        keras.utils.set_random_seed(0)
        model = tiny_pretrainer()
        model.compile(optimizer=optimizers.pretrain_optimizer(
            1e-2, recipe="m3ae", fast_update=fast))
        start = [_without_key_bias(v) for v in model.trainable_variables]
        losses = [model.train_on_batch(data, return_dict=True)["loss"] for _ in range(3)]
        results.append((losses, [_without_key_bias(v) for v in model.trainable_variables]))
    (losses, stock), (fast_losses, fast) = results
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(fast_losses, losses, rtol=1e-6)
    for a, b, s in zip(stock, fast, start):
        assert not np.allclose(a, s)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@jax_only
@pytest.mark.parametrize("clip", [0.5, 100.0])
def test_jax_dot_product_global_norm_clips_as_keras_does(clip):
    from keras.src.optimizers.base_optimizer import clip_by_global_norm

    rng = np.random.default_rng(0)
    grads = [rng.normal(size=s).astype("float32") for s in [(7, 5), (5,), (3, 4, 2)]]
    ours = jax_update.clip_by_global_norm([*grads[:1], None, *grads[1:]], clip)
    assert ours[1] is None
    expected = clip_by_global_norm(grads, clip)
    norm = np.sqrt(sum((g.astype("float64") ** 2).sum() for g in grads))  # about 7.9
    for got, want, g in zip(ours[:1] + ours[2:], expected, grads):
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(got, g * min(1.0, clip / norm), rtol=1e-5)
    # bfloat16 gradients stay bfloat16, scaled by the norm summed in float32.
    half = jax_update.clip_by_global_norm([keras.ops.cast(g, "bfloat16") for g in grads], clip)
    assert [keras.backend.standardize_dtype(g.dtype) for g in half] == ["bfloat16"] * 3
    for got, want in zip(half, expected):
        np.testing.assert_allclose(np.asarray(got, "float32"), want, rtol=1e-2, atol=1e-3)
    # A non-finite gradient makes every gradient NaN, as in Keras.
    grads[1][0] = np.inf
    assert all(np.isnan(np.asarray(g)).all() for g in jax_update.clip_by_global_norm(grads, clip))


def test_private_keras_optimizer_names_are_used_in_one_module_only():
    import pathlib

    import keras_m3ae

    private = re.compile(
        r"\b_(backend_update_step|apply_weight_decay|clip_gradients|use_weight_decay|"
        r"exclude_from_weight_decay\w*|get_variable_index|trainable_variables|momentums|"
        r"velocities|parallel_update_step|var_key)\b|keras\.src"
    )
    root = pathlib.Path(keras_m3ae.__file__).parent
    users = sorted(
        str(path.relative_to(root)) for path in root.rglob("*.py") if private.search(path.read_text())
    )
    assert users == ["optimizers/_keras_internals.py"]


def test_embedding_rows_repeated_in_a_batch_get_the_dense_update():
    # An embedding's gradient for ids [0, 0]: row 0 gets twice the gradient,
    # and Adam's second moment its square. (Keras's own TensorFlow Adam
    # squares the two sparse slices one by one: (1 - b2) * 2 instead of * 4.)
    embedding = keras.layers.Embedding(3, 2)
    embedding.build((None, 2))
    start = keras.ops.convert_to_numpy(embedding.embeddings).copy()
    optimizer = AdamW(0.1, weight_decay=0.0, beta_2=0.5, epsilon=1e-3)
    ids = np.array([[0, 0]])
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(embedding(ids))
        grads = tape.gradient(loss, [embedding.embeddings.value])
        assert isinstance(grads[0], tf.IndexedSlices)
    else:
        grads = [keras.ops.convert_to_tensor(np.array([[2.0, 2.0], [0, 0], [0, 0]], "float32"))]
    optimizer.apply(grads, [embedding.embeddings])
    m, v = 0.9 * 0 + 0.1 * 2.0, 0.5 * 0 + 0.5 * 4.0
    step = 0.1 * (m / 0.1) / (np.sqrt(v / 0.5) + 1e-3 / np.sqrt(0.5))
    got = keras.ops.convert_to_numpy(embedding.embeddings)
    np.testing.assert_allclose(got[0], start[0] - step, rtol=1e-6)
    np.testing.assert_array_equal(got[1:], start[1:])
