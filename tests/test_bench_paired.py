"""bench.paired's statistics: AUROC by ranks against scikit-learn, and the paired bootstrap on known gaps."""
import numpy as np
from sklearn.metrics import roc_auc_score

from bench import paired


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
