"""Do train -> test explanations explain? The identical-class test of every influence normalisation.

    python -m bench.explanations [--seeds 10,11,12] [--held_out 13,14,15] [--held_out_layers last,last_block]
                                 [--held_out_normalize none,cosine] [--all_test N] [--report_only]
                                 [--work DIR] [--out DIR]

For each seed S, as a user would (one process at a time):
    train.py --dataset digits --seed S --output W/seedS/data --model_save_path W/seedS/ckpt -c cpu    (defaults)
    calculate_score.py --mode influence --test_label predicted --layers L --normalize N --top_k 10 ...
for L in last, last_block, all and every normalisation N of tracin/normalize.py, on every validation sample (with
--layers all, on the first --all_test of them when given: x_val.npy is in random order). The --seeds choose the
default (tuning); the --held_out seeds, never used for that choice, confirm it with the --held_out_layers x
--held_out_normalize runs only. Runs are kept under --work (default output/bench/explanations) and reused; delete a
folder to redo it.

Metrics per run, against the CLEAN labels y_train.npy (training saw y_shuffle_train.npy, 10% shuffled), the
test label being the class the model predicts (what an explanation explains):
  top1          share of test samples whose top-1 proponent is a true example of the predicted class (the strict
                identical-class test of Hanawa et al. 2021); top1_correct: the same over correctly predicted ones
  top10         share of the top-10 proponents that are true examples of the predicted class
  prop_mis      share of mislabeled samples among the top-10 proponents (the training set has 10%)
  opp_mis       share of mislabeled samples among the top-10 opponents
  opp_hidden    share of the top-10 opponents that are true examples of the predicted class carrying another
                label (mislabeled members of the class: what an opponent of a correct prediction should be)
  distinct_top1 distinct top-1 proponents / test samples (low: the same few samples "explain" everything);
                distinct_top1_opp: the same for the top-1 opponents
  errors_explained  misclassified test samples whose top-1 proponent is a mislabeled example of the test
                sample's true class carrying the predicted label (the training error behind the test error)
Writes OUT/explanations.md (mean ± sample std over the seeds, and the worst seed's top-1) and
OUT/explanations.json (every run).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from args import DEFAULT_LAYERS as MODE_LAYERS
from bench.quality import log_run
from tracin.defaults import NORMALIZE as DEFAULT
from tracin.normalize import DEFINITIONS, NORMALIZATIONS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("last", "last_block", "all")
DEFAULT_LAYERS = MODE_LAYERS["influence"]
TOP_K = 10
PROPONENT_METRICS = {  # key -> column title
    "top1": "top-1 proponent of the predicted class",
    "top1_worst": "worst seed's top-1",
    "top1_correct": "same, correctly predicted tests",
    "top10": "top-10 proponents of the predicted class",
    "prop_mis": "mislabeled among top-10 proponents",
    "distinct_top1": "distinct top-1 proponents per test",
    "errors_explained": "test errors whose top-1 proponent is a mislabeled example of the true class",
}
OPPONENT_METRICS = {
    "opp_mis": "mislabeled among top-10 opponents",
    "opp_hidden": "top-10 opponents: true examples of the predicted class with another label",
    "distinct_top1_opp": "distinct top-1 opponents per test",
}
METRICS = dict(PROPONENT_METRICS, **OPPONENT_METRICS)


def script(name):
    return [sys.executable, os.path.join(REPO, name)]


def train(seed, folder):
    """train.py's digits defaults with --seed into folder/{data,ckpt}; continued with --resume if it was killed."""
    data, ckpt = os.path.join(folder, "data"), os.path.join(folder, "ckpt")
    manifest = os.path.join(ckpt, "checkpoints.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            m = json.load(f)
        if m["checkpoints"] and m["checkpoints"][-1]["epoch"] >= m["train"]["train_epochs"]:
            return data, ckpt
    os.makedirs(folder, exist_ok=True)
    cmd = script("train.py") + ["--dataset", "digits", "--seed", str(seed), "--output", data, "--model_save_path",
                                ckpt, "--monitor-path", os.path.join(folder, "monitor"), "-c", "cpu"]
    log_run(cmd + (["--resume"] if os.path.isfile(manifest) else []), os.path.join(folder, "train.log"))
    return data, ckpt


def run_folder(folder, layers, how, n_test):
    return os.path.join(folder, "influence", f"{layers}-{how}" + (f"-first{n_test}" if n_test else ""))


def influence(data, ckpt, out, layers, how, n_test):
    """calculate_score.py --mode influence into `out` unless it already holds the result; (npz path, wall s)."""
    npz, wall_file = os.path.join(out, "influence_topk.npz"), os.path.join(out, "wall_seconds.txt")
    if not os.path.isfile(wall_file):
        cmd = script("calculate_score.py") + [
            "--input", data, "--checkpoint", ckpt, "--output", out, "-c", "cpu", "--mode", "influence",
            "--test_label", "predicted", "--layers", layers, "--normalize", how, "--top_k", str(TOP_K)]
        if n_test:
            cmd += ["--test_indices", ",".join(str(i) for i in range(n_test))]
        os.makedirs(out, exist_ok=True)
        wall = log_run(cmd, os.path.join(out, "run.log"))
        with open(wall_file, "w") as f:
            f.write(f"{wall:.1f}\n")
    with open(wall_file) as f:
        return npz, float(f.read())


def measure(npz_path, clean, given, y_val):
    """The METRICS of one influence_topk.npz (see the module docstring)."""
    with np.load(npz_path) as z:
        t, pred, prop, opp = z["test_indices"], z["test_labels"], z["proponents"], z["opponents"]
    truth = y_val[t]
    mis = clean != given
    correct = pred == truth
    wrong = ~correct
    top1 = clean[prop[:, 0]] == pred
    explained = mis[prop[:, 0]] & (clean[prop[:, 0]] == truth) & (given[prop[:, 0]] == pred)
    return {
        "top1": float(top1.mean()),
        "top1_correct": float(top1[correct].mean()) if correct.any() else None,
        "top10": float((clean[prop] == pred[:, None]).mean()),
        "prop_mis": float(mis[prop].mean()),
        "opp_mis": float(mis[opp].mean()),
        "opp_hidden": float(((clean[opp] == pred[:, None]) & (given[opp] != pred[:, None])).mean()),
        "distinct_top1": float(len(np.unique(prop[:, 0])) / len(prop)),
        "distinct_top1_opp": float(len(np.unique(opp[:, 0])) / len(opp)),
        "errors_explained": float(explained[wrong].mean()) if wrong.any() else None,
        "n_test": int(len(t)), "n_wrong": int(wrong.sum()),
    }


def seed_rows(seed, args, grid):
    """The (layers, normalisation) runs of `grid` for one seed, computed unless --report_only (which takes the
    finished ones): a list of {seed, layers, normalize, wall_seconds, metrics}."""
    folder = os.path.join(args.work, f"seed{seed}")
    if args.report_only:
        data, ckpt = os.path.join(folder, "data"), None
        if not os.path.isfile(os.path.join(data, "y_val.npy")):
            return []
    else:
        data, ckpt = train(seed, folder)
    labels = {k: np.load(os.path.join(data, k + ".npy"))[:, 0] for k in ("y_train", "y_shuffle_train", "y_val")}
    rows = []
    for layers, how in grid:
        n_test = args.all_test if layers == "all" else None
        out = run_folder(folder, layers, how, n_test)
        if args.report_only and not os.path.isfile(os.path.join(out, "wall_seconds.txt")):
            continue
        npz, wall = influence(data, ckpt, out, layers, how, n_test)
        m = measure(npz, labels["y_train"], labels["y_shuffle_train"], labels["y_val"])
        rows.append({"seed": seed, "layers": layers, "normalize": how, "wall_seconds": wall, "metrics": m})
        print(f"seed {seed} --layers {layers} --normalize {how}: top-1 {m['top1']:.3f}, mislabeled "
              f"proponents {m['prop_mis']:.3f}, opponents {m['opp_mis']:.3f} ({wall:.0f} s)",
              file=sys.stderr, flush=True)
    return rows


def mean_std(values):
    v = [x for x in values if x is not None]
    if not v:
        return [None, None]
    return [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0]


def summarise(rows):
    """{(layers, normalize): {metric: [mean, sample std]}, plus wall_seconds} over the seeds; top1_worst: [the
    lowest top-1 of any seed, its seed]."""
    table = {}
    for layers in LAYERS:
        for how in NORMALIZATIONS:
            runs = [r for r in rows if r["layers"] == layers and r["normalize"] == how]
            if runs:
                cell = {k: mean_std([r["metrics"][k] for r in runs]) for k in METRICS if k != "top1_worst"}
                worst = min(runs, key=lambda r: r["metrics"]["top1"])
                cell["top1_worst"] = [worst["metrics"]["top1"], worst["seed"]]
                cell["wall_seconds"] = mean_std([r["wall_seconds"] for r in runs])
                cell["n_test"] = runs[0]["metrics"]["n_test"]
                cell["seeds"] = sorted(r["seed"] for r in runs)
                table[(layers, how)] = cell
    return table


def fmt(ms, kind="%"):
    """mean ± std as a percentage ('%'), a ratio ('ratio') or whole seconds ('s'); 'worst': a share and its seed."""
    if ms[0] is None:
        return "n/a"
    if kind == "worst":
        return f"{100 * ms[0]:.1f}% (seed {ms[1]})"
    if kind == "%":
        return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}%"
    return f"{ms[0]:.3f} ± {ms[1]:.3f}" if kind == "ratio" else f"{ms[0]:.0f} ± {ms[1]:.0f}"


