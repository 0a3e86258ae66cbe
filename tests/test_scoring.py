"""Self-influence: exactness (batched == loop == hand-computed), lr weighting, probabilities, checkpoint
selection, through the API in process; the script's outputs, legacy folders and resumption through its main."""
import json
import re
import shutil

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import numpy as np
import pytest
from conftest import checkpoint_logits, run_main, write_subset

import models
import tracin
from tracin import checkpoints, formats, maths
from tracin.graphs import LoopGraph, ScoringGraph, select_params

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


# ------------------------------------------------------------------------------ the API, exact and in process

@pytest.fixture(scope="module")
def small_run(tiny_run, tmp_path_factory):
    """tiny_run's checkpoints with only the first 24 training samples (the loop reference is slow)."""
    root = tmp_path_factory.mktemp("small")
    data = root / "data"
    data.mkdir()
    for f in ("x_train", "y_train", "y_shuffle_train"):
        np.save(data / f"{f}.npy", np.load(tiny_run["data"] / f"{f}.npy")[:24])
    return {"root": root, "data": data, "ckpt": tiny_run["ckpt"], "x": np.load(data / "x_train.npy"),
            "y": np.load(data / "y_shuffle_train.npy")[:, 0]}


@pytest.fixture(scope="module")
def resnet56_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("r56")
    arrays = write_subset(root / "data", n_train=16, n_val=8)
    run_main("train.py", "--input", root / "data", "--model", "resnet56", "--model_save_path", root / "ckpt",
             "--monitor-path", root / "mon", "--train_epochs", 1, "--train_batch_size", 8, "-c", "cpu", cwd=root)
    return {"root": root, "data": root / "data", "ckpt": root / "ckpt", "x": arrays["x_train"],
            "y": arrays["y_shuffle_train"][:, 0]}


def _self(run, **kw):
    return tracin.self_influence(tracin.load_checkpoints(str(run["ckpt"])), run["x"], run["y"], details=True, **kw)


@pytest.mark.parametrize("which", ["resnet23", "resnet56"])
@pytest.mark.parametrize("layers", ["last", "all"])
def test_batched_equals_loop(which, layers, small_run, resnet56_run):
    run = small_run if which == "resnet23" else dict(resnet56_run, x=resnet56_run["x"][:8], y=resnet56_run["y"][:8])
    b = _self(run, layers=layers, batch_size=5)  # the last batch is padded
    l = _self(run, layers=layers, method="loop")
    assert b.scores.shape == (len(run["x"]),) and np.all(b.scores >= 0) and b.scores.max() > 0
    np.testing.assert_allclose(b.scores, l.scores, rtol=1e-4)
    np.testing.assert_allclose(b.terms, l.terms, rtol=1e-4)
    np.testing.assert_allclose(b.loss, l.loss, rtol=1e-4)
    if layers == "all":  # every trainable parameter, batch norm included
        assert any(p.endswith("bn/gamma") for p in b.parameters)
        assert not any(p.endswith("bn/mean") for p in b.parameters)


def test_last_bias_closed_form_equals_bias_gradients(small_run):
    """layers last_bias (||p - y||^2 from one forward) == the batched and loop gradients of affine/b."""
    c = _self(small_run, layers="last_bias")
    np.testing.assert_allclose(c.scores, _self(small_run, layers="affine/b").scores, rtol=1e-5)
    np.testing.assert_allclose(c.scores, _self(small_run, layers="affine/b", method="loop").scores, rtol=1e-5)
    assert c.parameters == ["affine/b"]


