"""mislabel_analysis.py and analysis.py: metric values on hand-computed cases, valid PNGs, bad input, end to end."""
import json
import os

import numpy as np
import pytest
from conftest import run_main, run_script, write_subset

from tracin import metrics as analysis
from tracin import plots
from tracin.errors import InputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, f"{path} is not a PNG"
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50, (path, img.shape)


def analysis_main(*argv):
    import mislabel_analysis
    return mislabel_analysis.main([str(a) for a in argv])


# --------------------------------------------------------------------------------------------- metrics by hand

# ten samples, scores strictly decreasing; mislabeled at ranks 1, 3 and 10
HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
HAND_MIS = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)


def test_rounding_is_half_up():
    assert [analysis.n_checked(f, 10) for f in (0.0, 0.04, 0.05, 0.1, 0.15, 0.25, 0.35, 1.0)] == [0, 0, 1, 1, 2, 3, 4, 10]
    assert analysis.n_checked(0.1, 1438) == 144 and analysis.n_checked(0.05, 1438) == 72  # 71.9 -> 72


def test_recall_at_hand_case():
    r = {f: analysis.recall_at(HAND_SCORES, HAND_MIS, f) for f in (0.0, 0.04, 0.05, 0.1, 0.2, 0.25, 0.3, 0.9, 1.0)}
    assert r == pytest.approx({0.0: 0, 0.04: 0, 0.05: 1 / 3, 0.1: 1 / 3, 0.2: 1 / 3, 0.25: 2 / 3, 0.3: 2 / 3,
                               0.9: 2 / 3, 1.0: 1})


def test_curve_hand_case():
    c = analysis.detection_curve(HAND_SCORES, HAND_MIS, [0, 0.1, 0.2, 0.3, 0.5, 0.95, 1.0])
    np.testing.assert_allclose(c, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    full = analysis.detection_curve(HAND_SCORES, HAND_MIS)
    assert full.shape == (101,) and full[0] == 0 and full[-1] == 1 and np.all(np.diff(full) >= 0)
    assert full[10] == pytest.approx(analysis.recall_at(HAND_SCORES, HAND_MIS, 0.1))  # same rounding as the metric


def test_ranking_metrics_hand_case():
    m = analysis.ranking_metrics(HAND_SCORES, HAND_MIS)
    assert m["auroc"] == pytest.approx(13 / 21)  # positive scores beat 7, 6 and 0 of the 7 negatives
    assert m["average_precision"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 10) / 3)
    assert m["recall_at"] == pytest.approx({"0.05": 1 / 3, "0.1": 1 / 3, "0.15": 1 / 3, "0.2": 1 / 3, "0.3": 2 / 3})


def test_perfect_and_reversed_ranking(rng):
    mis = np.zeros(200, dtype=bool)
    mis[rng.choice(200, 20, replace=False)] = True  # noise rate 0.1
    perfect = mis + rng.uniform(0, 0.5, 200)
    m = analysis.ranking_metrics(perfect, mis)
    assert m["auroc"] == 1 and m["average_precision"] == pytest.approx(1)
    assert m["recall_at"]["0.1"] == 1 and m["recall_at"]["0.05"] == 0.5 and m["recall_at"]["0.3"] == 1
    rev = analysis.ranking_metrics(-perfect, mis)
    assert rev["auroc"] == 0 and rev["recall_at"]["0.1"] == 0 and rev["recall_at"]["0.3"] == 0
    assert analysis.recall_at(-perfect, mis, 0.9) == 0 and analysis.recall_at(-perfect, mis, 0.95) == 0.5
    assert analysis.ranking_metrics(analysis.oracle_scores(mis), mis)["recall_at"]["0.1"] == 1


def test_ties_use_stable_order():
    mis = np.array([0, 1, 0, 0], dtype=bool)
    assert analysis.recall_at(np.zeros(4), mis, 0.25) == 0  # index 0 first
    assert analysis.recall_at(np.zeros(4), mis, 0.5) == 1
    assert list(analysis.rank_order([1.0, 2.0, 2.0, 0.5])) == [1, 2, 0, 3]


def test_undefined_metrics_are_none():
    m = analysis.ranking_metrics(HAND_SCORES, np.zeros(10, bool))
    assert m["auroc"] is None and m["average_precision"] is None and set(m["recall_at"].values()) == {None}
    assert np.isnan(analysis.detection_curve(HAND_SCORES, np.zeros(10, bool))).all()
    every = analysis.ranking_metrics(HAND_SCORES, np.ones(10, bool))
    assert every["auroc"] is None and every["average_precision"] == 1 and every["recall_at"]["0.1"] == 0.1
    json.dumps(m)  # JSON null, not NaN


