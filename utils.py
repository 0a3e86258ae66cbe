"""Helpers the three entry scripts share: run a main() with one-line errors and exit codes (under MPI too).

Library code raises (tracin.errors); only these helpers turn an exception into a line on stderr and an exit code.
"""
import errno
import os
import sys

from tracin.context import quiet_nnabla
from tracin.errors import InputError
from tracin.io import WriteError, release_locks
from tracin.parallel import PeerFailed, world

WRITE_HINTS = {errno.ENOSPC: "the disk is full: free some space or choose another folder",
               errno.EDQUOT: "the disk quota is exhausted: free some space or choose another folder",
               errno.EROFS: "the file system is read-only: choose another folder",
               errno.EACCES: "permission denied: choose a folder you can write to",
               errno.EPERM: "permission denied: choose a folder you can write to"}


# the API argument (InputError.arg) -> the flag that sets it
FLAGS = {"epochs": "--checkpoint_epochs", "interval": "--checkpoint_interval", "projection_dim": "--projection_dim",
         "top_k": "--top_k", "batch_size": "--batch_size", "network": "--network", "lrs": "--lrs",
         "layers": "--layers"}


def error_exit(e):
    """(message, exit code) for an exception a script reports in one line, or None for a bug (traceback).
    Bad input: 2. An OS error on a named file (a full or read-only disk, no permission): 1."""
    if isinstance(e, InputError):
        flag = FLAGS.get(getattr(e, "arg", None))  # a library error about one argument names the flag setting it
        return (f"{flag}: {e}" if flag else str(e)), 2
    if isinstance(e, WriteError):
        return f"cannot write {e.filename}: {WRITE_HINTS.get(e.errno, e.strerror)}", 1
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}", 1
    return None


def safe_streams():
    """Let stdout and stderr print any text: a terminal in another encoding (LANG=C: ASCII) or a file name that is
    not UTF-8 (Python keeps its bytes as surrogates) shows escapes instead of raising UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream already written to in another mode: leave it as it is
                pass


def run_cli(main_fn, argv=None, prog=None, resume_hint="rerun the same command to continue"):
    """Run an entry script's main(argv); an InputError (or an OS error on a file, or Ctrl-C) becomes one line on
    stderr and an exit code. The folder locks of the run are released when it ends."""
    try:
        return _run_cli(main_fn, argv, prog, resume_hint)
    finally:
        release_locks()


def _run_cli(main_fn, argv, prog, resume_hint):
    prog = prog or os.path.basename(sys.argv[0])
    quiet_nnabla()
    safe_streams()
    try:
        return main_fn(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {resume_hint}", file=sys.stderr)
        return 130
    except (InputError, OSError) as e:
        known = error_exit(e)
        if known is None:
            raise
        print(f"{prog}: error: {known[0]}", file=sys.stderr)
        return known[1]


def run_mpi_cli(main_fn, argv=None, prog=None, resume_hint="rerun the same command to continue"):
    """run_cli for a script that may run under MPI (tracin.parallel): main_fn(argv, comm=...) on every rank.

    Exit codes are those of run_cli on every rank (2 for a bad input). Only rank 0 prints an error, except an error
    of another rank that rank 0 did not have itself."""
    try:
        return _run_mpi_cli(main_fn, argv, prog, resume_hint)
    finally:
        release_locks()


def _run_mpi_cli(main_fn, argv, prog, resume_hint):
    prog = prog or os.path.basename(sys.argv[0])
    quiet_nnabla()
    safe_streams()
    try:
        comm = world()
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if comm is None:
        return run_cli(main_fn, argv, prog, resume_hint)

    def report(message, code):
        # rank 0 prints; another rank prints only when rank 0 failed with a different message (when rank 0 did
        # not fail, it reports this failure itself, through PeerFailed)
        failures = dict(comm.fail(message, code))
        if comm.rank == 0 or (0 in failures and failures[0][0] != message):
            print(f"{prog}: error: {message}" + (f" (rank {comm.rank} of {comm.size})" if comm.rank else ""),
                  file=sys.stderr)
        return code

    try:
        code = main_fn(argv, comm=comm)
    except PeerFailed as e:
        r, (m, c) = e.failures[0]
        if comm.rank == 0:
            print(f"{prog}: error: {m} (rank {r} of {comm.size})", file=sys.stderr)
        return c
    except Exception as e:  # noqa: BLE001 - release the other ranks, then fail (with the traceback of a bug)
        known = error_exit(e)
        if known is None:
            import traceback
            traceback.print_exc()
            known = (f"{type(e).__name__}: {e}", 1)
        return report(*known)
    try:
        comm.allgather(None)  # the final collective: a rank failing after the others finished releases them here
    except PeerFailed as e:
        return e.failures[0][1][1]
    return code


def skip_failed_imports():
    """Every read or write of an nnabla Variable's .d / .g runs imports of module names that do not exist
    (Cython's relative-then-absolute import of nnabla_ext, gc, nnabla), each a file-system search that fails:
    ~40 of the ~60 microseconds an access costs, and training exchanges ~150 arrays per micro-batch. A None entry
    in sys.modules makes such an import fail at once; names that exist are left alone."""
    import importlib.util
    for name in ("nnabla.nnabla_ext", "nnabla.nnabla", "nnabla.gc"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None
