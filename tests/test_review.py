"""The label-issue table (order, columns, suggested labels, the CSV), per-class score summaries, --top selection
and image-sheet cells, against brute-force references; and planted folder errors reaching the top of the CSV."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

import imagefolder
from tracin import formats, review
from tracin.errors import InputError


def random_probabilities(rng, n, c):
    return rng.dirichlet(np.ones(c), size=n)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


# --------------------------------------------------------------------------------------------- suggestions

def test_suggest_is_the_most_probable_other_class():
    rng = np.random.RandomState(0)
    p = random_probabilities(rng, 200, 5)
    p[:20] = 0.2  # all tied: the lowest class index that is not the given label
    given = rng.randint(0, 5, 200)
    labels, probs = review.suggest(p, given)
    for i in range(200):
        others = [c for c in range(5) if c != given[i]]
        best = max(others, key=lambda c: (p[i, c], -c))
        assert labels[i] == best and probs[i] == p[i, best]
    overall, _ = review.suggest(p, given, exclude_given=False)
    assert np.array_equal(overall, [max(range(5), key=lambda c: (p[i, c], -c)) for i in range(200)])
    assert np.all(labels != given)


def test_label_issues_order_and_columns():
    rng = np.random.RandomState(1)
    n = 50
    scores = np.round(rng.rand(n), 1)  # many ties: broken by index
    given = rng.randint(0, 3, n)
    p = random_probabilities(rng, n, 3)
    files = [f"c{given[i]}/img{i}.png" for i in range(n)]
    rows = review.label_issues(scores, given, p, ["cat", "dog", "emu"], files)
    expected = sorted(range(n), key=lambda i: (-scores[i], i))
    assert [r["index"] for r in rows] == expected
    assert [r["rank"] for r in rows] == list(range(1, n + 1))
    suggested, _ = review.suggest(p, given)
    for r in rows:
        i = r["index"]
        assert tuple(r) == review.COLUMNS + ("position",) and r["position"] == i and r["split"] == "train"
        assert r["file"] == files[i] and r["self_influence"] == scores[i]
        assert (r["given_label"], r["given_class"]) == (given[i], "cat dog emu".split()[given[i]])
        assert (r["suggested_label"], r["suggested_class"]) == (suggested[i], "cat dog emu".split()[suggested[i]])
        assert r["suggested_probability"] == p[i, suggested[i]] and r["given_probability"] == p[i, given[i]]
    assert all(r["file"] == "" for r in review.label_issues(scores, given, p))  # no file list: empty column
    assert review.label_issues(scores, given, p)[0]["given_class"] == str(given[expected[0]])


def test_without_probabilities_the_suggestion_columns_are_empty(tmp_path):
    scores, given = np.array([0.1, 0.3, 0.2]), np.array([0, 2, 1])
    rows = review.label_issues(scores, given, None, ["a", "b", "c"])
    assert [(r["index"], r["given_class"], r["suggested_class"]) for r in rows] == [(1, "c", None), (2, "b", None),
                                                                                    (0, "a", None)]
    review.write_label_issues(str(tmp_path / "t.csv"), rows)
    back = read_csv(tmp_path / "t.csv")[1]
    assert [b["suggested_class"] + b["suggested_probability"] + b["given_probability"] for b in back] == [""] * 3
    cells = review.sheet_cells(rows, np.zeros((3, 1, 8, 8), np.uint8), 2)
    assert [c["caption"] for c in cells] == ["#1 c\nindex 1\n0.3", "#2 b\nindex 2\n0.2"]
    assert all(c["frame"] is None for c in cells)
    with pytest.raises(InputError, match="given labels must be integers in 0..1"):
        review.label_issues(scores, given, None, ["a", "b"])


def test_csv_round_trip_and_atomic_replace(tmp_path):
    rng = np.random.RandomState(2)
    scores = rng.lognormal(size=30) * 1e-3
    given = rng.randint(0, 4, 30)
    rows = review.label_issues(scores, given, random_probabilities(rng, 30, 4), list("abcd"),
                               [f"x/{i}, \"odd\" name.png" for i in range(30)])
    path = tmp_path / formats.LABEL_ISSUES
    path.write_text("old")
    review.write_label_issues(str(path), rows)
    header, back = read_csv(path)
    assert tuple(header) == review.COLUMNS
    assert len(back) == 30 and os.listdir(tmp_path) == [formats.LABEL_ISSUES]  # no temporary left behind
    for r, b in zip(rows, back):
        assert int(b["rank"]) == r["rank"] and int(b["index"]) == r["index"] and b["file"] == r["file"]
        assert float(b["self_influence"]) == pytest.approx(r["self_influence"], rel=1e-5)  # 6 significant digits
        assert abs(float(b["suggested_probability"]) - r["suggested_probability"]) <= 5e-5
        assert b["given_class"] == r["given_class"] and int(b["suggested_label"]) == r["suggested_label"]
    with pytest.raises(KeyError):  # a failed write leaves the previous file as it was
        review.write_label_issues(str(path), [{"rank": 1}])
    assert read_csv(path)[1] == back and os.listdir(tmp_path) == [formats.LABEL_ISSUES]


@pytest.mark.parametrize("case, match", [
    ("length", "must describe the same samples"), ("nan", "NaN"), ("label", "given labels must be integers"),
    ("sum", "sum to 1"), ("names", "2 class names"), ("files", "file list comes from another import")])
def test_bad_inputs_name_the_argument(case, match):
    rng = np.random.RandomState(3)
    scores, given, p, names, files = rng.rand(10), rng.randint(0, 3, 10), random_probabilities(rng, 10, 3), \
        ["a", "b", "c"], None
    if case == "length":
        given = given[:9]
    elif case == "nan":
        scores[4] = np.nan
    elif case == "label":
        given[2] = 3
    elif case == "sum":
        p[1] *= 1.1
    elif case == "names":
        names = ["a", "b"]
    else:
        files = ["f"] * 9
    with pytest.raises(InputError, match=match):
        review.label_issues(scores, given, p, names, files)


# ---------------------------------------------------------------------------------- summaries and selection

def test_class_score_distribution():
    rng = np.random.RandomState(4)
    given = np.repeat([0, 1, 2], [30, 50, 20])
    scores = rng.rand(100) + (given == 2)  # class 2 scores higher: it fills the top 10%
    dist = review.class_score_distribution(scores, given, ["a", "b", "c", "empty"])
    assert [d["class"] for d in dist] == ["a", "b", "c", "empty"] and [d["n"] for d in dist] == [30, 50, 20, 0]
    for d in dist[:3]:
        own = scores[given == d["label"]]
        assert np.array_equal(d["scores"], np.sort(own)[::-1])
        assert d["median"] == np.median(own) and d["q90"] == np.quantile(own, 0.9)
    assert [d["top_share"] for d in dist] == [0.0, 0.0, 1.0, 0.0]
    assert dist[3]["median"] is None


def test_top_selection():
    assert [review.parse_top(t) for t in ("1", "25", "0.1", "1.0", "0.25")] == [1, 25, 0.1, 1.0, 0.25]
    for bad in ("0", "-3", "0.0", "1.5", "ten"):
        with pytest.raises(ValueError):
            review.parse_top(bad)
    assert review.top_count(100, 25) == 25 and review.top_count(10, 25) == 10
    assert [review.top_count(n, 0.1) for n in (5, 14, 15, 25, 35)] == [1, 1, 2, 3, 4]  # half up, at least 1
    assert review.top_count(7, 1.0) == 7 and review.top_count(0, 0.5) == 0
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(InputError, match="top"):
            review.top_count(10, bad)


def test_sheet_cells_caption_the_top_rows():
    rng = np.random.RandomState(5)
    images = rng.randint(0, 256, (12, 1, 8, 8)).astype(np.uint8)
    p = np.full((12, 2), 0.5)
    p[:6] = [0.9, 0.1]  # samples 0-5: the model puts 0.9 on class a
    given = np.array([0, 1] * 6)
    rows = review.label_issues(np.arange(12.0), given, p, ["a", "b"], [f"d/{i}.png" for i in range(12)])
    cells = review.sheet_cells(rows, images, 0.25)
    assert len(cells) == 3 and all(np.array_equal(c["image"], images[11 - k]) for k, c in enumerate(cells))
    assert cells[0]["caption"] == "#1 b \u2192 a\n11.png\n11"
    assert len(review.sheet_cells(rows, images, 50)) == 12
    red = {r["index"]: c["frame"] == "red" for r, c in zip(rows, review.sheet_cells(rows, images, 1.0))}
    assert red == {i: i < 6 and given[i] == 1 for i in range(12)}  # given b while the model says a


# ------------------------------------------------------------------------------ from a folder to the CSV

def test_planted_folder_errors_lead_the_csv(tmp_path):
    """Files placed in the wrong class folder, imported and split; with scores that single them out (as TracIn
    does on an easy case) and probabilities that favour each file's true class, the CSV's top rows are exactly the
    planted training files, each with its true class as the suggestion."""
    rng = np.random.RandomState(6)
    classes, true_of = ["ant", "bee", "cow"], {}
    for c, name in enumerate(classes):
        os.makedirs(tmp_path / "img" / name)
    for k in range(36):
        true, folder = k % 3, (k % 3 + 1) % 3 if k % 9 == 0 else k % 3  # every 9th file in the next class
        rel = f"{classes[folder]}/f{k:02d}.png"
        Image.fromarray(rng.randint(0, 256, (10 + k % 3, 12)).astype(np.uint8), "L").save(tmp_path / "img" / rel)
        true_of[rel] = true
    arrays, fl = imagefolder.make_arrays(str(tmp_path / "img"), val_fraction=0.25, seed=0)
    given = arrays["y_shuffle_train"][:, 0]
    true = np.array([true_of[f] for f in fl["train"]])
    planted = given != true
    assert planted.sum() >= 2
    scores = rng.rand(len(given)) + 2.0 * planted
    p = np.full((len(given), 3), 0.1)
    p[np.arange(len(given)), true] = 0.8
    review.write_label_issues(str(tmp_path / "out.csv"), review.label_issues(scores, given, p, fl["classes"], fl["train"]))
    _, rows = read_csv(tmp_path / "out.csv")
    top = rows[:int(planted.sum())]
    assert sorted(r["file"] for r in top) == sorted(f for f, m in zip(fl["train"], planted) if m)
    for r in top:
        assert r["given_class"] == r["file"].split("/")[0] and r["suggested_class"] == classes[true_of[r["file"]]]
    assert all(fl["train"][int(r["index"])] == r["file"] for r in rows)
