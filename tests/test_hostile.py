"""The generated hostile suite: every input file damaged, every numeric flag impossible, every output folder on a
failing disk, for train.py, calculate_score.py and mislabel_analysis.py, each case judged on its own.

Each case copies what it needs from one small valid pipeline (built once, through the command line), changes ONE
thing, runs the script and checks the contract in tests/hostile/harness.py. A case runs the script's `__main__`
block in this process (no interpreter start per case); a case on a mounted tmpfs runs as a subprocess, as does a
sample of the others (test_hostile_as_a_process), which must give the same outcome both ways. The tree under test
is HOSTILE_REPO (default: this checkout, whose code this process imports); another tree runs every case as a
subprocess, as does HOSTILE_PROCESSES=1.
"""
import json
import os
import time

import numpy as np
import pytest
from hostile import (
    cases_analysis,
    cases_disk,
    cases_score,
    cases_train,
    disk,
    harness,
    pipeline,
)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.abspath(os.environ.get("HOSTILE_REPO") or HERE)
IN_PROCESS = REPO == HERE and os.environ.get("HOSTILE_PROCESSES") != "1"
CASES = cases_train.cases() + cases_score.cases() + cases_analysis.cases() + cases_disk.cases()


def sample(cases):
    """The control runs, and the first case of each script with each expected outcome (bad input, success, ...) off
    a tmpfs: run as processes too."""
    groups = {}
    for c in cases:
        if c.mount is None:
            groups.setdefault((c.script, c.expect), c)
    return [c for c in cases if c.id.endswith("-control") or c in groups.values()]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return pipeline.build(REPO, str(tmp_path_factory.mktemp("hostile_base")))


def execute(case, base, work, process=None):
    """Copy, mutate, run, judge: (rc, stderr, problems, seconds run), or the reason to skip (no tmpfs). A case on a
    mount runs as a process: only its exit closes every file it opened there, which the unmount needs."""
    process = (case.mount is not None or not IN_PROCESS) if process is None else process
    harness.copy_base(base, work, case.needs)
    pipeline.relocate(work)
    mounted = None
    try:
        if case.mount:
            try:
                mounted = disk.mount(case.mount, work, base)
            except disk.MountError as e:
                return f"cannot mount a tmpfs here: {e}"
        if case.mutate:
            case.mutate(work)
        before = harness.snapshot(work)
        t0 = time.time()
        rc, err, _ = (harness.run if process else harness.run_in_process)(REPO, case, work)
        seconds = time.time() - t0
        after = harness.snapshot(work)
        return rc, err, harness.judge(case, rc, err, before, after, work, base), seconds  # judged while mounted
    finally:
        if mounted:
            disk.unmount(mounted)


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case, base, tmp_path):
    outcome = execute(case, base, str(tmp_path))
    if isinstance(outcome, str):
        pytest.skip(outcome)
    rc, err, problems, seconds = outcome
    record(case, rc, err, problems, seconds)
    assert not problems, f"{case.script} {' '.join(case.args)}: rc {rc}\n  " + "\n  ".join(problems) + \
        "\n--- stderr (tail) ---\n" + err[-1500:]


@pytest.mark.skipif(not IN_PROCESS, reason="every case already runs as a process")
@pytest.mark.parametrize("case", sample(CASES), ids=[c.id for c in sample(CASES)])
def test_hostile_as_a_process(case, base, tmp_path):
    """The same case as a process keeps the contract (output while importing included) with the same exit code,
    and a failure with the same message, as in this process."""
    rc, err, problems, _ = execute(case, base, str(tmp_path / "process"), process=True)
    assert not problems, f"{case.script} {' '.join(case.args)} as a process: rc {rc}\n  " + "\n  ".join(problems)
    rc_here, err_here, _, _ = execute(case, base, str(tmp_path / "here"), process=False)
    assert rc_here == rc
    if rc:
        assert harness.stderr_lines(err_here) == harness.stderr_lines(err)


