"""Data: CIFAR-10 from the official archive, scikit-learn's bundled digits, seeded label shuffling, and the
array folder layout of the original example (x_train.npy, y_train.npy, y_shuffle_train.npy, x_val.npy, y_val.npy).

Images are stored as uint8 pixel values (0-255) in NCHW order and fed to the graph as stored, as the original does.
"""
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np

import noise
from tracin.arrays import check_images, check_labels
from tracin.errors import InputError, MissingInputError
from tracin.formats import ARRAY_FILES, ARRAYS
from tracin.io import atomic_path, save_npy

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_CLASSES = tuple(str(i) for i in range(10))

class DatasetSpec:
    """What a data set is, and the training recipe the scripts default to for it."""

    def __init__(self, name, classes, input_shape, augment, train_defaults):
        self.name = name
        self.classes = classes
        self.input_shape = input_shape
        self.augment = augment
        self.train_defaults = train_defaults

    @property
    def n_classes(self):
        return len(self.classes)


SPECS = {
    # The original's recipe: batch 500, 270 epochs, warm-up + x0.1 steps, scale 0.8-1.2 and left-right flip (natural
    # images are mirror-symmetric). Kept (it cannot be tuned here) because it suits TracIn: lr 0.1 is expected to
    # hold off memorising the shuffled labels until the first x0.1 step (epoch 90), and lr weighting then gives the
    # checkpoints of that phase 10-1000x the weight of later, memorising ones; precise batch norm (train.py
    # default) removes the lagging-statistics blow-up behind lr 0.1's failure on digits. docs/: detection study.
    "cifar10": DatasetSpec(
        "cifar10", CIFAR10_CLASSES, (3, 32, 32),
        augment=dict(min_scale=0.8, max_scale=1.2, flip_lr=True),
        train_defaults=dict(train_batch_size=500, train_epochs=270, learning_rate=0.1, lr_schedule="step",
                            weight_decay=5e-4, nmaps=64)),
    # Digits are 8x8 handwriting, not mirror-symmetric (a flipped 2 is no 2): small rotations (+-0.15 rad, ~9 deg)
    # and +-10% scale, which keep the label. Chosen for TracIn's detection of shuffled labels (docs/, detection
    # study): a low peak lr with cosine decay learns the clean labels in a few epochs while fitting few of the
    # shuffled ones, which keeps their gradients large.
    "digits": DatasetSpec(
        "digits", DIGITS_CLASSES, (1, 8, 8),
        augment=dict(angle=0.15, min_scale=0.9, max_scale=1.1, flip_lr=False),
        train_defaults=dict(train_batch_size=64, train_epochs=30, learning_rate=0.01, lr_schedule="cosine",
                            weight_decay=5e-4, nmaps=16)),
}


def class_names(n_classes, dataset=None):
    spec = SPECS.get(dataset)
    if spec is not None and spec.n_classes == n_classes:
        return spec.classes
    return tuple(str(i) for i in range(n_classes))


# ----------------------------------------------------------------------------------------------------- CIFAR-10

def default_data_dir():
    from nnabla.utils.data_source_loader import get_data_home
    return get_data_home()


def md5sum(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _download(url, dest):
    """Fetch `url` to `dest` atomically; any network failure is a MissingInputError naming the file and where to put it."""
    import urllib.request

    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0)
                from tqdm import tqdm
                with tqdm(total=total or None, unit="B", unit_scale=True, desc=f"download {os.path.basename(dest)}") as bar:
                    for block in iter(lambda: r.read(1 << 20), b""):
                        f.write(block)
                        bar.update(len(block))
    except OSError as e:
        raise MissingInputError(f"cannot download {url} ({getattr(e, 'reason', e)}): put {CIFAR10_ARCHIVE} into "
                                f"{os.path.dirname(dest)}") from None


def cifar10_archive(data_dir=None, download=True, url=CIFAR10_URL, md5=CIFAR10_MD5):
    """Path of a verified cifar-10-python.tar.gz in `data_dir` (default: nnabla's data cache), downloading it if
    absent. A wrong checksum is an InputError; the bad file is left for the user to inspect."""
    data_dir = data_dir or default_data_dir()
    path = os.path.join(data_dir, CIFAR10_ARCHIVE)
    if not os.path.isfile(path):
        if not download:
            raise MissingInputError(f"{CIFAR10_ARCHIVE} not found in {data_dir}: put it there")
        os.makedirs(data_dir, exist_ok=True)
        _download(url, path)
    digest = md5sum(path)
    if digest != md5:
        raise InputError(f"{path} has MD5 {digest}, expected {md5}: the file is damaged or not the official "
                       f"archive; delete it and download {url} again")
    return path