def _softmax(logits):
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_default_is_lr_weighted_brier_score_of_the_bias(small_run):
    """Defaults: self-influence over affine/b, i.e. sum_i eta_i ||softmax(logits_i) - onehot(label)||^2, checked
    against independent inference-mode logits of every checkpoint."""
    result = _self(small_run)
    assert result.parameters == ["affine/b"] and result.epochs == [1, 2, 3]
    lr = {c["epoch"]: c["lr"] for c in json.load(open(small_run["ckpt"] / "checkpoints.json"))["checkpoints"]}
    ref = 0.0
    for e in (1, 2, 3):
        logits, y = checkpoint_logits(small_run, e, "x_train.npy", "y_shuffle_train.npy")
        p = _softmax(logits)
        p[np.arange(len(y)), y] -= 1.0
        ref = ref + lr[e] * (p ** 2).sum(1)
    np.testing.assert_allclose(result.scores, ref, rtol=1e-5)
    np.testing.assert_array_equal(tracin.self_influence(tracin.load_checkpoints(str(small_run["ckpt"])),
                                                        small_run["x"], small_run["y"]), result.scores)


@pytest.mark.parametrize("lr_weight", [True, False])
def test_probabilities_are_the_eta_weighted_mean_softmax(small_run, lr_weight):
    """probabilities (n, classes) == sum_i eta_i softmax(logits_i) / sum_i eta_i over an independent forward pass
    of every checkpoint; rows sum to 1; every layer choice and method yields the same."""
    lr = {c["epoch"]: c["lr"] for c in json.load(open(small_run["ckpt"] / "checkpoints.json"))["checkpoints"]}
    eta = {e: (lr[e] if lr_weight else 1.0) for e in (1, 2, 3)}
    ref = sum(eta[e] * _softmax(checkpoint_logits(small_run, e, "x_train.npy", "y_shuffle_train.npy")[0])
              for e in (1, 2, 3)) / sum(eta.values())
    result = _self(small_run, lr_weight=lr_weight)
    assert result.probabilities.shape == (24, 10)
    np.testing.assert_allclose(result.probabilities, ref, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-12)
    for kw in ({"layers": "all"}, {"layers": "last", "method": "loop"}) if lr_weight else ():
        np.testing.assert_allclose(_self(small_run, **kw).probabilities, ref, rtol=1e-5, atol=1e-12)


def test_lr_weighting_and_per_checkpoint_terms(small_run):
    w, u = _self(small_run), _self(small_run, lr_weight=False)
    lr = {c["epoch"]: c["lr"] for c in json.load(open(small_run["ckpt"] / "checkpoints.json"))["checkpoints"]}
    assert w.epochs == u.epochs == [1, 2, 3]  # default: all but the initialisation
    assert w.etas == [lr[e] for e in (1, 2, 3)] and u.etas == [1.0] * 3
    for i, e in enumerate((1, 2, 3)):
        np.testing.assert_allclose(w.terms[i], lr[e] * u.terms[i], rtol=1e-12)
    np.testing.assert_allclose(w.terms.sum(0), w.scores, rtol=1e-12)
    np.testing.assert_allclose(u.terms.sum(0), u.scores, rtol=1e-12)


def test_loss_baseline_is_cross_entropy_at_last_checkpoint(small_run):
    logits, y = checkpoint_logits(small_run, 3, "x_train.npy", "y_shuffle_train.npy")
    z = logits.astype(np.float64)
    ref = np.log(np.exp(z).sum(1)) - z[np.arange(24), y]
    np.testing.assert_allclose(_self(small_run).loss, ref, rtol=1e-6)


def test_checkpoint_selection(small_run):
    folder = str(small_run["ckpt"])
    assert tracin.load_checkpoints(folder, epochs=[3, 1]).epochs == [1, 3]
    assert tracin.load_checkpoints(folder, interval=2).epochs == [1, 3]  # epochs 2K-1 for K = 2
    assert tracin.load_checkpoints(folder).epochs == [1, 2, 3]
    with pytest.raises(tracin.InputError, match=r"no checkpoint for epoch\(s\) 7; available: 0,1,2,3"):
        tracin.load_checkpoints(folder, epochs=[7])
    result = tracin.self_influence(tracin.load_checkpoints(folder, epochs=[3, 1]), small_run["x"], small_run["y"],
                                   details=True)
    assert result.epochs == [1, 3]


