"""Audit-your-own-data benchmark: generated image folders (bench/folders.py: colour shapes over clutter, colour
textures, grey digits) with 10 % of every class's files saved in a wrong class folder, the README's three commands
exactly as a user types them (no extra flags), then how well label_issues.csv finds the moved files, against
confident learning (cleanlab's find_label_issues on out-of-fold logistic-regression probabilities of the pixels).

    nice -n 10 python -m bench.own_data [--cells quick|full] [--seeds 0,1,2] [--work /tmp/own_data]
    python -m bench.own_data --tune --extra "--learning_rate 0.1"   # tuning folders (seeds 100+), kept apart
    python -m bench.own_data --option --tag init --extra "--init_from W.h5"   # the reported folders, a non-default
                                                                    # option (where the defaults miss), kept apart

Every cell (kind, classes, images, size, seed) is one JSON file in bench/results/own_data/ (tune: own_data_tune/);
a cell already there is skipped (resumable: rerun the same command; a second process started alongside takes the
cells the first has not claimed). The summary is bench/results/own_data.md (--tune: own_data_tune.md, --option:
own_data_options.md).

Metrics per cell, over the moved files that label_issues.csv lists (every file: training and validation images):
AUROC of the ranking (rank 1 = most suspicious; also over the training rows alone and the validation rows alone,
auroc_train and auroc_val), share of them among the top 10 % of rows, share of those whose suggested class is their
true one, precision / recall of is_label_issue and the summary's estimated number of issues, the validation accuracy
and chance level, and the seconds of each command.
"""
import argparse
import csv
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.folders import write_folder
from tracin import formats, review

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
COMMANDS = (
    ("train.py", "--dataset", "imagefolder", "--data-dir", "images", "--output", "out/data", "--model_save_path",
     "out/ckpt", "-c", "cpu"),
    ("calculate_score.py", "--input", "out/data", "--checkpoint", "out/ckpt", "--output", "out/data", "-c", "cpu"),
    ("mislabel_analysis.py", "--input", "out/data", "--output", "out/review"),
)
RATE = 0.1
Z_CANDIDATES = (1.0, 1.25, 1.5, 1.75, 2.0)  # outlier thresholds the stopping-rule study compares
# (kind, classes, images per class, side): colour and grey, 300 to 5,000 images, 3 to 10 classes, 16 to 48 px;
# "full" adds the MNIST-5k PNGs (about three times the training of a 1,000-image folder)
QUICK = [("digits", 10, 50, 16), ("textures", 10, 100, 32), ("textures", 3, 100, 48), ("shapes", 10, 100, 32),
         ("shapes", 3, 100, 32)]
CELLS = {"quick": QUICK, "full": QUICK + [("mnist", 10, 500, 28)]}


def cell_name(kind, classes, per_class, size, seed):
    return f"{kind}_c{classes}_n{classes * per_class}_s{size}_seed{seed}"


