"""Deprecated: the reader is split by job into `files`, `examples`, `batching`
and `datasets`; import from `keras_m3ae.data` (or those modules) instead."""

import importlib
import warnings

_MOVED = {
    "image_text_dataset": "keras_m3ae.data.datasets",
    "image_dataset": "keras_m3ae.data.datasets",
    "text_dataset": "keras_m3ae.data.datasets",
    "resolve_files": "keras_m3ae.data.files",
    "shard_files": "keras_m3ae.data.files",
    "default_shard": "keras_m3ae.data.files",
    "finalize": "keras_m3ae.data.batching",
}


def __getattr__(name):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _MOVED[name]
    warnings.warn(
        f"`keras_m3ae.data.reader.{name}` is deprecated; use `{module}.{name}` instead.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(_MOVED)