def test_interval_30_selects_the_originals_checkpoints():
    """params_k holds the weights after k epochs (train.py saves checkpoint epoch + 1 after 0-based epoch `epoch`,
    tests/test_train.py checks params_3's error against the monitor's epoch 3), as the original's params_i saved at
    the start of epoch i. Of 270 epochs the original scored params_29, 59, ..., 269: interval 30."""
    entries = [{"epoch": k, "path": f"params_{k}.h5", "lr": 1.0} for k in range(271)]
    assert [e["epoch"] for e in checkpoints.select(entries, interval=30)] == list(range(29, 270, 30))
    assert [e["epoch"] for e in checkpoints.select(entries, interval=1)] == list(range(1, 271))
    with pytest.raises(tracin.InputError, match="no checkpoint at epochs 29, 59"):
        checkpoints.select([e for e in entries if e["epoch"] % 2 == 0], interval=30)


def test_api_rejects_bad_inputs_with_value_errors(small_run):
    ckpts = tracin.load_checkpoints(str(small_run["ckpt"]))
    x, y = small_run["x"], small_run["y"]
    for call, words in ((lambda: tracin.self_influence(ckpts, x[:, :, :4], y), "shape (1, 4, 8)"),
                        (lambda: tracin.self_influence(ckpts, x, y[:5]), "5 labels for 24 images"),
                        (lambda: tracin.self_influence(ckpts, x, y + 10), "labels in [10, 19]"),
                        (lambda: tracin.self_influence(ckpts, x, y, layers="nosuch"), "selects no trainable"),
                        (lambda: tracin.self_influence(ckpts, x, y, method="fast"), "unknown method")):
        with pytest.raises(ValueError, match=re.escape(words)):
            call()
    with pytest.raises(FileNotFoundError):
        tracin.load_checkpoints(str(small_run["root"] / "nope"))


def test_cache_dir_resumes_and_is_reused(small_run, tmp_path):
    """A run with a cache folder stores its units; a rerun computes nothing and returns the same bits."""
    ckpts = tracin.load_checkpoints(str(small_run["ckpt"]))
    first = tracin.self_influence(ckpts, small_run["x"], small_run["y"], cache_dir=str(tmp_path), details=True)
    assert first.computed == 24 * 3 and len(list(tmp_path.glob("*/epoch*/*.npz"))) == 3
    again = tracin.self_influence(ckpts, small_run["x"], small_run["y"], cache_dir=str(tmp_path), details=True)
    assert again.computed == 0
    for k in ("scores", "terms", "loss", "probabilities"):
        assert getattr(again, k).tobytes() == getattr(first, k).tobytes(), k


# ------------------------------------------------------------------------------------------- the CLI contract

def _score(run, out, *extra):
    return run_main("calculate_score.py", "--input", run["data"], "--checkpoint", run["ckpt"], "--output", out,
                    "-c", "cpu", *extra)


def test_cli_writes_the_api_results(small_run, tmp_path):
    """The script's files are the API's results, in the layouts of tracin.formats; scores.json records the run."""
    _, _, err = _score(small_run, tmp_path / "s", "--save_every_epoch", "True", "--checkpoint_interval", "2")
    assert "scored 24 samples x 2 checkpoints" in err
    api = tracin.self_influence(tracin.load_checkpoints(str(small_run["ckpt"]), interval=2), small_run["x"],
                                small_run["y"], details=True)
    out = tmp_path / "s"
    assert np.load(out / formats.SCORES).tobytes() == api.scores.tobytes()
    assert np.load(out / formats.LOSS).tobytes() == api.loss.tobytes()
    assert np.load(out / formats.PROBABILITIES).tobytes() == api.probabilities.tobytes()
    for e, term in zip((1, 3), api.terms):
        assert np.load(out / formats.epoch_scores_name(e)).tobytes() == term.tobytes()
    meta = json.load(open(out / formats.SCORES_JSON))
    assert meta["layers"] == "last_bias" and meta["parameters"] == ["affine/b"] and meta["method"] == "batched"
    assert [c["epoch"] for c in meta["checkpoints"]] == [1, 3] and meta["probabilities"] == formats.PROBABILITIES
    assert meta["samples_computed"] == 48 and meta["n_train"] == 24 and meta["context"] == "cpu"