def auroc(scores, positive):
    """P(score of a random positive > that of a random negative), ties half."""
    from scipy.stats import rankdata
    pos = np.asarray(positive, dtype=bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        return None
    r = rankdata(scores)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def measure(review_dir, truth, fraction=0.1):
    """Detection metrics of label_issues.csv (and metrics.json) against the planted truth, over all its rows
    (training and validation); AUROC also per split (rows without a split column: training)."""
    with open(os.path.join(review_dir, "label_issues.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(review_dir, "metrics.json")) as f:
        metrics = json.load(f)
    moved = np.array([truth[r["file"]][0] != truth[r["file"]][1] for r in rows])
    n, k = len(rows), int(np.floor(fraction * len(rows) + 0.5))
    top = [i for i in range(k) if moved[i]]
    right = [i for i in top if rows[i]["suggested_label"] and
             int(rows[i]["suggested_label"]) == truth[rows[i]["file"]][0]]
    flagged = np.array([r.get("is_label_issue") in ("1", "True", "true") for r in rows])
    split = np.array([r.get("split") or "train" for r in rows])
    order = -np.arange(n)  # the CSV's order: rank 1 highest
    tp = int((flagged & moved).sum())
    val = metrics.get("validation")
    if val is None:  # tuning before the analysis showed it: train.py's record beside the checkpoints
        path = os.path.join(os.path.dirname(review_dir), "ckpt", formats.VALIDATION)
        val = json.load(open(path)) if os.path.isfile(path) else {}
    return {"n_rows": n, "n_files": len(truth), "n_moved_listed": int(moved.sum()),
            "n_moved": sum(t != g for t, g in truth.values()),
            "auroc": auroc(order, moved), "auroc_train": auroc(order[split == "train"], moved[split == "train"]),
            "auroc_val": auroc(order[split == "validation"], moved[split == "validation"]),
            "top_k": k, "moved_in_top": len(top),
            "share_moved_in_top": len(top) / int(moved.sum()) if moved.any() else None,
            "share_true_suggested": len(right) / len(top) if top else None,
            "flagged": int(flagged.sum()), "estimated_issues": metrics.get("estimated_label_issues"),
            "flag_precision": tp / int(flagged.sum()) if flagged.any() else None,
            "flag_recall": tp / int(moved.sum()) if moved.any() else None,
            "val_accuracy": val.get("accuracy"), "chance": val.get("chance"), "trusted": val.get("trusted")}


def otsu_count(scores):
    """How many of the highest scores lie above Otsu's threshold on log(score): the split of the sorted log-scores
    into two groups that maximises the between-group variance."""
    v = np.sort(np.log(np.maximum(np.asarray(scores, dtype=np.float64), 1e-300)))[::-1]
    n = v.size
    k = np.arange(1, n)
    c = np.cumsum(v)[:-1]
    m1, m2 = c / k, (v.sum() - c) / (n - k)
    return int(k[np.argmax(k * (n - k) * (m1 - m2) ** 2)])


def audited_arrays(data_dir, truth):
    """(scores, given, probabilities, split, moved) over every audited row of a scored cell: the training images,
    then the validation images when they were scored (the scorer's files, formats.VAL_FILES)."""
    with open(os.path.join(data_dir, "files.json")) as f:
        files = json.load(f)
    parts = [("train", "y_shuffle_train.npy", formats.SCORES, formats.PROBABILITIES, files["train"])]
    if os.path.isfile(os.path.join(data_dir, formats.VAL_SCORES)):
        parts.append(("validation", "y_val.npy", formats.VAL_SCORES, formats.VAL_PROBABILITIES, files["val"]))
    arrays = [(np.load(os.path.join(data_dir, s)).reshape(-1), np.load(os.path.join(data_dir, y)).reshape(-1),
               np.load(os.path.join(data_dir, p)), [name] * len(listed), listed)
              for name, y, s, p, listed in parts]
    scores, given, probabilities = (np.concatenate([a[i] for a in arrays]) for i in range(3))
    listed = [f for a in arrays for f in a[4]]
    moved = np.array([tuple(truth[f])[0] != tuple(truth[f])[1] for f in listed])
    return scores, given, probabilities, np.array([s for a in arrays for s in a[3]]), moved


def stopping_rules(data_dir, truth):
    """Precision / recall over every audited row (training and validation) of candidate stopping rules, from the
    scorer's files: 'shipped' (tracin.review.issue_flags as it is now), 'prefers' (p(given) < max other p), 'cl'
    (confident learning's per-class thresholds: some other class k has p_k >= t_k, t_k = mean p_k over the samples
    labelled k, and p(given) < t_given), 'otsu' (the rows above Otsu's threshold on log self-influence), and
    '{mad,upper}{c}_or_prefers': preferences or a robust z of log self-influence within the split above c, the
    spread measured as the median absolute deviation or over the upper half (tracin.review.robust_z)."""
    scores, y, p, split, moved = audited_arrays(data_dir, truth)
    own = p[np.arange(len(y)), y]
    other = p.copy()
    other[np.arange(len(y)), y] = -1
    prefers = own < other.max(axis=1)
    t = np.array([p[y == k, k].mean() if (y == k).any() else 1.0 for k in range(p.shape[1])])
    otsu = np.zeros(len(y), dtype=bool)
    otsu[np.argsort(-scores, kind="stable")[:otsu_count(scores)]] = True
    rules = {"shipped": review.issue_flags(p, y, scores, split), "prefers": prefers,
             "cl": ((other >= t[None, :]).any(axis=1)) & (own < t[y]), "otsu": otsu}
    for scale in ("mad", "upper"):
        z = review.robust_z(scores, split, upper=scale == "upper")
        for c in Z_CANDIDATES:
            rules[f"{scale}{c}_or_prefers"] = (z > c) | prefers
    return {name: {"flagged": int(f.sum()), "precision": float((f & moved).sum() / max(f.sum(), 1)),
                   "recall": float((f & moved).sum() / max(moved.sum(), 1))} for name, f in rules.items()}


def confident_learning(root, truth, files_listed, seed):
    """cleanlab's find_label_issues on 5-fold out-of-fold probabilities of a logistic regression on the pixels of
    every file; metrics over the files label_issues.csv lists (the same population as the tool's)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    files = sorted(truth)
    classes = sorted({f.split("/")[0] for f in files})
    x = np.stack([np.asarray(Image.open(os.path.join(root, f)), dtype=np.float32).reshape(-1) / 255 for f in files])
    y = np.array([classes.index(f.split("/")[0]) for f in files])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300))
    p = cross_val_predict(model, x, y, cv=5, method="predict_proba")
    flagged = find_label_issues(y, p)
    quality = get_label_quality_scores(y, p)
    keep = np.isin(files, list(files_listed))
    moved = np.array([truth[f][0] != truth[f][1] for f in files])[keep]
    q, fl = quality[keep], flagged[keep]
    k = int(np.floor(0.1 * keep.sum() + 0.5))
    top = np.argsort(q, kind="stable")[:k]
    return {"auroc": auroc(-q, moved), "share_moved_in_top": float(moved[top].sum() / moved.sum()),
            "flag_precision": float((fl & moved).sum() / max(fl.sum(), 1)),
            "flag_recall": float((fl & moved).sum() / moved.sum()), "flagged": int(fl.sum())}


def run_cell(kind, classes, per_class, size, seed, work, extra=(), rate=RATE):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    truth = write_folder(os.path.join(work, "images"), kind, classes, per_class, size, rate, seed)
    with open(os.path.join(work, "planted.json"), "w") as f:  # outside the image folder
        json.dump(truth, f)
    seconds = {}
    for cmd in COMMANDS:
        argv = list(cmd) + (list(extra) if cmd[0] == "train.py" else [])
        t0 = time.time()
        subprocess.run([sys.executable, os.path.join(REPO, argv[0])] + argv[1:], cwd=work, check=True,
                       stdout=subprocess.DEVNULL)
        seconds[cmd[0]] = round(time.time() - t0, 1)
    result = measure(os.path.join(work, "out", "review"), truth, rate)  # the top as many rows as were moved
    with open(os.path.join(work, "out", "review", "label_issues.csv"), newline="", encoding="utf-8") as f:
        listed = {r["file"] for r in csv.DictReader(f)}
    result["stopping_rules"] = stopping_rules(os.path.join(work, "out", "data"), truth)
    result["confident_learning"] = confident_learning(os.path.join(work, "images"), truth, listed, seed)
    result.update(cell=dict(kind=kind, classes=classes, images=classes * per_class, size=size, seed=seed, rate=rate),
                  extra=list(extra), seconds=seconds, total_seconds=round(sum(seconds.values()), 1))
    return result


def fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def shipped_rule(r):
    """The shipped stopping rule's flagged count, precision and recall of a cell: recomputed from the scorer's files
    with tracin.review as it is now (stopping_rules, --restudy) where the cell kept them, else label_issues.csv's."""
    return r.get("stopping_rules", {}).get("shipped") or {
        "precision": r["flag_precision"], "recall": r["flag_recall"], "flagged": r["estimated_issues"]}


def moved_share(cell):
    """'' for the benchmark's 10 % moved, else ', 20 % moved' (then 'top 10 %' reads: the top 20 % of rows)."""
    rate = cell.get("rate", RATE)
    return "" if rate == RATE else f", {rate:.0%} moved"


def table(results):
    """Markdown: one row per cell, the goal's metrics and the baseline's."""
    head = ("| folder | seed | val acc (chance) | AUROC | moved in top 10 % | true class suggested | is_label_issue: "
            "P / R | estimate / moved | CL AUROC | CL flagged: P / R | seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        c, cl = r["cell"], r["confident_learning"]
        rule = shipped_rule(r)
        flags = (f"{fmt(rule['precision'])} / {fmt(rule['recall'])} | {rule['flagged']} / {r['n_moved_listed']}"
                 if r["trusted"] is not False else "none: model not trusted | — / " + str(r["n_moved_listed"]))
        lines.append(
            f"| {c['kind']} {c['classes']} cl, {c['images']} img, {c['size']} px{moved_share(c)} | {c['seed']} | "
            f"{fmt(r['val_accuracy'])} ({fmt(r['chance'])}) | {fmt(r['auroc'], 3)} | {fmt(r['share_moved_in_top'])} | "
            f"{fmt(r['share_true_suggested'])} | {flags} | {fmt(cl['auroc'], 3)} | "
            f"{fmt(cl['flag_precision'])} / {fmt(cl['flag_recall'])} | {r['total_seconds']:.0f} |")
    return "\n".join(lines)


def span(values, digits=2):
    """'a' or 'min–max' of the values that are not None ('—' for none)."""
    v = [x for x in values if x is not None]
    if not v:
        return "—"
    lo, hi = f"{min(v):.{digits}f}", f"{max(v):.{digits}f}"
    return lo if lo == hi else f"{lo}–{hi}"


GOAL = {"auroc": 0.95, "share_moved_in_top": 0.8, "share_true_suggested": 0.9}


def summary(results):
    """Markdown: one row per folder (kind, classes, images, size) over its seeds, with the goal checked on every
    seed: a trusted model, AUROC, top 10 % and true class (GOAL), AUROC and is_label_issue's recall at least
    confident learning's."""
    groups = {}
    for r in results:
        c = r["cell"]
        groups.setdefault((c["kind"], c["classes"], c["images"], f"{c['size']} px{moved_share(c)}",
                           " ".join(r.get("extra", []))), []).append(r)
    head = ("| folder, 10 % moved | seeds | val acc (chance) | AUROC | top 10 % | true class | CL AUROC | "
            "minutes | goal |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (kind, classes, images, size, extra), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0])):
        met = all(r["trusted"] is not False and all((r[k] or 0) >= g for k, g in GOAL.items())
                  and r["auroc"] >= r["confident_learning"]["auroc"]
                  and (shipped_rule(r)["recall"] or 0) >= r["confident_learning"]["flag_recall"] for r in rs)
        lines.append(
            f"| {kind}, {classes} cl., {images} × {size}{f', `{extra}`' if extra else ''} | {','.join(str(r['cell']['seed']) for r in rs)} | "
            f"{span([r['val_accuracy'] for r in rs])} ({span([r['chance'] for r in rs])})"
            f"{'' if all(r['trusted'] is not False for r in rs) else ' ✗'} | {span([r['auroc'] for r in rs], 3)} | "
            f"{span([r['share_moved_in_top'] for r in rs])} | {span([r['share_true_suggested'] for r in rs])} | "
            f"{span([r['confident_learning']['auroc'] for r in rs], 3)} | "
            f"{span([r['total_seconds'] / 60 for r in rs], 1)} | {'met' if met else 'missed'} |")
    return "\n".join(lines)


def clean_up(work):
    """Remove a finished cell's images, checkpoints, arrays and caches; keep the small files (scores,
    probabilities, labels, file list, truth) for later study of the stopping rule."""
    for sub in ("images", os.path.join("out", "ckpt"), os.path.join("out", "data", "tracin_cache")):
        shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
    for f in glob.glob(os.path.join(work, "out", "data", "x_*.npy")):
        os.remove(f)


def restudy(folder, work):
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        cell = os.path.join(work, os.path.basename(path)[:-5])
        if os.path.isfile(os.path.join(cell, "planted.json")):
            with open(path) as f:
                result = json.load(f)
            with open(os.path.join(cell, "planted.json")) as f:
                result["stopping_rules"] = stopping_rules(os.path.join(cell, "out", "data"), json.load(f))
            with open(path + ".tmp", "w") as f:
                json.dump(result, f, indent=1)
            os.replace(path + ".tmp", path)


def claim(path):
    """True when this process may run the cell (a second `python -m bench.own_data` shares the queue); a claim
    of a process that died is removed by hand (rm bench/results/own_data/*.running)."""
    try:
        os.close(os.open(path + ".running", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="quick", choices=sorted(CELLS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--only", default=None, help="run only cells whose name contains this text")
    p.add_argument("--tune", action="store_true", help="tuning folders (seed + 100), results apart")
    p.add_argument("--option", action="store_true", help="the reported folders with --extra train.py flags (an "
                   "option a user may take where the defaults miss), results apart")
    p.add_argument("--extra", default="", help="--tune or --option: extra train.py flags (the benchmark runs none)")
    p.add_argument("--tag", default="", help="--tune or --option: a name for this setting in the results")
    p.add_argument("--rate", type=float, default=RATE, help="--tune with --tag: the share of files moved to a wrong "
                   "class folder (the benchmark moves 0.1)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "own_data"))
    p.add_argument("--restudy", action="store_true", help="recompute the stopping rules of the cells whose work "
                   "folder is still in --work (their small files), then rewrite the table")
    args = p.parse_args(argv)
    if args.extra and not (args.tune or args.option):
        p.error("--extra applies to --tune or --option: the benchmark measures the commands as a user types them")
    if args.option and not args.restudy and not (args.tag and args.extra and not args.tune):
        p.error("--option needs --tag and --extra, without --tune")
    if args.rate != RATE and not (args.tune and args.tag and 0 < args.rate <= 0.5):
        p.error("--rate applies to --tune with --tag, between 0 and 0.5: the benchmark reports 10 % moved")
    stem = "own_data_tune" if args.tune else "own_data_options" if args.option else "own_data"
    folder = os.path.join(RESULTS, stem)
    os.makedirs(folder, exist_ok=True)
    if args.restudy:
        restudy(folder, args.work)
    for seed in (int(s) + (100 if args.tune else 0) for s in args.seeds.split(",")) if not args.restudy else ():
        for kind, classes, per_class, size in CELLS[args.cells]:
            name = cell_name(kind, classes, per_class, size, seed) + (f"_{args.tag}" if args.tag else "")
            path = os.path.join(folder, name + ".json")
            if os.path.isfile(path) or (args.only and args.only not in name) or not claim(path):
                continue
            print(f"{name} ...", file=sys.stderr, flush=True)
            result = run_cell(kind, classes, per_class, size, seed, os.path.join(args.work, name),
                              shlex.split(args.extra), args.rate)
            with open(path + ".tmp", "w") as f:
                json.dump(result, f, indent=1)
            os.replace(path + ".tmp", path)
            os.remove(path + ".running")
            print(f"{name}: AUROC {fmt(result['auroc'], 3)}, top 10 % {fmt(result['share_moved_in_top'])}, "
                  f"{result['total_seconds']} s", file=sys.stderr, flush=True)
            clean_up(os.path.join(args.work, name))
    results = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(folder, "*.json")))]
    md = folder + ".md"
    with open(md, "w") as f:
        f.write(summary(results) + "\n\n" + table(results) + "\n")
    print(summary(results) + "\n\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
