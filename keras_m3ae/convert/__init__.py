"""Bring your weights: checkpoint converters with exact parity.

`load_checkpoint(path)` reads, without running any code stored in it:

- a reference JAX M3AE or MAE pickle (`m3ae_main.py` / `mae_main.py`);
- an official PyTorch MAE checkpoint (`main_pretrain.py`'s `checkpoint-N.pth`
  or a released encoder-only `mae_pretrain_vit_*.pth`);
- a Hugging Face ViTMAE directory (`config.json` + `model.safetensors`);
- a preset directory written by `save_preset` / `python -m keras_m3ae.convert`.

and returns an `M3AEPretrainer` whose outputs match the original code's
(max abs difference ~1e-6 on the test fixtures, on jax, tensorflow and
torch). `save_preset` writes a keras-hub preset directory that
`M3AEBackbone.from_preset(dir)` loads, plus the decoder so pretraining can
continue. `load_classifier(path)` reads fine-tuned classifiers (reference
M3AE/MAE fine-tuning pickles, official MAE fine-tuned `.pth`) into
`M3AEImageClassifier` with their own pooling and head.
"""

from keras_m3ae import command_line

# `python -m keras_m3ae.convert ...`: its `__main__` imports what it uses (see
# `keras_m3ae.command_line`); every other import loads the converters, which
# also lets `M3AEBackbone.from_preset` read Hugging Face ViTMAE directories.
if not command_line.is_starting(__name__):
    from keras_m3ae.convert.api import CheckpointError
    from keras_m3ae.convert.api import detect_format
    from keras_m3ae.convert.api import load_backbone
    from keras_m3ae.convert.api import load_checkpoint
    from keras_m3ae.convert.api import load_classifier
    from keras_m3ae.convert.api import load_preset
    from keras_m3ae.convert.api import save_preset

__all__ = [
    "CheckpointError",
    "detect_format",
    "load_backbone",
    "load_checkpoint",
    "load_classifier",
    "load_preset",
    "save_preset",
]
