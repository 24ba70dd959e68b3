"""One writer per run directory: a lock file beside the directory a run writes.

Two runs writing the same checkpoint or output directory destroy each
other's saves without a word (each one's clean-up removes the other's
temporary copy; their step logs interleave). `RunLock(directory)` makes the
second one fail at its start instead, with an error naming the holder.

The lock of `runs/exp1` is the file `runs/.exp1.lock`, beside the
directory (like `atomic_directory`'s `.exp1.tmp`), so that it survives the
directory being replaced by an atomic save. It holds JSON: the holder's
host name, process id, start time and a random token.

What is guaranteed:

- Local and network file systems: the file is created with `O_CREAT |
  O_EXCL`, atomic on local disks and on NFS v3 and later, so of two runs
  starting at the same instant exactly one gets it, on one host or on
  several sharing the file system.
- Other `tf.io.gfile` paths (`gs://`, ...): there is no exclusive create;
  the lock is written if absent and read back, and the run holds it only if
  it reads its own token. Two runs starting within the same second can in
  principle both pass; runs started further apart cannot.

A lock left by a run that died (`kill -9`, a crash, a preempted machine)
is stale. On the same host it is recognised (its process no longer exists)
and taken over with a warning. A lock of another host is never taken over
automatically (this process cannot tell whether that run is alive): the
error says which host and process hold it and which file to delete once
that run is known to be gone.

Multi-host runs (`keras_m3ae.training.hosts`): process 0 takes the lock and
shares its token; every other process reads the lock file and checks that
it holds that token (when the directory is on a shared file system), so
all processes fail together when the directory is taken.
"""

import datetime
import json
import logging
import os
import secrets
import socket

import tensorflow as tf

from keras_m3ae.training import hosts

logger = logging.getLogger("keras_m3ae.training")


class RunLockError(RuntimeError):
    """Another run holds the directory's lock."""


def lock_path(directory):
    """The lock file of `directory`: `.NAME.lock` beside it."""
    directory = str(directory).rstrip("/")
    parent, name = os.path.split(directory)
    if "://" not in directory:
        parent, name = os.path.split(os.path.abspath(directory))
    return os.path.join(parent, f".{name}.lock")


def _is_local(path):
    return "://" not in str(path)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read(path):
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.loads(f.read())
    except (tf.errors.NotFoundError, FileNotFoundError):
        return None
    except (ValueError, tf.errors.OpError):
        return {}  # half-written or unreadable: treated as a foreign holder


def _describe(holder, path):
    if not holder:
        return f"an unreadable lock file {path}"
    return (f"process {holder.get('pid')} on host {holder.get('host')!r}, started "
            f"{holder.get('started')}")


class RunLock:
    """A lock on a run directory: one run writes there at a time.

    Use as a context manager, or call `acquire()` and `release()`. See the
    module docstring for the lock file, its guarantees and stale locks.

    Args:
        directory: str. The directory the run writes (local or any
            `tf.io.gfile` path); it need not exist yet.

    Raises:
        RunLockError: on `acquire`, when another live run holds the lock;
            the message names its host, process and start time, and the
            file to delete if that run is gone.

    Example:
    >>> with RunLock("runs/exp1"):
    ...     training.fit_resumable(model, ds, epochs=10, steps_per_epoch=100,
    ...                            checkpoint=training.TrainingCheckpoint("runs/exp1"))
    """

    def __init__(self, directory):
        self.directory = str(directory)
        self.path = lock_path(self.directory)
        self.token = None

    def _record(self):
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "token": secrets.token_hex(16),
        }

    def _refuse(self, holder):
        raise RunLockError(
            f"Another run writes {self.directory!r}: its lock {self.path} is held by "
            f"{_describe(holder, self.path)}. Use another directory, or wait for that run to "
            f"end; if it is gone (its machine died), delete {self.path} and start again.")

    def _create_local(self, record):
        """Creates the lock file exclusively; False if it exists."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _create_gfile(self, record):
        """Writes the lock if absent, then reads it back: held iff it is ours."""
        if tf.io.gfile.exists(self.path):
            return False
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(json.dumps(record))
        held = _read(self.path)
        return bool(held) and held.get("token") == record["token"]

    def _stale(self, holder):
        """Whether `holder` is a dead process of this host."""
        return (bool(holder) and holder.get("host") == socket.gethostname()
                and isinstance(holder.get("pid"), int) and holder["pid"] != os.getpid()
                and not _process_alive(holder["pid"]))

    def _take(self):
        """This process takes the lock, or raises naming the holder."""
        record = self._record()
        create = self._create_local if _is_local(self.path) else self._create_gfile
        if create(record):
            return record["token"]
        holder = _read(self.path)
        if holder is None and create(record):  # released in between
            return record["token"]
        if not self._stale(holder):
            self._refuse(holder)
        logger.warning("Taking over the stale lock %s of %s (that process no longer exists).",
                       self.path, _describe(holder, self.path))
        # Replaced by a rename, then read back: of two runs taking over the
        # same stale lock, the one whose token is read back holds it.
        temporary = f"{self.path}.{record['token']}"
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(json.dumps(record))
        tf.io.gfile.rename(temporary, self.path, overwrite=True)
        held = _read(self.path)
        if not held or held.get("token") != record["token"]:
            self._refuse(held)
        return record["token"]

    def acquire(self):
        """Takes the lock (process 0 of a multi-host run; the others check it).

        Returns:
            self.

        Raises:
            RunLockError: another run holds it.
        """
        if self.token is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock.")
        token, error = None, None
        if hosts.is_chief():
            try:
                token = self._take()
            except RunLockError as caught:
                error = caught
        if hosts.process_count() > 1:
            # Process 0's token (0: it failed), as a 62-bit number, to every host.
            number = int(token[:15], 16) if token else 0
            shared = int(hosts.gather([number])[0][0])
            if not hosts.is_chief():
                if not shared:
                    raise RunLockError(f"Process 0 could not take the lock {self.path}.")
                holder = _read(self.path)
                if holder is None:
                    logger.warning("The lock %s is not visible from this host (is %r on a "
                                   "shared file system?).", self.path, self.directory)
                elif int(str(holder.get("token", "0"))[:15] or "0", 16) != shared:
                    self._refuse(holder)
        if error is not None:
            raise error
        self.token = token or "checked"
        return self

    def release(self):
        """Removes the lock file if this run holds it (process 0); safe to call twice."""
        token, self.token = self.token, None
        if token is None or not hosts.is_chief():
            return
        holder = _read(self.path)
        if holder and holder.get("token") == token:
            tf.io.gfile.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
        return False
