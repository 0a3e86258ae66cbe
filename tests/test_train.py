"""Training: checkpoints + manifest, the learning-rate schedule, seeded determinism, exact resume, monitors."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from conftest import checkpoint_logits, run_main, run_script, write_subset

from tracin import checkpoints
from tracin.training import learning_rate


def _h5(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def _same_h5(a, b):
    da, db = _h5(a), _h5(b)
    return da.keys() == db.keys() and all(np.array_equal(da[k], db[k]) for k in da)


def test_schedule_matches_the_original_at_270_epochs():
    lr = lambda e: learning_rate(e, 1.0, 270, "step")
    assert lr(0) == pytest.approx(1 / 15) and lr(13) == pytest.approx(14 / 15)
    assert lr(14) == lr(89) == 1.0
    assert lr(90) == pytest.approx(0.1) and lr(179) == pytest.approx(0.1)
    assert lr(180) == pytest.approx(0.01) and lr(240) == pytest.approx(0.001) and lr(269) == pytest.approx(0.001)
    # scaled to 30 epochs: warm-up 2 epochs, steps at 10, 20, 27
    assert [round(learning_rate(e, 1.0, 30, "step"), 6) for e in (0, 1, 9, 10, 20, 27)] == \
        [0.5, 1.0, 1.0, 0.1, 0.01, 0.001]
    cos = [learning_rate(e, 0.02, 30, "cosine") for e in range(30)]
    assert cos[1] == pytest.approx(0.02 * 0.5 * (1 + np.cos(np.pi / 30)))
    assert all(a >= b for a, b in zip(cos[1:], cos[2:])) and cos[-1] > 0


def test_cyclic_schedule_restarts_at_the_peak_three_times():
    cyc = [learning_rate(e, 0.01, 30, "cyclic") for e in range(30)]
    assert cyc[0] == pytest.approx(0.005)  # warm-up: 2 epochs at 30
    assert cyc[10] == cyc[20] == pytest.approx(0.01) and cyc[1] == pytest.approx(cyc[11])
    assert cyc[9] == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi * 9 / 10)))
    assert all(a > b for a, b in zip(cyc[10:19], cyc[11:20])) and min(cyc) > 0
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0, 0.01, 30, "snapshot")


def test_tiny_run_writes_checkpoints_and_manifest(tiny_run):
    ckpt = tiny_run["ckpt"]
    m = json.load(open(ckpt / "checkpoints.json"))
    assert [c["epoch"] for c in m["checkpoints"]] == [0, 1, 2, 3]
    for c in m["checkpoints"]:
        assert os.path.isfile(ckpt / c["params"]) and os.path.isfile(ckpt / c["solver"])
        expected = learning_rate(max(c["epoch"] - 1, 0), m["train"]["learning_rate"], 3, m["train"]["lr_schedule"])
        assert c["lr"] == pytest.approx(expected)
    assert m["model"] == {"name": "resnet23", "nmaps": 8, "n_classes": 10, "input_shape": [1, 8, 8],
                          "dataset": "digits", "builder": "models:build",
                          "pixel_max": 255}
    assert m["train"]["seed"] == 0 and m["train"]["train_batch_size"] == 32
    # params_0 is the initialisation, later checkpoints differ from it
    assert not _same_h5(ckpt / "params_0.h5", ckpt / "params_3.h5")
    # no temp files left behind
    assert not [f for f in os.listdir(ckpt) if ".tmp" in f]


def test_validation_error_is_the_true_error_rate(tiny_run):
    """The monitor's final test error equals the error of params_3 recomputed independently."""
    series = open(tiny_run["root"] / "monitor" / "Test-error.series.txt").read().split()
    assert series[-2] == "3"
    logits, y = checkpoint_logits(tiny_run, 3, "x_val.npy", "y_val.npy")
    assert float(series[-1]) == pytest.approx((logits.argmax(1) != y).mean(), abs=1e-6)


def _train(root, data, *extra):
    return run_main("train.py", "--input", data, "--model_save_path", root / "ckpt", "--monitor-path",
                      root / "mon", "--nmaps", 4, "--train_epochs", 3, "--train_batch_size", 16, "-c", "cpu",
                      *extra, cwd=root)


