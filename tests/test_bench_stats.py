"""bench.paired and bench.per_class statistics: AUROC by ranks against scikit-learn, the paired bootstrap on known
gaps, per-class recall and within-label normalisation on hand-made rankings."""
import numpy as np
from sklearn.metrics import roc_auc_score

from bench import paired, per_class


def test_auroc_by_ranks_equals_scikit_learn_with_ties():
    rng = np.random.RandomState(0)
    positive = rng.rand(300) < 0.2
    scores = np.round(rng.rand(300) + positive * 0.3, 1)  # rounded: many ties
    assert paired.auroc(scores, positive) == roc_auc_score(positive, scores)


def test_recall_at_k_counts_positives_among_the_k_highest():
    positive = np.array([True, False, True, False, False])
    assert paired.recall_k(np.array([5.0, 4.0, 1.0, 3.0, 2.0]), positive) == 0.5
    assert paired.recall_k(np.array([5.0, 1.0, 4.0, 3.0, 2.0]), positive) == 1.0


def test_paired_bootstrap_zero_for_the_same_ranking_and_resolves_a_clear_gap():
    rng = np.random.RandomState(1)
    runs = []
    for _ in range(3):
        positive = rng.rand(400) < 0.1
        runs.append(({"good": positive + 0.5 * rng.rand(400), "noise": rng.rand(400)}, positive))
    same = paired.paired(runs, "good", "good", 50, np.random.RandomState(0))
    assert same["mean"] == [0.0, 0.0] and same["lo"] == [0.0, 0.0] and same["hi"] == [0.0, 0.0]
    gap = paired.paired(runs, "good", "noise", 50, np.random.RandomState(0))
    assert gap["ahead"] == [3, 3] and gap["lo"][0] > 0.3 and paired.verdict(gap, 0) == "A ahead"
    assert paired.verdict(paired.paired(runs, "noise", "good", 50, np.random.RandomState(0)), 1) == "B ahead"


def test_per_class_recall_and_within_label_normalisation():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    y = np.array([0, 1, 1, 0, 2, 2, 2, 3])  # samples 1 and 3 mislabeled (true classes 0 and 1)
    positive = y != y_true
    perfect = positive + np.linspace(0, 0.1, 8)
    rec = per_class.class_recall(perfect, positive, y_true)
    assert rec[:2] == [1.0, 1.0] and all(np.isnan(rec[2:]))
    assert per_class.class_recall(-perfect, positive, y_true)[:2] == [0.0, 0.0]
    z = per_class.within_label(np.arange(8.0), y, "z")
    for c in np.unique(y):
        assert abs(z[y == c].mean()) < 1e-12
        assert (y == c).sum() == 1 or abs(z[y == c].std() - 1) < 1e-12
    pct = per_class.within_label(np.arange(8.0), y, "percentile")
    assert pct[y == 2].tolist() == [1 / 3, 2 / 3, 1.0] and pct[7] == 1.0
    assert per_class.label_auroc(perfect, positive, y)[:2] == [1.0, 1.0]
