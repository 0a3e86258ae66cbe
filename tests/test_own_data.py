"""Auditing your own images end to end: a folder of PNGs with some files in the wrong class folder, through the
three commands (the scripts' main, in process): the import, the file mapping of label_issues.csv, its order and
columns, planted errors at the top with their true class suggested, the review report, and bad folders refused in
one line before anything is written."""
import csv
import json
import os

import numpy as np
import pytest
from conftest import run_main
from PIL import Image

from tracin import formats, gate, review

NAMES = ("apple", "leaf", "sea")
COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220))
PER_CLASS, PLANTED = 14, 2  # per class: PLANTED of its images are saved in the next class's folder
TINY = ("--nmaps", 8, "--train_epochs", 10)


def write_images(root, seed=0):
    """An easy case: every class its own colour (random brightness and noise); returns {file: true class}."""
    rng = np.random.RandomState(seed)
    truth = {}
    for c, name in enumerate(NAMES):
        for i in range(PER_CLASS):
            folder = NAMES[(c + 1) % len(NAMES)] if i < PLANTED else name
            base = (np.array(COLOURS[c]) * rng.uniform(0.7, 1.0)).astype(np.uint8)
            pixels = base[None, None, :] + rng.randint(0, 30, (12, 12, 3)).astype(np.uint8)
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            rel = f"{folder}/{name}{i:02d}.png"
            Image.fromarray(pixels).save(os.path.join(root, rel))
            truth[rel] = name
    return truth


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    """The three commands on the planted folder: {'root', 'images', 'truth', 'data', 'review', 'stdout'}."""
    root = tmp_path_factory.mktemp("own_data")
    images, data, ckpt, out = root / "images", root / "out" / "data", root / "out" / "ckpt", root / "out" / "review"
    truth = write_images(images)
    run_main("train.py", "--dataset", "imagefolder", "--data-dir", images, "--output", data, "--model_save_path",
             ckpt, "-c", "cpu", "--monitor-path", root / "monitor", *TINY, cwd=root)
    run_main("calculate_score.py", "--input", data, "--checkpoint", ckpt, "--output", data, "-c", "cpu", cwd=root)
    _, stdout, _ = run_main("mislabel_analysis.py", "--input", data, "--output", out, cwd=root)
    return {"root": root, "images": images, "truth": truth, "data": data, "review": out, "stdout": stdout}


def test_import_keeps_the_folder_labels_and_maps_every_index_to_its_file(audit):
    data, images = audit["data"], audit["images"]
    fl = json.loads((data / formats.FILE_LIST).read_text())
    assert fl["classes"] == sorted(NAMES) and sorted(fl["train"] + fl["val"]) == sorted(audit["truth"])
    assert not (data / formats.Y_TRAIN).exists()  # clean labels unknown
    assert not formats.clean_labels_known(str(data))
    x, y = np.load(data / formats.X_TRAIN), np.load(data / formats.Y_NOISY)[:, 0]
    assert x.shape == (len(fl["train"]), 3, 12, 12) and x.dtype == np.uint8
    for i, rel in enumerate(fl["train"]):  # no shuffling: every label is its folder; pixels are the file's
        assert fl["classes"][y[i]] == rel.split("/")[0]
        assert np.array_equal(x[i].transpose(1, 2, 0), np.asarray(Image.open(images / rel).convert("RGB")))
    yv = np.load(data / formats.Y_VAL)[:, 0]
    assert [fl["classes"][c] for c in yv] == [rel.split("/")[0] for rel in fl["val"]]
    assert (data / formats.PROBABILITIES).is_file()


def test_label_issues_csv_order_columns_and_files(audit):
    header, rows = read_csv(audit["review"] / formats.LABEL_ISSUES)
    fl = json.loads((audit["data"] / formats.FILE_LIST).read_text())
    data = audit["data"]
    arrays = {"train": (np.load(data / formats.SCORES), np.load(data / formats.PROBABILITIES),
                        np.load(data / formats.Y_NOISY)[:, 0]),
              "validation": (np.load(data / formats.VAL_SCORES), np.load(data / formats.VAL_PROBABILITIES),
                             np.load(data / formats.Y_VAL)[:, 0])}
    assert tuple(header) == review.COLUMNS and len(rows) == len(fl["train"]) + len(fl["val"])
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    train = [int(r["index"]) for r in rows if r["split"] == "train"]
    assert train == sorted(range(len(fl["train"])), key=lambda i: (-arrays["train"][0][i], i))
    for r in rows:
        i = int(r["index"])
        scores, p, y = arrays[r["split"]]
        assert r["file"] == fl["train" if r["split"] == "train" else "val"][i]
        assert r["given_class"] == r["file"].split("/")[0]
        assert int(r["given_label"]) == y[i] and r["given_class"] == fl["classes"][y[i]]
        s = int(r["suggested_label"])
        assert s != y[i] and r["suggested_class"] == fl["classes"][s]
        assert s == max((c for c in range(3) if c != y[i]), key=lambda c: (p[i, c], -c))
        assert float(r["suggested_probability"]) == pytest.approx(p[i, s], abs=5e-5)
        assert float(r["self_influence"]) == pytest.approx(scores[i], rel=1e-5)


