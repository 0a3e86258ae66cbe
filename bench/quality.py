"""Detection quality over a matrix of data sets and label-noise models (`make bench-quality`).

    python -m bench.quality [--quick] [--seeds 10,11,12] [--cells digits-pair20,...] [--ensemble K]
                            [--network_cl digits|all|none] [--all_layers_mnist] [--train_flags F] [--report_only]
                            [--work DIR] [--out DIR]

Cells (CELLS): scikit-learn's digits (1438 training images, 8x8) and MNIST-5k (bench/mnist.py: 4000 training
images, 28x28) with labels corrupted by tracin/noise.py (uniform, pair or instance; `rate` = the fraction of each
class given a wrong label). Every (cell, seed) is one run, done as a user with their own arrays would:
    write x_train, y_train (clean), y_shuffle_train (noisy, noise seed S), x_val, y_val     -> W/cell/seedS/data
    train.py --input data --dataset digits --seed S --model_save_path ckpt --monitor-path monitor -c cpu
    calculate_score.py --input data --checkpoint ckpt --output scores/NAME --save_every_epoch True [variant flags]
and ranks the training samples by the scorer's defaults and variants (VARIANTS), the loss at the last checkpoint,
AUM and confident learning (bench/baselines.py). With --ensemble K, K-1 more trainings on the same noisy labels
with training seeds S + 1000 j (members/mj/ckpt) and the run's own are scored as one ensemble, as a user would:
    calculate_score.py --input data --checkpoint ckpt,members/m1/ckpt,... --output scores/ensembleK
which sums the runs' default self-influence into one ranking; the sum of the first 3 runs' scores (its
influence_run{r}.npy) gives the K = 3 row from the same trainings.
Metrics: AUROC, recall at k (k = the number of mislabeled samples) and average precision.

Resumable: each step's output is kept under --work (default output/bench/quality) and reused when present (a
killed training continues with train.py --resume); delete a run's folder to redo it. Writes one markdown table
per cell (mean ± sample std over the seeds) to OUT/quality.md, every number to OUT/quality.json and the matrix
at a glance to OUT/quality.png. Held-out seeds: 10 and up; seeds 0-2 were used for tuning (quality_report.TUNING_SEEDS).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from scipy.special import logsumexp

from bench import baselines
from bench.mnist import mnist_arrays, write_arrays
from bench.quality_report import DEFAULT, MEMBER, ensemble_name, write_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_CLASSES = 10
CELLS = {  # name -> (data set, noise model, rate)
    "digits-uniform10": ("digits", "uniform", 0.1),
    "digits-uniform40": ("digits", "uniform", 0.4),
    "digits-pair20": ("digits", "pair", 0.2),
    "digits-instance20": ("digits", "instance", 0.2),
    # the same instance noise chosen by a k-NN reference instead of a logistic regression, the model family of
    # the confident-learning baseline (bench only: does that baseline's lead come from sharing the noise's model?)
    "digits-instance20-knn": ("digits", "instance-knn", 0.2),
    "mnist-uniform10": ("mnist", "uniform", 0.1),
    "mnist-instance20": ("mnist", "instance", 0.2),
}
# train.py picks its recipe from the images' shape (8x8: digits) and otherwise from --dataset, whose default is
# CIFAR-10's 270-epoch recipe: a user with 28x28 handwritten digits names the closest data set.
TRAIN_FLAGS = ["--dataset", "digits"]
QUICK_CELLS = ("digits-pair20", "digits-instance20")
# calculate_score.py variants: ranking name -> (folder under scores/, flags)
VARIANTS = {
    DEFAULT: ("default", []),
    "TracIn --layers last": ("last", ["--layers", "last"]),
    "TracIn --layers all": ("all", ["--layers", "all"]),
}


def log_run(cmd, log):
    """Run a script of the suite (output to `log`); a failure stops the benchmark with the log's name."""
    t0 = time.time()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        code = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=f).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} ... failed (exit {code}); see {log}")
    return time.time() - t0


def script(name):
    return [sys.executable, os.path.join(REPO, name)]


def clean_arrays(dataset):
    if dataset == "mnist":
        return mnist_arrays()
    from datasets import load_digits_split
    x_train, y_train, x_val, y_val = load_digits_split()
    return {"x_train": x_train, "y_train": y_train, "y_shuffle_train": y_train.copy(), "x_val": x_val,
            "y_val": y_val}