def test_random_metrics_and_class_counts():
    r = analysis.random_metrics(HAND_MIS)
    assert r["auroc"] == 0.5 and r["average_precision"] == pytest.approx(0.3) and r["recall_at"]["0.3"] == 0.3
    true = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    counts = analysis.top_fraction_per_class(HAND_SCORES, HAND_MIS, true, 4, fraction=0.3)  # top 3: samples 0, 1, 2
    assert list(counts) == [1, 0, 1, 0]
    assert analysis.decile_bounds(25) == [(0, 3), (3, 5), (5, 8), (8, 10), (10, 13), (13, 15), (15, 18), (18, 20),
                                          (20, 23), (23, 25)]


def test_input_checks():
    with pytest.raises(ValueError):
        analysis.ranking_metrics([0.1, np.nan], [True, False])
    with pytest.raises(ValueError):
        analysis.detection_curve([0.1, 0.2], [True])


# ------------------------------------------------------------------------------------------------------ figures

def test_every_plot_is_a_valid_png(tmp_path, rng):
    mis = np.zeros(60, bool)
    mis[:6] = True
    decades = np.exp(rng.uniform(-3, 5, 60))
    paths = [
        plots.plot_distribution(decades, mis, tmp_path / "log.png"),
        plots.plot_distribution(rng.normal(size=60), mis, tmp_path / "linear.png"),
        plots.plot_distribution(decades, np.zeros(60, bool), tmp_path / "clean_only.png"),
        plots.plot_score_curve({"a": decades, "b": -decades}, mis, tmp_path / "curve.png"),
        plots.plot_score_curve({"a": decades}, np.zeros(60, bool), tmp_path / "curve_undefined.png"),
        plots.plot_class_counts(np.arange(10), [str(i) for i in range(10)], tmp_path / "bars.png", "t"),
        plots.plot_checkpoint_metrics([1, 2, 3], [0.2, None, 0.9], [0.6, 0.8, None], tmp_path / "ck.png",
                                         total=(0.5, 0.7)),
        plots.plot_image_grid(plots.sample_sheet_cells(range(12), rng.randint(0, 255, (12, 3, 32, 32)).astype(
            np.uint8), np.arange(12) % 10, (np.arange(12) + (np.arange(12) % 3 == 0)) % 10,
            [f"c{i}" for i in range(10)], decades), 5, tmp_path / "sheet.png", "a sheet " * 20),
    ]
    for p in paths:
        assert_png(p)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files left


# ------------------------------------------------------------------------------------------------ command line

@pytest.fixture
def folder(tmp_path):
    """An array folder as the original example writes it: float (N,1) labels, float64 scores, nothing else."""
    d = tmp_path / "data"
    arrays = write_subset(d, n_train=60, n_val=8)
    np.save(d / "y_train.npy", arrays["y_train"].astype(np.float32))
    mis = arrays["y_train"][:, 0] != arrays["y_shuffle_train"][:, 0]
    assert mis.sum() >= 2
    np.save(d / "influence_all_epoch.npy", mis * 10.0 + np.linspace(0, 1, 60))  # a perfect ranking
    return d


