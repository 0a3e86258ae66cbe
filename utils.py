"""Helpers the three entry scripts share: run a main() with one-line errors and exit codes (under MPI too).

Library code raises (tracin.errors); only these helpers turn an exception into a line on stderr and an exit code.

Who owns an output folder: train.py writes into a folder holding another run's files only when asked.

The files of a run are the ones the scripts name: in the checkpoint folder checkpoints.json, params_K.h5 and
solver_K.h5; in the monitor folder nnabla's series; in the array folder the five arrays and files.json, and the
scores made from them (a score of other arrays is stale). A fresh run finding any of them refuses (one line, exit 2,
nothing written) unless --resume continues that run or --overwrite True replaces it: then exactly those files are
removed first, so no checkpoint, label or score of the earlier run is left beside the new ones. A run also locks every
folder it writes (tracin.io.lock_folder): a second run into the same folder is refused while the first is alive.
Nothing else in a folder (a user's notes, hidden files) is ever touched.
"""
import contextlib
import errno
import os
import re
import sys

from args import CliError
from tracin import formats
from tracin.context import quiet_nnabla
from tracin.errors import InputError
from tracin.io import WriteError, ensure_dir, lock_folder, release_locks
from tracin.parallel import PeerFailed, launched_under_mpi, world

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


# ---------------------------------------------------------------------------------------- output folders
CHECKPOINT_RE = re.compile(r"^(params|solver)_\d+\.h5$")
MONITOR_FILES = frozenset([formats.monitor_file(s) for s in formats.MONITOR_SERIES] + ["Training-time.timer.txt"])
ARRAY_FILES = frozenset(formats.ARRAY_FILES + (formats.FILE_LIST,))
# outputs of calculate_score.py made from the arrays beside them: stale once the arrays are replaced
SCORE_FILES = frozenset((formats.SCORES, formats.LOSS, formats.PROBABILITIES, formats.SCORES_JSON, formats.TOPK,
                         formats.INFLUENCE_JSON, formats.MATRIX))


def _is_run_file(name, kind):
    if kind == "checkpoints":
        return name in (formats.MANIFEST, formats.VALIDATION) or bool(CHECKPOINT_RE.match(name))
    if kind == "monitor":
        return name in MONITOR_FILES
    return name in ARRAY_FILES or name in SCORE_FILES or bool(formats.EPOCH_SCORES_RE.match(name) or formats.RUN_SCORES_RE.match(name))


def run_files(folder, kinds):
    """Sorted names of the files of `kinds` ('checkpoints', 'monitor', 'arrays') directly in `folder`."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if any(_is_run_file(n, k) for k in kinds)
                  and os.path.isfile(os.path.join(folder, n)))


def _merge(folders):
    """[(flag, folder, kinds)] with the same folder under several flags merged (their kinds united)."""
    out = {}
    for flag, folder, kinds in folders:
        key = os.path.realpath(folder)
        if key in out:
            out[key] = (out[key][0], out[key][1], out[key][2] | set(kinds))
        else:
            out[key] = (flag, folder, set(kinds))
    return list(out.values())


def refuse_other_runs(folders, overwrite):
    """{folder: names} of the earlier run's files in `folders` ([(flag, folder, kinds)]) that --overwrite True
    replaces; without it, a CliError naming the flag, the folder and the files (nothing is written)."""
    found = {}
    for flag, folder, kinds in _merge(folders):
        names = run_files(folder, kinds)
        if names and not overwrite:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise CliError(f"{flag} '{folder}' holds the files of another run ({shown}): add --resume to continue "
                           "that run, --overwrite True to replace its files, or choose another folder")
        if names:
            found[folder] = names
    return found


def claim_folders(folders, create=()):
    """Lock every existing folder of a run, creating first those whose flag is in `create` (by rank 0, once
    everything is validated); a folder this call made is removed again when another run holds one of them. A folder
    neither existing nor created here is made by its writer later (a failure before then leaves no empty folder)."""
    made = []
    try:
        for flag, folder, _ in _merge(folders):
            if not os.path.isdir(folder):
                if flag not in create:
                    continue
                made.append(folder)
                ensure_dir(folder, flag)
            lock_folder(folder, flag)
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def clear_run_files(found):
    """Remove the earlier run's files refuse_other_runs found (--overwrite True)."""
    for folder, names in found.items():
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))


# set by launch_ranks when the user's stderr is a terminal: the ranks, whose stderr mpiexec pipes, draw progress bars
TERMINAL_ENV = "TRACIN_TERMINAL"


def on_terminal():
    """Whether progress bars are wanted: stderr is a terminal, or the ranks of a launch_ranks started from one."""
    return sys.stderr.isatty() or os.environ.get(TERMINAL_ENV) == "1"


def mpi_launcher():
    """The mpiexec of this Python's environment (requirements-mpi.txt bundles MPICH) when mpi4py is installed too,
    else None: a system mpiexec may belong to another MPI than the one mpi4py was built for."""
    import importlib.util
    path = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return path if os.access(path, os.X_OK) and importlib.util.find_spec("mpi4py") else None


def usable_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_quietly(parser, argv):
    """parser's namespace for argv, or None when it does not parse (main then reports it), printing nothing."""
    def refuse(*_, **__):
        raise ValueError
    parser.error = parser.exit = refuse
    parser.print_help = parser.print_usage = (lambda *_, **__: None)
    try:
        return parser.parse_args(argv)
    except ValueError:
        return None


def check_processes(processes, ranks):
    """--processes N > 1 is started by the script as N MPI ranks (launch); here it must match the ranks there are."""
    if processes in (None, ranks):
        return
    if ranks == 1:
        raise CliError(f"--processes {processes} needs the MPI runtime (mpi4py and mpiexec in this Python's "
                       "environment): run `make mpi`, or pass --processes 1")
    raise CliError(f"--processes {processes} under an MPI launcher of {ranks} ranks: drop --processes (mpiexec "
                   "-n sets them)")


def launch(script, argv, n):
    """Exit code of `script argv` run as n MPI ranks, or None to run it in this process (n < 2, already under a
    launcher, or no MPI runtime: main then refuses an explicit --processes N)."""
    if n < 2 or launched_under_mpi() or mpi_launcher() is None:
        return None
    return launch_ranks(script, argv, n)


def launch_ranks(script, argv, n):
    """Run `script argv` as n MPI ranks (one thread each) and return their exit code; Ctrl-C reaches the ranks,
    which say how to continue."""
    import subprocess
    env = dict(os.environ, OMP_NUM_THREADS="1", **({TERMINAL_ENV: "1"} if sys.stderr.isatty() else {}))
    proc = subprocess.Popen([mpi_launcher(), "-n", str(n), sys.executable, os.path.abspath(script), *argv], env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        code = proc.wait()
    return 130 if code < 0 else code