def kind_of(key):
    return "worst" if key == "top1_worst" else "ratio" if key.startswith("distinct") else "%"


def table_lines(table, metrics, with_wall):
    head = ["layers", "--normalize", "tests"] + list(metrics.values()) + (["wall s per run"] if with_wall else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (layers, how), c in table.items():
        default = how == DEFAULT and layers == DEFAULT_LAYERS
        cells = [layers, how + (" (default)" if default else ""), str(c["n_test"])]
        cells += [fmt(c[k], kind_of(k)) for k in metrics]
        lines.append("| " + " | ".join(cells + ([fmt(c["wall_seconds"], "s")] if with_wall else [])) + " |")
    return lines


def reaches_goal(cell):
    """Top-1 proponent of the predicted class for >= 99% of the tests on EVERY seed, <= 5% mislabeled top-10
    proponents (mean)."""
    return cell["top1_worst"][0] >= 0.99 and cell["prop_mis"][0] <= 0.05


def goal_lines(table):
    met = [f"--layers {k[0]} --normalize {k[1]}" for k, c in table.items() if reaches_goal(c)]
    lines = ["Goal: top-1 proponent of the predicted class for >= 99% of the tests on every seed and <= 5% mislabeled "
             "among the top-10 proponents. Met by: " + (", ".join(met) if met else "none") + "."]
    d = table.get((DEFAULT_LAYERS, DEFAULT))
    if d:
        lines.append(f"At the defaults (--layers {DEFAULT_LAYERS} --normalize {DEFAULT}): top-1 "
                     f"{100 * d['top1'][0]:.1f}% (worst seed {100 * d['top1_worst'][0]:.1f}%), mislabeled "
                     f"{100 * d['prop_mis'][0]:.1f}%: {'met' if reaches_goal(d) else 'not met'}.")
    return lines


def errors_line(rows):
    per_seed = sorted({(r["seed"], r["metrics"]["n_wrong"], r["metrics"]["n_test"]) for r in rows})
    return ("Misclassified validation samples per seed: "
            + ", ".join(f"seed {s}: {w} of {n}" for s, w, n in per_seed) + ".")


def markdown(groups, wall, argv):
    """The report: per group of seeds (tuning, held out), proponents and opponents (mean ± sample std over the
    seeds), validation errors, the goal."""
    every = [r for _, rows in groups for r in rows]
    lines = ["# Train -> test explanations: the identical-class test\n",
             f"Digits, train.py defaults; `calculate_score.py --mode influence --test_label predicted --top_k "
             f"{TOP_K}`; labels compared with the CLEAN training labels. Mean ± sample std over the seeds. "
             f"`{' '.join(['python -m bench.explanations'] + argv)}`: {wall / 60:.1f} min wall time for this "
             f"invocation (cached runs reused; one process at a time); the influence runs tabulated took "
             f"{sum(r['wall_seconds'] for r in every) / 60:.1f} min in all (training excluded).\n"]
    for title, rows in groups:
        if not rows:
            continue
        table = summarise(rows)
        seeds = sorted({r["seed"] for r in rows})
        lines += [f"## {title}: seeds {', '.join(map(str, seeds))}\n", "Proponents:\n"]
        lines += table_lines(table, PROPONENT_METRICS, True) + ["\nOpponents:\n"]
        lines += table_lines(table, OPPONENT_METRICS, False) + [""]
        lines += [errors_line(rows)] + goal_lines(table) + [""]
    lines.append("Scores: " + "; ".join(f"`{k}` = {v}" for k, v in DEFINITIONS.items()) + ".")
    return "\n".join(lines) + "\n"


def write_report(groups, args, wall):
    os.makedirs(args.out, exist_ok=True)
    md = markdown(groups, wall, args.argv)
    js = {"groups": [{"title": title, "table": [{"layers": k[0], "normalize": k[1], **v}
                                                for k, v in summarise(rows).items()], "runs": rows}
                     for title, rows in groups],
          "default": {"layers": DEFAULT_LAYERS, "normalize": DEFAULT}, "definitions": DEFINITIONS}
    paths = [os.path.join(args.out, "explanations." + ext) for ext in ("md", "json")]
    for path, text in zip(paths, (md, json.dumps(js, indent=1))):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print(md)
    return paths


def names(value, allowed, what):
    chosen = [v for v in value.split(",") if v]
    bad = [v for v in chosen if v not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return chosen


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    seeds = lambda v: [int(s) for s in v.split(",") if s]  # noqa: E731
    p.add_argument("--seeds", type=seeds, default=[10, 11, 12],
                   help="tuning seeds (label shuffle and init): every layers x normalisation run")
    p.add_argument("--held_out", type=seeds, default=[13, 14, 15],
                   help="held-out seeds, not used to choose the default: the --held_out_* runs only")
    p.add_argument("--held_out_layers", type=lambda v: names(v, LAYERS, "layers"), default=["last", "last_block"])
    p.add_argument("--held_out_normalize", type=lambda v: names(v, NORMALIZATIONS, "normalisation"),
                   default=["none", "cosine"])
    p.add_argument("--all_test", type=int, default=None,
                   help="with --layers all, explain only the first N validation samples (default: all of them)")
    p.add_argument("--report_only", action="store_true", help="only tabulate finished runs (never computes)")
    p.add_argument("--work", default=os.path.join(REPO, "output", "bench", "explanations"))
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None):
    args = parse(argv)
    t0 = time.time()
    grid = [(layers, how) for layers in LAYERS for how in NORMALIZATIONS]
    held = [(layers, how) for layers in args.held_out_layers for how in args.held_out_normalize]
    groups = [("Tuning seeds", [r for seed in args.seeds for r in seed_rows(seed, args, grid)]),
              ("Held-out seeds", [r for seed in args.held_out for r in seed_rows(seed, args, held)])]
    if not any(rows for _, rows in groups):
        sys.exit("bench.explanations: no finished runs to report")
    paths = write_report(groups, args, time.time() - t0)
    print(f"wrote {', '.join(paths)} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
