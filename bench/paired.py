"""Is a gap between two rankings of bench.quality larger than what the data can resolve? (run by bench-quality)

    python -m bench.paired [--cells ...] [--seeds 10,11,12] [--boot 1000] [--work DIR] [--out DIR]

Reads the finished runs of bench.quality (never trains) and compares pairs of rankings A, B (PAIRS) on the same
noisy labels: the suite's default and `--lr_weight False` against each baseline; the sums of 3 and 5 trainings
against AUM and the loss averaged over the same trainings, where the run has them; and AUM with its margin taken
on probabilities instead of logits (the bounded scale of TracIn's last-layer gradient p - y). Per pair: the mean
over seeds of the per-seed difference A - B in AUROC and in recall at k, the number of seeds on which A is ahead
or level, and a 95 % paired bootstrap interval of the mean difference (every replicate resamples each seed's
training samples with replacement and scores both rankings on the same resample; the training seeds are not
resampled). An interval that contains 0 is a gap the benchmark cannot resolve. Writes OUT/paired.md and .json.
"""
import argparse
import json
import os
import sys
import zlib

import numpy as np
from scipy.special import logsumexp
from scipy.stats import rankdata

from bench import baselines
from bench.quality import CELLS, REPO, checkpoint_variants

PAIRS = (("TracIn (defaults)", "AUM"), ("TracIn (defaults)", "loss (last checkpoint)"),
         ("TracIn (defaults)", "confident learning, logistic regression"),
         ("TracIn --lr_weight False", "AUM"), ("TracIn --lr_weight False", "confident learning, logistic regression"),
         ("TracIn (defaults)", "AUM on probabilities"), ("AUM on probabilities", "AUM")) + tuple(
    (f"TracIn, sum of {k} trainings", f"{b}, mean over {k} trainings") for k in (3, 5) for b in ("AUM", "loss"))


def stored_rankings(folder):
    """{name: scores} of one finished run, from the files bench.quality cached (None when it is not finished)."""
    d = os.path.join(folder, "data")
    if not os.path.isfile(os.path.join(folder, "result.json")):
        return None, None
    y_clean, y = (np.load(os.path.join(d, k + ".npy"))[:, 0] for k in ("y_train", "y_shuffle_train"))
    logits = np.load(os.path.join(folder, "logits.npz"))["logits"]
    out = {"TracIn (defaults)": np.load(os.path.join(folder, "scores", "default", "influence_all_epoch.npy")),
           "AUM": baselines.aum_scores(logits, y), "AUM on probabilities": baselines.aum_probability_scores(logits, y),
           "loss (last checkpoint)": np.load(os.path.join(folder, "scores", "default", "loss_last_epoch.npy")),
           "confident learning, logistic regression": baselines.cleanlab_scores(
               y, np.load(os.path.join(folder, "cl_lr_probs.npy")))}
    out.update(checkpoint_variants(os.path.join(folder, "scores", "default")))
    out.update(ensemble_rankings(folder, y))
    return out, y != y_clean


def ensemble_rankings(folder, y):
    """The sums of K = 3 and 5 trainings (the first K runs of the largest ensemble scored) and AUM and the loss
    averaged over the same K trainings."""
    out = {}
    for k in (3, 5):
        ens = [os.path.join(folder, "scores", f"ensemble{e}") for e in (5, 3) if e >= k]
        ens = [e for e in ens if os.path.isfile(os.path.join(e, "scores.json"))]
        logits = [os.path.join(folder, "logits.npz")] + [
            os.path.join(folder, "members", f"m{j}", "logits.npz") for j in range(1, k)]
        if not ens or not all(os.path.isfile(p) for p in logits):
            continue
        logits = [np.load(p)["logits"] for p in logits]
        out[f"TracIn, sum of {k} trainings"] = sum(
            np.load(os.path.join(ens[0], f"influence_run{r}.npy")) for r in range(1, k + 1))
        out[f"AUM, mean over {k} trainings"] = np.mean([baselines.aum_scores(z, y) for z in logits], axis=0)
        out[f"loss, mean over {k} trainings"] = np.mean(
            [logsumexp(z[-1], axis=1) - z[-1][np.arange(len(y)), y] for z in logits], axis=0)
    return out