def test_absent_epoch_is_a_one_line_error(small_run, tmp_path):
    code, out, err = run_main("calculate_score.py", "--input", small_run["data"], "--checkpoint", small_run["ckpt"],
                              "--output", tmp_path, "-c", "cpu", "--checkpoint_epochs", "7", check=False)
    assert code == 2 and out == ""
    assert err.strip() == ("calculate_score.py: error: --checkpoint_epochs: no checkpoint for epoch(s) 7; "
                           "available: 0,1,2,3")


def test_original_example_folder_scores_with_model_flag(small_run, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for e in (1, 2, 3):  # the original wrote params_{epoch}.h5 and no manifest
        shutil.copy(small_run["ckpt"] / f"params_{e}.h5", legacy / f"params_{e}.h5")
    _, _, err = run_main("calculate_score.py", "--input", small_run["data"], "--checkpoint", legacy, "--output",
                         tmp_path / "o", "-c", "cpu", "--model", "resnet23", "--nmaps", 8)
    assert "warning" in err and "learning rate 1" in err
    np.testing.assert_allclose(np.load(tmp_path / "o" / formats.SCORES), _self(small_run, lr_weight=False).scores,
                               rtol=1e-12)
    # without --model the folder cannot be read
    code, _, err = run_main("calculate_score.py", "--input", small_run["data"], "--checkpoint", legacy, "-c", "cpu",
                            "--output", tmp_path / "x", check=False)
    assert code == 2 and "--model" in err
    # in Python: the model config is given instead
    ckpts = tracin.load_checkpoints(str(legacy), model=models.model_config("resnet23", 10, (1, 8, 8), 8))
    assert ckpts.epochs == [1, 2, 3] and [c.lr for c in ckpts] == [1.0] * 3 and not ckpts.has_manifest


def test_seed_command_with_other_model_uses_manifest(small_run, tmp_path):
    """The seed README's command names --model resnet56; the manifest's model wins, with a warning."""
    _, _, err = _score(small_run, tmp_path / "m", "--model", "resnet56")
    assert "--model resnet56 ignored: checkpoints.json records resnet23" in err
    assert np.array_equal(np.load(tmp_path / "m" / formats.SCORES), _self(small_run).scores)


def test_rerun_reuses_finished_work(small_run, tmp_path):
    _score(small_run, tmp_path / "s")
    first = np.load(tmp_path / "s" / formats.SCORES)
    _, _, err = _score(small_run, tmp_path / "s")
    assert "all from cache" in err
    assert json.load(open(tmp_path / "s" / formats.SCORES_JSON))["samples_computed"] == 0
    assert np.array_equal(first, np.load(tmp_path / "s" / formats.SCORES))


# ------------------------------------------------------------------------------- overhead and one home per rule

def test_checkpoint_reader_matches_h5py_and_nnabla(small_run):
    """The low-level reader gives the names (in the file's index order), dtypes and values h5py's high-level API
    and nnabla's own loader give."""
    import h5py
    path = str(small_run["ckpt"] / "params_2.h5")
    got = checkpoints.read_params(path)
    want = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: want.__setitem__(n, (int(o.attrs["index"]), o[()]))
                     if isinstance(o, h5py.Dataset) else None)
    assert list(got) == [n for n, _ in sorted(want.items(), key=lambda kv: kv[1][0])]
    for name, (_, arr) in want.items():
        assert got[name].dtype == arr.dtype and got[name].tobytes() == arr.tobytes(), name
    with nn.parameter_scope("reader_check"):
        nn.load_parameters(path)
        loaded = nn.get_parameters(grad_only=False)
    assert set(loaded) == set(got) and all(np.array_equal(loaded[k].d, got[k]) for k in got)


