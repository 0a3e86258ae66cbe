"""Data-parallel training (train.py under mpiexec, tracin/dataparallel.py): for a fixed --micro_batches the files
of 2 ranks are bitwise those of 1 process, with and without precise batch norm; a run resumes with another number
of ranks; its checkpoints score; a failing rank stops every rank with one line, never a hang."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO, run_main, write_subset
from test_mpi import CLEAN_ENV, MPIEXEC, needs_mpi, same_files

FILES = ["params_0.h5", "params_1.h5", "params_2.h5", "solver_1.h5", "solver_2.h5"]
TIMEOUT = 180  # a hang fails the test instead of blocking the suite


def mpi_run(ranks, script, *args, cwd=None):
    """`mpiexec -n ranks python script args` with one thread per rank: the CompletedProcess."""
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, os.path.join(REPO, script)] + [str(a) for a in args]
    env = dict(CLEAN_ENV, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd)


def train_args(data, out, *extra):
    return ("--input", data, "--model_save_path", out / "ckpt", "--monitor-path", out / "monitor", "--nmaps", 8,
            "--train_epochs", 2, "--train_batch_size", 32, "--micro_batches", 2, "-c", "cpu") + extra


def errors(stderr):
    return [ln for ln in stderr.strip().splitlines() if "error" in ln]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi_train") / "data"
    write_subset(folder, n_train=96, n_val=40, seed=2)
    return folder


@pytest.fixture(scope="module", params=[True, False], ids=["precise_bn", "moving_bn"])
def pair(request, data, tmp_path_factory):
    """The same training (--micro_batches 2) by 1 process and by 2 ranks: {'one', 'two'} run folders."""
    root = tmp_path_factory.mktemp("pair")
    bn = ("--precise_bn", request.param)
    run_main("train.py", *train_args(data, root / "one", *bn))
    p = mpi_run(2, "train.py", *train_args(data, root / "two", *bn))
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("done: 2 epochs") == 1  # rank 0 alone reports
    return {"one": root / "one", "two": root / "two"}


@needs_mpi
def test_two_ranks_write_bitwise_the_files_of_one_process(pair):
    same_files(pair["one"] / "ckpt", pair["two"] / "ckpt", FILES)
    for series in ("Training-loss.series.txt", "Test-error.series.txt"):
        same_files(pair["one"] / "monitor", pair["two"] / "monitor", [series])
    one, two = (json.loads((pair[k] / "ckpt" / "checkpoints.json").read_text())["train"] for k in ("one", "two"))
    assert (one["micro_batches"], one["ranks"]) == (2, 1) and (two["micro_batches"], two["ranks"]) == (2, 2)


@needs_mpi
def test_resume_with_another_number_of_ranks_finishes_the_same_run(pair, tmp_path):
    """Checkpoint 1 of the 2-rank run, continued by one process (the recorded --micro_batches 2): the same end."""
    shutil.copytree(pair["two"], tmp_path / "run")
    for f in ("params_2.h5", "solver_2.h5"):
        os.remove(tmp_path / "run" / "ckpt" / f)
    run_main("train.py", "--model_save_path", tmp_path / "run" / "ckpt", "--monitor-path",
             tmp_path / "run" / "monitor", "-c", "cpu", "--resume", "1")
    same_files(pair["one"] / "ckpt", tmp_path / "run" / "ckpt", FILES)
    recipe = json.loads((tmp_path / "run" / "ckpt" / "checkpoints.json").read_text())["train"]
    assert (recipe["micro_batches"], recipe["ranks"]) == (2, 1)
    code, _, err = run_main("train.py", "--model_save_path", tmp_path / "run" / "ckpt", "-c", "cpu", "--resume",
                            "1", "--micro_batches", "4", check=False)
    assert code == 2 and "splits its batches into 2" in err


@needs_mpi
def test_checkpoints_of_two_ranks_score_on_two_ranks(pair, data, tmp_path):
    p = mpi_run(2, "calculate_score.py", "--input", data, "--checkpoint", pair["two"] / "ckpt", "-c", "cpu",
                "--output", tmp_path)
    assert p.returncode == 0, p.stderr
    scores = np.load(tmp_path / "influence_all_epoch.npy")
    assert scores.shape == (96,) and np.isfinite(scores).all() and (scores > 0).all()


@needs_mpi
def test_more_ranks_than_micro_batches_is_one_line_and_writes_nothing(data, tmp_path):
    p = mpi_run(3, "train.py", *train_args(data, tmp_path / "out"))
    assert p.returncode == 2 and len(errors(p.stderr)) == 1, p.stderr
    assert "3 MPI ranks for 2 micro-batches" in p.stderr
    assert not (tmp_path / "out").exists()


@needs_mpi
def test_rank_0_failing_to_write_a_checkpoint_stops_every_rank(data, tmp_path):
    """Only rank 0 writes: a checkpoint it cannot write (a folder in its place) must release rank 1."""
    (tmp_path / "out" / "ckpt" / "params_1.h5").mkdir(parents=True)
    p = mpi_run(2, "train.py", *train_args(data, tmp_path / "out"))
    assert p.returncode == 1, p.stderr
    assert errors(p.stderr) == [f"train.py: error: cannot write {tmp_path / 'out' / 'ckpt' / 'params_1.h5'}: "
                                "Is a directory"], p.stderr


@needs_mpi
def test_divergence_under_mpi_is_one_line(data, tmp_path):
    p = mpi_run(2, "train.py", *train_args(data, tmp_path / "out", "--learning_rate", "1e12"))
    assert p.returncode == 2 and len(errors(p.stderr)) == 1 and "training diverged" in p.stderr, p.stderr


@needs_mpi
def test_a_rank_failing_between_collectives_releases_a_peer_blocked_in_allgather_array(tmp_path):
    """Rank 1 finds a bad input before its third exchange while rank 0 waits in a buffer Allgather: one line,
    both ranks exit 2."""
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        from utils import run_mpi_cli
        from tracin.errors import InputError

        def main(argv, comm=None):
            for step in range(5):
                if comm.rank == 1 and step == 2:
                    raise InputError("rank 1 broke at step 2")
                got = comm.allgather_array(np.full((3, 4), comm.rank, dtype=np.float32))
                assert got.shape == (2, 3, 4) and (got[1] == 1).all()
            return 0

        sys.exit(run_mpi_cli(main, prog="fail.py"))
    """))
    env = dict(CLEAN_ENV, PYTHONPATH=REPO)
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                       timeout=TIMEOUT, env=env)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == ["fail.py: error: rank 1 broke at step 2 (rank 1 of 2)"], p.stderr


def test_noise_flags_with_input_are_refused(data, tmp_path):
    for flag in (("--noise", "pair"), ("--shuffle_rate", "0.2"), ("--shuffle_label", "True")):
        code, _, err = run_main("train.py", "--input", data, "--model_save_path", tmp_path / "c", *flag,
                                check=False)
        assert code == 2 and f"{flag[0]} does not apply to --input" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_micro_batches_must_split_the_batch(data, tmp_path):
    code, _, err = run_main("train.py", *train_args(data, tmp_path / "out", "--micro_batches", "3"), check=False)
    assert code == 2 and "--micro_batches 3 does not split --train_batch_size 32" in err
    assert not (tmp_path / "out").exists()
