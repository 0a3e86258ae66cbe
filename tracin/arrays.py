"""Checks of the arrays a caller hands the library (images, labels) and their content fingerprint."""
import hashlib

import numpy as np

from .errors import InputError

# Labels at or above this are damage, not classes (and anything per class would run out of memory).
MAX_CLASSES = 100_000


def check_images(x, what, arg=None):
    """x if it holds images (N >= 1, channels, height, width; every size at least 1) of finite numbers, else an
    InputError naming `what` (an API argument's errors also carry its name `arg`)."""
    x = np.asarray(x)
    if x.dtype.kind not in "uif":
        raise InputError(f"{what} holds {x.dtype} values; expected image pixels (uint8 0-255, or numbers)",
                         arg=arg)
    if x.ndim != 4 or min(x.shape) < 1:
        raise InputError(f"{what} has shape {x.shape}; expected images (N >= 1, channels, height, width), none "
                         "of them 0", arg=arg)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise InputError(f"{what} holds NaN/inf pixels in {int(bad.sum())} images (first: image "
                             f"{int(np.flatnonzero(bad)[0])}): repair or remove them", arg=arg)
    return x


def check_labels(labels, n_classes, what, n=None, images=None, arg=None):
    """Class labels (N,) int64 from an (N,) or (N, 1) array of whole numbers in 0..n_classes-1 (n_classes None:
    below MAX_CLASSES), one for each of the `n` images (of the file `images`) when given; else an InputError naming
    `what` (and carrying `arg`)."""
    y = np.asarray(labels)
    if y.dtype.kind not in "biuf":
        raise InputError(f"{what} holds {y.dtype} values; expected whole-number class labels", arg=arg)
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        raise InputError(f"{what} has shape {y.shape}; expected one label per sample, (N,) or (N, 1)",
                         arg=arg)
    y = y.reshape(-1)
    if n is not None and y.size != n:
        raise InputError(f"{what} has {y.size} labels for {n} images" + (f" in {images}" if images else "")
                         + ": the arrays come from different runs", arg=arg)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{what} holds non-integer labels (first: {y[i]} at sample {i}); expected class "
                             "indices 0, 1, 2, ...", arg=arg)
    if y.size == 0:
        return y.astype(np.int64)
    lo, hi = int(y.min()), int(y.max())
    if n_classes is not None and (lo < 0 or hi >= n_classes):
        raise InputError(f"{what} has labels in [{lo}, {hi}] but the model has {n_classes} classes "
                         f"(0..{n_classes - 1})", arg=arg)
    if lo < 0 or hi >= MAX_CLASSES:
        raise InputError(f"{what} has labels in [{lo}, {hi}]: class labels must be 0, 1, 2, ... (fewer than "
                         f"{MAX_CLASSES})", arg=arg)
    return y.astype(np.int64)


def fingerprint(*arrays):
    """Short content hash: ties cached scores to the exact data they were computed on."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
