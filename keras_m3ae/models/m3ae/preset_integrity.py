"""Presets that prove what they hold: checksums, and weights that fit the config.

`M3AEBackbone.save_to_preset` writes `checksums.json` beside keras-hub's
files: the SHA-256 of every file it wrote (`config.json`,
`model.weights.h5`, `metadata.json`, ...) and the backbone's variables
(path and shape, in order). `M3AEBackbone.from_preset` on a local
directory then:

1. recomputes the checksums and refuses a file that does not match (a
   flipped bit, an edited config), naming it; a preset without
   `checksums.json` (written before, or by keras-hub) loads with one
   warning;
2. before loading the weights, compares the model built from `config.json`
   (and the caller's overrides) with the weights: with the recorded
   variables, or for a preset without them with the variables of the
   weights file itself (read from the HDF5 file and from a copy of the new
   model's empty layout written to a temporary file); the first variable
   that does not fit is named. Keras's own loading skips weights of blocks
   the model does not have, silently.

Remote presets (`kaggle://`, `hf://`) are left to keras-hub and their hub.
"""

import hashlib
import json
import os
import tempfile
import warnings

import h5py

CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 22
# Presets warned about once per process.
_warned = set()


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _variables(model):
    return [[v.path, list(v.shape)] for v in model.weights]


def write_checksums(preset_dir, backbone):
    """Records the SHA-256 of every file of `preset_dir` and `backbone`'s variables.

    Args:
        preset_dir: str. A local preset directory just written.
        backbone: the backbone saved there.
    """
    names = sorted(n for n in os.listdir(preset_dir)
                   if n != CHECKSUMS_FILE and os.path.isfile(os.path.join(preset_dir, n)))
    record = {
        "algorithm": "sha256",
        "files": {name: _sha256(os.path.join(preset_dir, name)) for name in names},
        "variables": _variables(backbone),
    }
    with open(os.path.join(preset_dir, CHECKSUMS_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)


def verify_checksums(preset_dir):
    """Checks the files of a local preset against its `checksums.json`.

    Args:
        preset_dir: str. A local preset directory.

    Returns:
        The checksum record, or None for a preset without one (warned about
        once per preset).

    Raises:
        ValueError: naming the first file that is missing or does not match.
    """
    path = os.path.join(preset_dir, CHECKSUMS_FILE)
    if not os.path.exists(path):
        key = os.path.abspath(preset_dir)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"Preset {preset_dir!r} has no {CHECKSUMS_FILE} (written by an older version or "
                "by keras-hub): its files cannot be checked for damage. Save it again with "
                "`save_to_preset` to add one.", stacklevel=3)
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        files = dict(record["files"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"Preset {preset_dir!r}: {CHECKSUMS_FILE} is damaged ({error}).") from None
    for name, expected in files.items():
        file_path = os.path.join(preset_dir, name)
        if not os.path.exists(file_path):
            raise ValueError(f"Preset {preset_dir!r}: {name} is missing ({CHECKSUMS_FILE} "
                             "lists it).")
        if _sha256(file_path) != expected:
            raise ValueError(
                f"Preset {preset_dir!r}: {name} does not match its SHA-256 in {CHECKSUMS_FILE}: "
                "the file was changed or damaged after it was saved. Restore it from a good "
                "copy (or save the preset again).")
    return record


def _h5_variables(path):
    """`{dataset path: shape}` of a Keras weights file."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, tuple(obj.shape))
                     if isinstance(obj, h5py.Dataset) else None)
    return found


def _mismatch(saved, wanted, where):
    """The first variable of `wanted` (the model) that `saved` does not fit, as a message.

    Args:
        saved: dict name -> shape, in the order to report.
        wanted: dict name -> shape, the model's.
        where: str. What `saved` is, for the message.
    """
    shapes = [n for n in wanted if n in saved and tuple(saved[n]) != tuple(wanted[n])]
    if shapes:
        return (f"{shapes[0]} is {tuple(wanted[shapes[0]])} in the model but "
                f"{tuple(saved[shapes[0]])} in {where}")
    extra = [n for n in saved if n not in wanted]
    if extra:
        return (f"{where} holds {len(extra)} variable(s) the model has no place for, the first "
                f"{extra[0]} {tuple(saved[extra[0]])}")
    missing = [n for n in wanted if n not in saved]
    if missing:
        return (f"the model has {len(missing)} variable(s) without a saved value, the first "
                f"{missing[0]} {tuple(wanted[missing[0]])}")
    return None


def check_weights_fit(backbone, preset_dir, record, weights_path):
    """Raises if `backbone` (built from the preset's config) does not fit the saved weights.

    Args:
        backbone: the model built from `config.json` and the overrides.
        preset_dir: str. The preset directory (for messages).
        record: the checksum record, or None.
        weights_path: str. The weights file the model will load.

    Raises:
        ValueError: naming the first variable that does not fit.
    """
    if record is not None and "variables" in record:
        problem = _mismatch(dict((n, s) for n, s in record["variables"]),
                            dict((n, s) for n, s in _variables(backbone)),
                            f"the weights saved in {preset_dir!r}")
    else:
        saved = _h5_variables(weights_path)
        # The layout a file of this model has: written from the model itself
        # (Keras names HDF5 groups by layer class, not by variable path).
        with tempfile.TemporaryDirectory() as scratch:
            layout = os.path.join(scratch, "layout.weights.h5")
            backbone.save_weights(layout)
            wanted = _h5_variables(layout)
        problem = _mismatch(dict(sorted(saved.items())), dict(sorted(wanted.items())),
                            f"{os.path.basename(weights_path)} of {preset_dir!r}")
    if problem:
        raise ValueError(
            f"Preset {preset_dir!r}: its weights do not fit the model built from its "
            f"config.json (and the overrides given): {problem}. Is config.json the one saved "
            "with these weights?")
