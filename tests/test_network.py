"""Your own network: any nnabla classifier built by a function and saved with nn.save_parameters, scored through the
API and calculate_score.py --network. References are brute force: one nnabla backward per sample in a graph built
here from nnabla's own nn.load_parameters, its parameter gradients summed eta-weighted by hand."""
import inspect
import json
import os

import nnabla as nn
import nnabla.functions as F
import nnabla.solvers as S
import numpy as np
import pytest
from conftest import REPO, run_main

import tracin
from tracin.network import resolve

NETS = os.path.join(REPO, "tests", "fixtures", "own_networks.py")
SHAPES = {"mlp": (1, 4, 4), "cnn": (2, 8, 8), "wide": (2, 5, 9)}  # wide: non-square images
CLASSES = {"mlp": 4, "cnn": 3, "wide": 5}
LRS = [0.3, 0.1, 0.03]


def net(name):
    return resolve(f"{NETS}:{name}")


def _call(fn, x, test):
    return fn(x, test=test) if "test" in inspect.signature(fn).parameters else fn(x)


def train(name, folder, n=24, seed=0):
    """A few SGD steps per epoch at LRS (batch-stat batch norm while training), params_{1,2,3}.h5 saved by
    nn.save_parameters: a user's own loop. Returns (checkpoint paths, x, y)."""
    fn, shape = net(name), SHAPES[name]
    rng = np.random.RandomState(seed)
    np.random.seed(seed)  # nnabla's initialisers draw from numpy's global generator
    x = rng.rand(n, *shape).astype(np.float32)
    y = rng.randint(0, CLASSES[name], n)
    nn.clear_parameters()
    xv, yv = nn.Variable((8,) + shape), nn.Variable((8, 1))
    loss = F.mean(F.softmax_cross_entropy(_call(fn, xv, False), yv))
    solver = S.Sgd()
    solver.set_parameters(nn.get_parameters())
    os.makedirs(folder, exist_ok=True)
    paths = []
    for epoch, lr in enumerate(LRS, start=1):
        solver.set_learning_rate(lr)
        for s in range(0, n, 8):
            xv.d, yv.d = x[s:s + 8], y[s:s + 8, None]
            loss.forward()
            solver.zero_grad()
            loss.backward()
            solver.update()
        paths.append(os.path.join(folder, f"params_{epoch}.h5"))
        nn.save_parameters(paths[-1])
    nn.clear_parameters()
    return paths, x, y


def brute_grads(name, path, x, y):
    """[{param name: gradient}] per sample: batch size 1, inference mode, one backward each."""
    fn = net(name)
    nn.clear_parameters()
    nn.load_parameters(path)
    xv, yv = nn.Variable((1,) + x.shape[1:]), nn.Variable((1, 1))
    loss = F.sum(F.softmax_cross_entropy(_call(fn, xv, True), yv))
    params = {k: v for k, v in nn.get_parameters().items() if not k.endswith(("/mean", "/var"))}
    out = []
    for i in range(len(x)):
        for p in params.values():
            p.grad.zero()
        xv.d, yv.d = x[i:i + 1], y[i]
        loss.forward()
        loss.backward()
        out.append({k: p.g.astype(np.float64).copy() for k, p in params.items()})
    nn.clear_parameters()
    return out


