"""One training that detects like an ensemble? Ideas measured against the default, on bench.quality's runs.

    python -m bench.one_training [--cells C,...] [--seeds 0,1,2] [--ideas subepoch,views,cyclic,short,free]
                                 [--per_epoch 8] [--views 8] [--boot 1000] [--work DIR] [--out DIR]

Every idea reads or extends the runs of bench.quality under --work (a missing run is made first, with
bench.quality's own steps and --network_cl none), on the same noisy labels as the default:
- subepoch: the same training (seed, labels, recipe) with K checkpoints per epoch (bench.subepoch_train), scored
  by calculate_score.py; rankings over all K per epoch and over 2 per epoch. Its epoch-end checkpoints must give
  the default's scores exactly (checked).
- views: self-influence at the same checkpoints averaged over V augmented views of every training sample (the
  training augmentation, F.image_augmentation, seeds 1001..1000+V), alone and with the plain image.
- cyclic: a training with `--lr_schedule cyclic` (3 cosine cycles from the peak; snapshot ensembles), WORK/cyclic.
- short: 3 trainings of 10 epochs or 2 of 15 (together the default's 30 epochs: one training's cost), summed as
  an ensemble: bench.quality --ensemble K --train_flags "--train_epochs E", WORK/short and WORK/short2x15.
- free (no cost): every 2nd checkpoint; TracIn's rank averaged with AUM's and with the data-map confidence's
  (the mean probability of the given label over the checkpoints, Swayamdipta et al. 2020).
Each idea's ranking is compared with the default's (and the default's closest baselines) per seed with
bench.paired's bootstrap. Resumable: everything computed is kept under --work. Writes OUT/one_training.md, .json.
"""
import argparse
import json
import os
import sys
import zlib

import numpy as np
from scipy.stats import rankdata

from bench import baselines, quality
from bench.paired import paired, stored_rankings, verdict, write_results
from bench.quality_report import DEFAULT, ensemble_name

IDEAS = ("subepoch", "views", "cyclic", "short", "free")
SHORT = ((3, 10), (2, 15))  # (trainings, epochs of each): together the default's 30 epochs
OPPONENTS = (DEFAULT, "AUM", "confident learning, logistic regression")


def base_run(cell, seed, work, extra=()):
    """bench.quality's run of (cell, seed) under work, with bench.quality's `extra` flags (made when missing):
    its folder."""
    folder = os.path.join(work, cell, f"seed{seed}")
    if not os.path.isfile(os.path.join(folder, "result.json")):
        quality.main(["--cells", cell, "--seeds", str(seed), "--network_cl", "none", "--work", work,
                      "--out", os.path.join(work, "report"), *extra])
    return folder


def terms(scores_dir):
    """{checkpoint label: eta * ||g||^2} of a calculate_score.py --save_every_epoch output."""
    return {c["epoch"]: t for c, t in quality.checkpoint_terms(scores_dir)}


