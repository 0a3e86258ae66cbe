"""Self-influence: exactness (batched == loop == hand-computed), lr weighting, checkpoint selection, outputs,
legacy folders, resumption."""
import json
import os
import shutil

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import numpy as np
import pytest

from tracin import maths
from tracin.graphs import LoopGraph, ScoringGraph, select_params
from conftest import checkpoint_logits, run_script, write_subset


# ------------------------------------------------------------------------------- hand-computed two-layer net

def _two_layer(image, test):
    """conv 2x2 (with bias) -> inference batch norm -> relu -> affine: every layer type the scorer handles."""
    with nn.parameter_scope("conv"):
        h = PF.convolution(image, 2, kernel=(2, 2), pad=(1, 0), stride=(1, 2))
    with nn.parameter_scope("bn"):
        h = PF.batch_normalization(h, batch_stat=not test)
    h = F.relu(h)
    return PF.affine(h, 3), h


def _hand_grads(x, y, P):
    """Per-sample gradients of the two-layer net, derived by hand in numpy."""
    W, cb = P["conv/conv/W"], P["conv/conv/b"]
    beta, gamma, mean, var = (P[f"bn/bn/{k}"].reshape(-1) for k in ("beta", "gamma", "mean", "var"))
    A, ab = P["affine/W"], P["affine/b"]
    out = []
    for xi, yi in zip(x, y):
        xp = np.pad(xi, ((0, 0), (1, 1), (0, 0)))  # pad (1, 0)
        ho, wo = xp.shape[1] - 1, (xp.shape[2] - 2) // 2 + 1
        c = np.zeros((2, ho, wo))
        for o in range(2):
            for i in range(ho):
                for j in range(wo):
                    c[o, i, j] = (W[o] * xp[:, i:i + 2, 2 * j:2 * j + 2]).sum() + cb[o]
        std = np.sqrt(var + 1e-5)[:, None, None]
        xhat = (c - mean[:, None, None]) / std
        bn = gamma[:, None, None] * xhat + beta[:, None, None]
        r = np.maximum(bn, 0)
        h = r.reshape(-1)
        z = h @ A + ab
        p = np.exp(z - z.max())
        p /= p.sum()
        e = p.copy()
        e[yi] -= 1
        dA, dab = np.outer(h, e), e
        dbn = (A @ e).reshape(r.shape) * (bn > 0)
        dgamma, dbeta = (dbn * xhat).sum((1, 2)), dbn.sum((1, 2))
        dc = dbn * gamma[:, None, None] / std
        dW = np.zeros_like(W)
        for o in range(2):
            for i in range(ho):
                for j in range(wo):
                    dW[o] += dc[o, i, j] * xp[:, i:i + 2, 2 * j:2 * j + 2]
        dcb = dc.sum((1, 2))
        grads = {"conv/conv/W": dW, "conv/conv/b": dcb, "bn/bn/beta": dbeta, "bn/bn/gamma": dgamma,
                 "affine/W": dA, "affine/b": dab}
        out.append(grads)
    return out


