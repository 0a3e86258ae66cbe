"""Exact running top-k of influence scores: proponents (highest) and opponents (lowest) per test sample.

Candidates may arrive in any order and grouping (blocks of one work unit, or other units' top-k lists): the result
is always that of sorting each full row by score, ties going to the lower training index.
"""
import numpy as np

KEYS = ("prop_idx", "prop_score", "opp_idx", "opp_score")


def _select(scores, index, k, largest):
    """k best per row of scores (T, n) with training indices index (T, n): ties go to the lower index."""
    order = np.lexsort((index, -scores if largest else scores), axis=-1)[:, :k]
    return np.take_along_axis(index, order, 1), np.take_along_axis(scores, order, 1)


class RunningTopK:
    """Top-k proponents and opponents of T test samples over candidates added block by block."""

    def __init__(self, n_rows, k):
        self.k = k
        self.prop_idx = np.zeros((n_rows, 0), dtype=np.int64)
        self.prop_score = np.zeros((n_rows, 0), dtype=np.float64)
        self.opp_idx, self.opp_score = self.prop_idx, self.prop_score

    def add_block(self, scores, index):
        """Candidates: a block of scores (T, n) for training samples index (n,)."""
        idx = np.broadcast_to(np.asarray(index, dtype=np.int64), scores.shape)
        self.add(idx, scores, idx, scores)

    def add(self, prop_idx, prop_score, opp_idx, opp_score):
        """Candidates already reduced to top-k lists (another RunningTopK's arrays)."""
        self.prop_idx, self.prop_score = _select(np.concatenate([self.prop_score, prop_score], 1),
                                                 np.concatenate([self.prop_idx, prop_idx], 1), self.k, True)
        self.opp_idx, self.opp_score = _select(np.concatenate([self.opp_score, opp_score], 1),
                                               np.concatenate([self.opp_idx, opp_idx], 1), self.k, False)

    def arrays(self):
        """{prop_idx, prop_score, opp_idx, opp_score}, each (T, k): the state, as written to a unit file."""
        return {"prop_idx": self.prop_idx, "prop_score": self.prop_score,
                "opp_idx": self.opp_idx, "opp_score": self.opp_score}
