"""A failing disk for the output folders: a small tmpfs, nearly full or read-only (needs the right to mount)."""
import os
import shutil
import subprocess

FILLER = "filler.bin"


class MountError(Exception):
    """The machine does not allow mounting a tmpfs here (the case is skipped; README: mounting needs root)."""


class MountFailed(RuntimeError):
    """Under CI (CI=true, .ci/run) a disk case that cannot mount fails: CI must run every case."""


STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _sh(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise (MountFailed if STRICT else MountError)(f"{' '.join(cmd)}: {p.stderr.strip()}")


def mount(spec, work, base):
    """Mount the tmpfs of `spec` (harness.Mount) under work; returns its path (to pass to unmount)."""
    path = os.path.join(work, spec.where)
    os.makedirs(path, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", f"size={spec.size_kb}k,mode=0755", "tmpfs", path)
    try:
        for name in spec.populate:
            shutil.copytree(os.path.join(base, name), os.path.join(path, name),
                            ignore=shutil.ignore_patterns("tracin_cache"))
        if spec.free_kb is not None:
            fill(path, spec.free_kb * 1024)
        if spec.read_only:
            _sh("mount", "-o", "remount,ro", path)
    except BaseException:
        unmount(path)
        raise
    return path


def fill(path, free_bytes):
    """Write a filler file so that about `free_bytes` stay free (tmpfs counts whole pages)."""
    st = os.statvfs(path)
    size = st.f_bavail * st.f_frsize - free_bytes
    if size > 0:
        with open(os.path.join(path, FILLER), "wb") as f:
            f.write(b"\0" * size)


def unmount(path):
    subprocess.run(["umount", path], capture_output=True)
    if os.path.ismount(path):  # a process still holds it: detach now, freed when it lets go
        subprocess.run(["umount", "-l", path], capture_output=True)
