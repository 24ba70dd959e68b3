"""keras-m3ae: Multimodal Masked Autoencoders for Keras 3.

Importing the package changes nothing outside it (environment, allocator,
logging, warnings filters). `tune_cpu_host()` is the one, explicit call that
tunes the process for training on a CPU host.

The package's own command lines (`python -m keras_m3ae`, `python -m
keras_m3ae.convert`, `python -m keras_m3ae.data`) import what they use
themselves: while Python imports the package to find one of them, the
package's names are loaded on first use instead of at once, so that
`--help` answers without loading keras-hub and TensorFlow. Any other import
loads everything (and registers the models, layers and presets with Keras
and keras-hub) as usual.
"""

import importlib

from keras_m3ae import command_line

__version__ = "0.1.0"

# Public name -> the module that defines it.
_NAMES = {
    "tune_cpu_host": "keras_m3ae.host_tuning",
    "M3AEBackbone": "keras_m3ae.models",
    "M3AEDecoder": "keras_m3ae.models",
    "M3AEImageClassifier": "keras_m3ae.models",
    "M3AEImageClassifierPreprocessor": "keras_m3ae.models",
    "M3AEImageConverter": "keras_m3ae.models",
    "M3AEPretrainer": "keras_m3ae.models",
}
_SUBPACKAGES = (
    "analysis", "convert", "data", "finetune", "layers", "losses", "optimizers", "recipes",
    "training",
)


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_SUBPACKAGES))


if not command_line.is_starting(__name__):
    for _name in (*_SUBPACKAGES, *_NAMES):
        __getattr__(_name)
    del _name
