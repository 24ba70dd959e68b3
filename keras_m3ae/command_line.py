"""Whether a package is being imported to start one of its command lines.

`python -m keras_m3ae.data --help` imports `keras_m3ae/__init__.py` and
`keras_m3ae/data/__init__.py` before the first line of the command's
`__main__.py` runs. Those `__init__`s ask `is_starting(__name__)` and, while
Python is only looking for the command's module, import nothing heavy
(Keras, keras-hub, TensorFlow), so that `--help` answers at once; the
command's `__main__` then imports what it uses. Any other import of the
package is unaffected.
"""

import sys


def is_starting(package):
    """Whether Python is importing `package` to run `python -m` on it or on a module inside it.

    While `-m` looks for its module, `sys.argv[0]` is "-m" (Python's
    documented behaviour) and `sys.orig_argv` names the module.

    Args:
        package: str. A dotted package name, e.g. `"keras_m3ae.data"`.

    Returns:
        bool.

    Example:
    >>> is_starting("keras_m3ae.data")  # in an interactive session
    False
    """
    argv = list(getattr(sys, "orig_argv", ()))
    if sys.argv[:1] != ["-m"] or "-m" not in argv[:-1]:
        return False
    module = argv[argv.index("-m") + 1]
    return module == package or module.startswith(package + ".")
