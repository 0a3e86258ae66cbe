"""Rankings the suite's TracIn score is compared with, and the metrics of a ranking (benchmarks only).

Every ranking is an array of scores, one per training sample, higher = more likely mislabeled:
  loss          cross-entropy of the noisy label at the last checkpoint (calculate_score.py writes it)
  AUM           area under the margin (Pleiss et al., NeurIPS 2020): the mean over checkpoints of the assigned
                label's logit minus the largest other logit; its negative, since a low margin is suspicious. The
                logits are the checkpoints' inference-mode logits, the ones TracIn scores.
  confident     confident learning (Northcutt et al., JAIR 2021) through cleanlab: 1 - label quality
  learning      (self-confidence) from out-of-fold probabilities, 5 folds stratified on the noisy labels, of
                either a logistic regression on the pixels or our own network trained by train.py per fold
"""
import json
import os

import numpy as np

N_FOLDS = 5


# ----------------------------------------------------------------------------------------------------- metrics

def recall_at_k(scores, mislabeled, k=None):
    """Fraction of the mislabeled samples among the k highest scores (ties: lower index first); k defaults to
    the number of mislabeled samples, where recall equals precision."""
    mislabeled = np.asarray(mislabeled, dtype=bool)
    k = int(mislabeled.sum()) if k is None else int(k)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return float(mislabeled[order[:k]].sum() / max(int(mislabeled.sum()), 1))


def metrics(scores, mislabeled):
    """AUROC, recall at k = number mislabeled, and average precision of one ranking."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or inf")
    return {"auroc": float(roc_auc_score(mislabeled, scores)), "recall_k": recall_at_k(scores, mislabeled),
            "ap": float(average_precision_score(mislabeled, scores))}


# ------------------------------------------------------------------------------------- logits of checkpoints

def read_h5_params(path):
    """{name: array} of an nnabla parameter file."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def checkpoint_logits(ckpt_dir, x, epochs=None, batch_size=500):
    """Inference-mode logits (K, N, classes) and squared penultimate-feature norms (K, N) of the checkpoints
    listed in ckpt_dir/checkpoints.json (all but the initialisation, or `epochs`), with their epochs."""
    import nnabla as nn

    from models import build
    with open(os.path.join(ckpt_dir, "checkpoints.json")) as f:
        manifest = json.load(f)
    entries = [c for c in manifest["checkpoints"] if (c["epoch"] in epochs if epochs else c["epoch"] > 0)]
    bs = min(batch_size, len(x))
    with nn.parameter_scope(f"bench_logits_{bs}"):
        image = nn.Variable((bs,) + tuple(manifest["model"]["input_shape"]))
        logits_var, feats_var = build(manifest["model"], image, test=True)
        params = nn.get_parameters(grad_only=False)
    logits = np.zeros((len(entries), len(x), manifest["model"]["n_classes"]), dtype=np.float32)
    feat_sq = np.zeros((len(entries), len(x)), dtype=np.float64)
    for i, c in enumerate(entries):
        stored = read_h5_params(os.path.join(ckpt_dir, c["params"]))
        for name, var in params.items():
            var.d = stored[name]
        for start in range(0, len(x), bs):
            xb = x[start:start + bs].astype(np.float32)
            m = len(xb)
            image.d = np.concatenate([xb, np.repeat(xb[:1], bs - m, axis=0)]) if m < bs else xb
            nn.forward_all([logits_var, feats_var], clear_buffer=True)
            logits[i, start:start + m] = logits_var.d[:m]
            feat_sq[i, start:start + m] = (feats_var.d[:m].reshape(m, -1).astype(np.float64) ** 2).sum(1)
    return [c["epoch"] for c in entries], logits, feat_sq


def softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def margins(logits, y):
    """Assigned-label logit minus the largest other logit, per checkpoint: (K, N) from logits (K, N, C)."""
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(logits.shape[1])
    assigned = logits[:, rows, y]
    other = logits.copy()
    other[:, rows, y] = -np.inf
    return assigned - other.max(axis=2)


def aum_scores(logits, y):
    """Negative area under the margin: higher = more suspicious."""
    return -margins(logits, y).mean(axis=0)


def aum_probability_scores(logits, y):
    """AUM with the margin taken on softmax probabilities instead of logits (bounded, like TracIn's last-layer
    gradient p - y): an ablation that shows how much of AUM comes from the logits' unbounded scale."""
    return -margins(softmax(np.asarray(logits, dtype=np.float64)), y).mean(axis=0)


# ------------------------------------------------------------------------------------------ confident learning

def folds(y, seed, n_folds=N_FOLDS):
    """[(train_idx, test_idx)] of stratified folds on the noisy labels, seeded."""
    from sklearn.model_selection import StratifiedKFold
    return list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def cleanlab_scores(y, probs):
    """1 - cleanlab's label quality (self-confidence, its default): higher = more likely mislabeled."""
    from cleanlab.rank import get_label_quality_scores
    return 1.0 - get_label_quality_scores(y, probs)


def knn_oof(x, y, seed, n_classes, k=10):
    """Out-of-fold probabilities of a distance-weighted k-nearest-neighbour vote on pixels / max, with the folds
    of noise.reference_probabilities: a reference model for instance noise of another family than the
    logistic regression of confident learning."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier
    flat = x.reshape(len(x), -1).astype(np.float64) / max(float(x.max()), 1.0)
    probs = np.zeros((len(y), n_classes))
    for train_idx, test_idx in StratifiedKFold(5, shuffle=True, random_state=seed).split(flat, y):
        clf = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(flat[train_idx], y[train_idx])
        probs[np.ix_(test_idx, clf.classes_)] = clf.predict_proba(flat[test_idx])
    return probs


def logistic_oof(x, y, seed, n_classes):
    """Out-of-fold probabilities of a logistic regression (scikit-learn defaults, C=1) on pixels / 255."""
    from sklearn.linear_model import LogisticRegression
    flat = x.reshape(len(x), -1).astype(np.float64) / 255.0
    probs = np.zeros((len(y), n_classes))
    for train_idx, test_idx in folds(y, seed):
        clf = LogisticRegression(C=1.0, max_iter=5000).fit(flat[train_idx], y[train_idx])
        probs[np.ix_(test_idx, clf.classes_)] = clf.predict_proba(flat[test_idx])
    return probs
