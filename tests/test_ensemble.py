"""Ensembles: calculate_score.py --checkpoint A,B,C sums the self-influence of several training runs on the same
arrays; the API's load_checkpoints([A, B, C]) / self_influence do the same in process."""
import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import run_main, write_subset
from tests.test_mpi import needs_mpi
from tests.test_mpi import score as mpi_score

TRAIN = ("--nmaps", 8, "--train_epochs", 2, "--train_batch_size", 32, "-c", "cpu")


def train(data, root, seed):
    ckpt = root / f"ckpt_seed{seed}"
    run_main("train.py", "--input", data, "--model_save_path", ckpt, "--monitor-path", root / f"monitor{seed}",
             "--seed", seed, *TRAIN, cwd=root)
    return ckpt


def score(data, ckpts, out, *flags, check=True):
    return run_main("calculate_score.py", "--input", data, "--checkpoint", ",".join(map(str, ckpts)),
                    "--output", out, "-c", "cpu", *flags, check=check)


@pytest.fixture(scope="module")
def ens(tmp_path_factory):
    """Three runs on the same 96 digits (seeds 1, 2, 3), one on other arrays, and each run scored alone."""
    root = tmp_path_factory.mktemp("ensemble")
    data, other_data = root / "data", root / "other_data"
    write_subset(data, seed=0)
    write_subset(other_data, seed=5)  # other shuffled labels: another fingerprint
    runs = [train(data, root, s) for s in (1, 2, 3)]
    singles = []
    for i, ckpt in enumerate(runs):
        score(data, [ckpt], root / f"single{i}")
        singles.append(np.load(root / f"single{i}" / "influence_all_epoch.npy"))
    return {"root": root, "data": data, "runs": runs, "singles": singles, "other": train(other_data, root, 4)}


def test_sum_equals_the_single_runs(ens):
    out = ens["root"] / "sum"
    score(ens["data"], ens["runs"], out)
    total = np.load(out / "influence_all_epoch.npy")
    a, b, c = ens["singles"]
    assert np.array_equal(total, a + b + c)
    for r, single in enumerate(ens["singles"], start=1):
        assert np.array_equal(np.load(out / f"influence_run{r}.npy"), single)
    assert not np.allclose(a, b)  # the seeds made different runs: the sum is not one run repeated
    losses = [np.load(ens["root"] / f"single{i}" / "loss_last_epoch.npy") for i in range(3)]
    np.testing.assert_allclose(np.load(out / "loss_last_epoch.npy"), np.mean(losses, axis=0), rtol=1e-12)
    info = json.loads((out / "scores.json").read_text())
    assert [r["checkpoint"] for r in info["runs"]] == [str(p) for p in ens["runs"]]
    assert [r["seed"] for r in info["runs"]] == [1, 2, 3]
    assert [c["epoch"] for c in info["runs"][0]["checkpoints"]] == [1, 2]


def test_api_takes_a_list_of_folders(ens):
    import tracin
    from tracin.api import CheckpointEnsemble
    ckpts = tracin.load_checkpoints([str(p) for p in ens["runs"]])
    assert isinstance(ckpts, CheckpointEnsemble) and len(ckpts) == 3
    x = np.load(ens["data"] / "x_train.npy")
    y = np.load(ens["data"] / "y_shuffle_train.npy")
    res = tracin.self_influence(ckpts, x, y, details=True)
    assert np.array_equal(res.scores, sum(ens["singles"][1:], ens["singles"][0]))
    assert [r.epochs for r in res.runs] == [[1, 2]] * 3
    one = tracin.load_checkpoints([str(ens["runs"][0])])  # a list of one folder is that run
    assert np.array_equal(tracin.self_influence(one, x, y), ens["singles"][0])
    with pytest.raises(tracin.InputError, match="one training run"):
        tracin.influence(ckpts, x, y, x[:2])


def test_resume_reuses_every_finished_run(ens):
    out = ens["root"] / "resume"
    score(ens["data"], ens["runs"][:2], out)  # as if stopped after two runs
    score(ens["data"], ens["runs"], out)
    info = json.loads((out / "scores.json").read_text())
    n = len(np.load(ens["data"] / "x_train.npy"))
    assert info["samples_computed"] == n * 2  # only the third run's two checkpoints were computed
    assert np.array_equal(np.load(out / "influence_all_epoch.npy"), sum(ens["singles"][1:], ens["singles"][0]))


@pytest.mark.parametrize("case", ["other_data", "twice", "influence", "every_epoch"])
def test_refused_in_one_line(ens, case):
    out = ens["root"] / f"refused_{case}"
    a, b = ens["runs"][:2]
    ckpts, flags, expect = {
        "other_data": ([a, ens["other"]], [], f"'{ens['other']}' was trained on other arrays than '{a}'"),
        "twice": ([a, b, a], [], "is listed twice"),
        "influence": ([a, b], ["--mode", "influence"], "--mode influence takes one --checkpoint folder"),
        "every_epoch": ([a, b], ["--save_every_epoch", "True"], "--save_every_epoch True takes one"),
    }[case]
    code, _, err = score(ens["data"], ckpts, out, *flags, check=False)
    assert code == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(out)


@needs_mpi
def test_two_mpi_ranks_give_the_same_sum(ens):
    out = ens["root"] / "mpi"
    mpi_score(2, "--input", ens["data"], "--checkpoint", ",".join(map(str, ens["runs"])), "--output", out, "-c", "cpu")
    assert np.array_equal(np.load(out / "influence_all_epoch.npy"), sum(ens["singles"][1:], ens["singles"][0]))
    assert json.loads((out / "scores.json").read_text())["ranks"] == 2


def test_a_copied_run_is_counted_twice_with_a_warning(ens):
    copy = ens["root"] / "copy_of_seed1"
    if not copy.exists():
        shutil.copytree(ens["runs"][0], copy)
    out = ens["root"] / "copied"
    _, _, err = score(ens["data"], [ens["runs"][0], copy], out)
    assert "were trained with the same --seed 1" in err
    assert np.array_equal(np.load(out / "influence_all_epoch.npy"), ens["singles"][0] * 2)
