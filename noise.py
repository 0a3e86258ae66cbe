"""Label-noise models: seeded, reproducible corruption of clean labels, with one meaning of `rate` for all of them.

In every class c, exactly round(rate * |c|) samples get a label other than c (never their own class); the models
differ only in which samples are chosen and which wrong class they get:

  uniform   random samples, their wrong labels spread evenly over the other classes (the original example's
            shuffling: cycled through the other classes, then permuted).
  pair      random samples, all given the one class that c is most easily confused with (a fixed map per data set,
            PAIR_MAPS). A class the map leaves out stays clean.
  instance  the samples a reference model finds most ambiguous, each given its most plausible wrong class. The
            reference is a multinomial logistic regression on the pixels, and every sample's probabilities are
            out-of-fold (5 stratified folds, seeded), so no sample is judged by a model that saw its label. It is
            deliberately not the network being trained: errors a human makes on ambiguous images, not the
            network's own mistakes. The seed only moves the fold split, so seeds change the choice at the
            margin: the most ambiguous samples are corrupted under every seed.

Labels are integer arrays of shape (N,) or (N, 1); every function returns a new array of the same shape and dtype
and leaves its input untouched. Bad input raises ValueError.
"""
import numpy as np

MODELS = ("uniform", "pair", "instance")

# Handwritten digits (scikit-learn's 8x8 digits and MNIST): each digit goes to the one it is most often written
# like. 1/7, 4/9, 3/5/8 and 0/6 are the classic human confusions; where a digit has several, the pick follows the
# wrong-class probability mass of a 5-fold logistic regression on both data sets (3 -> 8 is the largest for 8x8
# digits, 5 -> 3 for MNIST, 6 -> 5 for MNIST).
DIGITS_PAIRS = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 3, 6: 5, 7: 1, 8: 3, 9: 4}
# CIFAR-10: the standard asymmetric noise (Patrini et al. 2017): truck -> automobile, bird -> airplane,
# deer -> horse, cat <-> dog. Airplane, automobile, frog, horse and ship stay clean, so `rate` is the rate of the
# five mapped classes and the data set as a whole has rate / 2 of its labels corrupted.
CIFAR10_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
PAIR_MAPS = {"digits": DIGITS_PAIRS, "mnist": DIGITS_PAIRS, "cifar10": CIFAR10_PAIRS}

REFERENCE_FOLDS = 5
REFERENCE_C = 1.0  # scikit-learn's default regularisation; pixels scaled to [0, 1]


def _check(y, rate, n_classes):
    y = np.asarray(y)
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != 1):
        raise ValueError(f"labels must have shape (N,) or (N, 1), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be between 0 and 1, got {rate}")
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes to corrupt labels, got {n_classes}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {y.min()}..{y.max()}")
    return y.reshape(-1)


def per_class_count(n, rate):
    """How many of a class of n samples are corrupted: round(rate * n), Python's round (half to even)."""
    return int(round(rate * n))


def uniform(y, rate, n_classes, seed):
    """The original example's shuffling: in every class c, round(rate * |c|) samples chosen at random get the
    other classes in turn (cycled through them in order, then permuted among the chosen samples)."""
    flat = _check(y, rate, n_classes)
    rng = np.random.RandomState(seed)
    out = flat.copy()
    for c in range(n_classes):
        idx = np.flatnonzero(flat == c)
        k = per_class_count(len(idx), rate)
        if k == 0:
            continue
        chosen = rng.choice(idx, k, replace=False)
        others = [j for j in range(n_classes) if j != c]
        targets = np.array([others[j % len(others)] for j in range(k)], dtype=flat.dtype)
        out[np.sort(chosen)] = targets[rng.permutation(k)]
    return out.reshape(np.shape(y))


def check_pair_map(mapping, n_classes):
    """A pair map {class: confusable class}: keys and values in 0..n_classes-1, never a class to itself."""
    for c, t in mapping.items():
        if not (0 <= c < n_classes and 0 <= t < n_classes):
            raise ValueError(f"pair map {c} -> {t} is outside the {n_classes} classes 0..{n_classes - 1}")
        if c == t:
            raise ValueError(f"pair map sends class {c} to itself")


def pair(y, rate, n_classes, seed, mapping):
    """Class-conditional pair flips: in every class c of `mapping`, round(rate * |c|) samples chosen at random
    get mapping[c]; classes not in `mapping` stay clean."""
    flat = _check(y, rate, n_classes)
    check_pair_map(mapping, n_classes)
    rng = np.random.RandomState(seed)
    out = flat.copy()
    for c in range(n_classes):
        if c not in mapping:
            continue
        idx = np.flatnonzero(flat == c)
        k = per_class_count(len(idx), rate)
        if k:
            out[rng.choice(idx, k, replace=False)] = mapping[c]
    return out.reshape(np.shape(y))


