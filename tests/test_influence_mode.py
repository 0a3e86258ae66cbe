"""Train -> test influence: exactness against self-influence, the loop reference, a full sort and a hand-made sum
over checkpoints, the random projection's documented error bound (the API, in process); the script's
influence_topk.npz, bad inputs and reuse of finished work (its main)."""
import json
import os

import numpy as np
import pytest
from conftest import run_main

import datasets
import tracin
from tracin import formats
from tracin.graphs import ScoringGraph, select_params
from tracin.job_influence import InfluenceFeatures
from tracin.maths import projection_matrix
from tracin.topk import RunningTopK

TOP = ("proponents", "proponent_scores", "opponents", "opponent_scores", "self_influence", "test_labels")
RAW = {"normalize": "none"}


def score(tiny_run, out, *extra, check=True):
    return run_main("calculate_score.py", "--input", tiny_run["data"], "--checkpoint", tiny_run["ckpt"],
                    "--output", out, "-c", "cpu", *extra, cwd=tiny_run["root"], check=check)


def load(out):
    with np.load(os.path.join(out, formats.TOPK)) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def runs(tiny_run):
    """Shared runs on the tiny model (96 train, 32 validation samples, 3 checkpoints) through the API."""
    a = datasets.load_arrays(str(tiny_run["data"]))
    x, y = a["x_train"], a["y_shuffle_train"][:, 0]
    ckpts = tracin.load_checkpoints(str(tiny_run["ckpt"]))
    out = {"ckpts": ckpts, "x": x, "y": y, "x_val": a["x_val"], "y_val": a["y_val"][:, 0]}
    for layers in ("last", "all"):
        out[f"self_{layers}"] = tracin.self_influence(ckpts, x, y, layers=layers)
        # the training samples, with the labels training saw, as "test" samples. These tests are of raw TracIn
        # (normalize none); tests/test_explanations.py covers the normalisations and the default layers.
        out[f"diag_{layers}"] = tracin.influence(ckpts, x, y, x, y, top_k=5, full_matrix=True, layers=layers, **RAW)
    out["val_all"] = tracin.influence(ckpts, x, y, a["x_val"], out["y_val"], layers="all", top_k=7, full_matrix=True,
                                      **RAW)
    return out


@pytest.mark.parametrize("layers", ["last", "all"])
def test_diagonal_of_train_vs_train_is_self_influence(runs, layers):
    si = runs[f"self_{layers}"]
    r = runs[f"diag_{layers}"]
    m = r.matrix
    assert m.shape == (96, 96)
    np.testing.assert_allclose(np.diag(m), si, rtol=2e-5)
    np.testing.assert_allclose(r.self_influence, si, rtol=2e-5)
    np.testing.assert_allclose(m, m.T, rtol=1e-4, atol=1e-6 * np.abs(m).max())  # TracIn(z, z') = TracIn(z', z)
    # Cauchy-Schwarz: |TracIn(z, z')| <= sqrt(self(z) self(z'))
    assert np.all(np.abs(m) <= np.sqrt(np.outer(si, si)) * (1 + 1e-5))
    np.testing.assert_array_equal(r.test_labels, runs["y"])


def test_topk_is_the_argsort_of_the_full_matrix(runs):
    for name, k in (("val_all", 7), ("diag_all", 5), ("diag_last", 5)):
        r = runs[name]
        m = r.matrix
        cols = np.arange(m.shape[1])
        for t in range(len(m)):
            prop = np.lexsort((cols, -m[t]))[:k]  # highest first, ties to the lower index
            opp = np.lexsort((cols, m[t]))[:k]
            np.testing.assert_array_equal(r.proponents[t], prop)
            np.testing.assert_array_equal(r.opponents[t], opp)
            np.testing.assert_array_equal(r.proponent_scores[t], m[t, prop])
            np.testing.assert_array_equal(r.opponent_scores[t], m[t, opp])
        assert np.all(np.diff(r.proponent_scores, axis=1) <= 0)
        assert np.all(np.diff(r.opponent_scores, axis=1) >= 0)


