"""Atomic writes: a file appears under its final name complete or not at all, and the old file survives a failure.
"""
import contextlib
import errno
import io
import json
import os
import re
import stat
import tempfile

import numpy as np

from .errors import InputError


class WriteError(OSError):
    """Writing `filename` failed (a full or read-only disk, no permission): an OSError naming the final path, not
    the temporary one the writer was filling."""


# errors of the disk, not of whatever the block reads (a download's network error stays what it is)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}

# atomic_path's temporaries: .{name}.{8 random characters of mkstemp}.tracin-tmp{.ext}; remove_temporaries deletes
# exactly these (a user's own hidden '.notes.tmp.txt' is never touched)
TEMP_MARK = ".tracin-tmp"
_TEMPORARY_RE = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TEMP_MARK) + r"(\.[A-Za-z0-9]{1,8})?$")

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
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=TEMP_MARK + ext, dir=d)
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


def is_temporary(name):
    """True for the name of a temporary atomic_path (or check_writable's probe) makes, and for no other."""
    return bool(_TEMPORARY_RE.match(name))


def remove_temporaries(folder):
    """Delete the temporaries of atomic writes that a killed run left directly in `folder`; returns how many.
    Only regular files named by is_temporary are touched; a folder that does not exist holds none."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if is_temporary(name) and stat.S_ISREG(os.lstat(path).st_mode):
                os.remove(path)
                removed += 1
    return removed


def check_writable(folder, what="output folder"):
    """Check that files can be created in `folder` by creating it (with any missing parents) and a probe file in
    it, then removing all of them again: what the first write would meet (a name too long, a dangling symbolic
    link, a file in the way) is found before anything is written. A path problem is an InputError naming `what`;
    a read-only file system, a full disk or a missing permission a WriteError naming the folder."""
    made = []
    try:
        _make_folders(folder, what, made)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=TEMP_MARK, dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise _path_error(e, folder, what) from None
    finally:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)
    return folder


def _make_folders(folder, what, made):
    """Create the missing folders of `folder` from the top down, appending each made one to `made`."""
    missing = []
    p = os.path.abspath(folder)
    while not os.path.lexists(p):
        missing.append(p)
        p = os.path.dirname(p)
    if os.path.islink(p) and not os.path.exists(p):
        raise InputError(f"{what} '{folder}' cannot be created: {p} is a symbolic link to "
                         f"'{os.readlink(p)}', which does not exist; create its target or choose another path")
    if not os.path.isdir(p):
        raise InputError(f"{what} '{folder}' cannot be created: {p} is a file, not a folder; choose another path")
    for d in reversed(missing):
        os.mkdir(d)
        made.append(d)


def _path_error(e, folder, what):
    if isinstance(e, InputError):
        return e
    if e.errno == errno.ENAMETOOLONG:
        long = max(os.path.abspath(folder).split(os.sep), key=len)
        return InputError(f"{what} '{folder}' cannot be created: the name '{long[:40]}...' is {len(long)} bytes "
                          "long, more than the file system allows (255); choose a shorter name")
    if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.ELOOP):
        return InputError(f"{what} '{folder}' cannot be created: {e.strerror} ({e.filename or folder}); choose "
                          "another path")
    if e.errno in WRITE_ERRNOS:
        return WriteError(e.errno, e.strerror or str(e), folder)
    return InputError(f"{what} '{folder}' cannot be created: {e.strerror or e}")


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


# folders this process holds locked: {real path: open descriptor of the folder}
_LOCKS = {}


def lock_folder(folder, what="output folder"):
    """Lock `folder` (which exists) for this process until release_locks(): a second run writing into it is
    refused with an InputError naming `what`. The lock is flock() on the folder itself: no lock file is written,
    and the kernel drops it when the process ends, however it ends (a crash never leaves it stuck)."""
    import fcntl
    key = os.path.realpath(folder)
    if key in _LOCKS:
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise InputError(f"{what} '{folder}' is in use by another run writing into it: wait for it to end, "
                             "or choose another folder") from None
        return  # a file system without flock (some network mounts): run unlocked rather than refuse
    _LOCKS[key] = fd


def release_locks():
    """Release every folder lock of this process (the scripts call it when they end)."""
    while _LOCKS:
        _, fd = _LOCKS.popitem()
        with contextlib.suppress(OSError):
            os.close(fd)


def folder_in_use(folder):
    """True when another process holds lock_folder on `folder` (e.g. train.py still writing checkpoints)."""
    import fcntl
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    return False
