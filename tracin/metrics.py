"""Metrics of mislabeled-sample detection: pure functions on arrays, no file discovery, no CLI.

A *ranking* is a score per training sample; higher means "check this sample first". Its quality is measured
against the boolean mask `mislabeled` (noisy label != clean label):

  recall_at(f)       fraction of all mislabeled samples found among the k(f) highest-scored samples, where
                     k(f) = floor(f * N + 0.5) (f * N rounded half up). The same k is used by the curve and the
                     metrics. Ties are broken by a stable sort on the descending score (lower index first).
  detection_curve    recall_at(f) for each f in `fractions` (default 0, 0.01, ..., 1.0).
  auroc              scikit-learn roc_auc_score(mislabeled, scores): chance that a random mislabeled sample
                     outranks a random clean one (0.5 = random order, 1 = perfect).
  average_precision  scikit-learn average_precision_score: mean precision at each mislabeled sample's rank
                     (random order gives about the noise rate).
Metrics that need mislabeled samples (all of them) are None when there are none; AUROC also needs a clean one.

Figures are in tracin.plots, the text and HTML report in tracin.report.
"""
import math

import numpy as np

RECALL_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3)
CURVE_FRACTIONS = np.round(np.arange(101) / 100.0, 2)  # 0, 0.01, ..., 1.0 as the original


def n_checked(fraction, n):
    """Number of samples checked at `fraction` of n: f * n rounded half up (the one convention used everywhere)."""
    return int(min(n, max(0, math.floor(float(fraction) * n + 0.5))))


def as_inputs(scores, mislabeled):
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    mislabeled = np.asarray(mislabeled).reshape(-1).astype(bool)
    if scores.shape != mislabeled.shape:
        raise ValueError(f"{scores.size} scores for {mislabeled.size} samples")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or inf")
    return scores, mislabeled


def rank_order(scores):
    """Sample indices, highest score first; ties keep index order (stable sort)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")


def detection_curve(scores, mislabeled, fractions=CURVE_FRACTIONS):
    """Recall (fraction of the mislabeled samples found) after checking each fraction of the data, highest score
    first: an array shaped like `fractions`. All NaN when there are no mislabeled samples."""
    scores, mislabeled = as_inputs(scores, mislabeled)
    fractions = np.asarray(fractions, dtype=np.float64)
    total = int(mislabeled.sum())
    if total == 0:
        return np.full(fractions.shape, np.nan)
    found = np.concatenate([[0], np.cumsum(mislabeled[rank_order(scores)])])
    k = np.array([n_checked(f, len(scores)) for f in fractions.reshape(-1)], dtype=np.int64)
    return (found[k] / total).reshape(fractions.shape)


def recall_at(scores, mislabeled, fraction):
    """Fraction of the mislabeled samples among the floor(fraction * N + 0.5) highest-scored; None without any."""
    value = float(detection_curve(scores, mislabeled, [fraction])[0])
    return None if math.isnan(value) else value


def ranking_metrics(scores, mislabeled, fractions=RECALL_FRACTIONS):
    """{'auroc', 'average_precision', 'recall_at': {str(f): recall}} for one ranking; undefined values are None.

    recall_at keys are the fractions as written by str(float(f)) ('0.05', '0.1', ...)."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    scores, mislabeled = as_inputs(scores, mislabeled)
    n_pos = int(mislabeled.sum())
    n_neg = int(len(mislabeled) - n_pos)
    curve = detection_curve(scores, mislabeled, list(fractions))
    return {
        "auroc": float(roc_auc_score(mislabeled, scores)) if n_pos and n_neg else None,
        "average_precision": float(average_precision_score(mislabeled, scores)) if n_pos else None,
        "recall_at": {str(float(f)): (None if math.isnan(r) else float(r)) for f, r in zip(fractions, curve)},
    }


def oracle_scores(mislabeled):
    """The perfect ranking: every mislabeled sample before every clean one."""
    return np.asarray(mislabeled, dtype=np.float64).reshape(-1)


def random_curve(mislabeled, fractions=CURVE_FRACTIONS):
    """Expected recall of a random order: k(f) / N (the diagonal, up to rounding)."""
    n = np.asarray(mislabeled).size
    if not np.asarray(mislabeled).any():
        return np.full(np.shape(fractions), np.nan)
    return np.array([n_checked(f, n) / n for f in np.reshape(fractions, -1)]).reshape(np.shape(fractions))


def random_metrics(mislabeled, fractions=RECALL_FRACTIONS):
    """Expected metrics of a random order: AUROC 0.5, average precision ~ noise rate, recall_at k(f)/N."""
    mislabeled = np.asarray(mislabeled).reshape(-1).astype(bool)
    n, n_pos = mislabeled.size, int(mislabeled.sum())
    rec = random_curve(mislabeled, list(fractions))
    return {
        "auroc": 0.5 if 0 < n_pos < n else None,
        "average_precision": n_pos / n if n_pos else None,
        "recall_at": {str(float(f)): (None if math.isnan(r) else float(r)) for f, r in zip(fractions, rec)},
    }


def top_fraction_per_class(scores, mislabeled, true_labels, n_classes, fraction=0.1):
    """Mislabeled samples per true class among the k(fraction) highest-scored: int array (n_classes,)."""
    scores, mislabeled = as_inputs(scores, mislabeled)
    top = rank_order(scores)[:n_checked(fraction, len(scores))]
    top = top[mislabeled[top]]
    return np.bincount(np.asarray(true_labels).reshape(-1)[top].astype(np.int64), minlength=n_classes)[:n_classes]


def decile_bounds(n, parts=10):
    """[(start, stop)] rank ranges of each tenth of n samples, with the same rounding as recall_at."""
    cuts = [n_checked(i / parts, n) for i in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))
