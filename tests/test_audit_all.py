"""Every image of an own import audited: calculate_score.py also scores the validation images (held-out
self-influence, the same checkpoints), without changing a bit of the training samples' files; label_issues.csv
lists every file once with its split, ranked by the robust z-score of log(score) within its split."""
import json
import os
import shutil

import numpy as np
import pytest
from conftest import run_main
from test_own_data import TINY, read_csv, write_images

from tracin import formats, review
from tracin.api import load_checkpoints, self_influence
from tracin.metrics import rank_order


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    """Two training runs (seeds 0, 1) of the planted folder; the first scored alone and analysed, both scored as an
    ensemble: {'root', 'data', 'ckpt', 'ckpt2', 'review', 'ensemble', 'stdout'}."""
    root = tmp_path_factory.mktemp("audit_all")
    data, ckpt, ckpt2 = root / "data", root / "ckpt", root / "ckpt2"
    write_images(root / "images")
    run_main("train.py", "--dataset", "imagefolder", "--data-dir", root / "images", "--output", data,
             "--model_save_path", ckpt, "-c", "cpu", "--monitor-path", root / "mon", *TINY, cwd=root)
    run_main("train.py", "--input", data, "--model_save_path", ckpt2, "-c", "cpu", "--monitor-path", root / "mon2",
             "--seed", 1, *TINY, cwd=root)
    run_main("calculate_score.py", "--input", data, "--checkpoint", ckpt, "--output", data, "-c", "cpu")
    _, stdout, _ = run_main("mislabel_analysis.py", "--input", data, "--output", root / "review")
    run_main("calculate_score.py", "--input", data, "--checkpoint", f"{ckpt},{ckpt2}", "--output", root / "ensemble",
             "-c", "cpu")
    return {"root": root, "data": data, "ckpt": ckpt, "ckpt2": ckpt2, "review": root / "review",
            "ensemble": root / "ensemble", "stdout": stdout}


def arrays(data):
    return (np.load(data / formats.X_TRAIN), np.load(data / formats.Y_NOISY)[:, 0], np.load(data / formats.X_VAL),
            np.load(data / formats.Y_VAL)[:, 0])


# ---------------------------------------------------------------------------------------------- the scores

def test_validation_scores_are_held_out_self_influence_and_training_files_unchanged(audit):
    data = audit["data"]
    x, y, xv, yv = arrays(data)
    ckpts = load_checkpoints(str(audit["ckpt"]))
    train = self_influence(ckpts, x, y, details=True)  # the training samples scored alone, as before
    assert np.array_equal(np.load(data / formats.SCORES), train.scores)
    assert np.array_equal(np.load(data / formats.LOSS), train.loss)
    assert np.array_equal(np.load(data / formats.PROBABILITIES), train.probabilities)
    val = self_influence(ckpts, xv, yv, details=True)  # the validation images alone
    assert np.array_equal(np.load(data / formats.VAL_SCORES), val.scores)
    assert np.array_equal(np.load(data / formats.VAL_LOSS), val.loss)
    assert np.array_equal(np.load(data / formats.VAL_PROBABILITIES), val.probabilities)
    loop = self_influence(ckpts, xv, yv, method="loop")  # batch-size-1 backprop: the brute-force reference
    assert np.allclose(val.scores, loop, rtol=1e-4) and len(yv) > 0
    info = json.loads((data / formats.SCORES_JSON).read_text())
    assert (info["n_train"], info["n_val"]) == (len(y), len(yv))
    assert info["validation_files"] == list(formats.VAL_FILES)


def test_ensemble_scores_the_validation_images_too(audit):
    x, y, xv, yv = arrays(audit["data"])
    ens = load_checkpoints([str(audit["ckpt"]), str(audit["ckpt2"])])
    out = audit["ensemble"]
    train, val = self_influence(ens, x, y, details=True), self_influence(ens, xv, yv, details=True)
    assert np.array_equal(np.load(out / formats.SCORES), train.scores)
    assert np.array_equal(np.load(out / formats.run_scores_name(2)), train.runs[1].scores)
    assert np.array_equal(np.load(out / formats.VAL_SCORES), val.scores)
    assert np.array_equal(np.load(out / formats.VAL_PROBABILITIES), val.probabilities)
    assert json.loads((out / formats.SCORES_JSON).read_text())["n_val"] == len(yv)