def read_cifar10_archive(path):
    """Parse the official python-pickle archive: (x_train, y_train, x_test, y_test), x uint8 (N,3,32,32),
    y int64 (N,1)."""
    train_x, train_y, test_x, test_y = {}, {}, None, None
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                name = os.path.basename(member.name)
                if not (name.startswith("data_batch_") or name == "test_batch"):
                    continue
                batch = pickle.load(tar.extractfile(member), encoding="bytes")
                x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                y = np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1, 1)
                if name == "test_batch":
                    test_x, test_y = x, y
                else:
                    train_x[name], train_y[name] = x, y
    except (tarfile.TarError, pickle.UnpicklingError, KeyError, EOFError, ValueError) as e:
        raise InputError(f"{path} is not a readable CIFAR-10 python archive ({e}): delete it and download again") from None
    if not train_x or test_x is None:
        raise InputError(f"{path} lacks data_batch_* or test_batch: it is not the CIFAR-10 python archive")
    keys = sorted(train_x)  # data_batch_1 .. data_batch_5, in order
    return (np.concatenate([train_x[k] for k in keys]), np.concatenate([train_y[k] for k in keys]), test_x, test_y)


def write_cifar10_archive(path, members):
    """Write members [(file name, dict)], in the given order, as the official archive does: pickled (protocol 2)
    under cifar-10-batches-py/. The inverse of read_cifar10_archive, for tests and offline benchmarks."""
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members:
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def load_cifar10(data_dir=None):
    return read_cifar10_archive(cifar10_archive(data_dir))


# ------------------------------------------------------------------------------------------------------- digits

DIGITS_SPLIT_SEED = 0  # the train/validation split is fixed; --seed only changes the shuffled labels
DIGITS_VAL_FRACTION = 0.2


def load_digits_split():
    """scikit-learn's bundled 8x8 digits (1797 images, values 0-16) as uint8 0-255, split 80/20 per class with a
    fixed seed: (x_train, y_train, x_val, y_val)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = d.target.astype(np.int64).reshape(-1, 1)
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    val = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y[:, 0] == c)
        val[rng.choice(idx, int(round(len(idx) * DIGITS_VAL_FRACTION)), replace=False)] = True
    train_idx = np.flatnonzero(~val)
    train_idx = train_idx[rng.permutation(len(train_idx))]
    return x[train_idx], y[train_idx], x[val], y[val]


# ------------------------------------------------------------------------------------------------- array folders

def make_arrays(dataset, data_dir=None, shuffle_label=True, shuffle_rate=0.1, seed=0, noise_model="uniform"):
    """(the five arrays of the original layout for `dataset`, the noise record or None): `shuffle_rate` of every
    class's training labels corrupted by `noise_model` (tracin.noise), seeded by `seed`."""
    spec = SPECS[dataset]
    if dataset == "cifar10":
        x_train, y_train, x_val, y_val = load_cifar10(data_dir)
    else:
        x_train, y_train, x_val, y_val = load_digits_split()
    arrays = {"x_train": x_train, "y_train": y_train, "y_shuffle_train": y_train.copy(), "x_val": x_val,
              "y_val": y_val}
    if not shuffle_label:
        return arrays, None
    arrays["y_shuffle_train"], record = noise.corrupt(noise_model, y_train, shuffle_rate, spec.n_classes, seed,
                                                      x=x_train, dataset=dataset)
    return arrays, record


def save_arrays(folder, arrays):
    os.makedirs(folder, exist_ok=True)
    for key in ARRAYS:
        if key in arrays:
            save_npy(os.path.join(folder, key + ".npy"), arrays[key])


def _load(folder, name, required):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        if required:
            raise MissingInputError(f"{path} is missing: the array folder must be one written by train.py "
                                    f"({', '.join(ARRAY_FILES)})")
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path} is not a readable .npy array ({e}): rewrite the array folder with train.py") from None


def load_arrays(folder, need=ARRAY_FILES, optional=()):
    """Load and validate an array folder (check_images, check_labels, matching lengths and image shapes); every
    problem is an InputError naming the file. Labels come back as (N, 1) int64."""
    if not folder or not os.path.isdir(folder):
        raise MissingInputError(f"input folder '{folder}' does not exist: give the array folder train.py wrote")
    out = {}
    for name in tuple(need) + tuple(optional):
        arr = _load(folder, name, name in need)
        if arr is not None:
            out[name[:-4]] = arr
    for key in ("x_train", "x_val"):
        if key in out:
            check_images(out[key], f"{folder}/{key}.npy")
    for key, images in (("y_train", "x_train"), ("y_shuffle_train", "x_train"), ("y_val", "x_val")):
        if key in out:
            n = len(out[images]) if images in out else None
            out[key] = check_labels(out[key], None, f"{folder}/{key}.npy", n, f"{images}.npy").reshape(-1, 1)
    if "x_train" in out and "x_val" in out and out["x_train"].shape[1:] != out["x_val"].shape[1:]:
        raise InputError(f"{folder}/x_val.npy holds images of shape {out['x_val'].shape[1:]} but x_train.npy "
                         f"{out['x_train'].shape[1:]}: the arrays come from different runs")
    return out
