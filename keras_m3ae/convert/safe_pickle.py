"""A restricted unpickler for checkpoints written with pickle / cloudpickle.

The reference JAX M3AE saves `{"step", "epoch", "variant", "state"}` with
cloudpickle; next to the numpy parameter arrays, `state` holds the optax
optimizer with its closures pickled *by value* (code objects, cells and a
few hundred globals). Loading such a file with `pickle` runs whatever it
says, and a file from 2022 cannot be rebuilt with today's libraries anyway.

`load_pickle` reads the opcode stream without ever calling anything the
file names, with these exceptions: numpy arrays, dtypes and scalars are
rebuilt with numpy itself (both the numpy 1.x `numpy.core.*` and the 2.x
`numpy._core.*` spellings; never object arrays). Every other global becomes
an inert `PickledGlobal` record, and every call, `NEWOBJ` or `BUILD` on a
record becomes an inert `PickledObject` record holding its arguments and
state. Globals that only serve to run code or touch the system (`os`,
`subprocess`, `builtins.exec`/`eval`/`__import__`, ...) are refused outright,
as is calling a function that the file itself defines (cloudpickle
by-value code): those are code-execution payloads, and no checkpoint needs
them.
"""

import importlib
import io
import pickle

import numpy as np

# Modules whose every global is refused: reaching them in a checkpoint
# means the file wants to run code or touch the system.
_DANGEROUS_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy",
    "socket", "ctypes", "pty", "signal", "multiprocessing", "code", "codeop",
    "marshal", "pickle", "_pickle", "cloudpickle.cloudpickle_fast", "webbrowser",
    "tempfile", "pathlib", "io", "_io", "asyncio", "threading", "_thread",
    "commands", "platform", "pdb", "timeit", "trace", "ensurepip", "venv",
    "http", "urllib", "ftplib", "smtplib", "telnetlib", "xmlrpc", "zipimport",
    "torch.hub", "numpy.testing", "numpy.f2py", "numpy.distutils",
}
_DANGEROUS_BUILTINS = {
    "eval", "exec", "compile", "__import__", "open", "input", "breakpoint",
    "exit", "quit", "help", "globals", "locals", "vars", "setattr", "delattr",
    "memoryview", "__loader__", "__spec__", "__build_class__",
}
# Globals that build a function from code (cloudpickle by-value functions).
_FUNCTION_MAKERS = {
    ("cloudpickle.cloudpickle", "_make_function"),
    ("cloudpickle.cloudpickle_fast", "_make_function"),
    ("types", "FunctionType"),
    ("types", "LambdaType"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something that would run code; nothing was run."""


class PickledGlobal:
    """An inert stand-in for a global (class or function) a pickle names.

    Attributes:
        module: str. The module the pickle names.
        name: str. The qualified name inside it.
    """

    def __init__(self, module, name):
        self.module = module
        self.name = name

    @property
    def qualname(self):
        return f"{self.module}.{self.name}"

    def __repr__(self):
        return f"<pickled global {self.qualname}>"


class PickledObject:
    """An inert record of an object a pickle would have built.

    Attributes:
        callee: the `PickledGlobal` (or record) the pickle would have called.
        args: tuple of its positional arguments.
        kwargs: dict of keyword arguments (`NEWOBJ_EX`).
        state: what `BUILD` would have set (`__setstate__` / `__dict__`).
        items: list of what `APPEND(S)` added.
        dict_items: dict of what `SETITEM(S)` set.
    """

    def __init__(self, callee, args=(), kwargs=None):
        self.callee = callee
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.state = None
        self.items = []
        self.dict_items = {}

    @property
    def qualname(self):
        return getattr(self.callee, "qualname", repr(self.callee))

    @property
    def makes_function(self):
        """Whether this record is a function built from code in the file."""
        callee = self.callee
        return isinstance(callee, PickledGlobal) and (callee.module, callee.name) in _FUNCTION_MAKERS

    # Containers: APPEND(S) / SETITEM(S) on a record only record.
    def append(self, item):
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):
        self.dict_items[key] = value

    def __repr__(self):
        return f"<pickled {self.qualname} object>"


def _numpy_core(submodule):
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


def _checked_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UnsafePickleError("an array of Python objects (dtype object) is not weight data")
    return dtype


def _dtype(*args, **kwargs):
    dtype = np.dtype(*args, **kwargs)
    if dtype.hasobject:
        raise UnsafePickleError("an array of Python objects (dtype object) is not weight data")
    return dtype


def _reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise UnsafePickleError(f"numpy array subclass {cls!r} is not allowed")
    return _numpy_core("multiarray")._reconstruct(np.ndarray, shape, dtype_code)


def _frombuffer(buffer, dtype, shape, order):
    dtype = _checked_dtype(dtype)
    array = np.frombuffer(bytes(buffer), dtype=dtype)
    return array.reshape(shape, order=order).copy(order="K")


def _scalar(dtype, data=None):
    dtype = _checked_dtype(dtype)
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _latin1_bytes(text, encoding="latin1"):
    # Protocols < 3 write bytes as `_codecs.encode(str, "latin1")`.
    if not isinstance(text, str) or encoding.replace("-", "") != "latin1":
        raise UnsafePickleError("`_codecs.encode` is only allowed for latin1 bytes")
    return text.encode("latin1")


def _bytearray(data=b""):
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("`bytearray` is only allowed from bytes")
    return bytearray(data)


# What numpy's own pickles name, in both numpy 1.x and 2.x spellings, and
# the two byte helpers older pickle protocols use.
_NUMPY_GLOBALS = {("_codecs", "encode"): _latin1_bytes, ("builtins", "bytearray"): _bytearray}
for _core in ("numpy.core", "numpy._core"):
    _NUMPY_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _NUMPY_GLOBALS[(f"{_core}.multiarray", "scalar")] = _scalar
    _NUMPY_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _frombuffer
_NUMPY_GLOBALS[("numpy", "ndarray")] = np.ndarray
_NUMPY_GLOBALS[("numpy", "dtype")] = _dtype


def _is_dangerous(module, name):
    root = module.split(".")[0]
    if module in _DANGEROUS_MODULES or root in _DANGEROUS_MODULES:
        return True
    if module == "builtins" and name in _DANGEROUS_BUILTINS:
        return True
    return False


class _RestrictedUnpickler(pickle._Unpickler):  # The Python implementation: every opcode is ours.
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        if _is_dangerous(module, name):
            raise UnsafePickleError(
                f"it references `{module}.{name}`, which only serves to run code; refused"
            )
        return PickledGlobal(module, name)

    def persistent_load(self, pid):
        raise UnsafePickleError(f"it uses a persistent id ({pid!r}), which is not supported")

    def _call(self, callee, args, kwargs=None):
        if callee is np.ndarray:  # only ever an argument of `_reconstruct`
            raise UnsafePickleError("it calls `numpy.ndarray` directly; refused")
        if any(callee is allowed for allowed in _NUMPY_GLOBALS.values()):
            return callee(*args, **(kwargs or {}))
        if isinstance(callee, PickledObject) and callee.makes_function:
            raise UnsafePickleError(
                "it calls a function whose code is stored in the file (a code-execution "
                "payload); refused"
            )
        if isinstance(callee, (PickledGlobal, PickledObject)):
            return PickledObject(callee, args, kwargs)
        raise UnsafePickleError(f"it calls {type(callee).__name__} objects; refused")

    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        stack[-1] = self._call(stack[-1], args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_inst(self):
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        klass = self.find_class(module, name)
        self.append(self._call(klass, tuple(self.pop_mark())))

    dispatch[pickle.INST[0]] = load_inst

    def load_obj(self):
        args = self.pop_mark()
        cls = args.pop(0)
        self.append(self._call(cls, tuple(args)))

    dispatch[pickle.OBJ[0]] = load_obj

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PickledObject):
            inst.state = state
        elif isinstance(inst, (np.ndarray, np.dtype)):
            inst.__setstate__(state)
            if isinstance(inst, np.ndarray) and inst.dtype.hasobject:
                raise UnsafePickleError("an array of Python objects is not weight data")
        else:
            raise UnsafePickleError(f"it sets the state of a {type(inst).__name__}; refused")

    dispatch[pickle.BUILD[0]] = load_build


def load_pickle(path):
    """Reads a pickle / cloudpickle file without running any of its code.

    Args:
        path: str. The file.

    Returns:
        The unpickled structure: dicts, lists, tuples, strings, numbers and
        numpy arrays as themselves; everything else as inert
        `PickledGlobal` / `PickledObject` records.

    Raises:
        UnsafePickleError: the file asks for something that would run code
            (e.g. `os.system`, `exec`, a call of a by-value function).
        pickle.UnpicklingError, EOFError: the file is not a complete pickle.

    Example:
    >>> data = load_pickle("model.pkl")
    >>> data["variant"]["m3ae.emb_dim"]
    """
    with open(path, "rb") as f:
        payload = f.read()
    return _RestrictedUnpickler(io.BytesIO(payload)).load()