def make_data(cell, seed, folder):
    """The run's arrays with seeded noise (written once; noise.json records the noise)."""
    import noise
    if not os.path.isfile(os.path.join(folder, "noise.json")):
        dataset, model, rate = CELLS[cell]
        arrays = clean_arrays(dataset)
        if model == "instance-knn":
            y = arrays["y_train"][:, 0]
            noisy = noise.most_plausible_wrong(y, rate, baselines.knn_oof(arrays["x_train"], y, seed, N_CLASSES))
            arrays["y_shuffle_train"] = noisy.reshape(arrays["y_train"].shape)
            rec = dict(noise.record("instance", rate, seed, y, noisy, N_CLASSES),
                       reference="5-fold out-of-fold 10-nearest-neighbour vote (distance-weighted) on pixels")
        else:
            arrays["y_shuffle_train"], rec = noise.corrupt(model, arrays["y_train"], rate, N_CLASSES, seed,
                                                           x=arrays["x_train"], dataset=dataset)
        write_arrays(folder, arrays)
        with open(os.path.join(folder, "noise.json"), "w") as f:
            json.dump(rec, f, indent=1)
    return {k: np.load(os.path.join(folder, k + ".npy")) for k in ("x_train", "y_train", "y_shuffle_train")}


def train(data, folder, seed, log, flags=TRAIN_FLAGS):
    """train.py --input with its defaults (and `flags`) into folder/ckpt; continued with --resume if killed."""
    ckpt = os.path.join(folder, "ckpt")
    manifest = os.path.join(ckpt, "checkpoints.json")
    if os.path.isfile(manifest):
        m = json.load(open(manifest))
        if m["checkpoints"] and m["checkpoints"][-1]["epoch"] >= m["train"]["train_epochs"]:
            return ckpt, None
    cmd = script("train.py") + ["--input", data] + flags + ["--seed", str(seed), "--model_save_path", ckpt,
                                "--monitor-path", os.path.join(folder, "monitor"), "-c", "cpu"]
    return ckpt, log_run(cmd + (["--resume"] if os.path.isfile(manifest) else []), log)


def score(data, ckpt, out, flags, log):
    """calculate_score.py (with every checkpoint's term saved) into `out` unless it already holds the scores."""
    if os.path.isfile(os.path.join(out, "scores.json")):
        return None
    return log_run(script("calculate_score.py") + ["--input", data, "--checkpoint", ckpt, "--output", out,
                                                   "-c", "cpu", "--save_every_epoch", "True"] + flags, log)


def checkpoint_terms(scores_dir):
    """[(checkpoint entry of scores.json, its term)] of a calculate_score.py --save_every_epoch output, in order
    ({epoch}_influence.npy = eta_i * ||g_i||^2, which calculate_score.py sums into influence_all_epoch.npy)."""
    ckpts = json.load(open(os.path.join(scores_dir, "scores.json")))["checkpoints"]
    return [(c, np.load(os.path.join(scores_dir, f"{c['epoch']}_influence.npy"))) for c in ckpts]


def checkpoint_variants(scores_dir):
    """Rankings from the defaults' per-checkpoint terms (checkpoint_terms): the same sum without the eta weights,
    and over the first and the second half of the checkpoints (what --lr_weight False and --checkpoint_epochs
    give)."""
    pairs = checkpoint_terms(scores_dir)
    terms = np.array([t for _, t in pairs])
    etas = np.array([c["eta"] for c, _ in pairs])
    half = len(pairs) // 2
    return {"TracIn --lr_weight False": (terms / etas[:, None]).sum(0),
            "TracIn, first half of checkpoints": terms[:half].sum(0),
            "TracIn, second half of checkpoints": terms[half:].sum(0)}


def cached(path, compute):
    """np.load(path), or compute() saved there first."""
    if not os.path.isfile(path):
        np.save(path, compute())
    return np.load(path)


def network_oof(arrays, y_noisy, seed, folder, log, flags):
    """Out-of-fold softmax of our network: train.py (defaults) on four folds, last checkpoint on the fifth."""
    probs = np.zeros((len(y_noisy), N_CLASSES))
    for k, (train_idx, test_idx) in enumerate(baselines.folds(y_noisy, seed)):
        fold = os.path.join(folder, f"fold{k}")

        def compute():
            sub = {name: arrays[name][train_idx] for name in ("x_train", "y_train", "y_shuffle_train")}
            data = os.path.join(fold, "data")
            write_arrays(data, dict(sub, x_val=arrays["x_val"], y_val=arrays["y_val"]))
            ckpt, _ = train(data, fold, seed, log, flags)
            last = json.load(open(os.path.join(ckpt, "checkpoints.json")))["checkpoints"][-1]["epoch"]
            return baselines.softmax(baselines.checkpoint_logits(ckpt, arrays["x_train"][test_idx], [last])[1][0])
        os.makedirs(fold, exist_ok=True)
        probs[test_idx] = cached(os.path.join(fold, "probs.npy"), compute)
    return probs


