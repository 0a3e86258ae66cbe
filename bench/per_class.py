"""Per-class effects in the runs of bench.quality: which classes' errors TracIn finds, and whether ranking within
each given label would help (run by bench-quality).

    python -m bench.per_class [--cells ...] [--seeds 10,11,12] [--work DIR] [--out DIR]

Reads the finished runs (never trains). Per cell, means over the seeds of:
  - recall at k by true class: the share of each class's mislabeled samples among the k highest scores of the
    whole ranking (k = the number mislabeled), for the default TracIn ranking and AUM;
  - AUROC within each given label (the samples that carry label c: are the wrong ones on top?);
  - the global AUROC / recall at k of the default ranking against the same scores normalised within each given
    label (z-score; within-label percentile): would equalising the classes' score scales help?
Writes OUT/per_class.md and OUT/per_class.json.
"""
import argparse
import os
import sys
import warnings

import numpy as np
from scipy.stats import rankdata

from bench.paired import auroc, recall_k, stored_rankings, write_results
from bench.quality import CELLS, N_CLASSES, REPO

DEFAULT = "TracIn (defaults)"


def within_label(scores, y, how):
    """scores normalised inside each given label: 'z' (z-score) or 'percentile' (rank / count)."""
    out = np.empty(len(scores))
    for c in np.unique(y):
        m = y == c
        s = scores[m]
        out[m] = (s - s.mean()) / (s.std() or 1.0) if how == "z" else rankdata(s) / m.sum()
    return out


def class_recall(scores, positive, y_true):
    """Per true class: share of its mislabeled samples among the k highest scores (NaN: none mislabeled)."""
    top = np.zeros(len(scores), bool)
    top[np.argsort(-scores, kind="stable")[:int(positive.sum())]] = True
    return [float((top & positive & (y_true == c)).sum() / n) if (n := (positive & (y_true == c)).sum()) else np.nan
            for c in range(N_CLASSES)]


def label_auroc(scores, positive, y):
    """Per given label: AUROC of the scores among the samples carrying it (NaN: all clean or all wrong)."""
    return [auroc(scores[y == c], positive[y == c]) if 0 < positive[y == c].sum() < (y == c).sum() else np.nan
            for c in range(N_CLASSES)]


def cell_stats(runs):
    """Means over the runs [(rankings, positive, y, y_true)] of every per-class and normalised figure."""
    rows = {"recall by true class, TracIn": [], "recall by true class, AUM": [], "AUROC within given label, TracIn": []}
    glob = {"TracIn (defaults)": [], "TracIn, z-score within given label": [],
            "TracIn, percentile within given label": [], "AUM": []}
    for r, pos, y, y_true in runs:
        tr = r[DEFAULT]
        rows["recall by true class, TracIn"].append(class_recall(tr, pos, y_true))
        rows["recall by true class, AUM"].append(class_recall(r["AUM"], pos, y_true))
        rows["AUROC within given label, TracIn"].append(label_auroc(tr, pos, y))
        for name, s in (("TracIn (defaults)", tr), ("TracIn, z-score within given label", within_label(tr, y, "z")),
                        ("TracIn, percentile within given label", within_label(tr, y, "percentile")),
                        ("AUM", r["AUM"])):
            glob[name].append([auroc(s, pos), recall_k(s, pos)])
    with warnings.catch_warnings():  # a class with no mislabeled sample in any seed stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class = {k: np.nanmean(np.array(v, dtype=float), axis=0).tolist() for k, v in rows.items()}
    return {"per_class": per_class, "global": {k: np.mean(v, axis=0).tolist() for k, v in glob.items()},
            "seeds": len(runs)}


def markdown(cell, st):
    fmt = lambda v: "–" if np.isnan(v) else f"{v:.2f}"  # noqa: E731
    lines = [f"### {cell} ({st['seeds']} seeds)", "", "| | " + " | ".join(map(str, range(N_CLASSES))) + " |",
             "|---|" + "---|" * N_CLASSES]
    lines += [f"| {k} | " + " | ".join(fmt(v) for v in vals) + " |" for k, vals in st["per_class"].items()]
    lines += ["", "| global ranking | AUROC | recall at k |", "|---|---|---|"]
    lines += [f"| {k} | {a:.4f} | {b:.3f} |" for k, (a, b) in st["global"].items()]
    return lines + [""]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.per_class", description=__doc__.splitlines()[0])
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells of bench.quality")
    p.add_argument("--seeds", default="10,11,12")
    p.add_argument("--work", default=os.path.join(REPO, "output", "bench", "quality"))
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    args = p.parse_args(argv)
    text = ["# Per-class effects: default TracIn ranking, by class", "",
            f"`python -m bench.per_class --seeds {args.seeds}`: means over seeds. Columns are classes.", ""]
    out = {}
    for cell in [c for c in args.cells.split(",") if c]:
        runs = []
        for s in args.seeds.split(","):
            folder = os.path.join(args.work, cell, f"seed{s}")
            r, pos = stored_rankings(folder)
            if r is not None:
                y = np.load(os.path.join(folder, "data", "y_shuffle_train.npy"))[:, 0]
                runs.append((r, pos, y, np.load(os.path.join(folder, "data", "y_train.npy"))[:, 0]))
        if runs:
            out[cell] = cell_stats(runs)
            text += markdown(cell, out[cell])
    if not out:
        sys.exit("bench.per_class: no finished bench.quality runs under " + args.work)
    write_results(args.out, "per_class", text, out)


if __name__ == "__main__":
    main()
