"""Data-parallel training over MPI ranks: work items (micro-batches of a global batch, precise-BN batches,
validation batches) are dealt round-robin by index, rank r taking items r, r+N, r+2N, ..., and their results are
gathered back into one array in item order. Every rank then reduces the same array in the same order, so a
reduction depends on the number of items, never on the number of ranks N (bitwise, on CPU).

Without MPI (comm None) the same code runs as one rank holding every item.
"""
import math

import numpy as np


class Shards:
    """Deals items to ranks and gathers their results (tracin.parallel.Comm, or None for one process)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank, self.size = (comm.rank, comm.size) if comm is not None else (0, 1)

    def mine(self, n):
        """This rank's items among n."""
        return range(self.rank, n, self.size)

    def gather(self, rows, n, width, dtype):
        """rows: {item: 1-D array of `width` values} for every item in mine(n); returns the (n, width) array of
        every rank's rows, row k being item k's. One buffer Allgather (every rank sends ceil(n/N) rows, padded)."""
        if self.comm is None:
            return np.stack([np.asarray(rows[k], dtype=dtype) for k in range(n)]).reshape(n, width)
        slots = math.ceil(n / self.size)
        buf = np.zeros((slots, width), dtype=dtype)
        for j, k in enumerate(self.mine(n)):
            buf[j] = rows[k]
        got = self.comm.allgather_array(buf)  # (N, slots, width): item k is at [k % N, k // N]
        return got.transpose(1, 0, 2).reshape(slots * self.size, width)[:n]


def ordered_sum(rows, start=None):
    """Sum of the rows in index order, one row at a time (the order fixes the rounding). start: a total to add
    them to; by default the first row itself (so one row sums to itself, bit for bit, signed zeros included)."""
    total, rows = (rows[0].copy(), rows[1:]) if start is None else (start, rows)
    for row in rows:
        total += row
    return total