def test_arrays_without_a_file_list_score_no_validation_and_lose_stale_files(audit, tmp_path):
    """x_val.npy of other folders is a test set: not scored; val files of an earlier scoring are removed."""
    data = tmp_path / "data"
    os.makedirs(data)
    for name in formats.ARRAY_FILES[2:]:
        shutil.copy(audit["data"] / name, data / name)
    shutil.copy(audit["data"] / formats.X_TRAIN, data / formats.X_TRAIN)
    for name in formats.VAL_FILES:  # left by an earlier scoring
        shutil.copy(audit["data"] / name, data / name)
    _, _, err = run_main("calculate_score.py", "--input", data, "--checkpoint", audit["ckpt"], "-c", "cpu")
    assert "validation" not in err and not any((data / name).exists() for name in formats.VAL_FILES)
    assert np.array_equal(np.load(data / formats.SCORES), np.load(audit["data"] / formats.SCORES))
    assert "n_val" not in json.loads((data / formats.SCORES_JSON).read_text())


def test_validation_label_beyond_the_model_is_one_line_and_writes_nothing(audit, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(audit["data"], data, ignore=shutil.ignore_patterns(formats.CACHE_DIR))
    yv = np.load(data / formats.Y_VAL)
    yv[-1] = 3  # three classes
    np.save(data / formats.Y_VAL, yv)
    code, _, err = run_main("calculate_score.py", "--input", data, "--checkpoint", audit["ckpt"], "--output",
                            tmp_path / "out", "-c", "cpu", check=False)
    assert code == 2 and err.count("\n") == 1 and formats.Y_VAL in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ label_issues.csv

def test_every_file_once_with_its_split_in_the_within_split_z_order(audit):
    data = audit["data"]
    fl = json.loads((data / formats.FILE_LIST).read_text())
    _, rows = read_csv(audit["review"] / formats.LABEL_ISSUES)
    assert sorted(r["file"] for r in rows) == sorted(fl["train"] + fl["val"])  # each exactly once
    for r in rows:
        assert r["file"] == fl["train" if r["split"] == "train" else "val"][int(r["index"])]
    assert {r["split"] for r in rows} == {"train", "validation"}
    keys = []
    for split, name in (("train", formats.SCORES), ("validation", formats.VAL_SCORES)):
        s = np.load(data / name)
        log_s = np.log(s)
        mad = 1.4826 * np.median(np.abs(log_s - np.median(log_s)))
        keys += [(-(v - np.median(log_s)) / mad, -s[i], len(keys) + i, split, i) for i, v in enumerate(log_s)]
    expected = [(k[3], k[4]) for k in sorted(keys)]
    assert [(r["split"], int(r["index"])) for r in rows] == expected
    m = json.loads((audit["review"] / formats.METRICS_JSON).read_text())
    assert (m["n_train"], m["n_val"], m["n_audited"]) == (len(fl["train"]), len(fl["val"]), len(rows))
    assert f"audited {len(fl['train'])} training and {len(fl['val'])} validation images" in audit["stdout"]


def test_older_scores_without_validation_files_list_the_training_images_with_a_note(audit, tmp_path):
    data = tmp_path / "data"
    os.makedirs(data)
    for name in os.listdir(audit["data"]):
        if name.endswith((".npy", ".json")) and name not in formats.VAL_FILES:
            os.link(audit["data"] / name, data / name)
    _, _, err = run_main("mislabel_analysis.py", "--input", data, "--output", tmp_path / "review")
    assert err.count("warning") == 1 and formats.VAL_SCORES in err
    _, rows = read_csv(tmp_path / "review" / formats.LABEL_ISSUES)
    assert {r["split"] for r in rows} == {"train"} and len(rows) == len(np.load(data / formats.Y_NOISY))


# ------------------------------------------------------------------------------------------- tracin.review

def reference_issue_flags(p, given, scores):
    """The stopping rule on one split (a reference): one robust z over every sample, its spread that of the
    samples above the median."""
    _, prob = review.suggest(p, given)
    deviation = np.log(np.maximum(scores, np.finfo(np.float64).tiny))
    deviation = deviation - np.median(deviation)
    spread = 1.4826 * np.median(deviation[deviation > 0]) if (deviation > 0).any() else 0.0
    outlier = deviation / spread > review.Z_THRESHOLD if spread > 0 else np.zeros(len(p), dtype=bool)
    return (p[np.arange(len(p)), given] < prob) | outlier


@pytest.mark.parametrize("seed", range(5))
def test_one_split_ranks_and_flags_as_before(seed):
    rng = np.random.RandomState(seed)
    n = 200
    scores = np.round(rng.lognormal(size=n), 1 + seed % 2) if seed < 4 else np.ones(n)  # ties; no spread
    given, p = rng.randint(0, 4, n), rng.dirichlet(np.ones(4), size=n)
    assert np.array_equal(review.ranking(scores), rank_order(scores))
    assert np.array_equal(review.issue_flags(p, given, scores), reference_issue_flags(p, given, scores))
    rows = review.label_issues(scores, given, p, list("abcd"), split=["train"] * n)
    assert [r["index"] for r in rows] == list(rank_order(scores))


def test_two_splits_are_ranked_and_flagged_on_their_own_scale():
    """Validation scores 100 times larger (held out) do not push every validation row to the top: each split's
    outliers lead and are flagged by its own z."""
    rng = np.random.RandomState(7)
    train, val = rng.lognormal(size=50), 100 * rng.lognormal(size=10)
    train[3], val[4] = 30.0, 1e6  # one outlier per split
    scores, split = np.concatenate([train, val]), ["train"] * 50 + ["validation"] * 10
    p = np.tile([0.9, 0.1], (60, 1))
    given = np.zeros(60, dtype=int)
    rows = review.label_issues(scores, given, p, ["a", "b"], split=split, index=list(range(50)) + list(range(10)))
    assert {(r["split"], r["index"]) for r in rows[:2]} == {("train", 3), ("validation", 4)}
    assert [r["position"] for r in rows[:2]] == sorted([3, 54], key=lambda i: -review.robust_z(scores, split)[i])
    flags = review.issue_flags(p, given, scores, split)
    assert np.array_equal(flags[:50], reference_issue_flags(p[:50], given[:50], train))
    assert np.array_equal(flags[50:], reference_issue_flags(p[50:], given[50:], val))
    assert review.robust_z(scores, split, upper=True)[3] > review.Z_THRESHOLD and flags[3]
    assert list(rank_order(scores)).index(3) > 5  # by the raw score, validation rows would bury it
    images = rng.randint(0, 256, (60, 1, 4, 4)).astype(np.uint8)
    cells = review.sheet_cells(rows, images, 60)
    assert all(np.array_equal(c["image"], images[r["position"]]) for c, r in zip(cells, rows))
    assert "validation index 4" in next(c for c, r in zip(cells, rows) if r["position"] == 54)["caption"]


def test_csv_round_trip_with_splits(tmp_path):
    rng = np.random.RandomState(8)
    scores, given = rng.lognormal(size=12), rng.randint(0, 3, 12)
    split, index = ["train"] * 8 + ["validation"] * 4, list(range(8)) + list(range(4))
    files = [f"c/{s}{i}.png" for s, i in zip(split, index)]
    rows = review.label_issues(scores, given, rng.dirichlet(np.ones(3), size=12), list("abc"), files, split=split,
                               index=index)
    review.write_label_issues(str(tmp_path / "t.csv"), rows)
    header, back = read_csv(tmp_path / "t.csv")
    assert tuple(header) == review.COLUMNS and header.index("split") == header.index("index") + 1
    assert [(b["split"], int(b["index"]), b["file"], int(b["rank"])) for b in back] == \
        [(r["split"], r["index"], r["file"], r["rank"]) for r in rows]
    with pytest.raises(review.InputError, match="split names"):
        review.label_issues(scores, given, None, list("abc"), split=split[:5])


def test_outlier_scale_is_the_upper_half():
    """Samples the model fits well have gradients near zero spread over orders of magnitude below the median; that
    long lower tail must not widen the scale on which the top stands out (hand-computed)."""
    log_s = np.array([-12.0, -8, -4, -2, 0, 0.5, 1, 1.5, 3])  # median 0; above it 0.5, 1, 1.5, 3: median 1.25
    scores = np.exp(log_s)
    assert review.robust_z(scores, upper=True)[-1] == pytest.approx(3 / (1.4826 * 1.25))  # 1.619
    assert review.robust_z(scores)[-1] == pytest.approx(3 / (1.4826 * 2.0))  # MAD 2: 1.012
    p, given = np.tile([0.9, 0.1], (9, 1)), np.zeros(9, dtype=int)  # the model agrees with every label
    assert review.issue_flags(p, given, scores).tolist() == [False] * 8 + [True]
    assert not review.issue_flags(p, given, np.ones(9)).any()  # no spread: nothing stands out
