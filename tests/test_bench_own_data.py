"""bench.own_data's instruments: the metrics of a label_issues.csv against the planted truth (hand-computed), the
goal check of the summary, the generated folders' planted share, and flags refused before anything is written."""
import csv
import json

import numpy as np
import pytest

from bench import own_data
from bench.folders import SHAPES, write_folder


def write_review(folder, rows, validation):
    folder.mkdir()
    with open(folder / "label_issues.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "suggested_label", "is_label_issue"])
        w.writerows(rows)
    (folder / "metrics.json").write_text(json.dumps({"validation": validation, "estimated_label_issues": 2}))


def test_measure_against_hand_computed_values(tmp_path):
    # 10 files, most suspicious first; moved: a (true 1), c (true 0), j (true 2)
    truth = {f"{c}/{n}.png": (t, c) for n, c, t in [("a", 0, 1), ("b", 0, 0), ("c", 1, 0), ("d", 1, 1), ("e", 2, 2),
                                                     ("f", 2, 2), ("g", 0, 0), ("h", 1, 1), ("i", 2, 2),
                                                     ("j", 0, 2)]}
    rows = [[f, "train" if i < 8 else "validation", s, flag] for i, (f, s, flag) in
            enumerate(zip(truth, ["1", "1", "2", "0", "0", "1", "1", "0", "1", "2"], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]))]
    write_review(tmp_path / "review", rows, {"accuracy": 0.8, "chance": 0.4, "trusted": True})
    m = own_data.measure(str(tmp_path / "review"), truth)
    # moved at ranks 1, 3, 10 of 10: pairs (moved above unmoved) = 7 + 6 + 0 of 3 x 7
    assert m["auroc"] == pytest.approx(13 / 21)
    assert (m["top_k"], m["moved_in_top"], m["share_moved_in_top"]) == (1, 1, pytest.approx(1 / 3))
    assert m["share_true_suggested"] == 1.0  # a: suggested 1, its true class
    assert (m["flag_precision"], m["flag_recall"]) == (0.5, pytest.approx(1 / 3))  # a and b flagged
    assert m["auroc_val"] == 0.0 and m["auroc_train"] == pytest.approx(11 / 12)  # j is last; a, c of 6 unmoved
    assert (m["val_accuracy"], m["trusted"], m["estimated_issues"]) == (0.8, True, 2)


def cell(seed, auroc, trusted=True, recall=0.9, cl_recall=0.5):
    return {"cell": {"kind": "shapes", "classes": 3, "images": 300, "size": 32, "seed": seed}, "auroc": auroc,
            "share_moved_in_top": 0.9, "share_true_suggested": 0.95, "trusted": trusted, "val_accuracy": 0.9,
            "chance": 0.33, "flag_precision": 0.5, "flag_recall": recall, "estimated_issues": 3, "total_seconds": 60.0,
            "confident_learning": {"auroc": 0.6, "flag_recall": cl_recall}}


def test_summary_meets_the_goal_only_when_every_seed_does():
    assert own_data.summary([cell(0, 0.96), cell(1, 0.97)]).endswith("| met |")
    for bad in (cell(1, 0.94), cell(1, 0.97, trusted=False), cell(1, 0.97, recall=0.4)):
        assert own_data.summary([cell(0, 0.96), bad]).endswith("| missed |")


def test_stopping_rules_cover_training_and_validation_rows(tmp_path):
    """Hand-made scorer's files: 4 training and 2 validation rows, 2 classes; moved: training row 1 and validation
    row 1. The model prefers another class for training rows 1 and 2 and validation row 1."""
    files = {"train": [f"t{i}.png" for i in range(4)], "val": ["v0.png", "v1.png"]}
    truth = {f: (0, 0) for f in files["train"] + files["val"]} | {"t1.png": (1, 0), "v1.png": (1, 0)}
    (tmp_path / "files.json").write_text(json.dumps(files))
    arrays = {"y_shuffle_train.npy": np.zeros((4, 1), int), "y_val.npy": np.zeros((2, 1), int),
              "influence_all_epoch.npy": np.array([1.0, 2, 3, 4]), "val_influence.npy": np.array([5.0, 6]),
              "probabilities.npy": np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]]),
              "val_probabilities.npy": np.array([[0.8, 0.2], [0.3, 0.7]])}
    for name, a in arrays.items():
        np.save(tmp_path / name, a)
    rules = own_data.stopping_rules(str(tmp_path), truth)
    assert rules["prefers"] == {"flagged": 3, "precision": pytest.approx(2 / 3), "recall": 1.0}
    assert rules["shipped"] == rules["prefers"]  # no score stands out (upper z at most 0.97 in either split)
    assert set(rules) >= {"cl", "otsu", "mad1.25_or_prefers", "upper1.25_or_prefers"}
    scores, given, p, split, moved = own_data.audited_arrays(str(tmp_path), truth)
    assert split.tolist() == ["train"] * 4 + ["validation"] * 2 and moved.tolist() == [0, 1, 0, 0, 0, 1]


def test_folders_move_the_rate_of_every_class_to_another_class(tmp_path):
    truth = write_folder(str(tmp_path / "f"), "shapes", len(SHAPES), 10, 16, 0.2, 3)
    moved = [(t, g) for t, g in truth.values() if t != g]
    assert len(truth) == 10 * len(SHAPES) and len(moved) == 2 * len(SHAPES)
    assert sorted(np.bincount([t for t, _ in moved])) == [2] * len(SHAPES)
    assert all(f.startswith(f"{g}_{SHAPES[g]}/") for f, (_, g) in truth.items())
    assert "diamond" not in SHAPES  # a rotated square: two classes no one could tell apart


@pytest.mark.parametrize("argv, message", [
    (["--extra", "--nmaps 8"], "--extra applies to --tune or --option"),
    (["--option", "--extra", "--nmaps 8"], "--option needs --tag and --extra"),
    (["--option", "--tag", "t"], "--option needs --tag and --extra"),
    (["--rate", "0.2"], "--rate applies to --tune with --tag"),
    (["--tune", "--tag", "t", "--rate", "0.7"], "--rate applies to --tune with --tag"),
])
def test_bad_flags_are_refused_before_any_result_is_written(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(own_data, "RESULTS", str(tmp_path / "results"))
    with pytest.raises(SystemExit) as e:
        own_data.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
