"""Named M3AE / MAE architectures (M3AE Section A.3, MAE Section 4).

These are architectures, not published weights: nothing can be downloaded
here, so `from_preset(name)` builds a freshly initialised model of that size.
Weights come from your own pretraining (`save_to_preset`) or, later, from the
converters of the reference checkpoints.

They are registered in keras-hub's preset registry (`M3AEBackbone.presets`),
but keras-hub resolves a registered name to a download handle, and these
have nothing to download: `from_preset` builds named architectures itself
(`architecture_config`) and hands directories and handles to keras-hub.
"""

import os

from keras_m3ae.data.constants import BERT_VOCABULARY_SIZE
from keras_m3ae.data.constants import MAX_TEXT_LENGTH

_M3AE_TEXT = {"vocabulary_size": BERT_VOCABULARY_SIZE, "max_text_length": MAX_TEXT_LENGTH}


def _vit(hidden_dim, num_layers, num_heads, image_size, patch_size, text):
    config = {
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_dim": hidden_dim,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "mlp_ratio": 4.0,
        "layer_norm_epsilon": 1e-6,
    }
    config.update(text if text else {"vocabulary_size": None})
    return config


def _preset(description, config):
    return {"metadata": {"description": description, "path": "m3ae"}, "config": config}


backbone_presets = {
    "m3ae_vit_tiny_demo": _preset(
        "Tiny M3AE (64 px, patch 8, width 128, 4 blocks, 32 tokens) for demos and tests.",
        _vit(128, 4, 4, 64, 8, {"vocabulary_size": BERT_VOCABULARY_SIZE, "max_text_length": 32}),
    ),
    "m3ae_vit_small_patch16": _preset(
        "M3AE ViT-S/16 encoder (width 384, 12 blocks, 6 heads), 256 px, BERT vocabulary.",
        _vit(384, 12, 6, 256, 16, _M3AE_TEXT),
    ),
    "m3ae_vit_base_patch16": _preset(
        "M3AE ViT-B/16 encoder (width 768, 12 blocks, 12 heads), 256 px, BERT vocabulary.",
        _vit(768, 12, 12, 256, 16, _M3AE_TEXT),
    ),
    "m3ae_vit_large_patch16": _preset(
        "M3AE ViT-L/16 encoder (width 1024, 24 blocks, 16 heads), 256 px, BERT vocabulary.",
        _vit(1024, 24, 16, 256, 16, _M3AE_TEXT),
    ),
    "m3ae_vit_huge_patch16": _preset(
        "M3AE ViT-H/16 encoder (width 1280, 32 blocks, 16 heads), 256 px, BERT vocabulary.",
        _vit(1280, 32, 16, 256, 16, _M3AE_TEXT),
    ),
    "mae_vit_base_patch16": _preset(
        "MAE ViT-B/16 (image only), 224 px.", _vit(768, 12, 12, 224, 16, None)
    ),
    "mae_vit_large_patch16": _preset(
        "MAE ViT-L/16 (image only), 224 px.", _vit(1024, 24, 16, 224, 16, None)
    ),
    "mae_vit_huge_patch14": _preset(
        "MAE ViT-H/14 (image only), 224 px; MAE's huge uses patch 14.",
        _vit(1280, 32, 16, 224, 14, None),
    ),
}


def architecture_config(preset):
    """The backbone config of a named architecture, or None for any other preset."""
    if isinstance(preset, str) and preset in backbone_presets:
        return dict(backbone_presets[preset]["config"])
    return None


def check_preset_directory(preset, load_weights=True):
    """Raises a clear `ValueError` for a local preset keras-hub cannot load.

    Remote handles (`kaggle://`, `hf://`...) are left to keras-hub.

    Args:
        preset: str. A preset path that is not a named architecture.
        load_weights: bool. Whether the weights file is needed too.
    """
    if "://" in str(preset):
        return
    if not os.path.isdir(preset):
        raise ValueError(
            f"Unknown preset {preset!r}: it is neither a named architecture "
            f"({', '.join(backbone_presets)}) nor an existing directory."
        )
    required = ["config.json"] + (["model.weights.h5"] if load_weights else [])
    missing = [f for f in required if not os.path.exists(os.path.join(preset, f))]
    if missing:
        raise ValueError(
            f"Preset directory {preset!r} is incomplete: no {', '.join(missing)} "
            "(write presets with `save_to_preset`)."
        )


# Loaders for directories in other formats (a Hugging Face ViTMAE directory),
# as `(matches, load)` pairs. `keras_m3ae.convert` registers its converters
# here when it is imported (the package's `__init__` imports it), so
# `M3AEBackbone.from_preset` reaches them without the models importing the
# converters.
_DIRECTORY_LOADERS = []


def register_directory_loader(matches, load):
    """Lets `M3AEBackbone.from_preset` load another kind of directory.

    Args:
        matches: callable `preset -> bool`: whether `load` reads it.
        load: callable `(preset, **config_overrides) -> M3AEBackbone`.

    Example:
    >>> register_directory_loader(hf_vitmae.is_vitmae_dir, convert.load_backbone)
    """
    if (matches, load) not in _DIRECTORY_LOADERS:
        _DIRECTORY_LOADERS.append((matches, load))


def directory_loader(preset):
    """The registered loader that reads `preset`, or None."""
    for matches, load in _DIRECTORY_LOADERS:
        if matches(preset):
            return load
    return None