def test_batched_and_loop_match_hand_computed_gradients():
    rng = np.random.RandomState(0)
    cfg = {"input_shape": [2, 4, 5]}
    g = ScoringGraph(cfg, 4, builder=_two_layer)
    for name, v in g.params.items():
        v.d = rng.randn(*v.shape) * (0.5 if "var" not in name else 0.0) + (1.5 if "var" in name else 0.0)
    P = {k: v.d.astype(np.float64) for k, v in g.params.items()}
    x = rng.randn(6, 2, 4, 5).astype(np.float32)
    y = rng.randint(0, 3, size=6)
    names = select_params(g.trainable, "all")
    assert sorted(names) == sorted(["conv/conv/W", "conv/conv/b", "bn/bn/beta", "bn/bn/gamma", "affine/W", "affine/b"])
    hand = _hand_grads(x.astype(np.float64), y, P)
    hand_flat = np.stack([np.concatenate([h[n].reshape(-1) for n in names]) for h in hand])
    batched = np.concatenate([g.grads(x[s:s + 4], y[s:s + 4], names) for s in (0, 4)])  # last batch padded
    np.testing.assert_allclose(batched, hand_flat, rtol=1e-4, atol=1e-6)
    sq = np.concatenate([g.sq_norms(x[s:s + 4], y[s:s + 4], names)[0] for s in (0, 4)])
    np.testing.assert_allclose(sq, (hand_flat ** 2).sum(1), rtol=1e-4)
    loop = LoopGraph(cfg, builder=_two_layer)
    for k, v in loop.g.params.items():
        v.d = P[k]
    np.testing.assert_allclose(loop.grads(x, y, names), hand_flat, rtol=1e-4, atol=1e-6)
    # last layer closed form ||p - y||^2 (||h||^2 + 1) == the hand gradients of affine/W and affine/b
    logits, feats = g.forward(x[:4])
    hand_last = [sum((h[n] ** 2).sum() for n in ("affine/W", "affine/b")) for h in hand[:4]]
    probs = maths.softmax(logits.astype(np.float64))
    np.testing.assert_allclose(maths.last_layer_sq_norms(probs, feats, y[:4]), hand_last, rtol=1e-5)


def test_im2col_matches_sliding_windows():
    rng = np.random.RandomState(1)
    x = rng.randn(2, 3, 7, 6)
    cols = maths.im2col(x, (3, 2), (1, 2), (2, 1), (1, 2))  # kernel 3x2, pad (1,2), stride (2,1), dilation (1,2)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)))
    ho = (xp.shape[2] - 1 * (3 - 1) - 1) // 2 + 1
    wo = (xp.shape[3] - 2 * (2 - 1) - 1) // 1 + 1
    ref = np.empty((2, 3 * 3 * 2, ho * wo))
    for b in range(2):
        for i in range(ho):
            for j in range(wo):
                patch = xp[b, :, 2 * i:2 * i + 3, j:j + 3:2]
                ref[b, :, i * wo + j] = patch.reshape(-1)
    np.testing.assert_array_equal(cols, ref)


def test_gram_and_direct_conv_norms_agree():
    rng = np.random.RandomState(2)
    args = {"pad": [1, 1], "stride": [1, 1], "dilation": [1, 1], "group": 1}
    for hw in (1, 2, 8):  # small spatial size takes the Gram identity, large the direct product
        x = rng.randn(3, 4, hw, hw).astype(np.float32)
        g = rng.randn(3, 5, hw, hw).astype(np.float32)
        full = maths.conv_grads(x, g, (5, 4, 3, 3), args).reshape(3, -1).astype(np.float64)
        np.testing.assert_allclose(maths.conv_sq_norms(x, g, (5, 4, 3, 3), args), (full ** 2).sum(1), rtol=1e-4)


# ------------------------------------------------------------------------------------------- the CLI, exact

def _score(run, out, *extra):
    return run_script("calculate_score.py", "--input", run["data"], "--checkpoint", run["ckpt"], "--output", out,
                      "-c", "cpu", *extra, cwd=run["root"])


@pytest.fixture(scope="module")
def small_run(tiny_run, tmp_path_factory):
    """tiny_run's checkpoints with only the first 24 training samples (the loop reference is slow)."""
    root = tmp_path_factory.mktemp("small")
    data = root / "data"
    data.mkdir()
    for f in ("x_train", "y_train", "y_shuffle_train"):
        np.save(data / f"{f}.npy", np.load(tiny_run["data"] / f"{f}.npy")[:24])
    return {"root": root, "data": data, "ckpt": tiny_run["ckpt"]}


@pytest.fixture(scope="module")
def resnet56_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("r56")
    write_subset(root / "data", n_train=16, n_val=8)
    run_script("train.py", "--input", root / "data", "--model", "resnet56", "--model_save_path", root / "ckpt",
               "--monitor-path", root / "mon", "--train_epochs", 1, "--train_batch_size", 8, "-c", "cpu", cwd=root)
    return {"root": root, "data": root / "data", "ckpt": root / "ckpt"}


