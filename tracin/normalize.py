"""Normalised train -> test influence: which training samples explain a test prediction.

Raw TracIn sums eta_i g_i(z) . g_i(z') over checkpoints i (g_i(z): the loss gradient of training sample z at
checkpoint i, z' the test sample). A training sample with a large gradient (a high-loss one, typically mislabeled)
has a large dot product with almost every test sample of the class it is labelled with, so the same few
mislabeled samples top every list of proponents. The normalisations below remove the training gradient's length:

  none          sum_i eta_i g_i(z) . g_i(z')                                    raw TracIn (Pruthi et al. 2020)
  cosine        sum_i eta_i cos(g_i(z), g_i(z'))                                in [-sum eta, +sum eta];
                (gradient aggregated similarity, Hammoudeh & Lowd 2022)         diagonal: sum_i eta_i
  renorm        sum_i eta_i g_i(z) . g_i(z') / ||g_i(z)||                       diagonal: sum_i eta_i ||g_i(z)||
                (renormalised TracIn, Hammoudeh & Lowd 2022)
  total_cosine  TracIn(z, z') / sqrt(self(z) self(z')),                         in [-1, 1]; diagonal: 1
                self(z) = sum_i eta_i ||g_i(z)||^2: the cosine of the stacked gradients (sqrt(eta_i) g_i)_i;
                per test sample it ranks like TracIn(z, z') / sqrt(self(z)), the summed influence divided by the
                training sample's gradient norm

The test sample's norm does not change a ranking under any of them; it only sets the scale of the scores. A
zero gradient (a prediction exactly equal to its label) has no direction: its cosine terms count as 0.
The squared norms used are those of the vectors whose dot products are taken (the projected gradients when a
random projection is used), so the bounds hold exactly; cosines are clipped to [-1, 1] against rounding.
"""
import numpy as np

NORMALIZATIONS = ("none", "cosine", "renorm", "total_cosine")  # the default: tracin.defaults.NORMALIZE
DEFINITIONS = {
    "none": "TracIn(z, z') = sum_i eta_i * g_i(z) . g_i(z')",
    "cosine": "sum_i eta_i * cos(g_i(z), g_i(z'))",
    "renorm": "sum_i eta_i * g_i(z) . g_i(z') / ||g_i(z)||",
    "total_cosine": "TracIn(z, z') / sqrt(self(z) * self(z')), self(z) = sum_i eta_i * ||g_i(z)||^2",
}
# (z train, z' test, g_i the loss gradient at checkpoint i) appended to every definition in influence.json
NOTATION = " (z train, z' test, g_i(z) = grad loss(w_i, z))"


def inverse_norms(sq):
    """1 / sqrt(sq) (float64), 0 where sq is 0: a zero gradient contributes nothing to a normalised score."""
    sq = np.asarray(sq, dtype=np.float64)
    out = np.zeros_like(sq)
    pos = sq > 0
    out[pos] = 1.0 / np.sqrt(sq[pos])
    return out


def checkpoint_term(dots, sq_test, sq_train, normalize):
    """One checkpoint's term (before eta) from its dot products (T, B) and the squared norms of the test (T,) and
    training (B,) vectors. 'total_cosine' is normalised after the sum (finish)."""
    if normalize == "cosine":
        return np.clip(dots * np.outer(inverse_norms(sq_test), inverse_norms(sq_train)), -1.0, 1.0)
    if normalize == "renorm":
        return dots * inverse_norms(sq_train)[None, :]
    return dots


def finish(block, self_test, self_train, normalize):
    """The summed block (T, B), normalised by the eta-weighted squared norms self(z') (T,) and self(z) (B,) for
    'total_cosine'; returned unchanged otherwise."""
    if normalize != "total_cosine":
        return block
    return np.clip(block * np.outer(inverse_norms(self_test), inverse_norms(self_train)), -1.0, 1.0)