def run_rankings(cell, seed, args, folder, times):
    """{ranking name: scores} of one run, every step cached under `folder`."""
    dataset = CELLS[cell][0]
    data, log = os.path.join(folder, "data"), os.path.join(folder, "log.txt")
    arrays = make_data(cell, seed, data)
    arrays.update({k: np.load(os.path.join(data, k + ".npy")) for k in ("x_val", "y_val")})
    y = arrays["y_shuffle_train"][:, 0]
    flags = TRAIN_FLAGS + args.train_flags.split()
    ckpt, times["train_s"] = train(data, folder, seed, log, flags)
    out = {}
    for name, (sub, score_flags) in VARIANTS.items():
        if name == "TracIn --layers all" and dataset == "mnist" and not args.all_layers_mnist:
            continue
        times[f"score_{sub}_s"] = score(data, ckpt, os.path.join(folder, "scores", sub), score_flags, log)
        out[name] = np.load(os.path.join(folder, "scores", sub, "influence_all_epoch.npy"))
    out.update(checkpoint_variants(os.path.join(folder, "scores", "default")))
    out["loss (last checkpoint)"] = np.load(os.path.join(folder, "scores", "default", "loss_last_epoch.npy"))
    out["AUM"] = baselines.aum_scores(run_logits(ckpt, folder, arrays["x_train"], times, "logits_s"), y)
    probs = cached(os.path.join(folder, "cl_lr_probs.npy"),
                   lambda: baselines.logistic_oof(arrays["x_train"], y, seed, N_CLASSES))
    out["confident learning, logistic regression"] = baselines.cleanlab_scores(y, probs)
    if args.network_cl == "all" or args.network_cl == dataset:
        t0, cl_dir = time.time(), os.path.join(folder, "cl_net")
        todo = not os.path.isfile(os.path.join(cl_dir, f"fold{baselines.N_FOLDS - 1}", "probs.npy"))
        probs = network_oof(arrays, y, seed, cl_dir, log, flags)
        times["cl_net_s"] = time.time() - t0 if todo else None
        out["confident learning, our network"] = baselines.cleanlab_scores(y, probs)
    if args.ensemble > 1:
        out.update(ensemble_rankings(data, folder, ckpt, seed, args.ensemble, log, times, flags))
        out.update(ensemble_baselines(folder, ckpt, arrays["x_train"], y, args.ensemble, times))
    return out, arrays


def run_logits(ckpt, folder, x, times, key):
    """The checkpoints' logits (K, N, classes), cached in folder/logits.npz (also feat_sq, epochs)."""
    t0, path = time.time(), os.path.join(folder, "logits.npz")
    if not os.path.isfile(path):
        epochs, logits, feat_sq = baselines.checkpoint_logits(ckpt, x)
        np.savez(path, epochs=epochs, logits=logits, feat_sq=feat_sq)
        times[key] = time.time() - t0
    return np.load(path)["logits"]


def ensemble_baselines(folder, ckpt, x, y, k, times):
    """The baselines that read a training's logits, averaged over the same trainings as the ensembles: AUM
    (the mean margin over every checkpoint of the k runs) and the loss at each run's last checkpoint; a fair
    opponent for a k-fold training cost."""
    logits = [run_logits(ckpt, folder, x, times, "logits_s")]
    logits += [run_logits(os.path.join(folder, "members", f"m{j}", "ckpt"), os.path.join(folder, "members", f"m{j}"),
                          x, times, f"logits_m{j}_s") for j in range(1, k)]
    aum = [baselines.aum_scores(z, y) for z in logits]
    loss = [logsumexp(z[-1], axis=1) - z[-1][np.arange(len(y)), y] for z in logits]  # cross-entropy, stable
    out = {}
    for n in sorted({3, k}):
        out[f"AUM, mean over {n} trainings"] = np.mean(aum[:n], axis=0)
        out[f"loss, mean over {n} trainings"] = np.mean(loss[:n], axis=0)
    return out


def ensemble_rankings(data, folder, ckpt, seed, k, log, times, flags):
    """{name: scores} of the ensembles of this run's training and k - 1 more (training seeds seed + 1000 j):
    calculate_score.py --checkpoint with the k folders, and the sum of its first 3 runs' scores when k > 3."""
    ckpts = [ckpt]
    for j in range(1, k):
        member_ckpt, times[f"train_m{j}_s"] = train(data, os.path.join(folder, "members", f"m{j}"), seed + 1000 * j,
                                                    log, flags)
        ckpts.append(member_ckpt)
    out_dir = os.path.join(folder, "scores", f"ensemble{k}")
    if not os.path.isfile(os.path.join(out_dir, "scores.json")):
        times[f"score_ensemble{k}_s"] = log_run(script("calculate_score.py") + [
            "--input", data, "--checkpoint", ",".join(ckpts), "--output", out_dir, "-c", "cpu"], log)
    runs = [np.load(os.path.join(out_dir, f"influence_run{r}.npy")) for r in range(1, k + 1)]
    out = {ensemble_name(k): np.load(os.path.join(out_dir, "influence_all_epoch.npy"))}
    if k > 3:
        out[ensemble_name(3)] = runs[0] + runs[1] + runs[2]
    out.update({f"{MEMBER} {r}": s for r, s in enumerate(runs, start=1)})
    return out