def subepoch(folder, seed, k, times):
    out = os.path.join(folder, f"subepoch{k}")
    if not os.path.isfile(os.path.join(out, "sub", "checkpoints.json")):
        flags = quality.TRAIN_FLAGS + ["--input", os.path.join(folder, "data"), "--seed", str(seed),
                                       "--model_save_path", os.path.join(out, "ckpt"),
                                       "--monitor-path", os.path.join(out, "monitor"), "-c", "cpu"]
        times[f"subepoch{k}_train_s"] = quality.log_run(
            [sys.executable, "-m", "bench.subepoch_train", out, str(k), "--"] + flags, os.path.join(out + ".log"))
    scored = os.path.join(out, "scores")
    spent = quality.score(os.path.join(folder, "data"), os.path.join(out, "sub"), scored, [], out + ".log")
    if spent is not None:  # None: scored by an earlier invocation, whose time is kept
        times[f"subepoch{k}_score_s"] = spent
    t = terms(scored)
    default = np.load(os.path.join(folder, "scores", "default", "influence_all_epoch.npy"))
    ends = sum(v for e, v in t.items() if e % k == 0)
    if not np.allclose(ends, default, rtol=1e-6, atol=0):
        raise RuntimeError(f"{out}: the epoch-end checkpoints do not reproduce the default's scores")
    return {f"TracIn, {k} checkpoints per epoch": sum(t.values()),
            "TracIn, 2 checkpoints per epoch": sum(v for e, v in t.items() if e % (k // 2) == 0)}


def augmented(x, augment, seed):
    """x under the training augmentation (the zoo's, with the recipe's settings), seeded."""
    import nnabla as nn

    from models.resnet import augment_image
    xv = nn.Variable(x.shape)
    xv.d = x.astype(np.float32)
    with nn.auto_forward():
        y = augment_image(xv, False, dict(augment, seed=seed))
    return np.clip(np.rint(y.d), 0, 255).astype(x.dtype)


def views(folder, n_views, times):
    data, ckpt = os.path.join(folder, "data"), os.path.join(folder, "ckpt")
    recipe = json.load(open(os.path.join(ckpt, "checkpoints.json")))["train"]
    plain = np.load(os.path.join(folder, "scores", "default", "influence_all_epoch.npy"))
    scores, spent = [], []
    for v in range(1, n_views + 1):
        vdata, vout = os.path.join(folder, "views", f"data{v}"), os.path.join(folder, "views", f"scores{v}")
        if not os.path.isfile(os.path.join(vout, "scores.json")):
            os.makedirs(vdata, exist_ok=True)
            for name in os.listdir(data):
                if name != "x_train.npy" and not os.path.exists(os.path.join(vdata, name)):
                    os.symlink(os.path.join(data, name), os.path.join(vdata, name))
            x = np.load(os.path.join(data, "x_train.npy"))
            np.save(os.path.join(vdata, "x_train.npy"), augmented(x, recipe["augmentation"], 1000 + v))
            spent.append(quality.score(vdata, ckpt, vout, [], os.path.join(folder, "views.log")))
        scores.append(np.load(os.path.join(vout, "influence_all_epoch.npy")))
    if spent and None not in spent:
        times["views_score_s"] = sum(spent)
    return {f"TracIn, mean over {n_views} augmented views": np.mean(scores, 0),
            f"TracIn, plain + {n_views} augmented views": (plain + np.sum(scores, 0)) / (n_views + 1)}


def other_training(cell, seed, work, flags, ensemble):
    """The default ranking of bench.quality's run with other train.py flags (and its K-training sum)."""
    folder = base_run(cell, seed, work,
                      ["--train_flags", flags] + (["--ensemble", str(ensemble)] if ensemble > 1 else []))
    if ensemble > 1:
        return np.load(os.path.join(folder, "scores", f"ensemble{ensemble}", "influence_all_epoch.npy"))
    return np.load(os.path.join(folder, "scores", "default", "influence_all_epoch.npy"))


def free(folder, y):
    t = terms(os.path.join(folder, "scores", "default"))
    logits = np.load(os.path.join(folder, "logits.npz"))["logits"]
    tracin, aum = sum(t.values()), baselines.aum_scores(logits, y)
    confidence = baselines.softmax(logits.astype(np.float64))[:, np.arange(len(y)), y].mean(0)
    return {"TracIn, every 2nd checkpoint": sum(v for e, v in t.items() if e % 2 == 0),
            "TracIn rank + AUM rank": rankdata(tracin) + rankdata(aum),
            "TracIn rank + data-map confidence rank": rankdata(tracin) + rankdata(-confidence)}


def run_rankings(cell, seed, args, times):
    folder = base_run(cell, seed, args.work)
    stored, mislabeled = stored_rankings(folder)
    out = {name: stored[name] for name in OPPONENTS}
    res = json.load(open(os.path.join(folder, "result.json")))
    times["default_s"] = res["seconds"]["train_s"] + res["seconds"]["score_default_s"]
    if "subepoch" in args.ideas:
        out.update(subepoch(folder, seed, args.per_epoch, times))
    if "views" in args.ideas:
        out.update(views(folder, args.views, times))
    if "cyclic" in args.ideas:
        out["TracIn, --lr_schedule cyclic"] = other_training(cell, seed, os.path.join(args.work, "cyclic"),
                                                             "--lr_schedule cyclic", 1)
    for k, epochs in SHORT if "short" in args.ideas else ():
        work = os.path.join(args.work, "short" if k == 3 else f"short{k}x{epochs}")
        out[f"{ensemble_name(k)} of {epochs} epochs"] = other_training(cell, seed, work, f"--train_epochs {epochs}", k)
    if "free" in args.ideas:
        out.update(free(folder, np.load(os.path.join(folder, "data", "y_shuffle_train.npy"))[:, 0]))
    return out, mislabeled


def report(cells, runs, args):
    """Lines of the markdown table and the JSON: per cell and idea, mean AUROC / recall and paired differences."""
    lines = ["| cell | ranking | AUROC (per seed) | recall@k | − default: AUROC [95 %] ahead | − default: recall | "
             "− AUM: AUROC | − confident learning: AUROC |", "|---|---|---|---|---|---|---|---|"]
    data = {}
    for cell in cells:
        have = runs[cell]
        for name in have[0][0]:
            aurocs = [baselines.metrics(s[name], pos)["auroc"] for s, pos in have]
            recalls = [baselines.metrics(s[name], pos)["recall_k"] for s, pos in have]
            row = data.setdefault(cell, {})[name] = {"auroc": aurocs, "recall_k": recalls}
            diffs = []
            for b in OPPONENTS:
                rng = np.random.RandomState(zlib.crc32(f"{cell}|{name}|{b}".encode()))
                diffs.append(None if b == name else paired(have, name, b, args.boot, rng))
                row[f"- {b}"] = diffs[-1]
            cells_txt = [f"{np.mean(aurocs):.4f} ({', '.join(f'{a:.4f}' for a in aurocs)})", f"{np.mean(recalls):.3f}"]
            for j, d in enumerate(diffs):
                if d is None:
                    cells_txt += ["—"] if j else ["—", "—"]
                    continue
                txt = (f"{d['mean'][0]:+.4f} [{d['lo'][0]:+.4f}, {d['hi'][0]:+.4f}] {d['ahead'][0]}/{d['seeds']}"
                       f" {verdict(d, 0)}")
                cells_txt += [txt, f"{d['mean'][1]:+.3f}"] if j == 0 else [f"{d['mean'][0]:+.4f} {verdict(d, 0)}"]
            lines.append(f"| {cell} | {name} | " + " | ".join(cells_txt) + " |")
    return lines, data


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.one_training", description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="digits-instance20,digits-instance20-knn")
    p.add_argument("--seeds", default="0,1,2", help="noise seeds (0-2 tune; 10 and up are held out)")
    p.add_argument("--ideas", default=",".join(IDEAS), help="comma-separated: " + ", ".join(IDEAS))
    p.add_argument("--per_epoch", type=int, default=8, help="checkpoints per epoch of the subepoch idea (even)")
    p.add_argument("--views", type=int, default=8, help="augmented views of the views idea")
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("--work", default=os.path.join(quality.REPO, "output", "bench", "quality"))
    p.add_argument("--out", default=os.path.join(quality.REPO, "bench", "results"))
    p.add_argument("--name", default="one_training", help="OUT/NAME.md and .json")
    args = p.parse_args(argv)
    args.ideas = [i for i in args.ideas.split(",") if i]
    if any(i not in IDEAS for i in args.ideas) or args.per_epoch < 2 or args.per_epoch % 2:
        p.error(f"--ideas from {', '.join(IDEAS)}; --per_epoch an even number >= 2")
    return args


def main(argv=None):
    args = parse(argv)
    cells, seeds = args.cells.split(","), [int(s) for s in args.seeds.split(",")]
    runs, times = {}, {}
    for cell in cells:
        for seed in seeds:
            path = os.path.join(args.work, cell, f"seed{seed}", "one_training_seconds.json")
            t = json.load(open(path)) if os.path.isfile(path) else {}
            runs.setdefault(cell, []).append(run_rankings(cell, seed, args, t))
            t = {k: round(v, 1) for k, v in t.items() if v is not None}
            with open(path, "w") as f:
                json.dump(t, f, indent=1)
            times[f"{cell}/seed{seed}"] = t
            print(f"{cell} seed {seed} done: {t}", file=sys.stderr, flush=True)
    lines, data = report(cells, runs, args)
    head = [f"# One training like an ensemble: ideas against the default ({args.name})", "",
            f"`python -m bench.one_training --cells {args.cells} --seeds {args.seeds} --ideas {','.join(args.ideas)} "
            f"--per_epoch {args.per_epoch} --views {args.views}`. Mean over seeds (per seed in brackets); "
            "differences are per-seed means with a 95 % paired bootstrap interval over the training samples, seeds "
            "ahead or level, and the verdict (an interval that contains 0 is not resolved).", ""]
    write_results(args.out, args.name, head + lines + [""], {"rankings": data, "seconds": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