def test_original_layout(folder, tmp_path, capsys):
    out = tmp_path / "fig"
    assert analysis_main("--input", folder, "--output", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train"] == 60 and m["loss_file"] is None and set(m["rankings"]) == {"tracin", "random", "oracle"}
    assert m["rankings"]["tracin"]["auroc"] == 1 and m["score_file"] == str(folder / "influence_all_epoch.npy")
    assert m["dataset"] == "digits"  # guessed from the 1x8x8 images without scores.json
    assert "tracin" in capsys.readouterr().out
    for name in ("self_influence_distribution.png", "score_curve.png"):
        assert_png(out / name)


def test_missing_score_file_is_one_line(folder, tmp_path):
    os.remove(folder / "influence_all_epoch.npy")
    out = tmp_path / "fig"
    p = run_script("mislabel_analysis.py", "--input", folder, "--output", out, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "calculate_score.py" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not out.exists()


@pytest.mark.parametrize("bad, words", [
    (np.zeros(59), "59 scores"),
    (np.where(np.arange(60) == 7, np.nan, 1.0), "NaN/inf"),
    (np.where(np.arange(60) == 3, np.inf, 1.0), "NaN/inf"),
    (np.array(["a"] * 60), "expected one number"),
])
def test_bad_scores_change_nothing(folder, tmp_path, bad, words):
    out = tmp_path / "fig"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match=words):
        analysis_main("--input", folder, "--scores", tmp_path / "bad.npy", "--output", out)
    assert os.listdir(out) == ["metrics.json"] and (out / "metrics.json").read_text() == "old"


def test_bad_loss_and_checkpoint_files(folder, tmp_path):
    np.save(folder / "loss_last_epoch.npy", np.zeros(50))
    with pytest.raises(InputError, match="loss file .* 50 scores"):
        analysis_main("--input", folder, "--output", tmp_path / "fig")
    os.remove(folder / "loss_last_epoch.npy")
    with pytest.raises(InputError, match="save_every_epoch"):
        analysis_main("--input", folder, "--output", tmp_path / "fig", "--ckpt_analysis", "True")
    with pytest.raises(InputError, match="--input"):
        analysis_main("--scores", folder / "influence_all_epoch.npy")


def test_no_mislabeled_is_not_an_error(folder, tmp_path, capsys):
    np.save(folder / "y_shuffle_train.npy", np.load(folder / "y_train.npy"))
    out = tmp_path / "fig"
    assert analysis_main("--input", folder, "--output", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_mislabeled"] == 0 and m["rankings"]["tracin"]["auroc"] is None
    assert m["rankings"]["tracin"]["recall_at"]["0.1"] is None and m["rankings"]["oracle"]["average_precision"] is None
    assert "n/a" in capsys.readouterr().out
    assert_png(out / "score_curve.png")


def test_influence_examples(tmp_path):
    data = tmp_path / "data"
    arrays = write_subset(data, n_train=40, n_val=10)
    mis_idx = int(np.flatnonzero(arrays["y_train"][:, 0] != arrays["y_shuffle_train"][:, 0])[0])
    npz = tmp_path / "scores" / "influence_topk.npz"
    npz.parent.mkdir()
    np.savez(npz, test_indices=np.array([0, 5, 9]), test_labels=arrays["y_val"][[0, 5, 9], 0],
             proponents=np.array([[mis_idx, 1, 2], [3, 4, 5], [6, 7, 8]]),
             proponent_scores=np.array([[3.0, 2.0, 1.0]] * 3), opponents=np.array([[9, 10, 11]] * 3),
             opponent_scores=np.array([[-3.0, -2.0, -1.0]] * 3), self_influence=np.ones(3),
             input=np.array(str(data)), test_input=np.array(str(data)))
    out = tmp_path / "fig"
    assert analysis_main("--influence", npz, "--output", out) == 0  # --input taken from the .npz
    assert_png(out / "influence_examples.png")
    assert sorted(os.listdir(out)) == ["influence_examples.png"]  # influence only: no metrics, no report
    bad = dict(np.load(npz))
    bad["opponents"] = bad["opponents"] + 100
    np.savez(npz, **bad)
    with pytest.raises(InputError, match="opponents reach index"):
        analysis_main("--influence", npz, "--output", out)
    with pytest.raises(InputError, match="--mode influence"):
        analysis_main("--influence", tmp_path / "missing.npz", "--output", out)


def test_end_to_end_tiny_run(tiny_run, tmp_path):
    scored = tmp_path / "scored"
    run_main("calculate_score.py", "--input", tiny_run["data"], "--checkpoint", tiny_run["ckpt"], "--output",
             scored, "-c", "cpu", "--save_every_epoch", "True", cwd=tmp_path)
    out = tmp_path / "fig"
    _, stdout, _ = run_main("mislabel_analysis.py", "--input", tiny_run["data"], "--scores",
                            scored / "influence_all_epoch.npy", "--output", out, "--ckpt_analysis", "True",
                            "--save_extracted", "True", "--sheet_size", 16, cwd=tmp_path)
    assert "AUROC" in stdout and "tracin" in stdout and "loss" in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train"] == 96 and m["n_mislabeled"] > 0 and set(m["rankings"]) == {"tracin", "loss", "random", "oracle"}
    for r in m["rankings"].values():
        assert 0 <= r["auroc"] <= 1 and set(r["recall_at"]) == {"0.05", "0.1", "0.15", "0.2", "0.3"}
    epochs = [c["epoch"] for c in json.loads((scored / "scores.json").read_text())["checkpoints"]]
    assert [c["epoch"] for c in m["checkpoints"]] == epochs
    pngs = ["self_influence_distribution.png", "score_curve.png", "checkpoint_metrics.png"] \
        + [f"{e}_top_influence_sample.png" for e in epochs] \
        + [f"extracted_samples/decile_{i:02d}.png" for i in range(1, 11)]
    for name in pngs:
        assert_png(out / name)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs) and "<table>" in html and "recall@10%" in html
