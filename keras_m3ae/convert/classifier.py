"""Fine-tuned classifiers into `M3AEImageClassifier`, with their own heads.

- Reference M3AE fine-tuning (`finetune_main.py`, `ViTClassifier`): the
  encoder's output *after* its final LayerNorm is pooled (`global_pool`:
  mean of the patch tokens, else the CLS token), then `LayerNorm_0`, then
  `Dense_0`. Saved like the pretraining pickles, with the classifier's
  parameters `{"base_model": ..., "LayerNorm_0": ..., "Dense_0": ...}` and
  the flags (`global_pool`, `mae.*`, `train_data.image_size`) in `variant`.
- Official MAE fine-tuning (`models_vit.py`): with `global_pool=True` the
  last block's output is pooled over the patch tokens, then `fc_norm`, then
  `head` (the final `norm` is deleted); otherwise the final `norm`'s CLS
  output feeds `head`. timm's ViT learns its position embedding during
  fine-tuning: a `pos_embed` that moved away from the fixed sin-cos table
  becomes a trainable table (`learned_positions=True`), its class-token row
  folded into the CLS vector (the two are only ever added).

`keras_m3ae.convert.load_classifier(path)` detects the format and calls
`load_reference` or `load_official`.
"""

import numpy as np

from keras_m3ae.convert import common
from keras_m3ae.convert import official_mae
from keras_m3ae.convert import reference_m3ae


_TEXT_TARGETS = ("backbone/token_embedding/embeddings", "backbone/text_position_type/type_embedding")


def _build(backbone_config, head, overrides):
    from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone
    from keras_m3ae.models.m3ae.m3ae_image_classifier import M3AEImageClassifier

    backbone_overrides, _ = common.split_overrides(overrides)
    head_keys = ("num_classes", "pooling", "feature_norm", "final_norm", "fine_tune_blocks",
                 "activation", "preprocessor", "drop_path_rate")
    backbone_config = dict(backbone_config)
    backbone_config.update({k: v for k, v in backbone_overrides.items() if k not in head_keys})
    head = dict(head)
    head.update({k: v for k, v in overrides.items() if k in head_keys})
    backbone = M3AEBackbone(**backbone_config)
    return M3AEImageClassifier(backbone, **head)


def _assign(path, classifier, weights, unused_ok=()):
    targets = {f"backbone/{k}": v for k, v in common.relative_paths(classifier.backbone).items()}
    targets["head/kernel"] = classifier.output_dense.kernel
    targets["head/bias"] = classifier.output_dense.bias
    if classifier.feature_norm_layer is not None:
        targets["head_norm/gamma"] = classifier.feature_norm_layer.gamma
        targets["head_norm/beta"] = classifier.feature_norm_layer.beta
    missing = sorted(set(targets) - set(weights) - set(unused_ok))
    if missing:
        common.fail(path, f"the checkpoint has no tensor for {', '.join(missing[:8])}")
    unused = sorted(set(weights) - set(targets))
    if unused:
        common.fail(path, f"tensors with no place in the model: {', '.join(unused[:8])}")
    for name, value in weights.items():
        variable = targets[name]
        value = np.asarray(value)
        if tuple(value.shape) != tuple(variable.shape):
            common.fail(path, f"tensor for {name} has shape {tuple(value.shape)}, the "
                              f"configuration implies {tuple(variable.shape)}")
        variable.assign(value.astype(variable.dtype))


