"""How a training starts: from weights trained elsewhere (--init_from), and in how many processes (own images: two
where two cores and the MPI runtime are there, started by train.py itself, with the weights of one process); and
how their scoring starts (one process per core, started by calculate_score.py itself, with the scores of one)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_main
from test_own_data import write_images

import calculate_score
import train
from tracin import checkpoints, formats
from utils import usable_cores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--nmaps", 8, "--train_epochs", 2, "-c", "cpu")


def own_run(root, images, name, *extra):
    out = root / name
    run_main("train.py", "--dataset", "imagefolder", "--data-dir", images, "--output", out / "data",
             "--model_save_path", out / "ckpt", *TINY, *extra, cwd=root)
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny trained run on three colour classes: {'root', 'images', 'params'} (its last checkpoint)."""
    root = tmp_path_factory.mktemp("start")
    write_images(root / "images")
    out = own_run(root, root / "images", "source")
    return {"root": root, "images": root / "images", "params": out / "ckpt" / formats.params_name(2)}


def test_init_from_copies_every_fitting_parameter_and_records_it(source):
    out = own_run(source["root"], source["images"], "same", "--init_from", source["params"], "--train_epochs", 1)
    manifest = json.loads((out / "ckpt" / formats.MANIFEST).read_text())
    record = manifest["train"]["init_from"]
    start, stored = (checkpoints.read_params(out / "ckpt" / formats.params_name(0)),
                     checkpoints.read_params(source["params"]))
    assert record["kept"] == [] and record["copied"] == len(stored)
    # checkpoint 0 is the loaded weights, except the batch-norm statistics precise_bn measures anew on this data
    for name, value in stored.items():
        if not name.endswith(("/mean", "/var")):
            np.testing.assert_array_equal(start[name], value, err_msg=name)


def test_init_from_keeps_the_final_layer_of_another_number_of_classes(source, tmp_path):
    images = tmp_path / "two"  # two of the three classes: the final affine layer has another shape
    for name in ("apple", "leaf"):
        os.makedirs(images / name)
        for f in os.listdir(source["images"] / name):
            os.link(source["images"] / name / f, images / name / f)
    out = own_run(tmp_path, images, "two", "--init_from", source["params"], "--train_epochs", 1)
    record = json.loads((out / "ckpt" / formats.MANIFEST).read_text())["train"]["init_from"]
    stored = checkpoints.read_params(source["params"])
    start = checkpoints.read_params(out / "ckpt" / formats.params_name(0))
    mismatched = sorted(k for k in start if start[k].shape != stored[k].shape)
    assert mismatched and sorted(record["kept"]) == mismatched and record["copied"] == len(start) - len(mismatched)
    assert all(start[k].shape[-1] == 2 or start[k].shape[0] == 2 for k in mismatched)  # the 2-class layer


@pytest.mark.parametrize("extra, message", [
    (("--init_from", "missing.h5"), "--init_from: 'missing.h5' is not a file"),
    (("--init_from", "images/apple/apple05.png"), "--init_from: images/apple/apple05.png is not a readable"),
    (("--init_from", "other.h5"), "shares no parameter"),
    (("--processes", 2), "--processes 2 needs the MPI runtime"),
])
def test_bad_start_is_one_line_and_writes_nothing(source, extra, message):
    root = source["root"]
    with open(root / "other.h5", "wb"):
        pass
    import h5py
    with h5py.File(root / "other.h5", "w") as f:
        f["unrelated/W"] = np.ones((3, 3), np.float32)
    code, _, err = run_main("train.py", "--dataset", "imagefolder", "--data-dir", "images", "--output", "bad/data",
                            "--model_save_path", "bad/ckpt", *TINY, *extra, cwd=root, check=False)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (root / "bad").exists()


def test_init_from_is_refused_with_resume(source):
    code, _, err = run_main("train.py", "--input", "source/data", "--model_save_path", "source/ckpt", "--resume",
                            "--init_from", source["params"], "-c", "cpu", cwd=source["root"], check=False)
    assert code == 2 and "--init_from starts a new run" in err


def test_own_images_record_two_micro_batches_in_one_process(source):
    recipe = json.loads((source["root"] / "source" / "ckpt" / formats.MANIFEST).read_text())["train"]
    assert (recipe["micro_batches"], recipe["ranks"]) == (2, 1) and recipe["train_batch_size"] % 2 == 0


def test_processes_wanted(source, monkeypatch):
    monkeypatch.setattr(train, "mpi_launcher", lambda: "/bin/mpiexec")
    monkeypatch.setattr(train, "usable_cores", lambda: 2)
    own = ["--dataset", "imagefolder", "--data-dir", str(source["images"]), "--output", "o"]
    assert train.processes_wanted(own) == 2
    assert train.processes_wanted(own + ["--processes", "1"]) == 1
    assert train.processes_wanted(own + ["--resume"]) == 1
    assert train.processes_wanted(["--dataset", "digits", "--output", "o"]) == 1
    assert train.processes_wanted(["--dataset", "digits", "--processes", "3"]) == 3
    assert train.processes_wanted(own + ["--train_epochs", "zero"]) == 1  # main reports the bad flag
    assert train.processes_wanted(own[:2] + ["--data-dir", "/nonexistent"]) == 1
    monkeypatch.setattr(train, "usable_cores", lambda: 1)
    assert train.processes_wanted(own) == 1
    monkeypatch.setattr(train, "usable_cores", lambda: 2)
    monkeypatch.setattr(train, "mpi_launcher", lambda: None)
    assert train.processes_wanted(own) == 1