def bench_run(cell, seed, args):
    folder = os.path.join(args.work, cell, f"seed{seed}")
    os.makedirs(folder, exist_ok=True)
    times_path = os.path.join(folder, "timings.json")
    times = json.load(open(times_path)) if os.path.isfile(times_path) else {}
    fresh = {}
    rankings, arrays = run_rankings(cell, seed, args, folder, fresh)
    times.update({k: round(v, 1) for k, v in fresh.items() if v is not None})
    with open(times_path, "w") as f:
        json.dump(times, f, indent=1)
    mislabeled = arrays["y_shuffle_train"][:, 0] != arrays["y_train"][:, 0]
    result_path = os.path.join(folder, "result.json")
    # rankings of earlier invocations (another --ensemble or --network_cl) are kept beside this one's
    before = json.load(open(result_path)) if os.path.isfile(result_path) else {}
    metrics = before.get("metrics", {})
    metrics.update({name: baselines.metrics(s, mislabeled) for name, s in rankings.items()
                    if not name.startswith(MEMBER)})
    # each training of the largest ensemble scored alone: the spread that training seeds alone cause
    members = [baselines.metrics(s, mislabeled) for name, s in rankings.items() if name.startswith(MEMBER)]
    members = members if len(members) >= len(before.get("members", [])) else before["members"]
    val_err = open(os.path.join(folder, "monitor", "Test-error.series.txt")).read().split()[-1]
    result = {"cell": cell, "seed": seed, "n_train": int(len(mislabeled)), "n_mislabeled": int(mislabeled.sum()),
              "noise": json.load(open(os.path.join(folder, "data", "noise.json"))),
              "val_error": float(val_err), "seconds": times,
              "recipe": json.load(open(os.path.join(folder, "ckpt", "checkpoints.json")))["train"],
              "metrics": metrics, "members": members}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_CELLS)}, seed 10, no network CL")
    p.add_argument("--seeds", default="10,11,12", help="comma-separated noise seeds (held out: 10 and up)")
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells: " + ", ".join(CELLS))
    p.add_argument("--ensemble", type=int, default=1, help="also sum the defaults over K seeded trainings")
    p.add_argument("--network_cl", default="digits", choices=["digits", "mnist", "all", "none"],
                   help="where to run confident learning with our network (5 trainings per run)")
    p.add_argument("--all_layers_mnist", action="store_true", help="also --layers all on MNIST (~7 min per run)")
    p.add_argument("--train_flags", default="",
                   help="more train.py flags for a recipe study, e.g. '--weight_decay 0.002' (use another --work)")
    p.add_argument("--report_only", action="store_true",
                   help="only tabulate the finished runs of --cells x --seeds (never trains)")
    p.add_argument("--work", default=os.path.join(REPO, "output", "bench", "quality"))
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    args = p.parse_args(argv)
    args.cells = list(QUICK_CELLS) if args.quick else [c for c in args.cells.split(",") if c]
    args.seeds = [10] if args.quick else [int(s) for s in args.seeds.split(",") if s]
    args.network_cl = "none" if args.quick else args.network_cl
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown:
        p.error(f"unknown cell {unknown[0]} (choose from {', '.join(CELLS)})")
    return args


def main(argv=None):
    args = parse(argv)
    try:
        import cleanlab  # noqa: F401
        import mlxtend  # noqa: F401
    except ImportError as e:
        sys.exit(f"bench.quality needs {e.name}: pip install -r bench/requirements.txt")
    t0 = time.time()
    results = []
    for cell in args.cells:
        for seed in args.seeds:
            done = os.path.join(args.work, cell, f"seed{seed}", "result.json")
            if args.report_only:
                results += [json.load(open(done))] if os.path.isfile(done) else []
                continue
            t1 = time.time()
            r = bench_run(cell, seed, args)
            results.append(r)
            d = r["metrics"][DEFAULT]
            print(f"{cell} seed {seed}: defaults AUROC {d['auroc']:.4f}, recall@k {d['recall_k']:.3f}; "
                  f"{time.time() - t1:.0f} s now, steps {r['seconds']}", file=sys.stderr, flush=True)
    if not results:
        sys.exit("bench.quality: no finished runs to report")
    paths = write_report(results, args.out, "_quick" if args.quick else "", time.time() - t0)
    print(f"wrote {', '.join(paths)} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
