"""Nothing of the user's is overwritten or deleted, and every mistake is one line: folder ownership (--resume /
--overwrite), folder locks, exact temporaries, writability probed by creating, stale per-checkpoint and label files,
resuming a moved project, conflicting flags, and the inputs that used to end in a traceback."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import run_main, run_script, snapshot, write_subset

from tracin import io as tio

TRAIN = ("--nmaps", "4", "--train_batch_size", "16", "-c", "cpu")


def one_line(code, err, *words):
    lines = [s for s in err.splitlines() if s.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def train(root, *args, check=True):
    return run_main("train.py", *args, *TRAIN, cwd=root, check=check)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel_data")
    write_subset(root / "data", n_train=48, n_val=16)
    return root / "data"


@pytest.fixture
def run(data, tmp_path):
    """A finished 2-epoch run in tmp_path: data/ (a copy), ckpt/, mon/."""
    shutil.copytree(data, tmp_path / "data")
    train(tmp_path, "--input", "data", "--model_save_path", "ckpt", "--monitor-path", "mon", "--train_epochs", "2")
    return tmp_path


# ------------------------------------------------------------------------------------------------ ownership

@pytest.mark.parametrize("extra", [(), ("--seed", "3"), ("--train_epochs", "1")])
def test_fresh_run_into_another_runs_folder_is_refused(run, extra):
    before = snapshot(run)
    code, _, err = train(run, "--input", "data", "--model_save_path", "ckpt", "--monitor-path", "mon", *extra,
                         check=False)
    one_line(code, err, "--model_save_path 'ckpt' holds the files of another run", "--resume", "--overwrite True")
    assert snapshot(run) == before


def test_monitor_folder_of_another_run_is_refused(run):
    before = snapshot(run)
    code, _, err = train(run, "--input", "data", "--model_save_path", "new", "--monitor-path", "mon", check=False)
    one_line(code, err, "--monitor-path 'mon'")
    assert snapshot(run) == before


def test_made_arrays_never_replace_another_runs_arrays(run):
    before = snapshot(run)
    code, _, err = train(run, "--dataset", "digits", "--output", "data", "--model_save_path", "new",
                         "--monitor-path", "new_mon", check=False)
    one_line(code, err, "--output 'data'")
    assert snapshot(run) == before


def test_overwrite_replaces_the_earlier_run_entirely(run):
    with open(run / "ckpt" / "notes.txt", "w") as f:
        f.write("mine")
    train(run, "--input", "data", "--model_save_path", "ckpt", "--monitor-path", "mon", "--train_epochs", "1",
          "--overwrite", "True")
    names = sorted(os.listdir(run / "ckpt"))
    # the earlier run's params_2 / solver_2 are gone, the user's file stays
    assert names == ["checkpoints.json", "notes.txt", "params_0.h5", "params_1.h5", "solver_0.h5", "solver_1.h5",
                     "validation.json"]
    with open(run / "ckpt" / "checkpoints.json") as f:
        assert [c["epoch"] for c in json.load(f)["checkpoints"]] == [0, 1]
    with open(run / "mon" / "Training-loss.series.txt") as f:
        assert [line.split()[0] for line in f if line.strip()] == ["1"]


def test_overwrite_with_resume_is_refused(run):
    code, _, err = train(run, "--model_save_path", "ckpt", "--monitor-path", "mon", "--resume", "--overwrite", "True",
                         check=False)
    one_line(code, err, "--overwrite True")


def test_image_import_never_keeps_an_older_y_train(tmp_path, image_tree):
    os.makedirs(tmp_path / "arrays")
    np.save(tmp_path / "arrays" / "y_train.npy", np.zeros((5, 1), dtype=np.int64))
    args = ("--dataset", "imagefolder", "--data-dir", str(image_tree), "--output", "arrays", "--model_save_path",
            "ck", "--monitor-path", "mon", "--train_epochs", "1", "--nmaps", "4", "--train_batch_size", "8", "-c",
            "cpu")
    before = snapshot(tmp_path)
    code, _, err = run_main("train.py", *args, cwd=tmp_path, check=False)
    one_line(code, err, "--output 'arrays'", "y_train.npy")
    assert snapshot(tmp_path) == before
    run_main("train.py", *args, "--overwrite", "True", cwd=tmp_path)
    assert not os.path.exists(tmp_path / "arrays" / "y_train.npy")  # clean labels unknown: none kept


# ---------------------------------------------------------------------------------------------------- locks

def test_a_locked_folder_is_refused_and_a_crash_frees_it(run):
    hold = ("import os, fcntl, time, sys; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run / "ckpt")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        code, _, err = train(run, "--input", "data", "--model_save_path", "ckpt", "--monitor-path", "mon",
                             "--overwrite", "True", check=False)
        one_line(code, err, "--model_save_path 'ckpt' is in use by another run")
        assert snapshot(run) == before
        code, _, err = run_main("calculate_score.py", "--input", "data", "--checkpoint", "ckpt", "--output", "ckpt",
                                "-c", "cpu", cwd=run, check=False)
        one_line(code, err, "--output 'ckpt' is in use")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not tio.folder_in_use(str(run / "ckpt"))  # the kernel dropped the dead process's lock
    train(run, "--input", "data", "--model_save_path", "ckpt", "--monitor-path", "mon", "--overwrite", "True",
          "--train_epochs", "1")


def test_locks_are_released_when_a_script_ends(run):
    train(run, "--model_save_path", "ckpt", "--monitor-path", "mon", "--resume")  # nothing to do
    assert tio._LOCKS == {}
    fd = os.open(run / "ckpt", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_scoring_a_run_still_training_says_so(run):
    with open(run / "ckpt" / "checkpoints.json") as f:
        m = json.load(f)
    m["train"]["train_epochs"] = 5
    with open(run / "ckpt" / "checkpoints.json", "w") as f:
        json.dump(m, f)
    _, _, err = run_main("calculate_score.py", "--input", "data", "--checkpoint", "ckpt", "--output", "s1", "-c",
                         "cpu", cwd=run)
    assert "warning: ckpt stopped after epoch 2 of 5" in err and "--resume" in err
    fd = os.open(run / "ckpt", os.O_RDONLY)  # as train.py holds it while training
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _, _, err = run_main("calculate_score.py", "--input", "data", "--checkpoint", "ckpt", "--output", "s2",
                             "-c", "cpu", cwd=run)
    finally:
        os.close(fd)
    assert "warning: ckpt is still training (epoch 2 of 5 so far)" in err


# ----------------------------------------------------------------------------------------------- temporaries

def test_cleanup_removes_only_the_tools_temporaries(tmp_path):
    with tio.atomic_path(tmp_path / "x.npy") as tmp:
        ours = os.path.basename(tmp)  # the name a killed write leaves
    killed = ".x_train.k1ll3d_0.tracin-tmp.npy"
    users = [".meeting.tmp.txt", ".notes.abcdefgh.tmp.txt", "draft.tmp", ".x.tmp.npy", ".cfg.tracin-tmp",
             ".x_train.k1ll3d.tmp.npy"]
    for name in users + [killed]:
        (tmp_path / name).write_text("mine")
    os.symlink(tmp_path / "draft.tmp", tmp_path / ".y.abcdefgh.tracin-tmp.npy")  # a link is never the tool's
    assert tio.is_temporary(ours) and tio.is_temporary(killed) and not any(tio.is_temporary(n) for n in users)
    assert tio.remove_temporaries(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(users + [".y.abcdefgh.tracin-tmp.npy", "x.npy"])


def test_user_hidden_tmp_file_survives_every_script(run):
    for d in ("data", "ckpt", "mon"):
        (run / d / ".meeting.tmp.txt").write_text("agenda")
    train(run, "--model_save_path", "ckpt", "--monitor-path", "mon", "--resume", "1")
    run_main("calculate_score.py", "--input", "data", "--checkpoint", "ckpt", "-c", "cpu", cwd=run)
    (run / "fig").mkdir()
    (run / "fig" / ".meeting.tmp.txt").write_text("agenda")
    run_main("mislabel_analysis.py", "--input", "data", "--output", "fig", cwd=run)
    for d in ("data", "ckpt", "mon", "fig"):
        assert (run / d / ".meeting.tmp.txt").read_text() == "agenda"


# ----------------------------------------------------------------------------------------------- writability

@pytest.mark.parametrize("flag", ["--monitor-path", "--model_save_path", "--output"])
def test_long_name_is_found_before_anything_is_written(data, tmp_path, flag):
    shutil.copytree(data, tmp_path / "data")
    folders = {"--monitor-path": "mon", "--model_save_path": "ckpt", "--output": "out"}
    folders[flag] = "ok/" + "n" * 256
    before = snapshot(tmp_path)
    code, _, err = train(tmp_path, "--dataset", "digits", "--output", folders["--output"], "--model_save_path",
                         folders["--model_save_path"], "--monitor-path", folders["--monitor-path"], "--train_epochs",
                         "1", check=False)
    one_line(code, err, flag, "256 bytes long")
    assert snapshot(tmp_path) == before


def test_dangling_symlink_parent_is_found_before_anything_is_written(data, tmp_path):
    shutil.copytree(data, tmp_path / "data")
    os.symlink(tmp_path / "gone", tmp_path / "link")
    before = snapshot(tmp_path)
    code, _, err = train(tmp_path, "--input", "data", "--model_save_path", "link/ckpt", "--monitor-path", "mon",
                         "--train_epochs", "1", check=False)
    one_line(code, err, "--model_save_path", "symbolic link")
    assert snapshot(tmp_path) == before


def test_check_writable_leaves_nothing_behind(tmp_path):
    tio.check_writable(str(tmp_path / "a" / "b" / "c"))
    assert os.listdir(tmp_path) == []
    tio.check_writable(str(tmp_path))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ stale files

def test_per_checkpoint_files_always_belong_to_the_last_scoring(run):
    score = ("--input", "data", "--checkpoint", "ckpt", "-c", "cpu")
    run_main("calculate_score.py", *score, "--save_every_epoch", "True", cwd=run)
    assert {"1_influence.npy", "2_influence.npy"} <= set(os.listdir(run / "data"))
    run_main("calculate_score.py", *score, "--checkpoint_epochs", "2", cwd=run)
    assert not [n for n in os.listdir(run / "data") if n.endswith("_influence.npy")]
    code, _, err = run_main("mislabel_analysis.py", "--input", "data", "--output", "fig", "--ckpt_analysis", "True",
                            cwd=run, check=False)
    one_line(code, err, "--save_every_epoch True")


# ---------------------------------------------------------------------------------------------------- resume

def test_resume_after_moving_the_project(data, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(data, a / "data")
    train(a, "--input", "data", "--model_save_path", "ckpt", "--monitor-path", "mon", "--train_epochs", "2")
    os.remove(a / "ckpt" / "params_2.h5")
    with open(a / "ckpt" / "checkpoints.json") as f:
        m = json.load(f)
    m["checkpoints"] = m["checkpoints"][:2]
    with open(a / "ckpt" / "checkpoints.json", "w") as f:
        json.dump(m, f)
    assert m["train"]["array_dir"] == "../data"
    shutil.move(str(a), str(tmp_path / "b"))
    _, _, err = train(tmp_path / "b", "--model_save_path", "ckpt", "--monitor-path", "mon", "--resume")
    assert "resuming from epoch 1" in err and os.path.isfile(tmp_path / "b" / "ckpt" / "params_2.h5")


def test_resume_honours_input(run, tmp_path):
    shutil.move(str(run / "data"), str(run / "moved"))
    os.remove(run / "ckpt" / "params_2.h5")
    code, _, err = train(run, "--model_save_path", "ckpt", "--monitor-path", "mon", "--resume", "1", check=False)
    one_line(code, err, "pass --input")
    train(run, "--model_save_path", "ckpt", "--monitor-path", "mon", "--resume", "1", "--input", "moved")
    assert os.path.isfile(run / "ckpt" / "params_2.h5")


@pytest.mark.parametrize("flag,value", [("--train_epochs", "5"), ("--learning_rate", "0.5"), ("--seed", "7"),
                                        ("--weight_decay", "0.1")])
def test_resume_refuses_conflicting_flags(run, flag, value):
    before = snapshot(run)
    code, _, err = train(run, "--model_save_path", "ckpt", "--monitor-path", "mon", "--resume", "1", flag, value,
                         check=False)
    one_line(code, err, f"{flag} {value} conflicts with the run being resumed")
    assert snapshot(run) == before


def test_resume_refuses_another_output_and_accepts_the_recorded_one(run):
    code, _, err = train(run, "--model_save_path", "ckpt", "--monitor-path", "mon", "--resume", "--output", "other",
                         check=False)
    one_line(code, err, "--output 'other' conflicts with the run being resumed")
    _, _, err = train(run, "--model_save_path", "ckpt", "--monitor-path", "mon", "--resume", "--output", "data")
    assert "nothing to do" in err


def test_checkpoint_refuses_another_model_save_path(run):
    code, _, err = train(run, "--checkpoint", "ckpt/params_1.h5", "--model_save_path", "other", "--monitor-path",
                         "mon", check=False)
    one_line(code, err, "--model_save_path 'other' conflicts with --checkpoint")
    assert not os.path.exists(run / "other")


def test_done_line_grammar(data, tmp_path):
    shutil.copytree(data, tmp_path / "data")
    _, _, err = train(tmp_path, "--input", "data", "--model_save_path", "c", "--monitor-path", "m", "--train_epochs",
                      "1")
    assert "done: 1 epoch," in err


# ---------------------------------------------------------------------------------------------- flag conflicts

def test_contradictory_flags_are_refused(run):
    code, _, err = train(run, "--input", "data", "--dataset", "imagefolder", "--data-dir", "data",
                         "--model_save_path", "x", "--monitor-path", "y", check=False)
    one_line(code, err, "--data-dir does not apply to --input")
    code, _, err = run_main("calculate_score.py", "--input", "data", "--checkpoint", "ckpt", "--mode", "influence",
                            "--save_every_epoch", "True", cwd=run, check=False)
    one_line(code, err, "--save_every_epoch True applies to --mode self")


@pytest.mark.parametrize("value", [str(2 ** 63), str(2 ** 64), "0," + str(10 ** 30)])
def test_index_flags_beyond_int64(run, value):
    code, _, err = run_main("calculate_score.py", "--input", "data", "--checkpoint", "ckpt", "--mode", "influence",
                            "--test_indices", value, cwd=run, check=False)
    one_line(code, err, "--test_indices")


# ----------------------------------------------------------------------------------------------- own images

@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """Three classes of 12x12 greyscale PNGs; names that are not UTF-8, a __MACOSX folder and a text file."""
    from PIL import Image
    root = os.fsencode(str(tmp_path_factory.mktemp("images")))
    rng = np.random.RandomState(0)
    for c in (b"caf\xe9", b"dog", "猫".encode()):
        os.makedirs(os.path.join(root, c))
        for i in range(10):
            Image.fromarray((rng.rand(12, 12) * 255).astype(np.uint8)).save(os.path.join(root, c, b"im%d\xff.png" % i))
    os.makedirs(os.path.join(root, b"__MACOSX", b"dog"))
    with open(os.path.join(root, b"__MACOSX", b"dog", b"._im1.png"), "wb") as f:
        f.write(b"resource fork")
    with open(os.path.join(root, b"dog", b"notes.txt"), "w") as f:
        f.write("x")
    return os.fsdecode(root)


def test_foreign_names_make_a_valid_report_and_no_warning(tmp_path, image_tree):
    p = run_script("train.py", "--dataset", "imagefolder", "--data-dir", image_tree, "--output", "data",
                   "--model_save_path", "ck", "--monitor-path", "mon", "--train_epochs", "1", "--nmaps", "4",
                   "--train_batch_size", "8", "-c", "cpu", cwd=tmp_path)
    assert "__MACOSX/" in p.stderr and "skipped 2 files" in p.stderr and "arning" not in p.stderr
    with open(tmp_path / "data" / "files.json") as f:
        assert "__MACOSX/dog/._im1.png" not in json.load(f)["train"]
    run_script("calculate_score.py", "--input", "data", "--checkpoint", "ck", "-c", "cpu", cwd=tmp_path)
    for encoding in ("utf-8", "ascii"):
        out = f"fig_{encoding}"
        p = run_script("mislabel_analysis.py", "--input", "data", "--output", out, cwd=tmp_path,
                       env={"PYTHONIOENCODING": encoding})
        assert "Traceback" not in p.stderr and "arning" not in p.stderr, p.stderr[-2000:]
        with open(tmp_path / out / "report.html", encoding="utf-8") as f:  # strict: valid UTF-8
            html = f.read()
        assert "caf\ufffd" in html and "猫" in html


@pytest.mark.parametrize("which", ["dog", "root"])
def test_unreadable_class_folder_or_root_is_one_line(tmp_path, image_tree, monkeypatch, which):
    """A folder the user may not list (as chmod 000 makes it; root may list anything, so the refusal is played by
    os.scandir itself, which both the root listing and os.walk call)."""
    target = os.path.join(image_tree, "dog") if which == "dog" else image_tree
    scandir = os.scandir

    def refusing(path="."):
        if os.path.abspath(os.fspath(path)) == target:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)
    monkeypatch.setattr(os, "scandir", refusing)
    code, _, err = run_main("train.py", "--dataset", "imagefolder", "--data-dir", image_tree, "--output", "d",
                            "--model_save_path", "c", "--monitor-path", "m", "-c", "cpu", cwd=tmp_path, check=False)
    one_line(code, err, f"cannot list folder '{target}'", "make it readable")
    assert os.listdir(tmp_path) == []


def test_unreadable_folder_error_names_it():
    import imagefolder
    err = OSError(13, "Permission denied")
    err.filename = "/x/dog"
    with pytest.raises(imagefolder.InputError, match="cannot list folder '/x/dog'"):
        imagefolder._list_error(err)


@pytest.mark.parametrize("size", ["20000", "4096x8", "99999999999999999999"])
def test_huge_image_size_is_refused_before_allocating(tmp_path, image_tree, size):
    code, _, err = run_main("train.py", "--dataset", "imagefolder", "--data-dir", image_tree, "--image_size", size,
                            "--output", "d", "--model_save_path", "c", "--monitor-path", "m", cwd=tmp_path,
                            check=False)
    one_line(code, err, "--image_size")
    assert os.listdir(tmp_path) == []


def test_non_utf8_stdout_never_raises(monkeypatch):
    """A terminal in ASCII (LANG=C) prints a class name or a file name that is not UTF-8 as escapes."""
    import io

    from utils import safe_streams
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    monkeypatch.setattr(sys, "stdout", out)
    safe_streams()
    print("\u732b caf\udce9")
    out.flush()
    assert raw.getvalue() == b"\\u732b caf\\udce9\n"


def test_timestamps_of_a_refused_run_do_not_change(run):
    """A refused run does not even touch the folders (the probe files are gone, mtimes of files unchanged)."""
    st = {n: os.stat(run / "ckpt" / n).st_mtime_ns for n in os.listdir(run / "ckpt")}
    time.sleep(0.01)
    train(run, "--input", "data", "--model_save_path", "ckpt", "--monitor-path", "mon", check=False)
    assert {n: os.stat(run / "ckpt" / n).st_mtime_ns for n in os.listdir(run / "ckpt")} == st


def test_a_large_valid_image_is_called_large_not_damaged(tmp_path, image_tree, monkeypatch):
    """PIL refuses images above twice MAX_IMAGE_PIXELS as a decompression bomb: lowered here so that the 12x12
    test images count as such."""
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    code, _, err = run_main("train.py", "--dataset", "imagefolder", "--data-dir", image_tree, "--output", "d",
                            "--model_save_path", "c", "--monitor-path", "m", "-c", "cpu", cwd=tmp_path, check=False)
    line = one_line(code, err, "is too large to read")
    assert "damaged" not in line