def test_started_from_the_shell_it_trains_in_two_processes_with_the_weights_of_one(source, tmp_path):
    """The script itself (its __main__ block), as a user starts it: two ranks on this 2-core machine."""
    def shell(name, *extra):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--dataset", "imagefolder",
                               "--data-dir", str(source["images"]), "--output", str(out / "data"),
                               "--model_save_path", str(out / "ckpt"), *map(str, TINY), *extra],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return out, proc.stderr
    two, err = shell("auto", *(() if usable_cores() >= 2 else ("--processes", "2")))  # auto: two usable cores
    one, _ = shell("one", "--processes", "1")
    assert "epochs in 2 processes" in err
    assert json.loads((two / "ckpt" / formats.MANIFEST).read_text())["train"]["ranks"] == 2
    for epoch in (0, 2):
        a, b = (checkpoints.read_params(o / "ckpt" / formats.params_name(epoch)) for o in (two, one))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_score_processes_wanted(source, monkeypatch):
    monkeypatch.setattr(calculate_score, "mpi_launcher", lambda: "/bin/mpiexec")
    monkeypatch.setattr(calculate_score, "usable_cores", lambda: 4)
    monkeypatch.setattr(calculate_score, "cuda_installed", lambda: False)
    data = source["root"] / "source" / "data"
    n = len(np.load(data / formats.X_TRAIN)) + len(np.load(data / formats.X_VAL))
    monkeypatch.setattr(calculate_score, "MIN_IMAGES_PER_RANK", n // 3)
    cmd = ["--input", str(data), "--checkpoint", str(source["root"] / "source" / "ckpt")]
    assert calculate_score.processes_wanted(cmd) == 3  # at most one rank per MIN_IMAGES_PER_RANK images
    monkeypatch.setattr(calculate_score, "usable_cores", lambda: 2)
    assert calculate_score.processes_wanted(cmd) == 2
    assert calculate_score.processes_wanted(cmd + ["--processes", "1"]) == 1
    assert calculate_score.processes_wanted(cmd + ["-c", "cudnn"]) == 1
    assert calculate_score.processes_wanted(cmd + ["--batch_size", "zero"]) == 1  # main reports the bad flag
    assert calculate_score.processes_wanted(["--input", "/nonexistent", "--checkpoint", "c"]) == 1
    monkeypatch.setattr(calculate_score, "MIN_IMAGES_PER_RANK", n + 1)
    assert calculate_score.processes_wanted(cmd) == 1
    monkeypatch.setattr(calculate_score, "MIN_IMAGES_PER_RANK", 1)
    monkeypatch.setattr(calculate_score, "cuda_installed", lambda: True)
    assert calculate_score.processes_wanted(cmd) == 1
    monkeypatch.setattr(calculate_score, "cuda_installed", lambda: False)
    monkeypatch.setattr(calculate_score, "mpi_launcher", lambda: None)
    assert calculate_score.processes_wanted(cmd) == 1


def test_arrays_that_are_not_an_image_import_score_in_one_process(tmp_path, monkeypatch):
    """Arrays that are not an image import (no files.json) are not split: their x_val.npy is a test set."""
    monkeypatch.setattr(calculate_score, "mpi_launcher", lambda: "/bin/mpiexec")
    monkeypatch.setattr(calculate_score, "MIN_IMAGES_PER_RANK", 1)
    np.save(tmp_path / formats.X_TRAIN, np.zeros((8, 1, 4, 4), np.float32))
    assert calculate_score.processes_wanted(["--input", str(tmp_path), "--checkpoint", "c"]) == 1


def test_scoring_started_from_the_shell_in_two_processes_scores_as_one(source, tmp_path):
    """The script itself (its __main__ block) started in two processes writes the files of one, bit for bit."""
    def shell(name, processes):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, os.path.join(REPO, "calculate_score.py"), "--input",
                               str(source["root"] / "source" / "data"), "--checkpoint",
                               str(source["root"] / "source" / "ckpt"), "--output", str(out), "-c", "cpu",
                               "--processes", processes], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return out
    two, one = shell("two", "2"), shell("one", "1")
    assert json.loads((two / formats.SCORES_JSON).read_text())["ranks"] == 2
    for name in (formats.SCORES, formats.VAL_SCORES, formats.PROBABILITIES, formats.VAL_PROBABILITIES):
        np.testing.assert_array_equal(np.load(two / name), np.load(one / name), err_msg=name)


def test_score_processes_without_the_runtime_is_one_line(source, tmp_path):
    """In this process (no launcher) --processes 2 cannot be honoured: one line, exit 2, no output folder."""
    code, _, err = run_main("calculate_score.py", "--input", source["root"] / "source" / "data", "--checkpoint",
                            source["root"] / "source" / "ckpt", "--output", tmp_path / "out", "--processes", 2,
                            check=False)
    assert code == 2 and err.count("\n") == 1 and "--processes 2 needs the MPI runtime" in err, err
    assert not (tmp_path / "out").exists()
