"""Running one hostile case and judging it against the contract.

The contract, for every run: no traceback, no signal, rc 0 or the expected error code. A failing run prints exactly
one non-empty stderr line naming the file or flag at fault; bad input (rc 2) and a read-only target (rc 1 or 2)
change nothing on disk, and a full disk (rc 1 or 2) leaves every pre-existing file as it was, no temporary and no
half-written file under a final name. A successful run writes only complete files holding finite numbers, and
self-influence that is not negative.

A case runs in this process (run_in_process: the script's `__main__` block, as `python script.py` runs it after the
imports) or, where it needs a real process, as a subprocess (run).
"""
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import resource
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from typing import Callable, Optional, Tuple

import numpy as np

BAD, OK, ANY, FULL, READ_ONLY = "bad", "ok", "any", "full", "read_only"
TIMEOUT = 60  # seconds; a case that runs longer hangs (every base run takes a few seconds)
MEMORY = 3 << 30  # bytes of address space per run: a runaway allocation fails fast instead of starving the machine

# the atomic writers' temporaries (.name.XXXX.tmp.ext) and any other dot-file or *.tmp a script could leave behind
TEMPORARY = re.compile(r"^\.|\.tmp(\.|$)")
# every float array written must be finite; these (self-influence and its terms, losses) also non-negative
NON_NEGATIVE = re.compile(r"^(influence_all_epoch|\d+_influence|loss_last_epoch)\.npy$")


@dataclasses.dataclass(frozen=True)
class Mount:
    """A tmpfs mounted at work/<where> before the run: `size_kb` large, holding a copy of the base folders
    `populate`, then filled up to leave `free_kb` (None: not filled), then remounted read-only if asked."""
    where: str
    size_kb: int = 1024
    free_kb: Optional[int] = None
    read_only: bool = False
    populate: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    script: str
    args: Tuple[str, ...]  # relative to the work folder (the run's cwd)
    needs: Tuple[str, ...] = ()  # base folders copied into the work folder
    mutate: Optional[Callable] = None  # mutate(work): the ONE thing this case changes
    expect: str = BAD
    names: Tuple[str, ...] = ()  # the error line must contain one of these (the file or flag at fault)
    forbid: Tuple[str, ...] = ()  # ... and none of these (a misleading diagnosis)
    check: Optional[Callable] = None  # check(work, stderr, base) -> [violations] of a successful run
    may_change: Tuple[str, ...] = ()  # pre-existing files a successful run may rewrite (relative paths)
    mount: Optional[Mount] = None


# ------------------------------------------------------------------------------------------------ the workspace

def copy_base(base, work, names):
    """Copy base folders into the work folder (without the scorer's cache: cases start cold)."""
    for name in names:
        shutil.copytree(os.path.join(base, name), os.path.join(work, name),
                        ignore=shutil.ignore_patterns("tracin_cache"))


