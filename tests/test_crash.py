"""No crash loses work: SIGKILL training or scoring at random (seeded) points, rerun, and get the bits of an
uninterrupted run; no file under a final name is ever partial; a diverging run stops with a clear message."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, run_main, run_script, write_subset

EPOCHS = 6
TRAIN = ("--nmaps", 4, "--train_epochs", EPOCHS, "--train_batch_size", 16, "--model_save_interval", 1,
         "--seed", 5, "-c", "cpu")
SCORE = ("--layers", "all", "--save_every_epoch", "True", "--batch_size", 16, "-c", "cpu")


# --------------------------------------------------------------------------------------------------- helpers

def h5_arrays(path):
    """{dataset path: array} of every dataset in an .h5 file (parameters, or a solver's m and t)."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_arrays(a, b, what):
    assert sorted(a) == sorted(b), f"{what}: different names"
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{what}: {k} differs"


def load_final(path):
    """Load a file under its final name completely; raises if it is partial."""
    if path.endswith(".npy"):
        np.load(path, allow_pickle=False)
    elif path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            [z[k] for k in z.files]
    elif path.endswith(".h5"):
        assert h5_arrays(path), f"{path} holds no arrays"
    elif path.endswith(".json"):
        with open(path) as f:
            json.load(f)


class FinalFiles:
    """Checks every file under a final name (not a dot-prefixed temporary) in some folders; each version once."""

    def __init__(self, *folders):
        self.folders, self.seen = folders, set()

    def check(self):
        for folder in self.folders:
            for d, _, files in os.walk(folder):
                for name in files:
                    path = os.path.join(d, name)
                    if name.startswith(".") or not name.endswith((".npy", ".npz", ".h5", ".json")):
                        continue
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        continue
                    key = (path, st.st_size, st.st_mtime_ns)
                    if key not in self.seen:
                        try:
                            load_final(path)
                        except FileNotFoundError:
                            continue
                        except Exception as e:  # noqa: BLE001  (any failure to load is a partial file)
                            raise AssertionError(f"partial or corrupt file under its final name: {path} ({e})")
                        self.seen.add(key)


def run_and_kill(script, args, cwd, files, ready, rng, jitter):
    """Run script; once ready() holds, wait a random moment and SIGKILL it, checking final files all along.

    Returns True if the process was killed, False if it finished first (it must then have succeeded)."""
    cmd = [sys.executable, os.path.join(REPO, script)] + [str(a) for a in args]
    log = open(os.path.join(cwd, "stderr.log"), "w+")  # a file, not a pipe: a full pipe would stall the child
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = None
    try:
        while p.poll() is None:
            files.check()
            if deadline is None and ready():
                deadline = time.monotonic() + rng.uniform(0, jitter)
            if deadline is not None and time.monotonic() >= deadline:
                p.send_signal(signal.SIGKILL)
                p.wait()
                files.check()
                return True
            time.sleep(0.005)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.seek(0)
        err = log.read()
        log.close()
    assert p.returncode == 0, err[-2000:]
    files.check()
    return False


def manifest_epochs(ckpt):
    try:
        with open(os.path.join(ckpt, "checkpoints.json")) as f:
            return [c["epoch"] for c in json.load(f)["checkpoints"]]
    except (FileNotFoundError, ValueError):
        return []


def count_units(folder):
    return sum(name.endswith(".npz") and not name.startswith(".") for _, _, files in os.walk(folder) for name in files)


# -------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted training run and an uninterrupted scoring run of it."""
    root = tmp_path_factory.mktemp("crash_reference")
    write_subset(root / "data", n_train=64, n_val=16)
    run_main("train.py", "--input", root / "data", "--model_save_path", root / "ckpt", "--monitor-path",
               root / "mon", *TRAIN, cwd=root)
    run_main("calculate_score.py", "--input", root / "data", "--checkpoint", root / "ckpt", "--output",
               root / "scores", *SCORE, cwd=root)
    return root


def same_training(ref_ckpt, ckpt):
    assert manifest_epochs(ckpt) == list(range(EPOCHS + 1))
    for k in range(EPOCHS + 1):
        for name in (f"params_{k}.h5", f"solver_{k}.h5"):
            assert_same_arrays(h5_arrays(os.path.join(ref_ckpt, name)), h5_arrays(os.path.join(ckpt, name)), name)
    with open(os.path.join(ref_ckpt, "checkpoints.json")) as f, open(os.path.join(ckpt, "checkpoints.json")) as g:
        assert json.load(f)["checkpoints"] == json.load(g)["checkpoints"]


# ------------------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("seed", [1])
def test_training_killed_and_resumed_is_bit_exact(reference, tmp_path, seed):
    rng = random.Random(seed)
    ckpt, mon = tmp_path / "ckpt", tmp_path / "mon"
    args = ["--input", reference / "data", "--model_save_path", ckpt, "--monitor-path", mon, *TRAIN]
    files = FinalFiles(ckpt, reference / "data")
    kills = 0
    for target in sorted(rng.sample(range(EPOCHS - 1), 3)):  # kill after checkpoint `target` exists, plus a moment
        resume = ["--resume"] if manifest_epochs(ckpt) else []
        kills += run_and_kill("train.py", args + resume, tmp_path, files,
                              lambda: bool(manifest_epochs(ckpt)) and manifest_epochs(ckpt)[-1] >= target, rng, 0.15)
        for c in manifest_epochs(ckpt):  # everything the manifest lists exists and loads
            load_final(os.path.join(ckpt, f"params_{c}.h5"))
            load_final(os.path.join(ckpt, f"solver_{c}.h5"))
    assert kills >= 1
    run_main("train.py", *args, "--resume", cwd=tmp_path)
    files.check()
    same_training(reference / "ckpt", ckpt)
    assert not [n for n in os.listdir(ckpt) if n.startswith(".")], "temporaries of the killed runs left behind"


def test_resume_from_epoch_and_checkpoint_path(reference, tmp_path):
    """--resume EPOCH and --checkpoint .../params_k.h5 retrain the later epochs bit-exactly; the monitor series
    keep the epochs done before; a finished run resumed has nothing to do."""
    ckpt, mon = tmp_path / "ckpt", tmp_path / "mon"
    for folder in ("ckpt", "mon", "data"):  # the run's folders move together (the manifest names ../data)
        shutil.copytree(reference / folder, tmp_path / folder)
    for name in os.listdir(ckpt):
        if name.startswith(("params_", "solver_")) and int(name.split("_")[1].split(".")[0]) > 3:
            os.remove(ckpt / name)  # the later epochs must be retrained
    _, _, err = run_main("train.py", "--resume", 3, "--model_save_path", ckpt, "--monitor-path", mon, "-c", "cpu",
                         cwd=tmp_path)
    assert "resuming from epoch 3" in err
    same_training(reference / "ckpt", ckpt)
    series = "Training-loss.series.txt"
    with open(reference / "mon" / series) as f, open(mon / series) as g:
        assert f.read() == g.read()

    os.remove(ckpt / "params_6.h5")
    run_main("train.py", "--checkpoint", ckpt / "params_2.h5", "--monitor-path", mon, "-c", "cpu", cwd=tmp_path)
    same_training(reference / "ckpt", ckpt)

    before = {n: os.stat(ckpt / n).st_mtime_ns for n in os.listdir(ckpt)}
    _, _, err = run_main("train.py", "--resume", "--model_save_path", ckpt, "--monitor-path", mon, "-c", "cpu",
                         cwd=tmp_path)
    assert "nothing to do" in err and "Traceback" not in err
    assert before == {n: os.stat(ckpt / n).st_mtime_ns for n in os.listdir(ckpt)}


@pytest.mark.parametrize("seed", [3])
def test_scoring_killed_and_rerun_is_bit_exact(reference, tmp_path, seed):
    rng = random.Random(seed)
    out = tmp_path / "scores"
    args = ["--input", reference / "data", "--checkpoint", reference / "ckpt", "--output", out, *SCORE]
    files = FinalFiles(out)
    kills = 0
    for target in sorted(rng.sample(range(1, EPOCHS - 1), 2)):  # kill once `target` units are cached, plus a moment
        kills += run_and_kill("calculate_score.py", args, tmp_path, files, lambda: count_units(out) >= target, rng, 0.2)
    assert kills >= 1
    cached = {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
              for d, _, names in os.walk(out) for n in names if n.endswith(".npz") and not n.startswith(".")}
    assert cached
    run_main("calculate_score.py", *args, cwd=tmp_path)
    files.check()
    for path, mtime in cached.items():  # the rerun continued: finished units were reused, not recomputed
        assert os.stat(path).st_mtime_ns == mtime, path
    ref = sorted(n for n in os.listdir(reference / "scores") if n.endswith(".npy"))
    assert "influence_all_epoch.npy" in ref and f"{EPOCHS}_influence.npy" in ref
    assert ref == sorted(n for n in os.listdir(out) if n.endswith(".npy"))
    for name in ref:
        a, b = np.load(reference / "scores" / name), np.load(out / name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name


def test_divergence_stops_before_a_nan_checkpoint(tmp_path):
    write_subset(tmp_path / "data", n_train=48, n_val=16)
    ckpt = tmp_path / "ckpt"
    p = run_script("train.py", "--input", tmp_path / "data", "--model_save_path", ckpt, "--monitor-path",
                   tmp_path / "mon", "--nmaps", 4, "--train_epochs", 3, "--train_batch_size", 16,
                   "--learning_rate", "1e6", "-c", "cpu", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.replace("\r", "\n").strip().splitlines()[-1]
    m = re.match(r"train\.py: error: training diverged: .* in epoch (\d+); the last good checkpoint is (\S+);", last)
    assert m, last
    epoch, good = int(m.group(1)), m.group(2)
    listed = manifest_epochs(ckpt)
    assert listed == list(range(epoch)) and good == str(ckpt / f"params_{listed[-1]}.h5"), last
    on_disk = sorted(n for n in os.listdir(ckpt) if n.endswith(".h5") and not n.startswith("."))
    assert on_disk == sorted(f"{kind}_{k}.h5" for k in listed for kind in ("params", "solver"))
    for name in on_disk:
        assert all(np.isfinite(v).all() for v in h5_arrays(ckpt / name).values()), name


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    from tracin.io import atomic_path, save_json
    path = tmp_path / "metrics.json"
    save_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write('{"a": ')
            raise RuntimeError("killed mid-write")
    with open(path) as f:
        assert json.load(f) == {"a": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failed_write_names_the_final_path_and_exits_1(tmp_path):
    """An OS error while writing (here a full disk) keeps the old file, leaves no temporary, and is reported as one
    line naming the file the user asked for (not the temporary), exit code 1."""
    import errno

    from tracin.io import WriteError, atomic_path, save_json
    from utils import error_exit
    path = tmp_path / "scores.json"
    save_json(path, {"a": 1})
    with pytest.raises(WriteError) as e:
        with atomic_path(path) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", tmp)
    assert e.value.filename == str(path) and e.value.errno == errno.ENOSPC
    assert error_exit(e.value) == (f"cannot write {path}: the disk is full: free some space or choose another "
                                   "folder", 1)
    assert os.listdir(tmp_path) == ["scores.json"] and json.loads(path.read_text()) == {"a": 1}