def test_resume_is_bit_exact(tmp_path):
    data = tmp_path / "data"
    write_subset(data, n_train=40, n_val=10)
    full = tmp_path / "full"
    full.mkdir()
    _train(full, data)
    # a run stopped after epoch 1: its folder holds checkpoints 0 and 1 only
    part = tmp_path / "part"
    (part / "ckpt").mkdir(parents=True)
    m = json.load(open(full / "ckpt" / "checkpoints.json"))
    m["checkpoints"] = [c for c in m["checkpoints"] if c["epoch"] <= 1]
    for c in m["checkpoints"]:
        shutil.copy(full / "ckpt" / c["params"], part / "ckpt")
        shutil.copy(full / "ckpt" / c["solver"], part / "ckpt")
    json.dump(m, open(part / "ckpt" / "checkpoints.json", "w"))
    _, _, err = _train(part, data, "--resume")
    assert "resuming from epoch 1" in err
    for k in (2, 3):
        assert _same_h5(full / "ckpt" / f"params_{k}.h5", part / "ckpt" / f"params_{k}.h5")
        assert _same_h5(full / "ckpt" / f"solver_{k}.h5", part / "ckpt" / f"solver_{k}.h5")
    assert json.load(open(part / "ckpt" / "checkpoints.json")) == json.load(open(full / "ckpt" / "checkpoints.json"))


def test_seed_makes_runs_reproducible(tmp_path):
    """Two runs with seed 5, one in this process and one as a process of its own, give the same bits."""
    runs = []
    for name, seed, run in (("a", 5, run_main), ("b", 5, run_script), ("c", 6, run_main)):
        root = tmp_path / name
        root.mkdir()
        run("train.py", "--dataset", "digits", "--output", root / "data", "--model_save_path", root / "ckpt",
            "--monitor-path", root / "mon", "--nmaps", 4, "--train_epochs", 1, "--seed", seed, "-c", "cpu",
            "--precise_bn", "False", cwd=root)
        runs.append(root)
    a, b, c = runs
    assert np.array_equal(np.load(a / "data" / "y_shuffle_train.npy"), np.load(b / "data" / "y_shuffle_train.npy"))
    assert not np.array_equal(np.load(a / "data" / "y_shuffle_train.npy"), np.load(c / "data" / "y_shuffle_train.npy"))
    assert _same_h5(a / "ckpt" / "params_0.h5", b / "ckpt" / "params_0.h5")  # initialisation
    assert _same_h5(a / "ckpt" / "params_1.h5", b / "ckpt" / "params_1.h5")  # data order + augmentation
    assert not _same_h5(a / "ckpt" / "params_0.h5", c / "ckpt" / "params_0.h5")


def test_save_interval_and_monitor_series(tmp_path):
    data = tmp_path / "data"
    write_subset(data, n_train=40, n_val=10)
    _train(tmp_path, data, "--model_save_interval", 2)
    m = checkpoints.read_manifest(str(tmp_path / "ckpt"))
    assert [c["epoch"] for c in m["checkpoints"]] == [0, 2, 3]  # the last epoch is always saved
    for name in ("Training-loss", "Training-error", "Test-loss", "Test-error"):
        lines = open(tmp_path / "mon" / f"{name}.series.txt").read().split("\n")
        assert [int(l.split()[0]) for l in lines if l] == [1, 2, 3]


def test_default_dataset_is_cifar10_and_offline_error_points_to_digits(tmp_path, monkeypatch, capsys):
    """The original's train.py command means CIFAR-10; offline without the archive, one line names the archive,
    the folder to put it in, --data-dir and --dataset digits, and nothing but the data cache is created."""
    import urllib.error
    import urllib.request

    import train
    from args import train_parser
    from utils import run_cli
    assert train_parser().parse_args([]).dataset == "cifar10"

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    argv = ["--data-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "data"), "--model_save_path",
            str(tmp_path / "ckpt"), "--monitor-path", str(tmp_path / "mon"), "-c", "cpu"]
    assert run_cli(train.main, argv, prog="train.py") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: cannot download"), err
    for words in ("cifar-10-python.tar.gz", str(tmp_path / "cache"), "--data-dir", "--dataset digits"):
        assert words in err[0], (words, err[0])
    assert sorted(os.listdir(tmp_path)) == ["cache"] and os.listdir(tmp_path / "cache") == []
