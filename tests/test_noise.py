"""Label-noise models: exact per-class counts, never the own class, seeding, the pair maps, the instance choice
against a brute-force reference, and uniform = the original shuffling."""
import numpy as np
import pytest

import noise


def labels(n_per_class=(30, 41, 25, 50, 7, 19, 33, 40, 28, 12), seed=0):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]).astype(np.int64)
    return np.random.RandomState(seed).permutation(y).reshape(-1, 1)


def blobs(n_per_class=40, n_classes=4, seed=0):
    """Images (N, 1, 4, 4) of overlapping class blobs: some samples sit between classes (ambiguous)."""
    rng = np.random.RandomState(seed)
    centres = rng.uniform(0, 255, size=(n_classes, 16))
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = np.clip(centres[y] + rng.normal(0, 60, size=(len(y), 16)), 0, 255).astype(np.uint8)
    return x.reshape(-1, 1, 4, 4), y.astype(np.int64)


def corrupted(model, y, rate, seed):
    """uniform or pair noise on 10 digit classes (instance needs images: its own tests below)."""
    return noise.corrupt(model, y, rate, 10, seed, dataset="digits")[0]


@pytest.mark.parametrize("model", ["uniform", "pair"])
@pytest.mark.parametrize("rate", [0.1, 0.2, 0.4, 0.5, 1.0])
def test_exact_counts_and_never_own_class(model, rate):
    y = labels()
    noisy = corrupted(model, y, rate, seed=3)
    assert noisy.shape == y.shape and noisy.dtype == y.dtype
    for c in range(10):
        members = y[:, 0] == c
        assert (noisy[members, 0] != c).sum() == int(round(rate * members.sum()))
    assert np.all(y == labels())  # input untouched


def test_instance_exact_counts_and_never_own_class():
    x, y = blobs()
    for rate in (0.1, 0.2, 0.45):
        noisy = noise.instance(y, rate, 4, seed=0, x=x)
        for c in range(4):
            assert (noisy[y == c] != c).sum() == int(round(rate * 40))