def test_planted_errors_lead_with_their_true_class(audit):
    _, rows = read_csv(audit["review"] / formats.LABEL_ISSUES)
    truth = audit["truth"]
    planted = [r for r in rows if truth[r["file"]] != r["given_class"]]
    assert len(planted) == len(NAMES) * PLANTED  # every file audited, the validation images too
    assert max(int(r["rank"]) for r in planted) <= 2 * len(planted)  # all of them in the top 2 x their number
    right = sum(r["suggested_class"] == truth[r["file"]] for r in planted)
    assert right >= len(planted) - 1, [(r["file"], r["suggested_class"]) for r in planted]


def test_review_report_without_clean_labels(audit):
    out = audit["review"]
    m = json.loads((out / formats.METRICS_JSON).read_text())
    fl = json.loads((audit["data"] / formats.FILE_LIST).read_text())
    assert m["clean_labels"] is False and "rankings" not in m and m["n_audited"] == len(read_csv(
        out / formats.LABEL_ISSUES)[1]) == m["n_train"] + m["n_val"]
    assert (m["n_train"], m["n_val"]) == (len(fl["train"]), len(fl["val"])) and m["n_val"] > 0
    assert [c["class"] for c in m["classes"]] == sorted(NAMES) and sum(c["n"] for c in m["classes"]) == m["n_audited"]
    page = (out / formats.REPORT).read_text()
    assert "Clean labels are unknown" in page and "recall@" not in page and "AUROC" not in page
    assert page.count("<tr") == 1 + m["n_audited"]  # issues table: header + every row (fewer than --top 64)
    assert page.count("data:image/png;base64,") == 2
    for name in (formats.CLASS_SCORES_PNG, formats.REVIEW_SHEET_PNG):
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    first = read_csv(out / formats.LABEL_ISSUES)[1][0]
    assert f"{m['n_audited']} samples listed" in audit["stdout"] and str(out / formats.LABEL_ISSUES) in audit["stdout"]
    assert f"audited {m['n_train']} training and {m['n_val']} validation images" in audit["stdout"]
    assert f"#1   {first['file']}: {first['given_class']} -> {first['suggested_class']}" in audit["stdout"]


def test_old_scores_without_probabilities_give_a_csv_without_suggestions(audit, tmp_path):
    data = tmp_path / "data"
    os.makedirs(data)
    for name in os.listdir(audit["data"]):
        if name.endswith((".npy", ".json")) and name != formats.PROBABILITIES:
            os.link(audit["data"] / name, data / name)
    code, _, err = run_main("mislabel_analysis.py", "--input", data, "--output", tmp_path / "review", "--top", "0.1")
    assert code == 0 and err.count("warning") == 1 and formats.PROBABILITIES in err
    _, rows = read_csv(tmp_path / "review" / formats.LABEL_ISSUES)
    assert rows[0]["file"] and all(r["suggested_label"] == r["suggested_class"] == "" for r in rows)


def test_top_selects_the_report_rows(audit, tmp_path):
    run_main("mislabel_analysis.py", "--input", audit["data"], "--output", tmp_path / "r", "--top", 5)
    assert (tmp_path / "r" / formats.REPORT).read_text().count("<tr") == 1 + 5
    code, _, err = run_main("mislabel_analysis.py", "--input", audit["data"], "--output", tmp_path / "r2", "--top",
                            "1.5", check=False)
    assert code == 2 and err.count("\n") == 1 and "--top" in err and not (tmp_path / "r2").exists()


def _one_class(root):
    write_images(root)
    for name in NAMES[1:]:
        for f in os.listdir(root / name):
            os.remove(root / name / f)
        os.rmdir(root / name)
    return root


def _empty_class(root):
    write_images(root)
    os.makedirs(root / "zebra")
    return root / "zebra"


