"""Training recipes: layer-wise lr decay, LARS, schedules, losses, the optimizer updates."""

import keras
import numpy as np
import pytest

import keras_m3ae
from keras_m3ae.losses import ClassificationAccuracy
from keras_m3ae.losses import ClassificationCrossentropy
from keras_m3ae.optimizers import LARS
from keras_m3ae.optimizers import layer_decay_multipliers
from keras_m3ae.optimizers import learning_rate_multipliers
from keras_m3ae.optimizers import warmup_cosine_schedule
from keras_m3ae.optimizers import with_learning_rate_multipliers


def _backbone(depth=3):
    return keras_m3ae.M3AEBackbone(
        image_size=16, patch_size=8, vocabulary_size=20, max_text_length=4,
        hidden_dim=16, num_layers=depth, num_heads=2,
    )


def test_layer_decay_multipliers_follow_structure():
    bb = _backbone(depth=3)
    multipliers = {id(v): m for v, m in layer_decay_multipliers(bb, 0.5)}
    assert set(multipliers) == {id(v) for v in bb.weights}
    for layer in (bb.patch_embedding, bb.image_position_type, bb.cls_token, bb.token_embedding):
        for v in layer.weights:
            assert multipliers[id(v)] == 0.5**4
    for i, block in enumerate(bb.encoder.blocks):
        for v in block.weights:
            assert multipliers[id(v)] == 0.5 ** (3 - i)
    for v in bb.encoder.norm.weights:
        assert multipliers[id(v)] == 1.0
    with pytest.raises(ValueError, match="layer_decay"):
        layer_decay_multipliers(bb, 1.5)


def test_layer_decay_takes_variable_groups():
    bb = _backbone(depth=2)
    from_backbone = layer_decay_multipliers(bb, 0.5)
    groups = bb.structure().depth_groups()
    assert layer_decay_multipliers(groups, 0.5) == from_backbone
    assert layer_decay_multipliers(bb.structure(), 0.5) == from_backbone
    ids, depth = keras_m3ae.optimizers.layer_ids(groups)
    assert depth == 2 and ids[id(bb.encoder.norm.gamma)] == 3


def test_recipes_hold_the_papers_numbers():
    from keras_m3ae import optimizers

    probe = optimizers.linear_probe_optimizer(batch_size=512)
    assert isinstance(probe, LARS)
    assert (probe.momentum, probe.lars_weight_decay, probe.trust_coefficient) == (0.9, 0.0, 0.001)
    assert float(keras.ops.convert_to_numpy(probe.learning_rate)) == pytest.approx(0.2)
    fine = optimizers.fine_tune_optimizer()
    assert (fine.beta_1, fine.beta_2, fine.weight_decay) == (0.9, 0.999, 0.05)
    assert float(keras.ops.convert_to_numpy(fine.learning_rate)) == pytest.approx(1e-3)
    pre = optimizers.pretrain_optimizer()
    assert (pre.beta_1, pre.beta_2, pre.weight_decay) == (0.9, 0.95, 0.05)
    assert float(keras.ops.convert_to_numpy(pre.learning_rate)) == pytest.approx(1.5e-4)
    schedule = optimizers.recipe_learning_rate(1e-3, 512, epochs=4, steps_per_epoch=10, warmup_epochs=5)
    assert float(schedule(20)) == pytest.approx(2e-3)  # warmup capped at half of training
    bb = _backbone(depth=2)
    configured = optimizers.configure_optimizer(
        fine, no_weight_decay=bb.no_weight_decay_variables(), layer_groups=bb, layer_decay=0.5
    )
    configured.build(bb.trainable_variables)
    assert learning_rate_multipliers(configured)[bb.encoder.blocks[0].fc1.kernel.path] == 0.25
    assert not configured._use_weight_decay(bb.token_embedding.embeddings)


def _two_layer_model():
    inputs = keras.Input((3,))
    first = keras.layers.Dense(2, name="first")
    second = keras.layers.Dense(1, name="second")
    model = keras.Model(inputs, second(first(inputs)))
    return model, first, second