def snapshot(root):
    """{relative path: sha1 of a file, or 'dir'} of everything under root."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root)] = "dir"
        for name in files:
            path = os.path.join(d, name)
            h = hashlib.sha1()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[os.path.relpath(path, root)] = h.hexdigest()
    return out


def run(repo, case, work):
    """Run the case's script as a user would: its own process group (a signal or a hang is reported, never
    inherited), cwd = the work folder. Returns (rc, stderr, stdout); rc None = timed out."""
    cmd = [sys.executable, os.path.join(repo, case.script)] + list(case.args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True, preexec_fn=_limit_memory)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, err, out
    return p.returncode, err, out


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


# A run in this process: what `python script.py ARGS` does after its imports (the scripts' `__main__` blocks are
# executed as they are), without paying an interpreter and nnabla's import per case. What a process would give and
# this one keeps apart: the cwd, argv, stdout/stderr at the Python and the file-descriptor level, Python's default
# warning filters (a warning shows again in every run), signal handlers, nnabla's parameters, a memory limit
# and a time limit. What it cannot see (output while importing, a crash that kills the interpreter) is checked by
# test_hostile's sample of cases also run as processes.

# The filters of an interpreter started without -W (pytest replaces them while a test runs).
DEFAULT_WARNING_FILTERS = (("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, ""),
                           ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                           ("ignore", ResourceWarning, ""))


class Hang(BaseException):
    """Raised in the running script by the time limit (a BaseException: the scripts' handlers let it through)."""


def run_in_process(repo, case, work):
    """run() in this process: (rc, stderr, stdout); rc None = timed out. Only for the tree this process imports."""
    path = os.path.join(repo, case.script)
    out, err = io.StringIO(), io.StringIO()
    with _fd_captured(1) as fd_out, _fd_captured(2) as fd_err, _process_state(path, case.args, work), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _limits():
        try:
            runpy.run_path(path, run_name="__main__")
            rc = 0
        except SystemExit as e:  # as the interpreter turns sys.exit's argument into an exit status
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except Hang:
            rc = None
        except BaseException:  # noqa: BLE001 - what the interpreter prints for an uncaught exception
            traceback.print_exc()
            rc = 1
    return rc, err.getvalue() + "".join(fd_err), out.getvalue() + "".join(fd_out)


@contextlib.contextmanager
def _process_state(path, args, work):
    """argv, cwd, warning filters, signal handlers and nnabla's parameter registry of a fresh process."""
    import nnabla as nn
    saved = (sys.argv, os.getcwd(), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)})
    sys.argv = [path] + list(args)
    os.chdir(work)
    nn.clear_parameters()
    try:
        with warnings.catch_warnings():  # also invalidates the registries of warnings already shown once
            warnings.resetwarnings()
            for action, category, module in reversed(DEFAULT_WARNING_FILTERS):
                warnings.filterwarnings(action, category=category, module=module)
            warnings.showwarning = _print_warning  # pytest records them instead
            yield
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        for s, handler in saved[2].items():
            signal.signal(s, handler)
        nn.clear_parameters()


def _print_warning(message, category, filename, lineno, file=None, line=None):
    """What an interpreter does with a warning: print it to stderr."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _fd_captured(fd):
    """Whatever is written to file descriptor `fd` (by C code, or through sys.__stderr__): a list that holds the
    text once the block exits."""
    got = []
    with tempfile.TemporaryFile() as f:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(f.fileno(), fd)
        try:
            yield got
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            f.seek(0)
            got.append(f.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def _limits():
    """TIMEOUT seconds (SIGALRM: in the main thread) and MEMORY bytes of address space on top of this process's."""
    def expire(signum, frame):
        raise Hang()
    with open("/proc/self/status") as f:
        used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + MEMORY if hard == resource.RLIM_INFINITY else min(hard, used + MEMORY)
    timed = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    if timed:
        old = signal.signal(signal.SIGALRM, expire)
        signal.alarm(TIMEOUT)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        if timed:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ----------------------------------------------------------------------------------------------- the contract

def stderr_lines(err):
    """Non-empty lines as a terminal shows them (progress bars redraw with carriage returns)."""
    return [s for s in err.replace("\r", "\n").split("\n") if s.strip()]


def exception_line(err):
    """The 'SomeError: message' line that ends the last traceback in stderr."""
    tail = err[err.rindex("Traceback"):].split("\n")
    found = [s for s in tail[1:] if s and not s[0].isspace()]
    return found[0][:200] if found else "(no exception line)"


def judge(case, rc, err, before, after, work, base):
    """Every way the run broke the contract, as short strings (empty: it kept it)."""
    v = []
    if rc is None:
        return [f"hang: no exit within {TIMEOUT} s"]
    if "Traceback" in err:
        v.append("traceback: " + exception_line(err))
    if rc < 0 or rc >= 128:
        v.append(f"signal: rc {rc}")
    outcome = case.expect
    if outcome in (ANY, FULL) and rc == 0:  # the data fitted / the input was usable: then it must be valid output
        outcome = OK
    elif outcome == ANY:
        outcome = BAD
    if outcome == OK:
        if rc != 0:
            v.append(f"rc {rc}, expected 0: " + (stderr_lines(err) or ["(no stderr)"])[-1][:200])
        v += changed_inputs(before, after, case.may_change) + output_problems(before, after, work)
        if rc == 0 and case.check:
            v += case.check(work, err, base)
        return v
    wanted = (2,) if outcome == BAD else (1, 2)
    if rc not in wanted:
        v.append(f"rc {rc}, expected {' or '.join(map(str, wanted))}")
    v += message_problems(case, err)
    # bad input and a read-only target are found before the first write: nothing may be written at all. Whatever
    # was written is judged too (NaN, partial files, temporaries): that is what a user would be left with.
    v += disk_changes(before, after, strict=outcome in (BAD, READ_ONLY)) + output_problems(before, after, work)
    return v