def flat(grads, names):
    return np.stack([np.concatenate([g[n].reshape(-1) for n in names]) for g in grads])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per network: its checkpoints, data and brute-force gradients at every checkpoint."""
    out = {}
    for name in SHAPES:
        folder = str(tmp_path_factory.mktemp(name))
        paths, x, y = train(name, folder)
        xt, yt = x[:4] + 0.25, (y[:4] + 1) % CLASSES[name]  # test samples: shifted images, other labels
        out[name] = {"paths": paths, "folder": folder, "x": x, "y": y, "xt": xt, "yt": yt,
                     "train": [brute_grads(name, p, x, y) for p in paths],
                     "test": [brute_grads(name, p, xt, yt) for p in paths]}
    return out


# the parameters each --layers choice must select, per network (the final affine layer found from the logits)
SELECTIONS = [
    ("mlp", "last_bias", ["head/affine/b"]),
    ("mlp", "last", ["head/affine/W", "head/affine/b"]),
    ("mlp", "last_block", ["fc2/affine/W", "fc2/affine/b", "head/affine/W", "head/affine/b"]),
    ("mlp", "all", ["fc1/affine/W", "fc1/affine/b", "fc2/affine/W", "fc2/affine/b", "head/affine/W",
                    "head/affine/b"]),
    ("mlp", "fc1/*", ["fc1/affine/W", "fc1/affine/b"]),
    ("cnn", "last_bias", ["classifier/b"]),
    ("cnn", "last", ["classifier/W", "classifier/b"]),
    ("cnn", "last_block", ["block2/c/conv/W", "block2/n/bn/beta", "block2/n/bn/gamma", "classifier/W",
                           "classifier/b"]),
    ("cnn", "all", ["block1/c/conv/W", "block1/c/conv/b", "block1/n/bn/beta", "block1/n/bn/gamma", "block2/c/conv/W",
                    "block2/n/bn/beta", "block2/n/bn/gamma", "classifier/W", "classifier/b"]),
    ("wide", "last", ["out/affine/W"]),  # no bias: per-sample gradients instead of the closed form
    ("wide", "all", ["conv/conv/W", "conv/conv/b", "out/affine/W"]),
]


@pytest.mark.parametrize("name,layers,names", SELECTIONS, ids=[f"{n}-{ly}" for n, ly, _ in SELECTIONS])
def test_self_influence_exact_against_brute_force(runs, name, layers, names):
    r = runs[name]
    ckpts = tracin.load_checkpoints(r["paths"], network=net(name), lrs=LRS)
    res = tracin.self_influence(ckpts, r["x"], r["y"], layers=layers, batch_size=10, details=True)  # padded batch
    assert sorted(res.parameters) == sorted(names)
    want = sum(lr * (flat(g, names) ** 2).sum(1) for lr, g in zip(LRS, r["train"]))
    np.testing.assert_allclose(res.scores, want, rtol=2e-4, atol=1e-9)
    assert res.etas == LRS and res.epochs == [1, 2, 3]
    np.testing.assert_allclose(res.terms[0], LRS[0] * (flat(r["train"][0], names) ** 2).sum(1), rtol=2e-4, atol=1e-9)


INFLUENCE = [("mlp", "last"), ("mlp", "all"), ("cnn", "last"), ("cnn", "last_block"), ("wide", "all")]


@pytest.mark.parametrize("name,layers", INFLUENCE, ids=[f"{n}-{ly}" for n, ly in INFLUENCE])
def test_influence_exact_against_brute_force(runs, name, layers):
    r = runs[name]
    names = dict(((n, ly), p) for n, ly, p in SELECTIONS)[(name, layers)]
    ckpts = tracin.load_checkpoints(r["paths"], network=net(name), lrs=LRS)
    res = tracin.influence(ckpts, r["x"], r["y"], r["xt"], r["yt"], layers=layers, normalize="none", top_k=3,
                           full_matrix=True)
    want = sum(lr * flat(gt, names) @ flat(g, names).T for lr, gt, g in zip(LRS, r["test"], r["train"]))
    np.testing.assert_allclose(res.matrix, want, rtol=2e-4, atol=1e-7 * np.abs(want).max())
    np.testing.assert_allclose(res.self_influence, sum(lr * (flat(gt, names) ** 2).sum(1)
                                                       for lr, gt in zip(LRS, r["test"])), rtol=2e-4)
    assert np.array_equal(res.proponents[:, 0], np.argmax(res.matrix, axis=1))


def test_folder_reference_and_manifest_give_the_same_scores(runs, tmp_path):
    """A folder of params_*.h5 with network="file.py:fn", and a manifest the user writes naming the network (a
    path relative to the folder), score as the files with the function itself."""
    r = runs["cnn"]
    want = tracin.self_influence(tracin.load_checkpoints(r["paths"], network=net("cnn"), lrs=LRS), r["x"], r["y"])
    folder = tracin.load_checkpoints(r["folder"], network=f"{NETS}:cnn", lrs=LRS)
    assert folder.epochs == [1, 2, 3]
    assert np.array_equal(tracin.self_influence(folder, r["x"], r["y"]), want)
    own = tmp_path / "own"
    own.mkdir()
    for p in r["paths"]:
        os.link(p, own / os.path.basename(p))
    os.link(NETS, own / "nets.py")
    manifest = {"format": 1, "model": {"name": "cnn", "n_classes": 3, "input_shape": [2, 8, 8],
                                       "network": "nets.py:cnn"},
                "checkpoints": [{"epoch": e, "params": f"params_{e}.h5", "lr": lr} for e, lr in enumerate(LRS, 1)]}
    (own / "checkpoints.json").write_text(json.dumps(manifest))
    ckpts = tracin.load_checkpoints(str(own))
    assert np.array_equal(tracin.self_influence(ckpts, r["x"], r["y"]), want)
    with pytest.raises(tracin.InputError, match="leave lrs out"):
        tracin.load_checkpoints(str(own), lrs=LRS)
    manifest["model"]["n_classes"] = 7
    (own / "checkpoints.json").write_text(json.dumps(manifest))
    with pytest.raises(tracin.InputError, match="gives 3 logits but the checkpoints' model has 7 classes"):
        tracin.self_influence(tracin.load_checkpoints(str(own)), r["x"], r["y"])


def test_loop_method_agrees_and_progress_true_draws_a_bar(runs, capsys):
    r = runs["mlp"]
    ckpts = tracin.load_checkpoints(r["paths"], network=net("mlp"), lrs=LRS)
    batched = tracin.self_influence(ckpts, r["x"], r["y"], layers="all", progress=True)
    err = capsys.readouterr().err
    assert "self-influence, 3 checkpoints" in err and "72/72" in err  # 24 samples x 3 checkpoints
    loop = tracin.self_influence(ckpts, r["x"], r["y"], layers="all", method="loop")
    np.testing.assert_allclose(loop, batched, rtol=2e-5)
    assert capsys.readouterr().err == ""  # no bar unless asked for


def _save(name, folder, seed=0):
    """Checkpoints of one of the fixture networks with random weights (for the networks never trained here)."""
    fn, shape = net(name), SHAPES.get(name, (1, 4, 4))
    np.random.seed(seed)
    nn.clear_parameters()
    _call(fn, nn.Variable((1,) + shape), True)
    os.makedirs(folder, exist_ok=True)
    nn.save_parameters(os.path.join(folder, "params_1.h5"))
    nn.clear_parameters()
    return [os.path.join(folder, "params_1.h5")]


@pytest.mark.parametrize("name,layers,words", [
    ("wide", "last_bias", "final affine layer (out/affine/W) has no bias"),
    ("pooled", "last", "network's come from Mean: use layers 'all'"),
    ("prelu_net", "all", "per-sample gradients of fc/prelu/slope: PReLU layers are not supported"),
    ("batch_stat", "last", "normalizes with batch statistics in inference mode"),
    ("broken", "last", "network broken failed on input of shape (4, 1, 4, 4) (RuntimeError: this network is"),
    ("probabilities", "last", "returns probabilities (a Softmax)"),
])
def test_what_cannot_be_scored_is_one_input_error(tmp_path, name, layers, words):
    paths = _save("mlp" if name == "broken" else name, str(tmp_path))
    x, y = np.random.RandomState(0).rand(4, 1, 4, 4).astype(np.float32), np.zeros(4, int)
    ckpts = tracin.load_checkpoints(paths, network=net(name))
    with pytest.raises(tracin.InputError) as e:
        tracin.self_influence(ckpts, x, y, layers=layers)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_what_can_be_scored_of_those_networks(tmp_path):
    """The PReLU network's final affine layer and the pooled network's parameters are still scored."""
    x, y = np.random.RandomState(0).rand(4, 1, 4, 4).astype(np.float32), np.array([0, 1, 2, 0])
    for name, layers in (("prelu_net", "last"), ("prelu_net", "head/*"), ("pooled", "all")):
        ckpts = tracin.load_checkpoints(_save(name, str(tmp_path / name)), network=net(name))
        s = tracin.self_influence(ckpts, x, y, layers=layers)
        loop = tracin.self_influence(ckpts, x, y, layers=layers, method="loop")
        np.testing.assert_allclose(s, loop, rtol=1e-4)
        assert (s > 0).all()


def test_load_checkpoints_arguments(runs):
    r = runs["mlp"]
    for kwargs, words in (({"lrs": [0.1]}, "1 learning rates for 3 checkpoints"),
                          ({"lrs": [0.1, float("nan"), 0.1]}, "learning rate nan is not a finite number"),
                          ({"network": None}, "is a file: give the folder"),
                          ({"network": 3}, "network must be a function"),
                          ({"network": f"{NETS}:nosuch"}, "defines no function 'nosuch'"),
                          ({"epochs": [1]}, "epochs and interval select from a folder")):
        with pytest.raises(tracin.InputError, match=words):
            tracin.load_checkpoints(r["paths"], **dict({"network": net("mlp")}, **kwargs))
    assert tracin.load_checkpoints(r["paths"][::-1], network=net("mlp"), lrs=0.5).epochs == [3, 2, 1]  # order given
    with pytest.raises(tracin.MissingInputError):
        tracin.load_checkpoints(r["paths"] + ["nope.h5"], network=net("mlp"))
    with pytest.raises(tracin.InputError, match="no checkpoint for epoch"):
        tracin.load_checkpoints(r["folder"], network=net("mlp"), epochs=[9])


# ------------------------------------------------------------------------------------------ calculate_score.py

def _arrays(folder, r):
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "x_train.npy"), r["x"])
    np.save(os.path.join(folder, "y_shuffle_train.npy"), r["y"][:, None])
    np.save(os.path.join(folder, "x_val.npy"), r["xt"])
    np.save(os.path.join(folder, "y_val.npy"), r["yt"][:, None])
    return folder


def test_cli_scores_own_network_as_the_api(runs, tmp_path):
    r = runs["cnn"]
    data = _arrays(str(tmp_path / "data"), r)
    out = tmp_path / "out"
    run_main("calculate_score.py", "--input", data, "--checkpoint", r["folder"], "--network", f"{NETS}:cnn",
             "--lrs", ",".join(map(str, LRS)), "--layers", "all", "--output", out, "-c", "cpu")
    ckpts = tracin.load_checkpoints(r["paths"], network=net("cnn"), lrs=LRS)
    want = tracin.self_influence(ckpts, r["x"], r["y"], layers="all")
    assert np.array_equal(np.load(out / "influence_all_epoch.npy"), want)
    record = json.loads((out / "scores.json").read_text())
    assert record["model"]["network"] == f"{NETS}:cnn" and record["model"]["n_classes"] == 3
    assert [c["eta"] for c in record["checkpoints"]] == LRS
    run_main("calculate_score.py", "--input", data, "--checkpoint", r["folder"], "--network", f"{NETS}:cnn",
             "--lrs", ",".join(map(str, LRS)), "--mode", "influence", "--normalize", "none", "--top_k", "3",
             "--output", out / "infl", "-c", "cpu")
    res = tracin.influence(ckpts, r["x"], r["y"], r["xt"], r["yt"], top_k=3, normalize="none")
    z = np.load(out / "infl" / "influence_topk.npz")
    assert np.array_equal(z["proponents"], res.proponents)
    np.testing.assert_array_equal(z["proponent_scores"], res.proponent_scores)


def test_cli_bad_networks_are_one_line(runs, tmp_path):
    r = runs["mlp"]
    data = _arrays(str(tmp_path / "data"), r)
    bad_py = tmp_path / "bad.py"
    bad_py.write_text("def net(x):\n    return x +\n")
    cases = [
        (["--network", str(tmp_path / "nope.py") + ":net"], "nope.py' does not exist"),
        (["--network", f"{bad_py}:net"], "importing"),
        (["--network", f"{NETS}:nosuch"], "defines no function 'nosuch'"),
        (["--network", "mlp"], "must be MODULE:FUNCTION or FILE.py:FUNCTION"),
        (["--network", f"{NETS}:broken"], "broken failed on input of shape (24, 1, 4, 4)"),
        (["--network", f"{NETS}:prelu_net"], "does not fit"),  # another network than the checkpoints'
        (["--network", f"{NETS}:cnn"], "(RuntimeError: Size of input data(inputs[0]) and weights(inputs[1]) mismatch"),
        (["--network", f"{NETS}:mlp", "--lrs", "0.1,0.2"], "--lrs: 2 learning rates for 3 checkpoints"),
        (["--network", f"{NETS}:mlp", "--lrs", "0.1,x"], "--lrs"),
        (["--network", f"{NETS}:mlp", "--model", "resnet23"], "either --network"),
        ([], "or --network FILE.py:FUNCTION (your own network)"),
    ]
    for flags, words in cases:
        out = tmp_path / "out"
        code, _, err = run_main("calculate_score.py", "--input", data, "--checkpoint", r["folder"], "--output", out,
                                "-c", "cpu", *flags, check=False)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (flags, err)
        assert not out.exists()


def test_readme_own_network_example_runs_as_written(tmp_path, monkeypatch):
    """The README's "Use from Python" example, executed as written in a fresh folder: it writes its checkpoints
    there and scores them."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Use from Python"):]
    code = next(block.split("\n", 1)[1] for block in section.split("```python")[1:] if "network=net" in block)
    code = code[:code.index("```")]
    monkeypatch.chdir(tmp_path)
    nn.clear_parameters()
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented example itself
    nn.clear_parameters()
    assert sorted(os.listdir(tmp_path)) == ["params_0.h5", "params_1.h5", "params_2.h5"]
    scores, res = scope["scores"], scope["res"]
    assert scores.shape == (64,) and np.isfinite(scores).all() and (scores > 0).all()
    assert res.proponents.shape == (2, 5) and res.proponents[0, 0] == 0  # a sample is its own top proponent


