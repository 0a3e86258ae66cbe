"""Train -> test influence (calculate_score.py --mode influence): exactness against self-influence, the loop
reference, a full sort and a hand-made sum over checkpoints; the random projection's documented error bound;
bad inputs; reuse of finished work."""
import json
import os

import numpy as np
import pytest

from tracin import datasets
from tracin.graphs import ScoringGraph, select_params
from tracin.job_influence import InfluenceFeatures
from tracin.maths import projection_matrix
from tracin.topk import RunningTopK
from conftest import run_script


def score(tiny_run, out, *extra, check=True):
    return run_script("calculate_score.py", "--input", tiny_run["data"], "--checkpoint", tiny_run["ckpt"],
                      "--output", out, "-c", "cpu", *extra, cwd=tiny_run["root"], check=check)


def load(out):
    with np.load(os.path.join(out, "influence_topk.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
    """Shared scoring runs on the tiny model (96 train, 32 validation samples, 3 checkpoints)."""
    root = tmp_path_factory.mktemp("influence")
    arrays = datasets.load_arrays(str(tiny_run["data"]))
    as_test = root / "train_as_test"  # the training samples, with the labels training saw, as "test" samples
    datasets.save_arrays(str(as_test), {"x_val": arrays["x_train"], "y_val": arrays["y_shuffle_train"]})
    out = {"root": root, "as_test": as_test}
    for layers in ("last", "all"):
        out[f"self_{layers}"] = root / f"self_{layers}"
        score(tiny_run, out[f"self_{layers}"], "--layers", layers)
        out[f"diag_{layers}"] = root / f"diag_{layers}"
        # `last` is --mode influence's default: the run leaves --layers out, so the tests below on diag_last
        # (== the affine/* gradients, == self-influence with --layers last) also check the default
        flags = ("--layers", layers) if layers != "last" else ()
        score(tiny_run, out[f"diag_{layers}"], "--mode", "influence", *flags, "--test_input", as_test,
              "--save_matrix", "True", "--top_k", 5)
    out["val_all"] = root / "val_all"
    score(tiny_run, out["val_all"], "--mode", "influence", "--layers", "all", "--save_matrix", "True", "--top_k", 7)
    return out


@pytest.mark.parametrize("layers", ["last", "all"])
def test_diagonal_of_train_vs_train_is_self_influence(runs, layers):
    si = np.load(runs[f"self_{layers}"] / "influence_all_epoch.npy")
    m = np.load(runs[f"diag_{layers}"] / "influence_matrix.npy")
    z = load(runs[f"diag_{layers}"])
    assert m.shape == (96, 96)
    np.testing.assert_allclose(np.diag(m), si, rtol=2e-5)
    np.testing.assert_allclose(z["self_influence"], si, rtol=2e-5)
    np.testing.assert_allclose(m, m.T, rtol=1e-4, atol=1e-6 * np.abs(m).max())  # TracIn(z, z') = TracIn(z', z)
    # Cauchy-Schwarz: |TracIn(z, z')| <= sqrt(self(z) self(z'))
    assert np.all(np.abs(m) <= np.sqrt(np.outer(si, si)) * (1 + 1e-5))
    np.testing.assert_array_equal(z["test_indices"], np.arange(96))
    np.testing.assert_array_equal(z["test_labels"], np.load(runs["as_test"] / "y_val.npy")[:, 0])


def test_topk_is_the_argsort_of_the_full_matrix(runs):
    for name, k in (("val_all", 7), ("diag_all", 5), ("diag_last", 5)):
        m = np.load(runs[name] / "influence_matrix.npy")
        z = load(runs[name])
        cols = np.arange(m.shape[1])
        for t in range(len(m)):
            prop = np.lexsort((cols, -m[t]))[:k]  # highest first, ties to the lower index
            opp = np.lexsort((cols, m[t]))[:k]
            np.testing.assert_array_equal(z["proponents"][t], prop)
            np.testing.assert_array_equal(z["opponents"][t], opp)
            np.testing.assert_array_equal(z["proponent_scores"][t], m[t, prop])
            np.testing.assert_array_equal(z["opponent_scores"][t], m[t, opp])
        assert np.all(np.diff(z["proponent_scores"], axis=1) <= 0)
        assert np.all(np.diff(z["opponent_scores"], axis=1) >= 0)


def test_npz_format(runs, tiny_run):
    z = load(runs["val_all"])
    assert set(z) == {"test_indices", "test_labels", "proponents", "proponent_scores", "opponents",
                      "opponent_scores", "self_influence", "input", "test_input"}
    assert z["proponents"].shape == z["opponents"].shape == (32, 7)
    assert z["proponents"].dtype.kind == "i" and z["test_indices"].dtype.kind == "i"
    assert z["proponent_scores"].dtype == np.float64 and z["self_influence"].shape == (32,)
    assert z["input"].shape == () and str(z["input"]) == os.path.abspath(tiny_run["data"])
    assert str(z["test_input"]) == os.path.abspath(tiny_run["data"])  # default: --input's own x_val / y_val
    np.testing.assert_array_equal(z["test_labels"], np.load(tiny_run["data"] / "y_val.npy")[:, 0])
    meta = json.loads((runs["val_all"] / "influence.json").read_text())
    assert meta["n_test"] == 32 and meta["n_train"] == 96 and meta["top_k"] == 7 and meta["layers"] == "all"


def test_batched_equals_loop_reference(runs, tiny_run):
    out = runs["root"] / "loop"
    score(tiny_run, out, "--mode", "influence", "--layers", "all", "--method", "loop", "--test_indices", "3,0,17",
          "--save_matrix", "True", "--top_k", 7)
    loop = np.load(out / "influence_matrix.npy")
    batched = np.load(runs["val_all"] / "influence_matrix.npy")[[3, 0, 17]]
    scale = np.abs(batched).max()
    np.testing.assert_allclose(loop, batched, rtol=1e-4, atol=1e-6 * scale)
    z, zb = load(out), load(runs["val_all"])
    np.testing.assert_array_equal(z["test_indices"], [3, 0, 17])
    np.testing.assert_allclose(z["self_influence"], zb["self_influence"][[3, 0, 17]], rtol=1e-5)


def test_last_layer_closed_form_equals_gradient_machinery(runs, tiny_run):
    """--layers last (products of e and h) == the per-sample gradient path on the same affine parameters."""
    out = runs["root"] / "affine_grads"
    score(tiny_run, out, "--mode", "influence", "--layers", "affine/*", "--test_input", runs["as_test"],
          "--save_matrix", "True", "--top_k", 5)
    closed = np.load(runs["diag_last"] / "influence_matrix.npy")
    grads = np.load(out / "influence_matrix.npy")
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
    weighted = np.load(runs["diag_last"] / "influence_matrix.npy")
    total = np.zeros_like(weighted)
    for e in epochs:
        out = runs["root"] / f"epoch{e}"
        score(tiny_run, out, "--mode", "influence", "--layers", "last", "--test_input", runs["as_test"],
              "--save_matrix", "True", "--checkpoint_epochs", e, "--lr_weight", "False")
        total += lrs[e] * np.load(out / "influence_matrix.npy")
    np.testing.assert_allclose(weighted, total, rtol=1e-10, atol=1e-12 * np.abs(total).max())
    unweighted = np.load(runs["root"] / f"epoch{epochs[0]}" / "influence_matrix.npy")
    assert not np.allclose(weighted, unweighted * len(epochs) * lrs[epochs[0]])


@pytest.mark.parametrize("dim", [64, 512])
def test_projection_error_within_documented_bound(runs, tiny_run, dim):
    """README bound: |TracIn_D - TracIn| has standard deviation <= sqrt(2 / D) sqrt(self(z) self(z')); every entry
    stays within 4 such deviations (a fixed seed: the test is deterministic) and errors shrink with D."""
    out = runs["root"] / f"proj{dim}"
    score(tiny_run, out, "--mode", "influence", "--layers", "all", "--save_matrix", "True", "--top_k", 7,
          "--projection_dim", dim, "--seed", 3)
    exact = np.load(runs["val_all"] / "influence_matrix.npy")
    proj = np.load(out / "influence_matrix.npy")
    si_train = np.load(runs["self_all"] / "influence_all_epoch.npy")
    z = load(out)
    np.testing.assert_allclose(z["self_influence"], load(runs["val_all"])["self_influence"], rtol=1e-6)  # exact
    sigma = np.sqrt(2.0 / dim) * np.sqrt(np.outer(z["self_influence"], si_train))
    ratio = np.abs(proj - exact) / sigma
    assert ratio.max() <= 4.0, ratio.max()
    assert 0 < np.mean(ratio) <= 1.0
    assert not np.array_equal(proj, exact)
    # the projection is per checkpoint and seeded: rerunning with another --seed gives other errors
    rel = np.abs(proj - exact).sum() / np.abs(exact).sum()
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


def test_predicted_labels_and_rerun_from_cache(runs, tiny_run):
    out = runs["root"] / "predicted"
    args = ("--mode", "influence", "--test_label", "predicted", "--test_indices", "1,2,30", "--top_k", 4)
    score(tiny_run, out, *args)
    first = load(out)
    man = json.loads((tiny_run["ckpt"] / "checkpoints.json").read_text())
    g = ScoringGraph(man["model"], 3)
    g.load(str(tiny_run["ckpt"] / man["checkpoints"][-1]["params"]))
    x_val = np.load(tiny_run["data"] / "x_val.npy")[[1, 2, 30]].astype(np.float32)
    np.testing.assert_array_equal(first["test_labels"], g.forward(x_val)[0].argmax(1))
    p = score(tiny_run, out, *args)
    assert "all from cache" in p.stderr
    again = load(out)
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])


