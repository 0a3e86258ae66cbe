"""Audit-your-own-data measurement: a folder of PNGs with a known share placed in a wrong class folder, the three
commands of the README exactly as a user types them, then how many planted files label_issues.csv ranks in its top
10% and how many of those carry their true class as the suggested label.

    python -m bench.own_data [--source digits|mnist] [--work /tmp/own_data] [--per_class 50] [--size 16]
                             [--rate 0.1] [--seed 0]

Images: scikit-learn's bundled 8x8 digits (offline), or the real 28x28 MNIST-5k digits (bench.mnist), the first
`per_class` of every digit, resized to size x size (bilinear) and saved as greyscale PNGs in WORK/images/<digit>/;
`rate` of every class (seeded) is saved in a folder of another digit instead (uniform over the other nine). The
truth stays outside the image folder (WORK/planted.json). Results: bench/results/own_data_SOURCE.json and stdout
(the work folder, with the images, arrays and checkpoints, is replaced on every run).
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = (
    ("train.py", "--dataset", "imagefolder", "--data-dir", "images", "--output", "out/data", "--model_save_path",
     "out/ckpt", "-c", "cpu"),
    ("calculate_score.py", "--input", "out/data", "--checkpoint", "out/ckpt", "--output", "out/data", "-c", "cpu"),
    ("mislabel_analysis.py", "--input", "out/data", "--output", "out/review"),
)


def load_source(source):
    """(images (N, H, W) uint8, labels (N,))."""
    if source == "mnist":
        from bench.mnist import load_mnist_5k
        x, y = load_mnist_5k()
        return x[:, 0], y
    from sklearn.datasets import load_digits
    d = load_digits()
    return np.round(d.images * 255.0 / 16.0).astype(np.uint8), d.target


def write_folder(root, per_class, size, rate, seed, source="digits"):
    """Write the PNG folder; returns {relative file: (true class, folder class)} of every image."""
    from PIL import Image
    images, labels = load_source(source)
    rng = np.random.RandomState(seed)
    truth = {}
    for c in range(10):
        idx = np.flatnonzero(labels == c)[:per_class]
        planted = set(rng.choice(idx, int(round(rate * len(idx))), replace=False).tolist())
        for i in idx:
            folder = c
            if i in planted:
                folder = int(rng.choice([k for k in range(10) if k != c]))
            img = Image.fromarray(images[i], "L")
            rel = f"{folder}/img{i:04d}.png"
            os.makedirs(os.path.join(root, str(folder)), exist_ok=True)
            img.resize((size, size), Image.BILINEAR).save(os.path.join(root, rel))
            truth[rel] = (c, folder)
    return truth


def measure(csv_path, truth, fraction=0.1):
    """Share of the planted training files in the top `fraction` of the CSV, and of those whose suggestion is
    their true class."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    planted = {r["file"] for r in rows if truth[r["file"]][0] != truth[r["file"]][1]}
    k = int(np.floor(fraction * len(rows) + 0.5))
    top = [r for r in rows[:k] if r["file"] in planted]
    right = [r for r in top if r["suggested_label"] and int(r["suggested_label"]) == truth[r["file"]][0]]
    return {"n_train": len(rows), "n_planted_train": len(planted), "top_k": k, "planted_in_top": len(top),
            "share_planted_in_top": len(top) / len(planted) if planted else None,
            "suggested_true_class": len(right), "share_suggested_true": len(right) / len(top) if top else None,
            "precision_top": len(top) / k if k else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="digits", choices=["digits", "mnist"])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "own_data"))
    p.add_argument("--per_class", type=int, default=50)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    truth = write_folder(os.path.join(args.work, "images"), args.per_class, args.size, args.rate, args.seed,
                         args.source)
    with open(os.path.join(args.work, "planted.json"), "w") as f:
        json.dump({k: list(v) for k, v in sorted(truth.items())}, f, indent=1)
    seconds = {}
    for cmd in COMMANDS:
        t0 = time.time()
        subprocess.run([sys.executable, os.path.join(REPO, cmd[0])] + list(cmd[1:]), cwd=args.work, check=True)
        seconds[cmd[0]] = round(time.time() - t0, 1)
    result = measure(os.path.join(args.work, "out", "review", "label_issues.csv"), truth)
    result.update(settings=vars(args), seconds=seconds, commands=[" ".join(("python",) + c) for c in COMMANDS])
    with open(os.path.join(REPO, "bench", "results", f"own_data_{args.source}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