@pytest.mark.parametrize("which", ["resnet23", "resnet56"])
@pytest.mark.parametrize("layers", ["last", "all"])
def test_batched_equals_loop(which, layers, small_run, resnet56_run, tmp_path):
    run = small_run if which == "resnet23" else resnet56_run
    _score(run, tmp_path / "b", "--layers", layers, "--batch_size", 5, "--save_every_epoch", "True")
    _score(run, tmp_path / "l", "--layers", layers, "--method", "loop", "--save_every_epoch", "True")
    b = np.load(tmp_path / "b" / "influence_all_epoch.npy")
    l = np.load(tmp_path / "l" / "influence_all_epoch.npy")
    assert b.shape == (len(np.load(run["data"] / "x_train.npy")),) and np.all(b >= 0) and b.max() > 0
    np.testing.assert_allclose(b, l, rtol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "b" / "loss_last_epoch.npy"),
                               np.load(tmp_path / "l" / "loss_last_epoch.npy"), rtol=1e-4)
    meta = json.load(open(tmp_path / "b" / "scores.json"))
    assert meta["method"] == "batched" and meta["layers"] == layers
    if layers == "all":  # every trainable parameter, batch norm included
        assert any(p.endswith("bn/gamma") for p in meta["parameters"])
        assert not any(p.endswith("bn/mean") for p in meta["parameters"])


def test_last_bias_closed_form_equals_bias_gradients(small_run, tmp_path):
    """--layers last_bias (||p - y||^2 from one forward) == the batched and loop gradients of affine/b."""
    _score(small_run, tmp_path / "c", "--layers", "last_bias")
    _score(small_run, tmp_path / "b", "--layers", "affine/b")
    _score(small_run, tmp_path / "l", "--layers", "affine/b", "--method", "loop")
    c = np.load(tmp_path / "c" / "influence_all_epoch.npy")
    np.testing.assert_allclose(c, np.load(tmp_path / "b" / "influence_all_epoch.npy"), rtol=1e-5)
    np.testing.assert_allclose(c, np.load(tmp_path / "l" / "influence_all_epoch.npy"), rtol=1e-5)
    assert json.load(open(tmp_path / "c" / "scores.json"))["parameters"] == ["affine/b"]


def test_default_is_lr_weighted_brier_score_of_the_bias(small_run, tmp_path):
    """No --layers: self-influence over affine/b, i.e. sum_i eta_i ||softmax(logits_i) - onehot(label)||^2, checked
    against independent inference-mode logits of every checkpoint."""
    _score(small_run, tmp_path / "d")
    meta = json.load(open(tmp_path / "d" / "scores.json"))
    assert meta["layers"] == "last_bias" and meta["parameters"] == ["affine/b"]
    lr = {c["epoch"]: c["lr"] for c in json.load(open(small_run["ckpt"] / "checkpoints.json"))["checkpoints"]}
    ref = 0.0
    for e in (1, 2, 3):
        logits, y = checkpoint_logits(small_run, e, "x_train.npy", "y_shuffle_train.npy")
        z = logits.astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        ref = ref + lr[e] * (p ** 2).sum(1)
    np.testing.assert_allclose(np.load(tmp_path / "d" / "influence_all_epoch.npy"), ref, rtol=1e-5)


def test_lr_weighting_and_per_checkpoint_terms(small_run, tmp_path):
    _score(small_run, tmp_path / "w", "--save_every_epoch", "True")
    _score(small_run, tmp_path / "u", "--save_every_epoch", "True", "--lr_weight", "False")
    m = json.load(open(small_run["ckpt"] / "checkpoints.json"))
    lr = {c["epoch"]: c["lr"] for c in m["checkpoints"]}
    meta = json.load(open(tmp_path / "w" / "scores.json"))
    assert [c["epoch"] for c in meta["checkpoints"]] == [1, 2, 3]  # default: all but the initialisation
    total_w, total_u = np.load(tmp_path / "w" / "influence_all_epoch.npy"), np.load(tmp_path / "u" / "influence_all_epoch.npy")
    acc = np.zeros_like(total_w)
    for e in (1, 2, 3):
        tw, tu = np.load(tmp_path / "w" / f"{e}_influence.npy"), np.load(tmp_path / "u" / f"{e}_influence.npy")
        np.testing.assert_allclose(tw, lr[e] * tu, rtol=1e-12)
        acc += tw
    np.testing.assert_allclose(acc, total_w, rtol=1e-12)
    np.testing.assert_allclose(sum(np.load(tmp_path / "u" / f"{e}_influence.npy") for e in (1, 2, 3)), total_u, rtol=1e-12)


