"""Data: seeded label shuffling, the CIFAR-10 archive reader and checksum, digits, array folders."""
import os

import numpy as np
import pytest

import datasets
import noise
from tracin.arrays import check_labels
from tracin.errors import InputError

# --------------------------------------------------------------------------------------------- shuffling

@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 1.0])
def test_shuffle_moves_exact_share_of_each_class_to_other_classes(rate):
    y = np.repeat(np.arange(10), [50, 37, 61, 40, 40, 45, 52, 33, 48, 70]).reshape(-1, 1)
    y = y[np.random.RandomState(1).permutation(len(y))]
    noisy = noise.uniform(y, rate, 10, seed=3)
    assert noisy.shape == y.shape and noisy.dtype == y.dtype
    for c in range(10):
        members = y[:, 0] == c
        moved = members & (noisy[:, 0] != y[:, 0])
        assert moved.sum() == int(round(rate * members.sum()))
        targets = np.bincount(noisy[moved, 0], minlength=10)
        assert targets[c] == 0  # never to its own class
        if moved.sum():  # spread evenly over the other 9 classes
            assert targets[np.arange(10) != c].max() - targets[np.arange(10) != c].min() <= 1
    # the set of labels of unmoved samples is untouched
    assert np.all(noisy[noisy[:, 0] == y[:, 0]] == y[noisy[:, 0] == y[:, 0]])


def test_shuffle_is_reproducible_and_seed_dependent():
    y = np.arange(1000).reshape(-1, 1) % 10
    a = noise.uniform(y, 0.1, 10, seed=7)
    b = noise.uniform(y, 0.1, 10, seed=7)
    c = noise.uniform(y, 0.1, 10, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a != y).sum() == (c != y).sum() == 100


# ------------------------------------------------------------------------------------------------ digits

def test_digits_split_is_fixed_and_complete():
    x1, y1, xv1, yv1 = datasets.load_digits_split()
    x2, y2, _, _ = datasets.load_digits_split()
    assert x1.shape == (1438, 1, 8, 8) and xv1.shape == (359, 1, 8, 8)
    assert x1.dtype == np.uint8 and x1.max() == 255 and x1.min() == 0
    assert y1.shape == (1438, 1) and set(np.unique(y1)) == set(range(10))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    # every image appears exactly once across the split
    from sklearn.datasets import load_digits
    assert len(y1) + len(yv1) == len(load_digits().target)


def test_make_arrays_writes_original_layout(tmp_path):
    arrays, record = datasets.make_arrays("digits", shuffle_rate=0.1, seed=0)
    assert record["model"] == "uniform" and record["changed"] == (arrays["y_shuffle_train"] != arrays["y_train"]).sum()
    datasets.save_arrays(tmp_path, arrays)
    assert sorted(os.listdir(tmp_path)) == sorted(datasets.ARRAY_FILES)
    back = datasets.load_arrays(str(tmp_path))
    for k, v in arrays.items():
        assert np.array_equal(back[k], v)
    moved = (back["y_shuffle_train"] != back["y_train"]).sum()
    assert moved == sum(int(round(0.1 * (back["y_train"] == c).sum())) for c in range(10))


def test_load_arrays_rejects_mismatched_lengths(tmp_path):
    arrays, _ = datasets.make_arrays("digits", seed=0)
    arrays["y_shuffle_train"] = arrays["y_shuffle_train"][:-1]
    datasets.save_arrays(tmp_path, arrays)
    with pytest.raises(InputError, match="y_shuffle_train.npy has 1437 labels for 1438 images"):
        datasets.load_arrays(str(tmp_path))


def test_check_labels_names_range():
    with pytest.raises(InputError, match=r"labels in \[0, 12\].*10 classes"):
        check_labels(np.array([[0], [12]]), 10, "y.npy")


# ---------------------------------------------------------------------------------------------- CIFAR-10

def _tiny_cifar_archive(path, n_per_batch=4, seed=0):
    """An archive in the exact official layout (cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta),
    with tiny batches."""
    rng = np.random.RandomState(seed)
    expect = {}
    members = [("batches.meta", {b"label_names": [c.encode() for c in datasets.CIFAR10_CLASSES]})]
    # written out of order on purpose: the reader must order data_batch_1..5
    for i in [3, 1, 5, 2, 4]:
        x = rng.randint(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        y = list(rng.randint(0, 10, size=n_per_batch))
        members.append((f"data_batch_{i}", {b"batch_label": b"training batch", b"data": x, b"labels": y,
                                            b"filenames": [b"f"] * n_per_batch}))
        expect[i] = (x, y)
    xt = rng.randint(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
    yt = list(rng.randint(0, 10, size=n_per_batch))
    members.append(("test_batch", {b"batch_label": b"testing batch", b"data": xt, b"labels": yt,
                                   b"filenames": [b"f"] * n_per_batch}))
    datasets.write_cifar10_archive(path, members)
    x_train = np.concatenate([expect[i][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    y_train = np.concatenate([expect[i][1] for i in range(1, 6)]).reshape(-1, 1)
    return x_train, y_train, xt.reshape(-1, 3, 32, 32), np.array(yt).reshape(-1, 1)


def test_read_cifar10_archive_parses_official_format(tmp_path):
    path = tmp_path / datasets.CIFAR10_ARCHIVE
    expected = _tiny_cifar_archive(path)
    got = datasets.read_cifar10_archive(str(path))
    for e, g in zip(expected, got):
        assert np.array_equal(e, g)
    assert got[0].dtype == np.uint8 and got[0].shape == (20, 3, 32, 32) and got[1].shape == (20, 1)
    # channel-major layout: the first 1024 bytes of a row are the red plane
    raw0 = expected[0].reshape(20, 3072)[0]
    assert np.array_equal(got[0][0, 0].ravel(), raw0[:1024])


def test_md5_checked_and_cached_download(tmp_path):
    src = tmp_path / "mirror" / datasets.CIFAR10_ARCHIVE
    src.parent.mkdir()
    _tiny_cifar_archive(src)
    digest = datasets.md5sum(str(src))
    cache = tmp_path / "cache"
    # "download" from a file:// URL into the cache, verify, then reuse the cached file
    path = datasets.cifar10_archive(str(cache), url=src.as_uri(), md5=digest)
    assert path == str(cache / datasets.CIFAR10_ARCHIVE) and datasets.md5sum(path) == digest
    assert datasets.cifar10_archive(str(cache), download=False, md5=digest) == path
    # the official checksum rejects the tiny archive, naming both digests
    with pytest.raises(InputError, match=f"MD5 {digest}, expected {datasets.CIFAR10_MD5}"):
        datasets.cifar10_archive(str(cache))


def test_offline_without_archive_names_file_and_place(tmp_path):
    missing = (tmp_path / "nowhere" / "x.tar.gz").as_uri()
    with pytest.raises(InputError) as e:
        datasets.cifar10_archive(str(tmp_path / "cache"), url=missing)
    msg = str(e.value)
    assert datasets.CIFAR10_ARCHIVE in msg and str(tmp_path / "cache") in msg and "--" not in msg  # no flags
    assert not os.path.exists(tmp_path / "cache" / datasets.CIFAR10_ARCHIVE)  # no partial file left


def test_corrupt_archive_is_a_clear_error(tmp_path):
    path = tmp_path / datasets.CIFAR10_ARCHIVE
    path.write_bytes(b"not a tar")
    with pytest.raises(InputError, match="not a readable CIFAR-10 python archive"):
        datasets.read_cifar10_archive(str(path))
