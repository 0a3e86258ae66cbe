"""Review outputs for data whose clean labels are unknown: the label-issue table, per-class score distributions and
the selection of the top of the ranking for image sheets. Pure functions on arrays, plus one atomic CSV writer.

The ranking is the self-influence, highest first, on a common scale when the samples come from two splits (below;
ties: the higher score, then the lower position in the arrays passed). The suggested label of a sample is the class
other than its given label with the highest eta-weighted mean softmax probability over the scored checkpoints
(calculate_score.py's probabilities.npy): "if this label is wrong, it is most likely ..."; given_probability says
whether the model agrees with the label as it stands. Chosen by measurement (MNIST PNGs, 10% placed in a wrong class
folder; README, "Audit your own data"): when training memorises the given labels, the last checkpoint predicts the
wrong given label for every planted file and even its runner-up class is right for only about half of them, while
the mean over the trajectory keeps pointing at the true class; without memorisation both name the true class for
about 90%. Leaving out the given label never loses a wrong label's true class (an argmax equal to a wrong given
label is certainly not it).

Every image audited: an image import also scores its validation images (formats.VAL_FILES) with the same
checkpoints, which never trained on them, so a validation row's self_influence is held-out self-influence
(sum_i eta_i ||grad loss(w_i, z)||^2 of an unseen z) and its suggestion comes from out-of-sample probabilities.
Held-out gradients tend to be larger than those of samples the model fitted, so raw scores would put the
validation images above the training ones. Both splits are therefore ranked by robust_z, the robust z-score of
log(score) within the sample's own split: how far it stands out among the samples scored the same way. For one
split the z-score is a monotone function of the score, so the order is the score's (data without validation rows
rank exactly as before); the stopping rule's outlier test (below) takes a z within the split too.

formats.LABEL_ISSUES (label_issues.csv) has one row per audited sample, most suspicious first, with COLUMNS:
  rank (1 = most suspicious), index (into x_train.npy, or x_val.npy for a validation row), split (TRAIN or
  VALIDATION), file (relative to the image folder; empty when unknown), given_label, given_class, suggested_label,
  suggested_class, self_influence, suggested_probability, given_probability, is_label_issue (1/0: the stopping
  rule, issue_flags; empty when the model is too weak to trust, tracin.gate, or without probabilities)

The stopping rule (issue_flags): a sample is a label issue when the eta-weighted mean probability of its given label
is below that of the suggested class (averaged over its training trajectory, the model prefers another class), or
when its self-influence is an outlier: (log s - median) / (1.4826 x the median deviation of the samples above the
median), within its split, is above Z_THRESHOLD (robust_z with upper=True). The first alone misses wrong labels
that training memorised; the outlier test catches them. Its spread is taken over the upper half because the lower
half has a long tail: samples the model fits well have gradients near zero, spread over orders of magnitude, which
widens the median absolute deviation until wrong labels at the top of the ranking no longer stand out by it. The
estimated number of label issues is the number of flagged rows. Chosen on the own-data benchmark's tuning folders
(digits, textures; mean F1 0.86 and recall 0.80-1.00 on all five, against 0.62 and 0.03-1.00 for the median
absolute deviation and 1.5); per-folder precision and recall: docs/own_data.md.
"""
import csv
import os

import numpy as np

from . import formats
from .errors import InputError
from .metrics import n_checked

COLUMNS = ("rank", "index", "split", "file", "given_label", "given_class", "suggested_label", "suggested_class",
           "self_influence", "suggested_probability", "given_probability", "is_label_issue")
PROBABILITY_TOLERANCE = 1e-3  # rows of a float32 softmax mean sum to 1 within this
Z_THRESHOLD = 1.25  # the stopping rule's outlier threshold, on robust_z(upper=True) (module notes)
TRAIN, VALIDATION = "train", "validation"  # the values of the split column


