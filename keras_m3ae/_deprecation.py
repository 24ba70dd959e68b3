"""Keeps moved public names importable from their old module, with a warning."""

import importlib
import warnings


def moved_names(old_module, new_modules):
    """A module `__getattr__` that forwards moved names with a `DeprecationWarning`.

    Args:
        old_module: str. The module the names used to live in.
        new_modules: dict `name -> new module path`.

    Returns:
        A function to assign to the old module's `__getattr__`.

    Example:
    >>> __getattr__ = moved_names(__name__, {"LARS": "keras_m3ae.optimizers"})
    """

    def __getattr__(name):
        if name not in new_modules:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(
            f"`{old_module}.{name}` moved to `{new_modules[name]}.{name}`; "
            "the old name will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new_modules[name]), name)

    return __getattr__