def load_reference(path, **overrides):
    """A reference M3AE/MAE fine-tuning pickle -> `M3AEImageClassifier`."""
    data = reference_m3ae.read_pickle(path)
    params = reference_m3ae.params_tree(data.get("state")) if isinstance(data, dict) else None
    if not isinstance(params, dict) or "base_model" not in params or "Dense_0" not in params:
        common.fail(path, "not a reference fine-tuning checkpoint (no `base_model` / `Dense_0`)")
    flat = reference_m3ae.flatten_params(path, params)
    variant = dict(data.get("variant") or {})
    base = {k[len("base_model/"):]: v for k, v in flat.items() if k.startswith("base_model/")}
    # The fine-tuning flags name the data `train_data`.
    if "train_data.image_size" in variant:
        variant.setdefault("dataset", "train")
    backbone_config, _ = reference_m3ae.read_config(path, variant, base, {})
    global_pool = bool(variant.get("global_pool", False))
    head = dict(
        num_classes=int(flat["Dense_0/kernel"].shape[1]),
        pooling="mean" if global_pool else "token",
        feature_norm="layer_norm",
        final_norm=True,
    )
    classifier = _build(backbone_config, head, overrides)
    weights = {}
    for source, value in base.items():
        name, array = common.converted(
            path, f"base_model/{source}", value, reference_m3ae.target_of(source), "parameter"
        )
        if name in _TEXT_TARGETS and not backbone_config["vocabulary_size"]:
            continue  # an M3AE encoder fine-tuned on images: its text part is unused
        if name.startswith("backbone/"):  # decoder parameters are unused here
            weights[name] = array
    weights["head/kernel"] = flat["Dense_0/kernel"]
    weights["head/bias"] = flat["Dense_0/bias"]
    weights["head_norm/gamma"] = flat["LayerNorm_0/scale"]
    weights["head_norm/beta"] = flat["LayerNorm_0/bias"]
    _assign(path, classifier, weights)
    return classifier


def load_official(path, **overrides):
    """An official MAE fine-tuned `.pth` (`models_vit.py`) -> `M3AEImageClassifier`."""
    checkpoint = official_mae.read_torch(path)
    weights = official_mae.to_numpy(path, official_mae.state_dict_of(path, checkpoint))
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if "head.weight" not in weights:
        common.fail(path, "no classification `head` in the checkpoint; use `load_checkpoint`")
    kernel = weights["patch_embed.proj.weight"]
    width, channels, patch_size = kernel.shape[0], kernel.shape[1], kernel.shape[2]
    blocks = [k for k in weights if k.startswith("blocks.")]
    depth = 1 + max(int(k.split(".")[1]) for k in blocks)
    grid = int(round(np.sqrt(weights["pos_embed"].shape[1] - 1)))
    global_pool = "fc_norm.weight" in weights
    positions = np.asarray(weights.pop("pos_embed")).reshape(-1, width)
    learned = not common.is_fixed_position_table(positions, (grid, grid), width)
    backbone_config = dict(
        image_size=getattr(args, "input_size", None) or grid * patch_size,
        patch_size=patch_size,
        vocabulary_size=None,
        hidden_dim=width,
        num_layers=depth,
        num_heads=common.heads_for(path, width, overrides, "num_heads", common.STANDARD_HEADS),
        mlp_ratio=weights["blocks.0.mlp.fc1.weight"].shape[0] / width,
        layer_norm_epsilon=1e-6,
        num_channels=channels,
        use_type_embedding=False,
        learned_positions=learned,
    )
    head = dict(
        num_classes=int(weights["head.weight"].shape[0]),
        pooling="mean" if global_pool else "token",
        feature_norm="layer_norm" if global_pool else None,
        final_norm=not global_pool,
    )
    classifier = _build(backbone_config, head, overrides)
    if tuple(classifier.backbone.grid_size) != (grid, grid) or positions.shape[0] != grid * grid + 1:
        common.fail(path, f"pos_embed has {positions.shape[0] - 1} patch positions; the "
                          f"configuration implies {classifier.backbone.grid_size}")
    mapped = {
        "head/kernel": common.linear(weights.pop("head.weight")),
        "head/bias": weights.pop("head.bias"),
    }
    if global_pool:
        mapped["head_norm/gamma"] = weights.pop("fc_norm.weight")
        mapped["head_norm/beta"] = weights.pop("fc_norm.bias")
    if learned:
        mapped["backbone/image_position_type/positions"] = positions[1:]
        # timm adds pos_embed[0] to the CLS token and nothing else: fold it in.
        weights["cls_token"] = np.asarray(weights["cls_token"]).reshape(-1) + positions[0]
    for key, value in weights.items():
        target = official_mae.target_of(key)
        if target is not None and not target[0].startswith("backbone/"):
            target = None  # a decoder tensor in a classifier checkpoint
        name, array = common.converted(path, key, value, target)
        mapped[name] = array
    unused = ("backbone/encoder/norm/gamma", "backbone/encoder/norm/beta") if global_pool else ()
    _assign(path, classifier, mapped, unused_ok=unused)
    return classifier