def check_inputs(scores, given, probabilities, classes, files=None):
    """(scores float64 (n,), given int64 (n,), probabilities float64 (n, C) or None, class names (C,)); every
    mismatch is an InputError naming the argument. Without probabilities, C is len(classes) (else max label + 1)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    given = np.asarray(given).reshape(-1)
    p = None if probabilities is None else np.asarray(probabilities, dtype=np.float64)
    n = scores.size
    if not np.all(np.isfinite(scores)):
        raise InputError("self-influence scores hold NaN or inf: score the data again")
    if given.size != n or (p is not None and (p.ndim != 2 or p.shape[0] != n)):
        raise InputError(f"{n} scores, {given.size} given labels and probabilities of shape "
                         f"{None if p is None else p.shape}: they must describe the same samples (probabilities: "
                         "samples x classes)")
    if p is not None:
        n_classes = p.shape[1]
    else:
        n_classes = len(classes) if classes is not None else int(given.max(initial=-1)) + 1
    names = [str(c) for c in range(n_classes)] if classes is None else [str(c) for c in classes]
    if len(names) != n_classes:
        raise InputError(f"{len(names)} class names for probabilities over {n_classes} classes")
    if n and (not np.issubdtype(given.dtype, np.integer) or given.min() < 0 or given.max() >= n_classes):
        raise InputError(f"given labels must be integers in 0..{n_classes - 1} (one per class name)")
    if p is not None and (not np.all(np.isfinite(p)) or p.min(initial=0.0) < 0 or
                          np.abs(p.sum(axis=1) - 1.0).max(initial=0.0) > PROBABILITY_TOLERANCE):
        raise InputError("probabilities must be finite, non-negative and sum to 1 over the classes of each sample")
    if files is not None and len(files) != n:
        raise InputError(f"{len(files)} file names for {n} samples: the file list comes from another import")
    return scores, given.astype(np.int64), p, names


def read_probabilities(path, given):
    """calculate_score.py's probabilities.npy for the samples of `given` labels, checked (check_inputs); every
    problem is an InputError naming the file."""
    n = np.asarray(given).size
    try:
        p = np.load(path, allow_pickle=False)
        if p.ndim != 2 or p.shape[0] != n or p.dtype.kind != "f":
            raise ValueError(f"shape {p.shape} of {p.dtype}; expected ({n}, classes) floats")
        check_inputs(np.zeros(n), given, p, None)
    except (ValueError, OSError, EOFError) as e:  # InputError is a ValueError
        raise InputError(f"{path} is not the probabilities of these {n} samples ({e}): rerun calculate_score.py") \
            from None
    return p


def suggest(probabilities, given, exclude_given=True):
    """(suggested labels (n,), their probabilities (n,)): the most probable class other than the given label
    (exclude_given=True, the rule used), or the most probable class overall. Ties: the lower class index."""
    p = np.asarray(probabilities, dtype=np.float64)
    given = np.asarray(given).reshape(-1)
    if exclude_given:
        p = p.copy()
        p[np.arange(len(p)), given] = -np.inf
    labels = p.argmax(axis=1)
    return labels, np.asarray(probabilities, dtype=np.float64)[np.arange(len(p)), labels]


def robust_z(scores, split=None, upper=False):
    """(n,) robust z-score of log(score) within each split (module notes): (log s - median) / (1.4826 spread) over
    the samples of the same split (split None: one split). The spread is the median absolute deviation, or with
    upper=True the median deviation of the samples above the median (the stopping rule's outlier scale): both
    estimate the standard deviation of a normal distribution. 0 for a split whose spread is 0 (none stands out)."""
    log_s = np.log(np.maximum(np.asarray(scores, dtype=np.float64).reshape(-1), np.finfo(np.float64).tiny))
    groups = np.zeros(log_s.size, dtype=np.int64) if split is None else np.unique(split, return_inverse=True)[1]
    z = np.zeros(log_s.size)
    for g in np.unique(groups):
        members = groups == g
        v = log_s[members]
        deviation = v - np.median(v)
        above = deviation[deviation > 0]  # none: at least half the split ties at its top, no spread either way
        spread = 1.4826 * np.median(above if upper else np.abs(deviation)) if above.size else 0.0
        if spread > 0:
            z[members] = deviation / spread
    return z


def ranking(scores, split=None):
    """Positions into `scores`, most suspicious first: descending robust_z within split, ties by the higher score,
    then the lower position. With one split this is the order of the score itself (z is monotone in it)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.lexsort((-scores, -robust_z(scores, split)))  # stable: full ties keep position order


def issue_flags(probabilities, given, scores, split=None):
    """(n,) bool: the stopping rule (module notes): the model prefers the suggestion, or the self-influence is an
    outlier: robust_z(upper=True) within its split above Z_THRESHOLD (none in a split without spread)."""
    p = np.asarray(probabilities, dtype=np.float64)
    given = np.asarray(given).reshape(-1)
    _, prob = suggest(p, given)
    prefers = p[np.arange(len(p)), given] < prob
    return prefers | (robust_z(scores, split, upper=True) > Z_THRESHOLD)


def read_validation(folder, given, probabilities=True):
    """(scores (V,), probabilities (V, classes) or None) of the validation images scored beside the training
    samples in `folder` (formats.VAL_FILES; given: their labels, y_val), checked; None when the score file is
    absent (a scoring from before they were scored). Every problem is an InputError naming the file."""
    path = os.path.join(folder, formats.VAL_SCORES)
    if not os.path.isfile(path):
        return None
    scores = formats.read_score_vector(path, np.asarray(given).size, "validation score file")
    p_path = os.path.join(folder, formats.VAL_PROBABILITIES)
    return scores, read_probabilities(p_path, given) if probabilities else None


def audited(train, val=None):
    """The arrays label_issues and sheet_cells take for every audited sample: the training samples, then the
    validation images when scored. train, val: {'scores', 'given', 'probabilities', 'files', 'x'} (any but scores
    and given may be None); returns those keys over both, None where either lacks one, plus 'split' and 'index'."""
    if val is None:
        return dict(train, split=None, index=None)
    n, v = len(train["given"]), len(val["given"])
    out = {k: None if train[k] is None or val[k] is None else np.concatenate([train[k], val[k]])
           for k in ("scores", "given", "probabilities", "x")}
    files = None if train["files"] is None or val["files"] is None else list(train["files"]) + list(val["files"])
    return dict(out, files=files, split=[TRAIN] * n + [VALIDATION] * v,
                index=np.concatenate([np.arange(n), np.arange(v)]))


def estimated_issues(rows):
    """The estimated number of label issues: the rows flagged by the stopping rule (None when none is decided)."""
    flags = [r["is_label_issue"] for r in rows]
    return None if any(f is None for f in flags) else int(sum(flags))


def check_split(split, index, n):
    """(split (n,) str, index (n,) int64): every sample a training sample at its position when not given."""
    split = np.full(n, TRAIN) if split is None else np.asarray(split, dtype=str).reshape(-1)
    index = np.arange(n) if index is None else np.asarray(index).reshape(-1)
    if split.size != n or index.size != n or not np.issubdtype(index.dtype, np.integer):
        raise InputError(f"{split.size} split names and {index.size} indices for {n} samples: give one of each "
                         "(integer indices into the split's arrays) per sample")
    return split, index.astype(np.int64)


def label_issues(scores, given, probabilities, classes=None, files=None, trusted=True, split=None, index=None):
    """The rows of LABEL_ISSUES (dicts keyed by COLUMNS, plus "position": the row's position in the arrays
    passed), most suspicious first (ranking). probabilities=None (scores from before they were kept) leaves the
    suggestion and probability columns empty (None); trusted=False (a model too weak to trust, tracin.gate) leaves
    is_label_issue empty: its preferences are no evidence. split, index: per sample its split (TRAIN or
    VALIDATION) and index within that split's arrays; default: all training samples, index = position."""
    scores, given, p, names = check_inputs(scores, given, probabilities, classes, files)
    split, index = check_split(split, index, scores.size)
    suggested, prob = suggest(p, given) if p is not None else (None, None)
    flags = issue_flags(p, given, scores, split) if p is not None and trusted else None
    rows = []
    for rank, i in enumerate(ranking(scores, split), start=1):
        row = {"rank": rank, "index": int(index[i]), "split": str(split[i]), "file": files[i] if files is not None
               else "", "given_label": int(given[i]), "given_class": names[given[i]], "suggested_label": None,
               "suggested_class": None, "self_influence": float(scores[i]), "suggested_probability": None,
               "given_probability": None, "is_label_issue": None if flags is None else int(flags[i]),
               "position": int(i)}
        if p is not None:
            row.update(suggested_label=int(suggested[i]), suggested_class=names[suggested[i]],
                       suggested_probability=float(prob[i]), given_probability=float(p[i, given[i]]))
        rows.append(row)
    return rows


def _cell(key, value):
    if value is None:
        return ""
    if key == "self_influence":
        return f"{value:.6g}"  # the rank column holds the exact order
    if key.endswith("_probability"):
        return f"{value:.4f}"
    return value


def write_label_issues(path, rows):
    """Write rows (label_issues) to `path` as CSV, atomically (a temporary file renamed into place)."""
    from .io import atomic_path
    with atomic_path(path) as tmp:
        # surrogateescape: a file name that is not valid UTF-8 is written back as the bytes it has on disk
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([_cell(k, row[k]) for k in COLUMNS])
            f.flush()
            os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------ summaries

def class_score_distribution(scores, given, classes, split=None):
    """Per class (in label order): {'label', 'class', 'n', 'scores' (that class's scores, descending), 'median',
    'q90', 'top_share'}; top_share is the class's share of the overall top 10% of the ranking (rounded half up;
    split as in label_issues), to compare with its share of the data, n / N. The report shows these instead of
    detection metrics when clean labels are unknown."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    given = np.asarray(given).reshape(-1)
    top = ranking(scores, split)[:top_count(scores.size, 0.1)]
    out = []
    for c, name in enumerate(classes):
        s = np.sort(scores[given == c])[::-1]
        out.append({"label": c, "class": str(name), "n": int(s.size), "scores": s,
                    "median": float(np.median(s)) if s.size else None,
                    "q90": float(np.quantile(s, 0.9)) if s.size else None,
                    "top_share": float(np.mean(given[top] == c)) if top.size else None})
    return out


def parse_top(text):
    """--top's value: an integer >= 1 is a number of samples, a decimal in (0, 1] a fraction of them ("1" is
    one sample, "1.0" all). Raises ValueError (argparse reports it)."""
    try:
        value = int(text)
    except ValueError:
        value = float(text)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"fraction {text} is not in (0, 1]") from None
        return value
    if value < 1:
        raise ValueError(f"count {text} is below 1")
    return value


def top_count(n, top):
    """How many of n samples `top` selects: an int N -> min(N, n); a float f in (0, 1] -> floor(f * n + 0.5)
    (half up, the detection metrics' convention), at least 1 when n > 0."""
    bad = InputError(f"top {top!r}: give a number of samples of at least 1 or a fraction in (0, 1]")
    if isinstance(top, (bool, np.bool_)):
        raise bad
    if isinstance(top, (int, np.integer)):
        if top < 1:
            raise bad
        return int(min(top, n))
    if not 0.0 < float(top) <= 1.0:
        raise bad
    return max(1, n_checked(top, n)) if n else 0


def sheet_cells(rows, images, top):
    """Cells for an image sheet (plot_image_grid) of the first top_count(len(rows), top) rows: the image (images:
    aligned with the arrays label_issues ranked, row["position"]), and the caption "#rank given -> suggested" with
    the file name (or index) and score; red when the row is flagged as a label issue (issue_flags; never for a model
    too weak to trust, whose rows are unflagged)."""
    cells = []
    for row in rows[:top_count(len(rows), top)]:
        known = row["suggested_label"] is not None
        disagree = bool(row.get("is_label_issue"))
        where = "index" if row["split"] == TRAIN else f"{row['split']} index"
        name = os.path.basename(row["file"]) if row["file"] else f"{where} {row['index']}"
        arrow = f" \u2192 {row['suggested_class']}" if known else ""
        cells.append({"image": images[row["position"]], "frame": "red" if disagree else None,
                      "color": "tab:red" if disagree else "black",
                      "caption": f"#{row['rank']} {row['given_class']}{arrow}\n{name}\n{row['self_influence']:.3g}"})
    return cells