def _damaged_image(root):
    write_images(root)
    (root / "leaf" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root / "leaf" / "broken.png"


def _no_images(root):
    os.makedirs(root)
    return root


@pytest.mark.parametrize("make, words", [
    (_no_images, "no class sub-folders"),
    (_one_class, "single class"),
    (_empty_class, "holds no PNG/JPEG"),
    (_damaged_image, "cannot read image"),
])
def test_bad_folders_are_one_line_and_write_nothing(tmp_path, make, words):
    named = make(tmp_path / "images")
    out = tmp_path / "out"
    code, _, err = run_main("train.py", "--dataset", "imagefolder", "--data-dir", tmp_path / "images", "--output",
                            out / "data", "--model_save_path", out / "ckpt", "--monitor-path", out / "mon", "-c", "cpu",
                            check=False)
    assert code == 2 and err.count("\n") == 1 and words in err and str(named) in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("flags, words", [
    (("--data-dir", "MISSING"), "does not exist"),
    ((), "--data-dir"),
    (("--data-dir", "images", "--val_fraction", "1"), "--val_fraction"),
    (("--data-dir", "images", "--image_size", "4"), "--image_size"),
    (("--data-dir", "images", "--image_size", "3x"), "--image_size"),
])
def test_bad_import_flags(tmp_path, flags, words):
    write_images(tmp_path / "images")
    out = tmp_path / "out"
    code, _, err = run_main("train.py", "--dataset", "imagefolder", *flags, "--output", out / "data",
                            "--model_save_path", out / "ckpt", "--monitor-path", out / "mon", "-c", "cpu",
                            cwd=tmp_path, check=False)
    assert code == 2 and err.count("\n") == 1 and words in err and not out.exists(), err


def test_import_flags_need_imagefolder(tmp_path):
    code, _, err = run_main("train.py", "--dataset", "digits", "--val_fraction", "0.2", "--output", tmp_path / "d",
                            "--model_save_path", tmp_path / "c", "-c", "cpu", check=False)
    assert code == 2 and "--val_fraction" in err and "imagefolder" in err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("bad, words", [
    (lambda p: p[:-1], "shape"),
    (lambda p: p * 2, "sum to 1"),
    (lambda p: np.where(np.arange(p.size).reshape(p.shape) == 4, np.nan, p), "finite"),
])
def test_damaged_probabilities_are_one_line(audit, tmp_path, bad, words):
    data = tmp_path / "data"
    os.makedirs(data)
    for name in os.listdir(audit["data"]):
        if name.endswith((".npy", ".json")):
            os.link(audit["data"] / name, data / name)
    os.remove(data / formats.PROBABILITIES)
    np.save(data / formats.PROBABILITIES, bad(np.load(audit["data"] / formats.PROBABILITIES)))
    code, _, err = run_main("mislabel_analysis.py", "--input", data, "--output", tmp_path / "review", check=False)
    assert code == 2 and err.count("\n") == 1 and words in err and formats.PROBABILITIES in err, err
    assert not (tmp_path / "review").exists()


def test_shuffling_an_import_is_an_experiment_with_clean_labels(tmp_path):
    write_images(tmp_path / "images")
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    run_main("train.py", "--dataset", "imagefolder", "--data-dir", tmp_path / "images", "--output", data,
             "--model_save_path", ckpt, "--monitor-path", tmp_path / "mon", "-c", "cpu", "--shuffle_label", "True",
             "--shuffle_rate", "0.2", "--nmaps", 8, "--train_epochs", 2)
    fl = json.loads((data / formats.FILE_LIST).read_text())
    y, noisy = np.load(data / formats.Y_TRAIN)[:, 0], np.load(data / formats.Y_NOISY)[:, 0]
    assert [fl["classes"][c] for c in y] == [rel.split("/")[0] for rel in fl["train"]]  # y_train: the folders
    assert (y != noisy).sum() == 3 * round(0.2 * 13)  # 13 training images per class, 20% of each moved
    run_main("calculate_score.py", "--input", data, "--checkpoint", ckpt, "-c", "cpu")
    _, stdout, _ = run_main("mislabel_analysis.py", "--input", data, "--output", tmp_path / "fig")
    m = json.loads((tmp_path / "fig" / formats.METRICS_JSON).read_text())
    assert m["n_mislabeled"] == int((y != noisy).sum()) and "tracin" in m["rankings"] and "AUROC" in stdout
    _, rows = read_csv(tmp_path / "fig" / formats.LABEL_ISSUES)
    train = [r for r in rows if r["split"] == "train"]
    assert sorted(r["file"] for r in rows) == sorted(fl["train"] + fl["val"])
    assert [r["file"] for r in train] == [fl["train"][int(r["index"])] for r in train]
    assert all(r["given_class"] == fl["classes"][noisy[int(r["index"])]] for r in train)


# ------------------------------------------------------------------------------------- gate and stopping rule

def test_gate_and_stopping_rule_reach_every_output(audit):
    out = audit["review"]
    m = json.loads((out / formats.METRICS_JSON).read_text())
    v = m["validation"]
    yv = np.load(audit["data"] / formats.Y_VAL)[:, 0]
    assert v["chance"] == pytest.approx(np.bincount(yv).max() / yv.size) and v["n_val"] == yv.size
    assert v["trusted"] == (v["accuracy"] - v["chance"] >= gate.MIN_SKILL * (1 - v["chance"]) - 1e-12)
    assert v == json.loads((audit["root"] / "out" / "ckpt" / gate.VALIDATION).read_text()) | {"sentence":
                                                                                              v["sentence"]}
    top = f"validation accuracy {v['accuracy']:.3f}, chance level {v['chance']:.3f}"
    assert v["sentence"] in audit["stdout"] and top in (out / formats.REPORT).read_text()
    _, rows = read_csv(out / formats.LABEL_ISSUES)
    flags = [r["is_label_issue"] for r in rows]
    assert set(flags) <= {"0", "1"}  # the easy colours are learned: every row decided
    z = {}
    for split, name in (("train", formats.SCORES), ("validation", formats.VAL_SCORES)):  # within each split
        deviation = np.log(np.load(audit["data"] / name)) - np.median(np.log(np.load(audit["data"] / name)))
        z[split] = deviation / (1.4826 * np.median(deviation[deviation > 0]))  # the spread of the upper half
    for r in rows:  # flagged exactly when the model prefers the suggestion or the score is an outlier
        prefers = float(r["given_probability"]) < float(r["suggested_probability"])
        assert (r["is_label_issue"] == "1") == (prefers or z[r["split"]][int(r["index"])] > review.Z_THRESHOLD)
    assert 0 < flags.count("1") < len(rows)
    assert m["estimated_label_issues"] == flags.count("1")
    assert f"estimated label issues: {flags.count('1')}" in audit["stdout"]


def test_gate_fires_on_random_labels(tmp_path):
    """Noise images whose folders are drawn at random: nothing to learn, so every output says not to trust it."""
    rng = np.random.RandomState(3)
    for i in range(90):
        os.makedirs(tmp_path / "images" / NAMES[i % 3], exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (12, 12, 3)).astype(np.uint8)).save(
            tmp_path / "images" / NAMES[i % 3] / f"n{i:02d}.png")
    data, ckpt, out = tmp_path / "data", tmp_path / "ckpt", tmp_path / "review"
    _, _, err = run_main("train.py", "--dataset", "imagefolder", "--data-dir", tmp_path / "images", "--output", data,
                         "--model_save_path", ckpt, "--monitor-path", tmp_path / "mon", "-c", "cpu",
                         "--val_fraction", "0.3", *TINY)
    v = json.loads((ckpt / gate.VALIDATION).read_text())
    assert v["trusted"] is False and v["chance"] == pytest.approx(1 / 3) and "too weak to trust" in err
    run_main("calculate_score.py", "--input", data, "--checkpoint", ckpt, "--output", data, "-c", "cpu")
    _, stdout, _ = run_main("mislabel_analysis.py", "--input", data, "--output", out)
    m = json.loads((out / formats.METRICS_JSON).read_text())
    assert m["validation"]["trusted"] is False and m["estimated_label_issues"] is None
    assert v["sentence"] in stdout and "too weak to trust" in (out / formats.REPORT).read_text()
    _, rows = read_csv(out / formats.LABEL_ISSUES)
    assert len(rows) == 90 and all(r["is_label_issue"] == "" for r in rows)  # no row presented as a preference
    assert "color:#b00'>" not in (out / formats.REPORT).read_text().split("<table>")[1]