def test_script_writes_the_api_result_as_npz(runs, tiny_run, tmp_path):
    """calculate_score.py --mode influence writes the API's result in formats.TOPK_ARRAYS (and the matrix)."""
    score(tiny_run, tmp_path, "--mode", "influence", "--layers", "all", "--normalize", "none", "--save_matrix",
          "True", "--top_k", 7)
    z = load(tmp_path)
    assert set(z) == set(formats.TOPK_ARRAYS) and str(z["normalize"]) == "none"
    assert z["proponents"].shape == z["opponents"].shape == (32, 7)
    assert z["proponents"].dtype.kind == "i" and z["test_indices"].dtype.kind == "i"
    assert z["proponent_scores"].dtype == np.float64 and z["self_influence"].shape == (32,)
    assert z["input"].shape == () and str(z["input"]) == os.path.abspath(tiny_run["data"])
    assert str(z["test_input"]) == os.path.abspath(tiny_run["data"])  # default: --input's own x_val / y_val
    np.testing.assert_array_equal(z["test_indices"], np.arange(32))
    np.testing.assert_array_equal(z["test_labels"], np.load(tiny_run["data"] / "y_val.npy")[:, 0])
    for k in TOP:
        assert z[k].tobytes() == getattr(runs["val_all"], k).tobytes(), k
    assert np.load(tmp_path / formats.MATRIX).tobytes() == runs["val_all"].matrix.tobytes()
    meta = json.loads((tmp_path / formats.INFLUENCE_JSON).read_text())
    assert meta["n_test"] == 32 and meta["n_train"] == 96 and meta["top_k"] == 7 and meta["layers"] == "all"


def test_batched_equals_loop_reference(runs):
    """The loop reference on 3 test samples against the first 32 training samples (a sample's influence does not
    depend on the other training samples) == those entries of the batched matrix."""
    idx, n = [3, 0, 17], 32
    loop = tracin.influence(runs["ckpts"], runs["x"][:n], runs["y"][:n], runs["x_val"][idx], runs["y_val"][idx],
                            layers="all", method="loop", top_k=7, full_matrix=True, **RAW)
    batched = runs["val_all"].matrix[idx, :n]
    np.testing.assert_allclose(loop.matrix, batched, rtol=1e-4, atol=1e-6 * np.abs(batched).max())
    np.testing.assert_allclose(loop.self_influence, runs["val_all"].self_influence[idx], rtol=1e-5)


def test_last_layer_closed_form_equals_gradient_machinery(runs):
    """layers last (products of e and h) == the per-sample gradient path on the same affine parameters."""
    grads = tracin.influence(runs["ckpts"], runs["x"], runs["y"], runs["x"], runs["y"], layers="affine/*", top_k=5,
                             full_matrix=True, **RAW).matrix
    closed = runs["diag_last"].matrix
    np.testing.assert_allclose(grads, closed, rtol=1e-4, atol=1e-6 * np.abs(closed).max())