def test_docs_command_line_example_runs_as_written(tmp_path):
    """docs/networks.md: its two files and its four commands, as written, in a fresh folder."""
    import shlex
    import subprocess
    import sys
    with open(os.path.join(REPO, "docs", "networks.md"), encoding="utf-8") as f:
        doc = f.read()
    for block in doc.split("```python\n")[1:]:
        code = block[:block.index("```")]
        if code.startswith("# my_"):
            (tmp_path / code.split("\n", 1)[0][2:]).write_text(code)
    commands = doc.split("```sh\n")[1].split("```")[0].strip().splitlines()
    assert len(commands) == 4
    for line in commands:
        words = shlex.split(line)
        assert words[0] == "python"
        if words[1] == "my_train.py":
            subprocess.run([sys.executable, "my_train.py"], cwd=tmp_path, check=True, capture_output=True)
        else:
            run_main(words[1], *words[2:], cwd=str(tmp_path))
    scores = np.load(tmp_path / "data" / "influence_all_epoch.npy")
    wrong = np.load(tmp_path / "data" / "y_train.npy") != np.load(tmp_path / "data" / "y_shuffle_train.npy")
    top = np.argsort(-scores)[:150]  # the top 10 % holds most of the wrong labels
    assert wrong.sum() == 150 and wrong[top, 0].mean() > 0.7
    assert (tmp_path / "review" / "label_issues.csv").is_file()
    assert np.load(tmp_path / "explain" / "influence_topk.npz")["proponents"].shape == (3, 10)
