"""Paths a pod uses: local directories and `tf.io.gfile` URLs (`gs://...`).

Everything a run writes (checkpoints, presets, logs, TensorBoard, pictures)
goes through these helpers, so an output directory may be a local path or
any URL `tf.io.gfile` accepts: `gs://bucket/run` on a pod, TensorFlow's
in-memory `ram://` in tests. Local paths use the operating system directly
(atomic renames and `fsync` there); other paths use `tf.io.gfile`, imported
only when such a path is used.
"""

import os
import shutil


def is_local(path):
    """True for a path of the local file system (no `scheme://`, or `file://`)."""
    path = str(path)
    return "://" not in path or path.startswith("file://")


def local(path):
    """The local form of a local path (`file://` removed)."""
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def join(path, *parts):
    """`os.path.join` that keeps URLs (`gs://b/run` + `x` = `gs://b/run/x`)."""
    return os.path.join(str(path), *parts)


def makedirs(path):
    if is_local(path):
        os.makedirs(local(path), exist_ok=True)
    else:
        _gfile().makedirs(path)


def exists(path):
    return os.path.exists(local(path)) if is_local(path) else _gfile().exists(path)


def isdir(path):
    return os.path.isdir(local(path)) if is_local(path) else _gfile().isdir(path)


def listdir(path):
    return os.listdir(local(path)) if is_local(path) else [
        name.rstrip("/") for name in _gfile().listdir(path)]


def open_file(path, mode="r"):
    """`open` for local paths, `tf.io.gfile.GFile` for URLs (text or binary by `mode`)."""
    if is_local(path):
        return open(local(path), mode)
    gfile = _gfile()
    if mode.startswith("w") and gfile.exists(path):
        # TensorFlow's ram:// file system does not truncate a file opened
        # for writing: removed first.
        gfile.remove(path)
    return gfile.GFile(path, mode)


def rmtree(path):
    if is_local(path):
        shutil.rmtree(local(path), ignore_errors=True)
    elif _gfile().exists(path):
        _gfile().rmtree(path)


def copy_tree(source, destination, last=None):
    """Copies the directory `source` to `destination` (either may be a URL); overwrites files.

    `last`: the name of a file of `source`'s top level copied after all
    others (a commit marker).
    """
    if is_local(source) and is_local(destination):
        shutil.copytree(local(source), local(destination), dirs_exist_ok=True)
        return
    gfile = _gfile()
    source = local(source) if is_local(source) else source
    for root, _, files in gfile.walk(source):
        relative = os.path.relpath(root, source) if root != source else ""
        target = join(destination, relative) if relative else destination
        makedirs(target)
        for name in files:
            if not (name == last and not relative):
                gfile.copy(join(root, name), join(target, name), overwrite=True)
    if last is not None and gfile.exists(join(source, last)):
        gfile.copy(join(source, last), join(destination, last), overwrite=True)


def move_tree(source, destination):
    """Moves a directory: a rename locally, a copy then a removal for URLs.

    `tf.io.gfile.rename` of a directory is not dependable on every file
    system (TensorFlow's `ram://` renames the directory entry alone), so
    URLs are copied file by file.
    """
    if is_local(source) and is_local(destination):
        os.rename(local(source), local(destination))
        return
    copy_tree(source, destination)
    rmtree(source)
