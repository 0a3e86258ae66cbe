"""MPI (parallel.py): 2 ranks on CPU write bitwise the files of one process, for self-influence and for train ->
test influence; reruns skip finished units; a bad input stops every rank with one line; no MPI, no mpi4py."""
import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, run_main, write_subset

from tracin import parallel

BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, "mpiexec")


def _mpi_missing():
    if not os.path.isfile(MPIEXEC):
        return f"no {MPIEXEC}"
    p = subprocess.run([sys.executable, "-c", "import mpi4py.MPI"], capture_output=True, text=True)
    if p.returncode != 0:
        return "mpi4py does not import: " + (p.stderr.strip().splitlines() or ["?"])[-1]
    return None


MISSING = _mpi_missing()
needs_mpi = pytest.mark.skipif(MISSING is not None, reason=f"MPI runtime not installed ({MISSING}): `make mpi` "
                                                           "installs requirements-mpi.txt into .venv")
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in parallel.LAUNCH_VARS}


def score(ranks, *args, check=True, cwd=None):
    """calculate_score.py on `ranks` MPI ranks (a subprocess under mpiexec), or in this process when ranks is 0."""
    if not ranks:
        return run_main("calculate_score.py", *args, cwd=cwd, check=check)
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, os.path.join(REPO, "calculate_score.py")] + [str(a) for a in args]
    env = dict(CLEAN_ENV, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stderr[-3000:]}")
    return p


def same_files(a, b, names):
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), f"{name} differs between {a} and {b}"


@pytest.fixture(scope="module")
def data300(tiny_run, tmp_path_factory):
    """300 training and 40 test digits scored with the tiny run's checkpoints: several work units."""
    folder = tmp_path_factory.mktemp("mpi") / "data"
    write_subset(folder, n_train=300, n_val=40, seed=1)
    return folder


@needs_mpi
def test_two_ranks_self_influence_is_bitwise_single_process(tiny_run, data300, tmp_path):
    common = ("--input", data300, "--checkpoint", tiny_run["ckpt"], "-c", "cpu", "--layers", "all",
              "--save_every_epoch", "True")
    score(0, *common, "--output", tmp_path / "one")
    p = score(2, *common, "--output", tmp_path / "two")
    epochs = [os.path.basename(f) for f in glob.glob(str(tmp_path / "one" / "*_influence.npy"))]
    assert len(epochs) == 3
    same_files(tmp_path / "one", tmp_path / "two", ["influence_all_epoch.npy", "loss_last_epoch.npy"] + epochs)
    meta = json.loads((tmp_path / "two" / "scores.json").read_text())
    assert meta["ranks"] == 2 and meta["samples_computed"] == 300 * 3
    assert p.stderr.count("scored 300 samples") == 1  # only rank 0 reports


@needs_mpi
def test_two_ranks_influence_is_bitwise_single_process_and_resumes(tiny_run, data300, tmp_path):
    # layers last (the closed form): units, their order and their merge are what MPI changes; the gradient path's
    # bitwise equality under MPI is the self-influence test's (and tests/test_explanations.py's)
    common = ("--input", data300, "--checkpoint", tiny_run["ckpt"], "-c", "cpu", "--mode", "influence",
              "--layers", "last", "--save_matrix", "True", "--top_k", 6, "--test_chunk", 16)
    score(0, *common, "--output", tmp_path / "one")
    score(2, *common, "--output", tmp_path / "two")
    same_files(tmp_path / "one", tmp_path / "two", ["influence_topk.npz", "influence_matrix.npy"])
    units = sorted(glob.glob(str(tmp_path / "two" / "tracin_cache" / "*" / "test*" / "train*.npz")))
    assert len(units) == 3 * 2  # test chunks 0:16, 16:32, 32:40 x training shards of 256, 44
    # a rerun on 2 ranks after losing one unit recomputes that unit only, and writes the same files
    os.remove(units[4])
    before = open(tmp_path / "two" / "influence_topk.npz", "rb").read()
    score(2, *common, "--output", tmp_path / "two")
    meta = json.loads((tmp_path / "two" / "influence.json").read_text())
    assert meta["ranks"] == 2 and meta["gradient_evaluations"] == 256 * 3  # one shard, three checkpoints
    assert open(tmp_path / "two" / "influence_topk.npz", "rb").read() == before
    same_files(tmp_path / "one", tmp_path / "two", ["influence_matrix.npy"])


@needs_mpi
def test_bad_input_under_mpi_is_one_line_on_every_rank(tiny_run, tmp_path):
    p = score(2, "--input", tiny_run["data"], "--checkpoint", tiny_run["ckpt"], "-c", "cpu", "--mode", "influence",
              "--test_indices", "999", "--output", tmp_path / "out", check=False)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if "error" in ln]
    assert len(lines) == 1 and "--test_indices 999 is out of range" in lines[0], p.stderr
    assert not (tmp_path / "out").exists()


def test_launch_detection_and_no_mpi4py_without_a_launcher(monkeypatch):
    assert parallel.launched_under_mpi({"PMI_SIZE": "2", "PMI_RANK": "0"})
    assert parallel.launched_under_mpi({"OMPI_COMM_WORLD_SIZE": "4"})
    assert parallel.launched_under_mpi({"PMIX_RANK": "1"})
    assert not parallel.launched_under_mpi({"SLURM_PROCID": "0", "PATH": "/bin"})
    for v in parallel.LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)
    had = "mpi4py" in sys.modules
    assert parallel.world() is None
    assert had or "mpi4py" not in sys.modules


def test_launcher_without_mpi4py_is_a_one_line_error(tiny_run, tmp_path):
    """A launcher's variables but no mpi4py (hidden with an import blocker): one line, exit 2."""
    blocker = tmp_path / "block" / "mpi4py"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    env = dict(CLEAN_ENV, PMI_SIZE="1", PMI_RANK="0", PYTHONPATH=str(tmp_path / "block"))
    p = subprocess.run([sys.executable, os.path.join(REPO, "calculate_score.py"), "--input", tiny_run["data"],
                        "--checkpoint", tiny_run["ckpt"], "-c", "cpu", "--output", tmp_path / "out"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "mpi4py is not installed" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


class _Units:
    def __init__(self, costs):
        self.units = list(range(len(costs)))
        self._costs = costs

    def cost(self, unit):
        return self._costs[unit]


@pytest.mark.parametrize("costs", [[1438] * 7, [256] * 5 + [158], [4096, 4096, 3, 4096, 1, 1, 1, 2000], [7]])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_units_go_to_ranks_in_contiguous_runs_of_even_cost(costs, world):
    from tracin import engine
    job = _Units(costs)
    owners = engine.owners(job, world)
    assert owners == sorted(owners) and set(owners) <= set(range(world))  # contiguous runs, valid ranks
    loads = [engine.work(job, r, world) for r in range(world)]
    assert sum(loads) == sum(costs)
    assert max(loads) <= sum(costs) / world + max(costs)  # an even share plus at most one unit


def test_shards_of_self_influence_spread_one_checkpoint_over_ranks():
    from tracin import engine
    assert engine.shard_size(1438) == 256 and engine.shard_size(50000) == 782 and engine.shard_size(10 ** 6) == 4096
    assert engine.shards(1438, engine.shard_size(1438))[-1] == (1280, 1438)