def test_model_check_chance_and_threshold():
    y = np.array([0, 0, 0, 1, 2, 2])
    at = gate.model_check(0.5 + gate.MIN_SKILL * 0.5, y)  # chance 0.5: exactly the needed accuracy
    assert at["chance"] == 0.5 and at["trusted"] and at["needed_accuracy"] == pytest.approx(at["accuracy"])
    below = gate.model_check(0.5 + gate.MIN_SKILL * 0.5 - 0.01, y)
    assert not below["trusted"] and below["sentence"].startswith("WARNING") and "--train_epochs" in below["sentence"]
    assert gate.model_check(1.0, y)["skill"] == 1.0 and gate.model_check(0.5, y)["skill"] == 0.0


def test_stopping_rule_flags_preferences_and_score_outliers():
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.9, 0.1]])
    given = np.zeros(6, dtype=int)
    scores = np.array([1.0, 1.1, 0.9, 1.2, 0.8, 50.0])  # log: median ~0, upper spread ~0.15; the last is far out
    assert review.issue_flags(p, given, scores).tolist() == [False, True, False, False, False, True]
    flat = review.issue_flags(p, given, np.ones(6))  # no spread: only the preference counts
    assert flat.tolist() == [False, True, False, False, False, False]
    rows = review.label_issues(scores, given, p, ["a", "b"])
    assert review.estimated_issues(rows) == 2 and [r["index"] for r in rows if r["is_label_issue"]] == [5, 1]
    assert review.estimated_issues(review.label_issues(scores, given, p, ["a", "b"], trusted=False)) is None
