"""MPI for the scorer: detect an MPI launch, wrap mpi4py's communicator, keep ranks from waiting on a failed one.

    mpiexec -n 4 .venv/bin/python calculate_score.py --input ... --checkpoint ...

Without an MPI launcher nothing here imports mpi4py and the scripts run as one process. Under one, every rank
runs the same command: work units (self mode: (checkpoint, shard of training samples); influence mode: (chunk of
test samples, shard of training samples)) are dealt in contiguous runs of equal cost (engine.owners), each rank
writes its finished units to the shared cache folder, and rank 0 assembles the same files a single process
writes. Units do not depend on the number of ranks, so the result is bitwise that of one process (on CPU), and
a rerun with any number of ranks skips the finished units.

Training (train.py under a launcher) uses the same Comm: data-parallel micro-batches exchanged with
allgather_array, a buffer-based Allgather of numpy rows (no pickling in the hot loop).

Failures: a rank that fails (a bad input, an exception) tells the others at their next collective call, so no
rank waits forever; only rank 0 prints (other ranks print only an error of their own that rank 0 did not have).
Every collective starts with a one-byte Allgather of each rank's health, whatever follows it (pickled values or
numpy buffers): a failing rank only has to take part in that first step, so it can release peers blocked in any
collective, of any size.
"""
import os

import numpy as np

from .errors import InputError

# Environment variables that MPI launchers set in every process they start: Open MPI (mpirun), MPICH / Intel MPI
# hydra (mpiexec), PMI-1/2 and PMIx process managers (also srun --mpi=pmi2|pmix).
LAUNCH_VARS = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK", "PMIX_RANK",
               "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD", "HYDI_CONTROL_FD")


def launched_under_mpi(environ=None):
    env = os.environ if environ is None else environ
    return any(v in env for v in LAUNCH_VARS)


class PeerFailed(Exception):
    """Another rank failed: this one stops too (the failing rank, or rank 0, reports why)."""

    def __init__(self, failures):
        self.failures = failures  # [(rank, (message, exit code))]
        super().__init__("; ".join(f"rank {r}: {m}" for r, (m, _) in failures))


class Comm:
    """mpi4py's COMM_WORLD with the few collective calls the scorer and the trainer need. Every collective opens
    with an exchange of each rank's health, so a rank that failed releases the others instead of leaving them
    blocked."""

    def __init__(self, mpi, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        local = comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()  # the GPU of this rank on its node
        local.Free()
        self.settled = False  # a collective has already told every rank about a failure

    def _check(self, failure=None):
        """The health step that opens every collective. With every rank healthy, returns []. Otherwise every rank
        learns every failure [(rank, (message, exit code))]: a healthy rank raises PeerFailed, a failing one (which
        passes its (message, code)) gets the list back."""
        flags = np.empty(self.size, dtype=np.uint8)
        self.comm.Allgather(np.array([failure is None], dtype=np.uint8), flags)
        if flags.all():
            return []
        self.settled = True
        got = self.comm.allgather(failure)
        failures = [(r, v) for r, v in enumerate(got) if v is not None]
        if failure is None:
            raise PeerFailed(failures)
        return failures

    def allgather(self, value):
        """Every rank's value, in rank order; raises PeerFailed on every rank if any rank has failed."""
        self._check()
        return self.comm.allgather(value)

    def allgather_array(self, rows):
        """Every rank's float array `rows` (the same shape and dtype on every rank), stacked in rank order:
        shape (size,) + rows.shape. A buffer Allgather, no pickling; raises PeerFailed like allgather."""
        self._check()
        rows = np.ascontiguousarray(rows)
        out = np.empty((self.size,) + rows.shape, dtype=rows.dtype)
        self.comm.Allgather(rows, out)
        return out

    def allreduce(self, value):
        return sum(self.allgather(value))

    def barrier(self):
        self.allgather(None)

    def fail(self, message, code):
        """Called by a failing rank in place of its next collective: every rank's failure [(rank, (msg, code))]."""
        if self.settled:
            return []
        return self._check((message, code))


def world():
    """A Comm when started by an MPI launcher, else None (mpi4py is then never imported)."""
    if not launched_under_mpi():
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        found = next(v for v in LAUNCH_VARS if v in os.environ)
        raise InputError(f"started by an MPI launcher ({found} is set) but mpi4py is not installed: run `make mpi` "
                       "(pip install -r requirements-mpi.txt) or start the script without mpiexec") from None
    return Comm(MPI, MPI.COMM_WORLD)