def record(case, rc, err, problems, seconds):
    """With HOSTILE_REPORT=FILE, append one JSON line per case (the catalogue of what failed and how)."""
    path = os.environ.get("HOSTILE_REPORT")
    if path:
        lines = harness.stderr_lines(err)
        with open(path, "a") as f:
            f.write(json.dumps({"id": case.id, "script": case.script, "args": case.args, "expect": case.expect,
                                "rc": rc, "seconds": round(seconds, 2), "problems": problems,
                                "stderr_last": lines[-1][:300] if lines else ""}) + "\n")


# ------------------------------------------------------------------------------- the Training-error monitor

def series(folder, name):
    with open(os.path.join(folder, name + ".series.txt")) as f:
        return [float(line.split()[1]) for line in f if line.strip()]


FROZEN_EPOCHS = 3


@pytest.fixture(scope="module")
def frozen_runs(base, tmp_path_factory):
    """Two identical runs in which training cannot move the weights (lr 1e-30, no weight decay) and every epoch is
    one batch holding the whole training set (permuted), un-augmented. The training-mode predictions of that batch
    then depend on the initial weights and the set's batch statistics only, the same in every epoch, and precise
    batch norm stores those very statistics in params_1.h5: its inference-mode predictions are the batch's,
    computed independently of the monitor."""
    root = str(tmp_path_factory.mktemp("frozen"))
    harness.copy_base(base, root, ("data",))
    for run in ("a", "b"):
        pipeline.script(REPO, "train.py", "--input", "data", "--model_save_path", f"{run}/ckpt", "--monitor-path",
                        f"{run}/mon", "--nmaps", "4", "--train_epochs", str(FROZEN_EPOCHS), "--train_batch_size",
                        str(pipeline.N_TRAIN), "--learning_rate", "1e-30", "--weight_decay", "0",
                        "--augmentation", "False", "--precise_bn", "True", "-c", "cpu", cwd=root)
    # the predicted class of every training sample at params_1.h5: --test_label predicted on x_val := x_train
    os.makedirs(os.path.join(root, "asval"))
    np.save(os.path.join(root, "asval", "x_val.npy"), np.load(os.path.join(root, "data", "x_train.npy")))
    pipeline.script(REPO, "calculate_score.py", "--input", "data", "--checkpoint", "a/ckpt", "--output", "pred",
                    "--mode", "influence", "--test_input", "asval", "--test_label", "predicted", "--top_k", "1",
                    "--checkpoint_epochs", "1", "-c", "cpu", cwd=root)
    pipeline.script(REPO, "calculate_score.py", "--input", "data", "--checkpoint", "a/ckpt", "--output", "loss",
                    "--checkpoint_epochs", "1", "-c", "cpu", cwd=root)
    return root


def test_training_loss_monitor_matches_independent_losses(frozen_runs):
    """The premise of the error check below: the same predictions give the monitored loss (mean cross-entropy)."""
    losses = np.load(os.path.join(frozen_runs, "loss", "loss_last_epoch.npy"))
    # nnabla stores the unbiased running variance (n / (n - 1), n = 96 samples at the last 1x1 stage) where the
    # training-mode pass normalises by the biased one: the logits, and so the losses, differ by ~0.1%
    assert series(os.path.join(frozen_runs, "a", "mon"), "Training-loss") == \
        pytest.approx([losses.mean()] * FROZEN_EPOCHS, rel=2e-3)


def test_training_error_monitor_matches_independent_count(frozen_runs):
    with np.load(os.path.join(frozen_runs, "pred", "influence_topk.npz")) as z:
        predicted = z["test_labels"]
    labels = np.load(os.path.join(frozen_runs, "data", "y_shuffle_train.npy"))[:, 0]
    errors = int((predicted != labels).sum())
    # the series files print 6 significant digits
    assert series(os.path.join(frozen_runs, "a", "mon"), "Training-error") == \
        pytest.approx([errors / len(labels)] * FROZEN_EPOCHS, abs=5e-6)


def test_training_error_monitor_is_reproducible(frozen_runs):
    a, b = (series(os.path.join(frozen_runs, r, "mon"), "Training-error") for r in ("a", "b"))
    assert len(a) == FROZEN_EPOCHS and a == b