def reference_probabilities(x, y, n_classes, seed, n_folds=REFERENCE_FOLDS):
    """Out-of-fold class probabilities (N, n_classes) of the reference model: a multinomial logistic regression
    on the pixels scaled to [0, 1], fitted on the clean labels of the other folds (stratified, seeded)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    flat = _check(y, 0.0, n_classes)
    x = np.asarray(x)
    if len(x) != len(flat):
        raise ValueError(f"{len(x)} images for {len(flat)} labels")
    if np.bincount(flat, minlength=n_classes).min() < n_folds:
        raise ValueError(f"every class needs at least {n_folds} samples for the {n_folds}-fold reference model")
    pixels = x.reshape(len(x), -1).astype(np.float64) / max(float(x.max()), 1.0)
    probs = np.zeros((len(flat), n_classes))
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(pixels, flat)
    for train_idx, test_idx in folds:
        clf = LogisticRegression(C=REFERENCE_C, max_iter=5000).fit(pixels[train_idx], flat[train_idx])
        probs[np.ix_(test_idx, clf.classes_)] = clf.predict_proba(pixels[test_idx])
    return probs


def most_plausible_wrong(y, rate, probs):
    """Instance-dependent flips from given class probabilities (N, classes): in every class c, the
    round(rate * |c|) samples with the highest probability of some wrong class (ties: lower index first) get
    that wrong class (ties: the lower class)."""
    probs = np.asarray(probs, dtype=np.float64)
    flat = _check(y, rate, probs.shape[1] if probs.ndim == 2 else 0)
    if probs.shape != (len(flat), probs.shape[1]):
        raise ValueError(f"probabilities of shape {probs.shape} do not fit {len(flat)} labels")
    wrong = probs.copy()
    wrong[np.arange(len(flat)), flat] = -np.inf
    best = wrong.argmax(1)
    plausibility = wrong[np.arange(len(flat)), best]
    out = flat.copy()
    for c in range(probs.shape[1]):
        idx = np.flatnonzero(flat == c)
        k = per_class_count(len(idx), rate)
        top = idx[np.argsort(-plausibility[idx], kind="stable")[:k]]
        out[top] = best[top]
    return out.reshape(np.shape(y))


def instance(y, rate, n_classes, seed, x):
    """Instance-dependent noise: most_plausible_wrong with the reference model's out-of-fold probabilities."""
    return most_plausible_wrong(y, rate, reference_probabilities(x, y, n_classes, seed))


def corrupt(model, y, rate, n_classes, seed, x=None, dataset=None):
    """(noisy labels, record) for a noise model by name; `x` is needed by instance, `dataset` (a PAIR_MAPS key)
    by pair. The record describes the noise for a manifest."""
    if model == "uniform":
        noisy = uniform(y, rate, n_classes, seed)
    elif model == "pair":
        if dataset not in PAIR_MAPS:
            raise ValueError(f"no pair map for data set {dataset!r} (known: {', '.join(sorted(PAIR_MAPS))})")
        noisy = pair(y, rate, n_classes, seed, PAIR_MAPS[dataset])
    elif model == "instance":
        if x is None:
            raise ValueError("instance noise needs the images: its reference model classifies them")
        noisy = instance(y, rate, n_classes, seed, x)
    else:
        raise ValueError(f"unknown noise model {model!r} (choose from {', '.join(MODELS)})")
    return noisy, record(model, rate, seed, y, noisy, n_classes, dataset)


def record(model, rate, seed, y, noisy, n_classes, dataset=None):
    """JSON-ready description of applied noise: model, rate, seed, the model's parameters and the counts."""
    y, noisy = np.asarray(y).reshape(-1), np.asarray(noisy).reshape(-1)
    changed = y != noisy
    out = {"model": model, "rate": float(rate), "seed": int(seed),
           "changed": int(changed.sum()),
           "changed_per_class": np.bincount(y[changed], minlength=n_classes).tolist()}
    if model == "pair":
        out["map"] = {str(c): int(t) for c, t in sorted(PAIR_MAPS[dataset].items())}
        out["dataset"] = dataset
    if model == "instance":
        out["reference"] = (f"{REFERENCE_FOLDS}-fold out-of-fold logistic regression on pixels scaled to [0, 1] "
                            f"(C={REFERENCE_C}, folds stratified and seeded by the seed)")
    return out