def test_loss_baseline_is_cross_entropy_at_last_checkpoint(small_run, tmp_path):
    _score(small_run, tmp_path / "s")
    logits, y = checkpoint_logits(small_run, 3, "x_train.npy", "y_shuffle_train.npy")
    z = logits.astype(np.float64)
    ref = np.log(np.exp(z).sum(1)) - z[np.arange(24), y]
    np.testing.assert_allclose(np.load(tmp_path / "s" / "loss_last_epoch.npy"), ref, rtol=1e-6)


def test_checkpoint_selection(small_run, tmp_path):
    _score(small_run, tmp_path / "a", "--checkpoint_epochs", "3,1")
    assert [c["epoch"] for c in json.load(open(tmp_path / "a" / "scores.json"))["checkpoints"]] == [1, 3]
    _score(small_run, tmp_path / "b", "--checkpoint_interval", "2")
    assert [c["epoch"] for c in json.load(open(tmp_path / "b" / "scores.json"))["checkpoints"]] == [1, 3]


def test_absent_epoch_is_a_one_line_error(small_run, tmp_path):
    p = run_script("calculate_score.py", "--input", small_run["data"], "--checkpoint", small_run["ckpt"],
                   "--output", tmp_path, "-c", "cpu", "--checkpoint_epochs", "7", check=False)
    assert p.returncode == 2
    assert "no checkpoint for epoch(s) 7; available: 0,1,2,3" in p.stderr
    assert "Traceback" not in p.stderr


def test_original_example_folder_scores_with_model_flag(small_run, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for e in (1, 2, 3):  # the original wrote params_{epoch}.h5 and no manifest
        shutil.copy(small_run["ckpt"] / f"params_{e}.h5", legacy / f"params_{e}.h5")
    p = run_script("calculate_score.py", "--input", small_run["data"], "--checkpoint", legacy, "--output",
                   tmp_path / "o", "-c", "cpu", "--model", "resnet23", "--nmaps", 8)
    assert "warning" in p.stderr and "learning rate 1" in p.stderr
    _score(small_run, tmp_path / "u", "--lr_weight", "False")
    np.testing.assert_allclose(np.load(tmp_path / "o" / "influence_all_epoch.npy"),
                               np.load(tmp_path / "u" / "influence_all_epoch.npy"), rtol=1e-12)
    # without --model the folder cannot be read
    p = run_script("calculate_score.py", "--input", small_run["data"], "--checkpoint", legacy, "-c", "cpu",
                   "--output", tmp_path / "x", check=False)
    assert p.returncode == 2 and "--model" in p.stderr


def test_seed_command_with_other_model_uses_manifest(small_run, tmp_path):
    """The seed README's command names --model resnet56; the manifest's model wins, with a warning."""
    p = _score(small_run, tmp_path / "m", "--model", "resnet56")
    assert "--model resnet56 ignored: checkpoints.json records resnet23" in p.stderr
    _score(small_run, tmp_path / "d")
    assert np.array_equal(np.load(tmp_path / "m" / "influence_all_epoch.npy"),
                          np.load(tmp_path / "d" / "influence_all_epoch.npy"))


def test_rerun_reuses_finished_work(small_run, tmp_path):
    _score(small_run, tmp_path / "s")
    first = np.load(tmp_path / "s" / "influence_all_epoch.npy")
    _score(small_run, tmp_path / "s")
    meta = json.load(open(tmp_path / "s" / "scores.json"))
    assert meta["samples_computed"] == 0
    assert np.array_equal(first, np.load(tmp_path / "s" / "influence_all_epoch.npy"))