def auroc(scores, positive):
    """AUROC by the rank-sum formula (ties get mean ranks, as roc_auc_score counts them)."""
    r = rankdata(scores)
    n_pos = positive.sum()
    return (r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(scores) - n_pos))


def recall_k(scores, positive):
    k = int(positive.sum())
    return positive[np.argsort(-scores, kind="stable")[:k]].mean()


def paired(runs, a, b, boot, rng):
    """Mean per-seed difference a - b (AUROC, recall at k), seeds where a >= b, and bootstrap intervals."""
    diffs = np.array([[f(s[a], pos) - f(s[b], pos) for f in (auroc, recall_k)] for s, pos in runs])
    reps = np.empty((boot, 2))
    for i in range(boot):
        per_seed = []
        for s, pos in runs:
            idx = rng.randint(0, len(pos), len(pos))
            per_seed.append([f(s[a][idx], pos[idx]) - f(s[b][idx], pos[idx]) for f in (auroc, recall_k)])
        reps[i] = np.mean(per_seed, axis=0)
    lo, hi = np.percentile(reps, [2.5, 97.5], axis=0)
    return {"mean": diffs.mean(0).tolist(), "ahead": [int((diffs[:, j] >= 0).sum()) for j in range(2)],
            "seeds": len(runs), "lo": lo.tolist(), "hi": hi.tolist()}


def verdict(r, j):
    if r["lo"][j] > 0:
        return "A ahead"
    if r["hi"][j] < 0:
        return "B ahead"
    return "not resolved"


def write_results(folder, name, lines, data):
    """folder/name.md (the lines, also printed) and folder/name.json (data)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name + ".md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(data, f, indent=1)
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__.splitlines()[0])
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells of bench.quality")
    p.add_argument("--seeds", default="10,11,12")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap replicates")
    p.add_argument("--work", default=os.path.join(REPO, "output", "bench", "quality"))
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    args = p.parse_args(argv)
    rows, out = [], {}
    for cell in [c for c in args.cells.split(",") if c]:
        runs = [stored_rankings(os.path.join(args.work, cell, f"seed{s}")) for s in args.seeds.split(",")]
        runs = [r for r in runs if r[0] is not None]
        for a, b in PAIRS:
            have = [r for r in runs if a in r[0] and b in r[0]]
            if not have:
                continue
            rng = np.random.RandomState(zlib.crc32(f"{cell}|{a}|{b}".encode()))  # same draws whatever else runs
            r = out.setdefault(cell, {})[f"{a} - {b}"] = paired(have, a, b, args.boot, rng)
            rows.append(f"| {cell} | {a} | {b} | {r['seeds']} | " + " | ".join(
                f"{r['mean'][j]:+.4f} [{r['lo'][j]:+.4f}, {r['hi'][j]:+.4f}] {r['ahead'][j]}/{r['seeds']} "
                f"{verdict(r, j)}" for j in range(2)) + " |")
    if not rows:
        sys.exit("bench.paired: no finished bench.quality runs under " + args.work)
    text = ["# Paired differences: TracIn minus each baseline, same noisy labels", "",
            f"`python -m bench.paired --seeds {args.seeds} --boot {args.boot}`. Mean over seeds of the per-seed "
            "difference (positive = A ahead), [95 % paired bootstrap interval over the samples; training seeds "
            "are not resampled], seeds on which A is ahead or level, and whether the interval excludes 0.", "",
            "| cell | ranking A | ranking B | seeds | AUROC difference A - B | recall-at-k difference A - B |",
            "|---|---|---|---|---|---|"] + rows + [""]
    write_results(args.out, "paired", text, out)


if __name__ == "__main__":
    main()
