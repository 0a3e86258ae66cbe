"""Atomic writes: a file appears under its final name complete or not at all, and the old file survives a failure.
"""
import contextlib
import errno
import json
import os
import tempfile

import numpy as np

from .errors import InputError

class WriteError(OSError):
    """Writing `filename` failed (a full or read-only disk, no permission): an OSError naming the final path, not
    the temporary one the writer was filling."""


# errors of the disk, not of whatever the block reads (a download's network error stays what it is)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temp name keeps the final extension (nnabla picks the file format from it). A disk error (WRITE_ERRNOS)
    while making, filling or renaming the temporary is raised as a WriteError naming `path`."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    base, ext = os.path.splitext(os.path.basename(path))
    tmp = None
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + ext, dir=d)
        os.close(fd)
        with contextlib.suppress(OSError):  # mkstemp makes 0600 files; outputs get the usual permissions (umask)
            os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        _fsync(tmp)  # the data reaches the disk before the name does (writers such as nnabla's h5 do not fsync)
        os.replace(tmp, path)
        _fsync(d)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError) and (
                e.errno in WRITE_ERRNOS or (tmp is not None and e.filename == tmp)):
            raise WriteError(e.errno, e.strerror or str(e), path) from e
        raise


def _fsync(path):
    """fsync a file or (where the OS allows) a folder; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_npy(path, array):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())


def save_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


def load_json(path):
    with open(path) as f:
        return json.load(f)


def ensure_dir(path, what="output folder"):
    """Create a folder; a file in its place, or a folder that cannot be made, is an InputError naming `what`."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{what} '{path}' is a file, not a folder: choose another path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {what} '{path}': {e.strerror}") from None
    return path