@pytest.mark.parametrize("model", ["uniform", "pair"])
def test_seeded(model):
    y = labels()
    a, b, c = (corrupted(model, y, 0.3, seed=s) for s in (5, 5, 6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_instance_seeded():
    x, y = blobs()
    a, b = noise.instance(y, 0.2, 4, 7, x), noise.instance(y, 0.2, 4, 7, x)
    assert np.array_equal(a, b)
    pa, pb = noise.reference_probabilities(x, y, 4, 7), noise.reference_probabilities(x, y, 4, 8)
    assert not np.allclose(pa, pb)  # the seed moves the folds, hence the out-of-fold probabilities


def original_shuffling(y, rate, n_classes, seed):
    """The suite's first shuffling (the original's cycled-then-permuted spread, seeded), kept as the reference."""
    y = np.asarray(y).reshape(-1, 1)
    rng = np.random.RandomState(seed)
    out = y.copy()
    for c in range(n_classes):
        idx = np.flatnonzero(y[:, 0] == c)
        k = int(round(rate * len(idx)))
        if k == 0:
            continue
        chosen = rng.choice(idx, k, replace=False)
        others = [j for j in range(n_classes) if j != c]
        targets = np.array([others[j % len(others)] for j in range(k)], dtype=y.dtype)
        out[np.sort(chosen), 0] = targets[rng.permutation(k)]
    return out


def test_uniform_equals_the_original_shuffling():
    y = labels()
    for rate, seed in ((0.1, 0), (0.4, 1), (0.25, 17), (1.0, 3)):
        assert np.array_equal(noise.uniform(y, rate, 10, seed).reshape(-1, 1), original_shuffling(y, rate, 10, seed))


def test_uniform_golden():
    """Pinned output: the original shuffling must never change for a given seed (cached runs depend on it)."""
    y = np.repeat(np.arange(4), 5)
    assert noise.uniform(y, 0.4, 4, 0).tolist() == [1, 0, 2, 0, 0, 0, 1, 2, 1, 1, 2, 1, 2, 0, 2, 0, 3, 3, 1, 3]


def test_uniform_spreads_evenly_over_other_classes():
    y = np.zeros(90, dtype=np.int64)
    noisy = noise.uniform(np.concatenate([y, np.ones(9, dtype=np.int64)]), 1.0, 10, 0)
    assert np.array_equal(np.bincount(noisy[:90], minlength=10), [0] + [10] * 9)


@pytest.mark.parametrize("dataset", sorted(noise.PAIR_MAPS))
def test_pair_map_respected(dataset):
    mapping = noise.PAIR_MAPS[dataset]
    y = labels()
    noisy = noise.pair(y, 0.3, 10, 0, mapping)
    for c in range(10):
        members = y[:, 0] == c
        moved = noisy[members, 0][noisy[members, 0] != c]
        if c in mapping:
            assert len(moved) == int(round(0.3 * members.sum())) and np.all(moved == mapping[c])
        else:
            assert len(moved) == 0


def test_cifar10_map_is_the_standard_one():
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    named = {classes[c]: classes[t] for c, t in noise.CIFAR10_PAIRS.items()}
    assert named == {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}


def test_instance_picks_the_most_ambiguous_brute_force():
    rng = np.random.RandomState(0)
    n, k_classes = 120, 5
    y = rng.randint(0, k_classes, n)
    probs = rng.dirichlet(np.ones(k_classes), size=n)
    rate = 0.3
    noisy = noise.most_plausible_wrong(y, rate, probs)
    expected = y.copy()
    for c in range(k_classes):
        members = [i for i in range(n) if y[i] == c]
        best = {}
        for i in members:  # the wrong class of highest probability, and that probability
            j = max((j for j in range(k_classes) if j != c), key=lambda j: (probs[i, j], -j))
            best[i] = (probs[i, j], j)
        k = int(round(rate * len(members)))
        for i in sorted(members, key=lambda i: (-best[i][0], i))[:k]:
            expected[i] = best[i][1]
    assert np.array_equal(noisy, expected)


def test_instance_uses_out_of_fold_reference_probabilities():
    x, y = blobs()
    probs = noise.reference_probabilities(x, y, 4, seed=2)
    assert probs.shape == (160, 4) and np.allclose(probs.sum(1), 1.0)
    assert np.array_equal(noise.instance(y, 0.2, 4, 2, x), noise.most_plausible_wrong(y, 0.2, probs))
    # out-of-fold: refitting on everything (the sample's own label included) is more confident in that label
    from sklearn.linear_model import LogisticRegression
    pixels = x.reshape(len(x), -1) / 255.0
    in_fold = LogisticRegression(max_iter=5000).fit(pixels, y).predict_proba(pixels)
    assert in_fold[np.arange(160), y].mean() > probs[np.arange(160), y].mean()


def test_instance_chosen_samples_are_the_ambiguous_ones():
    x, y = blobs()
    noisy = noise.instance(y, 0.2, 4, 0, x)
    probs = noise.reference_probabilities(x, y, 4, 0)
    own = probs[np.arange(len(y)), y]
    flipped = noisy != y
    assert own[flipped].max() <= np.median(own[~flipped])
    wrong = probs.copy()
    wrong[np.arange(len(y)), y] = -1
    assert np.array_equal(noisy[flipped], wrong[flipped].argmax(1))


def test_record():
    y = labels()
    noisy, rec = noise.corrupt("pair", y, 0.2, 10, 4, dataset="mnist")
    assert rec["model"] == "pair" and rec["rate"] == 0.2 and rec["seed"] == 4
    assert rec["map"] == {str(c): t for c, t in noise.DIGITS_PAIRS.items()}
    assert rec["changed"] == int((noisy != y).sum())
    assert rec["changed_per_class"] == [int(round(0.2 * n)) for n in np.bincount(y[:, 0])]
    x, yb = blobs()
    assert "logistic regression" in noise.corrupt("instance", yb, 0.1, 4, 0, x=x)[1]["reference"]


@pytest.mark.parametrize("call, message", [
    (lambda: noise.uniform(np.array([0, 1, 2]), 1.5, 3, 0), "between 0 and 1"),
    (lambda: noise.uniform(np.array([0, 1, 5]), 0.5, 3, 0), "0..2"),
    (lambda: noise.uniform(np.array([0.0, 1.0]), 0.5, 3, 0), "integers"),
    (lambda: noise.pair(np.array([0, 1]), 0.5, 2, 0, {0: 0}), "to itself"),
    (lambda: noise.corrupt("pair", np.array([0, 1]), 0.5, 2, 0, dataset="svhn"), "no pair map"),
    (lambda: noise.corrupt("instance", np.array([0, 1]), 0.5, 2, 0), "needs the images"),
    (lambda: noise.corrupt("gaussian", np.array([0, 1]), 0.5, 2, 0), "unknown noise model"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("model", ["pair", "instance"])
def test_train_applies_the_noise_model_and_records_it(tmp_path, model):
    """train.py --noise: the saved noisy labels are exactly tracin.noise's, and the manifest records the noise."""
    import json

    from conftest import run_main

    import datasets
    run_main("train.py", "--dataset", "digits", "--noise", model, "--shuffle_rate", "0.2", "--seed", "4",
             "--output", tmp_path / "data", "--model_save_path", tmp_path / "ckpt", "--monitor-path", tmp_path / "m",
             "--train_epochs", "1", "--nmaps", "4", "-c", "cpu")
    x, y, _, _ = datasets.load_digits_split()
    expected, _ = noise.corrupt(model, y, 0.2, 10, 4, x=x, dataset="digits")
    assert np.array_equal(np.load(tmp_path / "data" / "y_shuffle_train.npy"), expected)
    recorded = json.load(open(tmp_path / "ckpt" / "checkpoints.json"))["train"]["noise"]
    assert recorded["model"] == model and recorded["seed"] == 4 and recorded["rate"] == 0.2
    assert recorded["changed"] == int((expected != y).sum())