def test_each_checkpoint_is_read_once_and_each_batch_forwarded_once(small_run, monkeypatch):
    """Loading checks every checkpoint on its first batch and keeps that batch's scores: a run reads each file
    once and forwards each (checkpoint, batch) once, no probing pass; the scores equal the loop's."""
    reads, forwards = [], []
    real_read, real_forward = checkpoints._read_params, ScoringGraph.forward
    monkeypatch.setattr(checkpoints, "_read_params", lambda path, **kw: reads.append(path) or real_read(path, **kw))
    monkeypatch.setattr(ScoringGraph, "forward", lambda self, x: forwards.append(len(x)) or real_forward(self, x))
    ckpts = tracin.load_checkpoints(str(small_run["ckpt"]))
    res = tracin.self_influence(ckpts, small_run["x"], small_run["y"], layers="last", batch_size=10, details=True)
    assert sorted(reads) == sorted(c.path for c in ckpts)
    k = len(ckpts)  # the first batches while loading, then the rest of every checkpoint's unit
    assert forwards == [10] * k + [10, 4] * k
    monkeypatch.setattr(ScoringGraph, "forward", real_forward)
    loop = tracin.self_influence(ckpts, small_run["x"], small_run["y"], layers="last", method="loop", details=True)
    np.testing.assert_allclose(res.scores, loop.scores, rtol=1e-4)


def test_selection_rules_have_one_home():
    from tracin import defaults, layers
    assert layers.scoring("last", "batched") == "last" and layers.scoring("last_bias", "batched") == "last_bias"
    assert layers.scoring("last", "loop") == layers.GRAD and layers.scoring("all", "batched") == layers.GRAD
    assert layers.scoring("last", "batched", head=["affine/W"]) == layers.GRAD  # no bias: no closed form
    assert layers.scoring("last_bias", "batched", layers.INFLUENCE_CLOSED_FORMS) == layers.GRAD
    with pytest.raises(tracin.InputError, match="projection_dim applies to") as e:
        layers.check_projection("last", 8)
    assert e.value.arg == "projection_dim"
    layers.check_projection("all", 8)
    layers.check_projection("last", None)
    with pytest.raises(tracin.InputError, match="not both") as e:
        checkpoints.select([{"epoch": 1}], epochs=[1], interval=1)
    assert e.value.arg == "interval"
    import inspect
    for fn in (tracin.self_influence, tracin.plan_self_influence):
        assert inspect.signature(fn).parameters["layers"].default == defaults.SELF_LAYERS
    for fn in (tracin.influence, tracin.plan_influence):
        params = inspect.signature(fn).parameters
        assert params["layers"].default == defaults.INFLUENCE_LAYERS and params["top_k"].default == defaults.TOP_K
        assert params["normalize"].default == defaults.NORMALIZE


def test_cli_array_errors_name_the_file(small_run, tmp_path):
    """The library checks the arrays against the model once; the script's one-line error names the file."""
    data = tmp_path / "data"
    shutil.copytree(small_run["data"], data)
    y = np.load(data / "y_shuffle_train.npy")
    y[3] = 10
    np.save(data / "y_shuffle_train.npy", y)
    code, _, err = run_main("calculate_score.py", "--input", data, "--checkpoint", small_run["ckpt"], "--output",
                            tmp_path / "out", "-c", "cpu", check=False)
    assert code == 2 and err.strip() == (f"calculate_score.py: error: {data}/y_shuffle_train.npy has labels in "
                                         "[0, 10] but the model has 10 classes (0..9)"), err
    assert not (tmp_path / "out").exists()


def test_unit_writes_in_the_background_fail_loudly(tmp_path, monkeypatch):
    """A DirStore writes units while the next is computed; every unit is on disk when run_units returns, and a
    failed write is raised (not lost) by the run."""
    from tracin import engine

    class Job:
        units = [0, 1, 2]

        def name(self, u):
            return f"u{u}.npz"

        def cost(self, u):
            return 1

        def label(self, u):
            return str(u)

        def compute(self, u, on_batch=None):
            return {"v": np.full(3, float(u))}

    store = engine.DirStore(str(tmp_path / "ok"))
    assert engine.run_units(Job(), store) == 3
    assert [store.load(f"u{u}.npz")["v"][0] for u in Job.units] == [0.0, 1.0, 2.0]

    def fail(path, data):
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(engine, "write_bytes", fail)
    with pytest.raises(OSError, match="No space left"):
        engine.run_units(Job(), engine.DirStore(str(tmp_path / "full")))
