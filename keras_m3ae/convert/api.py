"""The converters' entry points: format detection, loading, saving (`keras_m3ae.convert`)."""

import json
import os

from keras_m3ae.convert import classifier
from keras_m3ae.convert import hf_vitmae
from keras_m3ae.convert import official_mae
from keras_m3ae.convert import reference_m3ae
from keras_m3ae.convert.common import CheckpointError
from keras_m3ae.models.m3ae import m3ae_presets

PRETRAINER_CONFIG = "pretrainer.json"
PRETRAINER_WEIGHTS = "pretrainer.weights.h5"

_PICKLE_SUFFIXES = (".pkl", ".pickle")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def detect_format(path):
    """Names the checkpoint format of `path`.

    Returns:
        One of `"reference_pickle"`, `"official_mae"`, `"hf_vitmae"`,
        `"preset"`.

    Raises:
        CheckpointError: the path does not exist or is of an unknown kind.

    Example:
    >>> detect_format("vit-mae-base/")
    'hf_vitmae'
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if hf_vitmae.is_vitmae_dir(path):
            return "hf_vitmae"
        if os.path.isfile(os.path.join(path, PRETRAINER_CONFIG)) or os.path.isfile(
            os.path.join(path, "model.weights.h5")
        ):
            return "preset"
        raise CheckpointError(
            f"{path}: a directory that is neither a Hugging Face ViTMAE directory "
            "(config.json with model_type 'vit_mae') nor a keras-m3ae preset"
        )
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file or directory")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    lower = path.lower()
    is_zip = head[:4] == b"PK\x03\x04"
    is_pickle = head[:1] == b"\x80"
    if lower.endswith(".safetensors"):
        raise CheckpointError(
            f"{path}: a bare .safetensors file; pass the directory that holds it and its config.json"
        )
    if is_zip or (is_pickle and lower.endswith(_TORCH_SUFFIXES)):
        return "official_mae"
    if is_pickle:
        return "reference_pickle"
    raise CheckpointError(
        f"{path}: unknown kind of file (first bytes {head!r}); expected a reference M3AE/MAE "
        "pickle, an official MAE .pth, a Hugging Face ViTMAE directory or a preset directory"
    )


def load_checkpoint(path, **overrides):
    """Loads a checkpoint of any supported format as an `M3AEPretrainer`.

    Args:
        path: str. A reference M3AE/MAE pickle, an official MAE `.pth`
            (full training checkpoint or released encoder-only), a Hugging
            Face ViTMAE directory, or a preset directory from `save_preset`.
        **overrides: architecture overrides: backbone config keys (e.g.
            `num_heads`, `layer_norm_epsilon`, `dtype`) or pretrainer keys
            (`decoder_num_heads`, `image_mask_ratio`, ...). The official MAE
            files store no head counts: non-standard widths need them.

    Returns:
        `keras_m3ae.M3AEPretrainer`; `.backbone` is the encoder. Where the
        file holds no decoder (released encoder-only MAE files) the decoder
        is freshly initialised and a warning says so.

    Raises:
        CheckpointError: (a `ValueError`) naming the file and the problem:
            unknown kind, truncated file, shapes that contradict the
            config, or a pickle that would run code (nothing is run).

    Example:
    >>> pt = keras_m3ae.convert.load_checkpoint("tiny.pth", num_heads=4, decoder_num_heads=2)
    >>> pt.backbone.hidden_dim
    32
    """
    kind = detect_format(path)
    if kind == "reference_pickle":
        return reference_m3ae.load(path, **overrides)
    if kind == "official_mae":
        return official_mae.load(path, **overrides)
    if kind == "hf_vitmae":
        return hf_vitmae.load(path, **overrides)
    return load_preset(path, **overrides)


def load_classifier(path, **overrides):
    """Loads a fine-tuned classifier checkpoint as an `M3AEImageClassifier`.

    Reference M3AE/MAE fine-tuning pickles and official MAE fine-tuned
    `.pth` files, each with its own pooling and head; see
    `keras_m3ae.convert.classifier`.

    Args:
        path: str. A reference M3AE/MAE fine-tuning pickle
            (`finetune_main.py`) or an official MAE fine-tuned `.pth`
            (`main_finetune.py`, `models_vit.py`).
        **overrides: backbone config keys (`num_heads`, ...) and classifier
            arguments (`fine_tune_blocks`, `preprocessor`, `activation`...).

    Returns:
        `M3AEImageClassifier` with the checkpoint's pooling and head.

    Raises:
        CheckpointError: as `load_checkpoint`, or the checkpoint holds no
            classifier.

    Example:
    >>> clf = keras_m3ae.convert.load_classifier("mae_finetuned_vit_base.pth")
    """
    kind = detect_format(path)
    if kind == "reference_pickle":
        return classifier.load_reference(path, **overrides)
    if kind == "official_mae":
        return classifier.load_official(path, **overrides)
    raise CheckpointError(f"{path}: a {kind} checkpoint holds no classifier")


def load_backbone(path, **overrides):
    """Like `load_checkpoint`, but returns only the `M3AEBackbone`.

    Example:
    >>> backbone = keras_m3ae.convert.load_backbone("vit-mae-base/")
    """
    return load_checkpoint(path, **overrides).backbone


def save_preset(pretrainer, preset_dir):
    """Writes a keras-hub preset directory: the backbone plus the decoder.

    `M3AEBackbone.from_preset(preset_dir)` loads the encoder (keras-hub's
    `config.json` / `model.weights.h5` / `metadata.json`);
    `load_checkpoint(preset_dir)` loads the whole pretrainer from
    `pretrainer.json` / `pretrainer.weights.h5` to continue pretraining.

    Args:
        pretrainer: `M3AEPretrainer`.
        preset_dir: str. Created if missing.

    Example:
    >>> save_preset(keras_m3ae.convert.load_checkpoint("model.pkl"), "m3ae_preset/")
    """
    import keras

    os.makedirs(preset_dir, exist_ok=True)
    pretrainer.backbone.save_to_preset(preset_dir)
    config = keras.saving.serialize_keras_object(pretrainer)
    with open(os.path.join(preset_dir, PRETRAINER_CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    pretrainer.save_weights(os.path.join(preset_dir, PRETRAINER_WEIGHTS))


def load_preset(preset_dir, **overrides):
    """Loads a pretrainer saved by `save_preset` (the backbone alone if no decoder).

    Args:
        preset_dir: str. A directory written by `save_preset`.
        **overrides: backbone config overrides (e.g. `dtype`).

    Example:
    >>> pretrainer = load_preset("m3ae_preset/")
    """
    import keras

    from keras_m3ae.models.m3ae.m3ae_backbone import M3AEBackbone
    from keras_m3ae.models.m3ae.m3ae_pretrainer import M3AEPretrainer

    config_path = os.path.join(preset_dir, PRETRAINER_CONFIG)
    if not os.path.isfile(config_path):
        backbone = M3AEBackbone.from_preset(preset_dir, **overrides)
        return M3AEPretrainer(backbone)
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config_path}: cannot be read as JSON ({error})") from None
    if overrides:
        backbone_config = config["config"]["backbone"]["config"]
        backbone_config.update(overrides)
    pretrainer = keras.saving.deserialize_keras_object(config)
    pretrainer.load_weights(os.path.join(preset_dir, PRETRAINER_WEIGHTS))
    return pretrainer


# `M3AEBackbone.from_preset` loads a Hugging Face ViTMAE directory through
# this converter; the models never import the converters.
m3ae_presets.register_directory_loader(hf_vitmae.is_vitmae_dir, load_backbone)