@pytest.mark.parametrize("extra, words", [
    (("--top_k", 5), "--top_k only applies to --mode influence"),
    (("--mode", "influence", "--test_indices", "0,32"), "--test_indices 32 is out of range"),
    (("--mode", "influence", "--save_matrix", "True", "--max_memory_gb", "0.00001"), "use --top_k"),
    (("--mode", "influence", "--layers", "last", "--projection_dim", 8), "--projection_dim applies to"),
    (("--mode", "influence", "--layers", "affine/*", "--projection_dim", 5000), "not below the 90 selected"),
    (("--mode", "influence", "--test_input", "/nonexistent"), "does not exist"),
])
def test_bad_input_is_one_line_and_overwrites_nothing(tiny_run, tmp_path, extra, words):
    out = tmp_path / "out"
    out.mkdir()
    (out / "influence_topk.npz").write_bytes(b"keep")
    p = score(tiny_run, out, *extra, check=False)
    assert p.returncode == 2, p.stderr
    assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert (out / "influence_topk.npz").read_bytes() == b"keep"
    assert sorted(os.listdir(out)) == ["influence_topk.npz"]


def test_test_input_of_another_shape_is_rejected(tiny_run, tmp_path):
    other = tmp_path / "other"
    datasets.save_arrays(str(other), {"x_val": np.zeros((4, 3, 8, 8), np.uint8), "y_val": np.zeros((4, 1), int)})
    p = score(tiny_run, tmp_path / "out", "--mode", "influence", "--test_input", other, check=False)
    assert p.returncode == 2 and "another data set" in p.stderr
    assert not (tmp_path / "out").exists()  # a bad input leaves no empty output folder behind
