"""Atomic writes: a file appears under its final name complete or not at all, and the old file survives a failure.
"""
import contextlib
import errno
import io
import json
import os
import re
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


@contextlib.contextmanager
def writes_to(path):
    """Raise a disk error (WRITE_ERRNOS) of the block as a WriteError naming `path`: for writers outside this
    package that name no file (nnabla's monitors)."""
    try:
        yield
    except OSError as e:
        if isinstance(e, WriteError) or e.errno not in WRITE_ERRNOS:
            raise
        raise WriteError(e.errno, e.strerror or str(e), path) from e


def write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically. Writers that cannot survive a full disk (HDF5 may crash the
    process when a flush fails) serialise into memory and write through here: the disk sees Python's I/O only."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def npz_bytes(arrays):
    """An .npz archive of {name: array} in memory (for write_bytes): np.savez writing into a file on a full disk
    fails with 'seek of closed file' instead of the disk's error."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# atomic_path's temporaries: .{name}.{random}.tmp{.ext}
_TEMPORARY_RE = re.compile(r"^\..+\.tmp(\.[^.]+)?$")


def remove_temporaries(folder):
    """Delete the temporaries of atomic writes that a killed run left directly in `folder`; returns how many.
    Files under final names are never touched; a folder that does not exist holds none."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        path = os.path.join(folder, name)
        if _TEMPORARY_RE.match(name) and os.path.isfile(path):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed += 1
    return removed


def check_writable(folder, what="output folder"):
    """Check, without writing anything, that files can be created in `folder` (or that it can be made): a file in
    the way is an InputError naming `what`; a read-only file system or a missing permission a WriteError naming
    the folder."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{what} '{folder}' cannot be created: {existing} is a file, not a folder; choose another "
                         "path")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        code = errno.EROFS if read_only else errno.EACCES
        raise WriteError(code, os.strerror(code), folder)
    return folder


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