def _last_layer_grads(logits, feats, labels):
    """Per-sample gradients of affine W (H, C) and b (C,), flattened as [vec(h e^T), e], e = softmax - onehot."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    e /= e.sum(1, keepdims=True)
    e[np.arange(len(e)), labels] -= 1.0
    h = feats.reshape(len(feats), -1).astype(np.float64)
    return np.concatenate([(h[:, :, None] * e[:, None, :]).reshape(len(h), -1), e], axis=1)


def test_closed_form_by_hand(tiny_run):
    """In-process: the features' dot products equal explicit outer-product gradients [vec(h e^T), e] and the
    flattened batched gradients of affine/W, affine/b."""
    man = json.loads((tiny_run["ckpt"] / "checkpoints.json").read_text())
    g = ScoringGraph(man["model"], 8)
    g.load(str(tiny_run["ckpt"] / man["checkpoints"][-1]["params"]))
    arrays = datasets.load_arrays(str(tiny_run["data"]))
    x, y = arrays["x_train"][:8].astype(np.float32), arrays["y_shuffle_train"][:8, 0]
    xt, yt = arrays["x_val"][:5].astype(np.float32), arrays["y_val"][:5, 0]
    names = select_params(g.trainable, "last")
    last = InfluenceFeatures(g, "last", names, 8)
    grad = InfluenceFeatures(g, "grad", names, 8)
    d_last = last.dots(last.batch(xt, yt)[0], last.batch(x, y)[0])
    d_grad = grad.dots(grad.batch(xt, yt)[0], grad.batch(x, y)[0])
    lt, ft = g.forward(xt)
    lj, fj = g.forward(x)
    explicit = _last_layer_grads(lt, ft, yt) @ _last_layer_grads(lj, fj, y).T
    np.testing.assert_allclose(d_last, explicit, rtol=1e-10)
    np.testing.assert_allclose(d_grad, explicit, rtol=1e-4, atol=1e-7 * np.abs(explicit).max())
    assert last.width() == ft.shape[1] + lt.shape[1] and grad.width() == _last_layer_grads(lt, ft, yt).shape[1]




def test_lr_weighting_is_applied(runs, tiny_run):
    """Sum over checkpoints of eta_i times the single-checkpoint unweighted matrices == the weighted run."""
    man = json.loads((tiny_run["ckpt"] / "checkpoints.json").read_text())
    epochs = [c["epoch"] for c in man["checkpoints"] if c["epoch"] > 0]
    lrs = {c["epoch"]: c["lr"] for c in man["checkpoints"]}
    assert len(set(lrs[e] for e in epochs)) > 1, "the tiny run should have distinct learning rates"
    weighted = runs["diag_last"].matrix
    total = np.zeros_like(weighted)
    single = {}
    for e in epochs:
        ckpts = tracin.load_checkpoints(str(tiny_run["ckpt"]), epochs=[e])
        single[e] = tracin.influence(ckpts, runs["x"], runs["y"], runs["x"], runs["y"], lr_weight=False,
                                     layers="last", full_matrix=True, **RAW).matrix
        total += lrs[e] * single[e]
    np.testing.assert_allclose(weighted, total, rtol=1e-10, atol=1e-12 * np.abs(total).max())
    assert not np.allclose(weighted, single[epochs[0]] * len(epochs) * lrs[epochs[0]])


@pytest.mark.parametrize("dim", [64, 512])
def test_projection_error_within_documented_bound(runs, dim):
    """Documented bound: |TracIn_D - TracIn| has standard deviation <= sqrt(2 / D) sqrt(self(z) self(z')); every
    entry stays within 4 such deviations (a fixed seed: the test is deterministic) and errors shrink with D."""
    exact = runs["val_all"]
    r = tracin.influence(runs["ckpts"], runs["x"], runs["y"], runs["x_val"], runs["y_val"], layers="all", top_k=7,
                         full_matrix=True, projection_dim=dim, seed=3, **RAW)
    np.testing.assert_allclose(r.self_influence, exact.self_influence, rtol=1e-6)  # exact
    sigma = np.sqrt(2.0 / dim) * np.sqrt(np.outer(r.self_influence, runs["self_all"]))
    ratio = np.abs(r.matrix - exact.matrix) / sigma
    assert ratio.max() <= 4.0, ratio.max()
    assert 0 < np.mean(ratio) <= 1.0
    assert not np.array_equal(r.matrix, exact.matrix)
    rel = np.abs(r.matrix - exact.matrix).sum() / np.abs(exact.matrix).sum()
    assert rel < (0.6 if dim == 64 else 0.25), rel


def test_projection_matrix_is_seeded_and_unbiased():
    a = projection_matrix(300, 256, seed=1, index=0)
    np.testing.assert_array_equal(a, projection_matrix(300, 256, seed=1, index=0))
    assert not np.array_equal(a, projection_matrix(300, 256, seed=1, index=1))
    assert not np.array_equal(a, projection_matrix(300, 256, seed=2, index=0))
    assert a.dtype == np.float32 and abs(a.var() * 256 - 1) < 0.02
    rng = np.random.RandomState(0)
    g, h = rng.randn(300), rng.randn(300)
    errs = [(g @ projection_matrix(300, 256, 0, i)) @ (h @ projection_matrix(300, 256, 0, i))
            - g @ h for i in range(200)]
    bound = np.sqrt(2.0 / 256) * np.linalg.norm(g) * np.linalg.norm(h)
    assert abs(np.mean(errs)) < 0.3 * bound and np.std(errs) <= bound


def test_running_topk_merges_exactly(rng):
    m = np.round(rng.randn(6, 200), 1)  # many ties
    cols = np.arange(200)
    full = {"prop_idx": np.stack([np.lexsort((cols, -row))[:9] for row in m]),
            "opp_idx": np.stack([np.lexsort((cols, row))[:9] for row in m])}
    full["prop_score"] = np.take_along_axis(m, full["prop_idx"], 1)
    full["opp_score"] = np.take_along_axis(m, full["opp_idx"], 1)
    parts = np.array_split(np.arange(200), [13, 50, 51, 140])
    run = RunningTopK(6, 9)
    for p in parts[::-1]:  # any order of blocks
        sub = RunningTopK(6, 9)
        sub.add_block(m[:, p], p)
        run.add(**{k: v for k, v in zip(("prop_idx", "prop_score", "opp_idx", "opp_score"),
                                         sub.arrays().values())})
    for key in ("prop_idx", "prop_score", "opp_idx", "opp_score"):
        np.testing.assert_array_equal(run.arrays()[key], full[key])
    one = RunningTopK(6, 9)  # a single block of the whole rows: the same as sorting them
    one.add_block(m, cols)
    for key in ("prop_idx", "prop_score", "opp_idx", "opp_score"):
        np.testing.assert_array_equal(one.arrays()[key], full[key])




def test_predicted_labels_and_rerun_from_cache(runs, tiny_run, tmp_path):
    args = ("--mode", "influence", "--test_label", "predicted", "--test_indices", "30,1,2", "--top_k", 4)
    score(tiny_run, tmp_path, *args)
    first = load(tmp_path)
    g = ScoringGraph(runs["ckpts"].model, 3)
    g.load(runs["ckpts"][-1].path)
    np.testing.assert_array_equal(first["test_indices"], [30, 1, 2])  # in the order given
    x_test = runs["x_val"][[30, 1, 2]]
    np.testing.assert_array_equal(first["test_labels"], g.forward(x_test.astype(np.float32))[0].argmax(1))
    api = tracin.influence(runs["ckpts"], runs["x"], runs["y"], x_test, None, top_k=4)
    for k in TOP:
        assert first[k].tobytes() == getattr(api, k).tobytes(), k
    _, _, err = score(tiny_run, tmp_path, *args)
    assert "all from cache" in err
    again = load(tmp_path)
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])


@pytest.mark.parametrize("extra, words", [
    (("--top_k", 5), "--top_k only applies to --mode influence"),
    (("--mode", "influence", "--test_indices", "0,32"), "--test_indices 32 is out of range"),
    (("--mode", "influence", "--save_matrix", "True", "--max_memory_gb", "0.00001"), "use --top_k"),
    (("--mode", "influence", "--layers", "last", "--projection_dim", 8),
     "--projection_dim: projection_dim applies to"),
    (("--mode", "influence", "--layers", "affine/*", "--projection_dim", 5000), "not below the 90 selected"),
    (("--mode", "influence", "--test_input", "/nonexistent"), "does not exist"),
])
def test_bad_input_is_one_line_and_overwrites_nothing(tiny_run, tmp_path, extra, words):
    out = tmp_path / "out"
    out.mkdir()
    (out / formats.TOPK).write_bytes(b"keep")
    code, _, err = score(tiny_run, out, *extra, check=False)
    assert code == 2, err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert (out / formats.TOPK).read_bytes() == b"keep"
    assert sorted(os.listdir(out)) == [formats.TOPK]


def test_test_input_of_another_shape_is_rejected(tiny_run, tmp_path):
    other = tmp_path / "other"
    datasets.save_arrays(str(other), {"x_val": np.zeros((4, 3, 8, 8), np.uint8), "y_val": np.zeros((4, 1), int)})
    code, _, err = score(tiny_run, tmp_path / "out", "--mode", "influence", "--test_input", other, check=False)
    assert code == 2 and "another data set" in err
    assert not (tmp_path / "out").exists()  # a bad input leaves no empty output folder behind
    with pytest.raises(ValueError, match="x_test holds images of shape"):  # the API says so too
        ckpts = tracin.load_checkpoints(str(tiny_run["ckpt"]))
        x = np.load(tiny_run["data"] / "x_train.npy")
        tracin.influence(ckpts, x, np.load(tiny_run["data"] / "y_shuffle_train.npy"), np.zeros((4, 3, 8, 8)))
