"""The unit engine shared by self-influence and train -> test influence: caching, resumption and MPI sharding.

A job splits its work into units whose list depends only on the job's settings (never on the number of ranks or
the machine). Ranks take contiguous runs of units of about equal cost (`owners`); rank r computes those of its run
that the store does not hold yet, and stores each as soon as it is done (a DirStore writes it atomically, in the
background while the next unit is computed), so a killed run loses at most the units in flight and a rerun with
any number of ranks skips finished ones. Rank 0 then merges every unit in a fixed order: the result is the same,
bit for bit, whatever the number of ranks.

A job provides: `units` (list), `name(unit)` (relative file name), `cost(unit)` and `label(unit)` (progress),
`compute(unit, on_batch) -> {name: array}` and `merge(load) -> result`, where load(unit) returns its arrays.
"""
import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import InputError
from .io import npz_bytes, remove_temporaries, write_bytes

SHARD_BOUNDS = (256, 4096)  # samples per shard: at least 256 (per-unit overhead), at most 4096 (small unit files)
KEEP_BYTES = 256 << 20  # units a DirStore keeps in memory for the merge, so this rank's are not read back from disk


def shard_size(n):
    """Samples per shard of a set of n: about n / 64 within SHARD_BOUNDS, so a job has enough units to spread
    evenly over many ranks. A function of n only: units never depend on the number of ranks."""
    lo, hi = SHARD_BOUNDS
    return int(min(hi, max(lo, -(-n // 64))))


def shards(n, shard):
    """[(start, end)] of consecutive blocks of `shard` samples covering range(n)."""
    return [(s, min(s + shard, n)) for s in range(0, n, shard)]


def settings_key(**fields):
    """Short hash of JSON-able settings: the cache folder of one configuration."""
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


class DirStore:
    """Units as .npz files under a folder (shared by every rank). A unit is written (atomically, fsync'd) by a
    background thread while the next one is computed: waiting for the disk would otherwise add to the run's time
    (a cheap unit, such as last-layer scoring's, computes in a few times an fsync's wait). At most one write is in
    flight; its error is raised by the next save or by flush. The units saved are also kept in memory (up to
    KEEP_BYTES) for load."""

    def __init__(self, folder):
        self.folder = folder
        self._writer = None
        self._pending = None
        self._kept, self._kept_bytes = {}, 0

    def _path(self, name):
        return os.path.join(self.folder, name)

    def has(self, name):
        return os.path.isfile(self._path(name))

    def save(self, name, arrays):
        data = npz_bytes(arrays)
        self.flush()
        if self._kept_bytes + len(data) <= KEEP_BYTES:
            self._kept[name] = arrays
            self._kept_bytes += len(data)
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracin-unit-writer")
        self._pending = self._writer.submit(write_bytes, self._path(name), data)

    def flush(self):
        """Wait for the unit being written; raise its error (a full disk, ...)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self):
        """flush, and end the writer thread."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def load(self, name):
        self.flush()
        if name in self._kept:
            return self._kept[name]
        with np.load(self._path(name)) as z:
            return {k: z[k] for k in z.files}

    def remove_temporaries(self):
        """Delete the temporaries of unit writes killed runs left anywhere under the folder."""
        for d, _, _ in os.walk(self.folder):
            remove_temporaries(d)


class MemoryStore:
    """Units kept in memory: a single-process run without a cache folder."""

    def __init__(self):
        self.units = {}

    def has(self, name):
        return name in self.units

    def save(self, name, arrays):
        self.units[name] = arrays

    def flush(self):
        pass

    def close(self):
        pass

    def load(self, name):
        return self.units[name]

    def remove_temporaries(self):
        pass


def owners(job, world):
    """The rank of every unit: contiguous runs of about total/world cost each (a unit goes to the rank whose share
    holds the middle of its cost), so the slowest rank has at most one unit more work than an even split, and a
    rank's units share checkpoints and test chunks. Depends only on the units and `world`."""
    costs = np.array([job.cost(unit) for unit in job.units], dtype=np.float64)
    total = costs.sum()
    if world <= 1 or total <= 0:
        return [0] * len(costs)
    middle = np.cumsum(costs) - costs / 2
    return [min(world - 1, int(m * world // total)) for m in middle]


def work(job, rank=0, world=1):
    """Total cost of the units of rank `rank` of `world` (the length of its progress bar)."""
    return sum(job.cost(unit) for unit, r in zip(job.units, owners(job, world)) if r == rank)


def run_units(job, store, rank=0, world=1, progress=None):
    """Compute and store every unit of this rank that `store` lacks (every one written when it returns); returns
    the cost of the units computed. progress(count, label), if given, is called as work is done (cached units count
    at once)."""
    try:
        done = _run_units(job, store, rank, world, progress)
    except BaseException:
        with contextlib.suppress(Exception):  # a unit computed before the failure is kept for the rerun
            store.close()
        raise
    store.close()
    return done


def _run_units(job, store, rank, world, progress):
    done = 0
    for unit, owner in zip(job.units, owners(job, world)):
        if owner != rank:
            continue
        name = job.name(unit)
        if store.has(name):
            if progress:
                progress(job.cost(unit), job.label(unit))
            continue
        label = job.label(unit)
        on_batch = (lambda count: progress(count, label)) if progress else None
        arrays = job.compute(unit, on_batch)
        bad = [k for k, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
        if bad:  # never stored, never merged: a NaN would reach every score file
            raise InputError(f"{label}: the checkpoints give NaN/inf values ({bad[0]}): a checkpoint holds "
                             "weights that overflow (damaged, or training diverged); leave it out")
        store.save(name, arrays)
        done += job.cost(unit)
    return done


def run(job, store, comm=None, progress=None):
    """Run `job` on this rank, wait for every rank, merge on rank 0: (total cost computed over all ranks, the
    merged result on rank 0 or None on the other ranks)."""
    rank, world = (comm.rank, comm.size) if comm is not None else (0, 1)
    done = run_units(job, store, rank, world, progress)
    if comm is not None:
        done = comm.allreduce(done)
        comm.barrier()  # every unit is stored before rank 0 reads them
    if rank != 0:
        return done, None
    store.remove_temporaries()  # only now: no rank is writing a unit any more
    return done, job.merge(lambda unit: store.load(job.name(unit)))
