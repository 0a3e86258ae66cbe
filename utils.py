"""Small shared plumbing for the entry scripts: one-line CLI errors, the compute context, atomic writes.

TracIn math lives in influence.py, checkpoint naming in checkpoints.py, data in datasets.py, graphs in models/.
"""
import contextlib
import json
import logging
import os
import sys
import tempfile

import numpy as np

# nnabla logs "[nnabla][INFO]: Initializing CPU extension..." while it is imported; set its logger's level first so
# that a user's mistake is reported in exactly one line (any module importing nnabla imports this one before).
if logging.getLogger("nnabla").level == logging.NOTSET:
    logging.getLogger("nnabla").setLevel(logging.WARNING)


class CliError(Exception):
    """A mistake in the user's input: reported as one line on stderr, exit code 2, no traceback."""


def run_cli(main_fn, argv=None, prog=None, resume_hint="rerun the same command to continue"):
    """Run an entry script's main; turn a CliError (or Ctrl-C) into a one-line message and an exit code."""
    prog = prog or os.path.basename(sys.argv[0])
    try:
        return main_fn(argv)
    except CliError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {resume_hint}", file=sys.stderr)
        return 130


def get_context(name="auto", device_id="0", type_config="float"):
    """nnabla's standard extension context; 'auto' takes cuDNN when its extension is installed, else CPU.

    An explicit `cudnn` without nnabla-ext-cuda is a CliError, not a silent fallback."""
    import logging

    from nnabla.ext_utils import get_extension_context

    if name not in ("auto", "cpu", "cuda", "cudnn"):
        raise CliError(f"unknown context '{name}': use -c cpu, -c cudnn or -c auto")
    if name in ("auto", "cuda", "cudnn"):
        log = logging.getLogger("nnabla")
        level = log.level
        log.setLevel(logging.CRITICAL)  # nnabla logs its own ERROR line before raising
        try:
            return get_extension_context(name if name != "auto" else "cudnn",
                                         device_id=str(device_id), type_config=type_config)
        except Exception:
            if name != "auto":
                raise CliError(f"-c {name} needs the CUDA extension, which is not installed: "
                               "pip install -r requirements-cuda.txt, or use -c cpu") from None
        finally:
            log.setLevel(level)
    if type_config != "float":
        raise CliError(f"--type_config {type_config} needs a GPU context; on CPU use --type_config float")
    return get_extension_context("cpu", type_config="float")


def set_context(name="auto", device_id="0", type_config="float"):
    import nnabla as nn
    ctx = get_context(name, device_id, type_config)
    nn.set_default_context(ctx)
    return ctx


def quiet_nnabla():
    """nnabla logs an INFO line per extension it initialises; keep the terminal for progress bars."""
    import logging
    import nnabla  # noqa: F401  (creates the logger; its INFO lines then stay quiet)
    logging.getLogger("nnabla").setLevel(logging.WARNING)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temp name keeps the final extension (nnabla picks the file format from it)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + (suffix if suffix is not None else ext), dir=d)
    os.close(fd)
    with contextlib.suppress(OSError):  # mkstemp makes 0600 files; outputs get the usual permissions (umask)
        os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        _fsync(tmp)  # the data reaches the disk before the name does (writers such as nnabla's h5 do not fsync)
        os.replace(tmp, path)
        _fsync(d)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
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
    """Create a folder; a file in its place is a CliError."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"{what} '{path}' is a file, not a folder: choose another path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create {what} '{path}': {e.strerror}") from None
    return path