def message_problems(case, err):
    lines = stderr_lines(err)
    if len(lines) != 1:
        shown = " | ".join(s.strip()[:80] for s in lines[:3])
        return [f"{len(lines)} stderr lines, expected 1: {shown}"]
    v = []
    if case.names and not any(n in lines[0] for n in case.names):
        v.append(f"message names none of {'/'.join(case.names)}: {lines[0][:200]}")
    v += [f"misleading message ('{f}'): {lines[0][:200]}" for f in case.forbid if f in lines[0]]
    return v


def disk_changes(before, after, strict):
    """Pre-existing entries changed or removed; with `strict`, also anything new (nothing may be written)."""
    v = [f"changed: {p}" for p in sorted(before) if p in after and after[p] != before[p]]
    v += [f"removed: {p}" for p in sorted(before) if p not in after]
    new = sorted(p for p in after if p not in before)
    if strict and new:
        v.append(f"written before failing: {', '.join(new[:6])}" + (" ..." if len(new) > 6 else ""))
    return v


def changed_inputs(before, after, may_change):
    return [f"changed: {p}" for p in sorted(before)
            if p not in may_change and (p not in after or after[p] != before[p])]


def output_problems(before, after, work):
    """New or rewritten files: no temporaries, each complete and readable, scores finite (and >= 0)."""
    v = []
    for rel in sorted(after):
        if after[rel] == "dir" or before.get(rel) == after[rel]:
            continue
        name = os.path.basename(rel)
        if TEMPORARY.search(name):
            v.append(f"temporary left behind: {rel}")
            continue
        problem = file_problem(os.path.join(work, rel), name)
        if problem:
            v.append(f"{rel}: {problem}")
    return v


def file_problem(path, name):
    """Why a written file is not a complete, sane output (None when it is)."""
    try:
        if name.endswith(".npy"):
            return array_problem(np.load(path, allow_pickle=False), name)
        if name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                return next(filter(None, (array_problem(z[k], f"{name}:{k}") for k in z.files)), None)
        if name.endswith(".json"):
            with open(path) as f:
                json.load(f, parse_constant=_reject_constant)
        elif name.endswith(".h5"):
            return h5_problem(path)
        elif name.endswith(".png"):
            from PIL import Image
            with Image.open(path) as im:
                im.verify()
        elif name.endswith(".html"):
            with open(path, encoding="utf-8") as f:
                if "</html>" not in f.read():
                    return "incomplete html"
    except Exception as e:  # any failure to read back is the finding
        return f"unreadable ({type(e).__name__}: {str(e)[:80]})"
    return None


def _reject_constant(token):
    raise ValueError(f"non-finite number {token} in JSON")


def array_problem(a, name):
    if a.dtype.kind != "f":
        return None
    if not np.isfinite(a).all():
        return f"{int((~np.isfinite(a)).sum())} non-finite values written"
    base = name.split(":")[-1]
    if (NON_NEGATIVE.match(base) or base == "self_influence") and (a < 0).any():
        return f"{int((a < 0).sum())} negative self-influence values written"
    return None


def h5_problem(path):
    import h5py
    bad = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: bad.append(n) if isinstance(o, h5py.Dataset) and o.dtype.kind == "f"
                     and not np.isfinite(o[()]).all() else None)
    return f"non-finite values in {bad[0]}" if bad else None
