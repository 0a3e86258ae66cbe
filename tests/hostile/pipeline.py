"""The one small valid pipeline every case starts from, built through the command line of the tree under test.

base/data     96 training and 32 validation digits (uint8 NCHW, int64 (N, 1) labels; every 10th label shifted)
base/ckpt     train.py: resnet23 --nmaps 4, 2 epochs, batch 16 (params_0..2, solver_0..2, checkpoints.json)
base/scores   calculate_score.py --save_every_epoch True (influence_all_epoch, 1_ / 2_influence, loss_last_epoch,
              scores.json)
base/infl     calculate_score.py --mode influence --test_indices 0,1,2 --top_k 3 (influence_topk.npz)
base/resume   ckpt as a run killed after epoch 1 of 2 leaves it (params/solver 0 and 1, manifest listing them)
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np

N_TRAIN, N_VAL = 96, 32
TRAIN_FLAGS = ("--nmaps", "4", "--train_batch_size", "16", "-c", "cpu")


def digits(folder):
    """The array folder, made from scikit-learn's digits directly (not by the code under test)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = d.target.astype(np.int64).reshape(-1, 1)
    noisy = y[:N_TRAIN].copy()
    noisy[::10] = (noisy[::10] + 3) % 10
    os.makedirs(folder)
    for name, a in (("x_train", x[:N_TRAIN]), ("y_train", y[:N_TRAIN]), ("y_shuffle_train", noisy),
                    ("x_val", x[N_TRAIN:N_TRAIN + N_VAL]), ("y_val", y[N_TRAIN:N_TRAIN + N_VAL])):
        np.save(os.path.join(folder, name + ".npy"), a)


def script(repo, name, *args, cwd):
    p = subprocess.run([sys.executable, os.path.join(repo, name)] + list(args), cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"base pipeline: {name} {' '.join(args)} exited {p.returncode}:\n{p.stderr[-2000:]}")


def build(repo, root):
    digits(os.path.join(root, "data"))
    script(repo, "train.py", "--input", "data", "--model_save_path", "ckpt", "--monitor-path", "mon",
           "--train_epochs", "2", *TRAIN_FLAGS, cwd=root)
    script(repo, "calculate_score.py", "--input", "data", "--checkpoint", "ckpt", "--output", "scores", "-c", "cpu",
           "--save_every_epoch", "True", cwd=root)
    script(repo, "calculate_score.py", "--input", "data", "--checkpoint", "ckpt", "--output", "infl", "-c", "cpu",
           "--mode", "influence", "--test_indices", "0,1,2", "--top_k", "3", cwd=root)
    killed_after_epoch_1(os.path.join(root, "ckpt"), os.path.join(root, "resume"))
    return root


def killed_after_epoch_1(ckpt, folder):
    shutil.copytree(ckpt, folder, ignore=shutil.ignore_patterns("params_2.h5", "solver_2.h5"))
    path = os.path.join(folder, "checkpoints.json")
    with open(path) as f:
        m = json.load(f)
    m["checkpoints"] = [c for c in m["checkpoints"] if c["epoch"] <= 1]
    with open(path, "w") as f:
        json.dump(m, f)


def relocate(work):
    """Point a work copy's absolute paths at the copy: the resume manifest's array folder and the .npz's input
    folders (both are written as absolute paths by the scripts)."""
    manifest = os.path.join(work, "resume", "checkpoints.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            m = json.load(f)
        m["train"]["array_dir"] = os.path.join(work, "data")
        with open(manifest, "w") as f:
            json.dump(m, f)
    npz = os.path.join(work, "infl", "influence_topk.npz")
    if os.path.isfile(npz):
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["input"] = arrays["test_input"] = np.array(os.path.join(work, "data"))
        with open(npz, "wb") as f:
            np.savez(f, **arrays)