def _step(model, optimizer, x, y):
    """One optimizer step through the backend-agnostic `apply` with numpy grads."""
    # Gradient of 0.5 * sum((model(x) - y)^2) computed by finite-free numpy:
    # linear model, so use the analytic form on the composed weights.
    w1, b1, w2, b2 = (keras.ops.convert_to_numpy(v) for v in model.trainable_variables)
    h = x @ w1 + b1
    r = h @ w2 + b2 - y
    grads = [x.T @ (r @ w2.T), (r @ w2.T).sum(0), h.T @ r, r.sum(0)]
    optimizer.apply([keras.ops.convert_to_tensor(g.astype("float32")) for g in grads],
                    model.trainable_variables)
    return grads


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_learning_rate_multipliers_scale_each_variable(kind):
    keras.utils.set_random_seed(0)
    model, first, second = _two_layer_model()
    lr, wd = 0.1, 0.2
    if kind == "sgd":
        base = keras.optimizers.SGD(lr)
    else:
        base = keras.optimizers.AdamW(lr, weight_decay=wd, epsilon=1e-12)
    base.exclude_from_weight_decay(var_list=[second.kernel])
    optimizer = with_learning_rate_multipliers(base, [(first.kernel, 0.25), (first.bias, 0.5)])
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    grads = _step(model, optimizer, x, np.ones((4, 1), "float32"))
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    scales = [0.25, 0.5, 1.0, 1.0]
    decayed = [True, True, False, True]
    for w0, w1, g, s, d in zip(before, after, grads, scales, decayed):
        if kind == "sgd":
            expected = w0 - lr * s * g
        else:
            # First Adam step: m_hat / sqrt(v_hat) = sign(g); decay uses the same rate.
            w = w0 * (1 - lr * s * wd) if d else w0
            expected = w - lr * s * np.sign(g)
        np.testing.assert_allclose(w1, expected, rtol=1e-4, atol=1e-6)
    assert learning_rate_multipliers(optimizer) == {
        first.kernel.path: 0.25, first.bias.path: 0.5, second.kernel.path: 1.0, second.bias.path: 1.0
    }


def test_classifier_compile_uses_layer_decay_and_no_decay_exclusions():
    from keras_m3ae.models import M3AEImageClassifier

    clf = M3AEImageClassifier(_backbone(depth=2), num_classes=3)
    clf.compile(layer_decay=0.5, batch_size=512)
    optimizer = clf.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(2e-3)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.weight_decay) == (0.9, 0.999, 0.05)
    optimizer.build(clf.trainable_variables)
    multipliers = learning_rate_multipliers(optimizer)
    bb = clf.backbone
    assert multipliers[bb.patch_embedding.projection.kernel.path] == 0.125
    assert multipliers[bb.encoder.blocks[0].fc1.kernel.path] == 0.25
    assert multipliers[bb.encoder.blocks[1].fc1.kernel.path] == 0.5
    assert multipliers[clf.output_dense.kernel.path] == 1.0
    assert not optimizer._use_weight_decay(bb.cls_token.cls_token)
    assert not optimizer._use_weight_decay(clf.output_dense.bias)
    assert optimizer._use_weight_decay(clf.output_dense.kernel)
    assert clf.loss.label_smoothing == 0.1
    probe = M3AEImageClassifier(_backbone(depth=2), num_classes=3, fine_tune_blocks=0)
    probe.compile(batch_size=1024, epochs=4, steps_per_epoch=10)
    assert isinstance(probe.optimizer, LARS) and probe.optimizer.lars_weight_decay == 0.0
    schedule = probe.optimizer._learning_rate
    assert float(schedule(20)) == pytest.approx(0.4)  # 0.1 * 1024 / 256 after 2 warmup epochs


def test_lars_matches_reference_update():
    kernel = keras.Variable(np.array([[1.0, 2.0], [3.0, 4.0]], "float32"))
    bias = keras.Variable(np.array([1.0, -1.0], "float32"))
    optimizer = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01)
    g_kernel = np.array([[0.1, 0.2], [0.0, -0.3]], "float32")
    g_bias = np.array([0.5, 0.5], "float32")
    w, b = kernel.numpy().copy(), bias.numpy().copy()
    mu_w, mu_b = np.zeros_like(w), np.zeros_like(b)
    for _ in range(2):
        optimizer.apply([keras.ops.convert_to_tensor(g_kernel), keras.ops.convert_to_tensor(g_bias)],
                        [kernel, bias])
        d = g_kernel + 0.1 * w
        d = d * 0.01 * np.linalg.norm(w) / np.linalg.norm(d)
        mu_w = 0.9 * mu_w + d
        w = w - 0.5 * mu_w
        mu_b = 0.9 * mu_b + g_bias  # biases: no adaptation, no decay
        b = b - 0.5 * mu_b
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), w, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), b, rtol=1e-5)
    assert LARS.from_config(optimizer.get_config()).trust_coefficient == 0.01


def test_warmup_cosine_schedule_values():
    schedule = warmup_cosine_schedule(1.0, epochs=10, warmup_epochs=2, steps_per_epoch=5, min_learning_rate=0.1)
    values = [float(schedule(t)) for t in (0, 5, 10, 30, 50)]
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 2)), 0.1], atol=1e-6)
    with pytest.raises(ValueError, match="Warmup"):
        warmup_cosine_schedule(1.0, total_steps=5, warmup_steps=5)


def test_loss_and_accuracy_take_hard_and_soft_labels():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "float32")
    loss = ClassificationCrossentropy(label_smoothing=0.3)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    target = np.eye(3)[[0, 2]] * 0.7 + 0.1
    expected = -(target * log_p).sum(1).mean()
    assert float(loss(np.array([0, 2]), logits)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(np.eye(3, dtype="float32")[[0, 2]], logits)) == pytest.approx(expected, rel=1e-5)
    metric = ClassificationAccuracy()
    metric.update_state(np.array([[0.6, 0.4, 0.0], [0.0, 0.2, 0.8]], "float32"), logits)
    assert float(metric.result()) == 0.5


