"""Normalised train -> test influence (tracin.normalize): every normalisation against a brute-force reference built
from single-checkpoint raw matrices and self-influence terms, its bounds and documented diagonal, the loop
reference, top-k against a full sort, streaming in other chunks, two MPI ranks, and the --normalize flag."""
import json

import numpy as np
import pytest
from conftest import run_main
from test_mpi import data300, needs_mpi, same_files  # noqa: F401,F811 (data300: a fixture)
from test_mpi import score as mpi_score

import tracin
from args import DEFAULT_LAYERS
from models import model_config
from tracin import defaults, formats, normalize
from tracin.errors import InputError
from tracin.graphs import make_graph, select_params

NORMS = normalize.NORMALIZATIONS
LAYERS = ("last", "last_block", "all")  # the closed form, influence mode's default, every parameter
GRAD_RTOL = {"last": 1e-9, "last_block": 1e-4, "all": 1e-4}  # float32 per-sample gradients off the closed form


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """The tiny run's checkpoints, 96 training samples (noisy labels) and 12 validation samples (true labels)."""
    ck = tracin.load_checkpoints(str(tiny_run["ckpt"]))
    arrays = {k: np.load(tiny_run["data"] / f"{k}.npy") for k in ("x_train", "y_shuffle_train", "x_val", "y_val")}
    return {"ck": ck, "x": arrays["x_train"], "y": arrays["y_shuffle_train"][:, 0], "xt": arrays["x_val"][:12],
            "yt": arrays["y_val"][:12, 0], "run": tiny_run}


def matrix(t, layers, how, xt=None, yt=None, **kw):
    r = tracin.influence(t["ck"], t["x"], t["y"], t["xt"] if xt is None else xt, t["yt"] if yt is None else yt,
                         top_k=5, layers=layers, normalize=how, full_matrix=True, **kw)
    assert r.normalize == how
    return r


@pytest.fixture(scope="module")
def reference(tiny):
    """Per layers: eta_i (k,), raw per-checkpoint dot products D (k, T, n) from single-checkpoint unweighted runs, and
    squared gradient norms of the test (k, T) and training (k, n) samples from self-influence (another code path)."""
    out = {}
    for layers in LAYERS:
        dots, sq_test, sq_train = [], [], []
        for c in tiny["ck"]:
            one = tracin.load_checkpoints(tiny["ck"].folder, epochs=[c.epoch])
            r = tracin.influence(one, tiny["x"], tiny["y"], tiny["xt"], tiny["yt"], layers=layers, normalize="none",
                                 lr_weight=False, full_matrix=True)
            dots.append(r.matrix)
            sq_train.append(tracin.self_influence(one, tiny["x"], tiny["y"], layers=layers, lr_weight=False))
            sq_test.append(tracin.self_influence(one, tiny["xt"], tiny["yt"], layers=layers, lr_weight=False))
        out[layers] = {"eta": np.array([c.lr for c in tiny["ck"]]), "D": np.array(dots), "st": np.array(sq_test),
                       "sn": np.array(sq_train)}
    return out


def brute_force(ref, how):
    eta, D, st, sn = ref["eta"], ref["D"], ref["st"], ref["sn"]
    norms = np.sqrt(st[:, :, None] * sn[:, None, :])
    if how == "none":
        return np.einsum("k,ktn->tn", eta, D)
    if how == "cosine":
        return np.einsum("k,ktn->tn", eta, D / norms)
    if how == "renorm":
        return np.einsum("k,ktn->tn", eta, D / np.sqrt(sn)[:, None, :])
    return np.einsum("k,ktn->tn", eta, D) / np.sqrt(np.outer(eta @ st, eta @ sn))


def assert_topk_is_full_sort(r):
    cols = np.arange(r.matrix.shape[1])
    for t, row in enumerate(r.matrix):
        prop, opp = np.lexsort((cols, -row))[:5], np.lexsort((cols, row))[:5]
        np.testing.assert_array_equal(r.proponents[t], prop)
        np.testing.assert_array_equal(r.opponents[t], opp)
        np.testing.assert_array_equal(r.proponent_scores[t], row[prop])
        np.testing.assert_array_equal(r.opponent_scores[t], row[opp])


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("how", NORMS)
def test_matches_brute_force_and_topk_is_a_full_sort(tiny, reference, layers, how):
    r = matrix(tiny, layers, how)
    want = brute_force(reference[layers], how)
    np.testing.assert_allclose(r.matrix, want, rtol=GRAD_RTOL[layers],
                               atol=1e-6 * np.abs(want).max())
    assert_topk_is_full_sort(r)
    # the test samples' self-influence stays raw TracIn, whatever the normalisation
    np.testing.assert_allclose(r.self_influence, reference[layers]["eta"] @ reference[layers]["st"], rtol=1e-5)


@pytest.mark.parametrize("layers", LAYERS)
def test_bounds_and_documented_diagonal(tiny, reference, layers):
    """Training samples as their own test samples (the labels training saw): cosine within +-sum eta with
    sum eta on the diagonal; total_cosine within [-1, 1] with 1 on the diagonal; renorm rows bounded by their
    diagonal sum_i eta_i ||g_i(z)||, which is also what the self-influence terms give."""
    eta = np.array([c.lr for c in tiny["ck"]])
    got = {how: matrix(tiny, layers, how, xt=tiny["x"], yt=tiny["y"]).matrix for how in NORMS[1:]}
    cos, total, ren = got["cosine"], got["total_cosine"], got["renorm"]
    assert np.abs(cos).max() <= eta.sum() and np.abs(cos).max() > 0.5 * eta.sum()
    assert (cos < 0).any() and (cos > 0).any()
    np.testing.assert_allclose(np.diag(cos), eta.sum(), rtol=1e-12)
    assert np.abs(total).max() <= 1.0 and (total < 0).any()
    np.testing.assert_allclose(np.diag(total), 1.0, rtol=1e-12)
    norms = eta @ np.sqrt(reference[layers]["sn"])  # sum_i eta_i ||g_i(z)||
    np.testing.assert_allclose(np.diag(ren), norms, rtol=GRAD_RTOL[layers])
    assert np.all(np.abs(ren) <= np.diag(ren)[:, None] * (1 + 1e-9))


def test_loop_reference_and_streaming_in_other_units(tiny):
    """Batched == the batch-size-1 backprop loop; other test chunks and batch sizes give the same scores (up to
    float32 rounding of the gradients, which batches of another size round differently)."""
    for layers, how in (("all", "cosine"), ("all", "total_cosine"), ("last_block", "cosine")):
        batched = matrix(tiny, layers, how)
        tol = dict(rtol=1e-4, atol=1e-5 * np.abs(batched.matrix).max())
        loop = matrix(tiny, layers, how, method="loop")
        np.testing.assert_allclose(loop.matrix, batched.matrix, **tol)
        small = matrix(tiny, layers, how, test_chunk=5, batch_size=7)
        np.testing.assert_allclose(small.matrix, batched.matrix, **tol)
        assert_topk_is_full_sort(small)


def test_patterns_and_projection(tiny):
    """Parameter patterns take the gradient path (== the last-layer closed form on affine/*); with a projection the
    norms are the projected vectors', so the cosine bound still holds exactly."""
    closed = matrix(tiny, "last", "cosine").matrix
    pattern = matrix(tiny, "affine/*", "cosine").matrix
    np.testing.assert_allclose(pattern, closed, rtol=1e-4, atol=1e-6)
    eta = sum(c.lr for c in tiny["ck"])
    proj = matrix(tiny, "all", "cosine", xt=tiny["x"][:20], yt=tiny["y"][:20], projection_dim=16, seed=1).matrix
    assert np.abs(proj).max() <= eta
    np.testing.assert_allclose(np.diag(proj), eta, rtol=1e-12)
    exact = matrix(tiny, "all", "cosine", xt=tiny["x"][:20], yt=tiny["y"][:20]).matrix
    assert 0 < np.abs(proj - exact).mean() < 0.5 * eta


@pytest.mark.parametrize("model, unit", [("resnet23", "conv8"), ("resnet56", "64_conv10")])
def test_last_block_is_the_last_residual_unit_and_the_affine_layer(model, unit):
    names = make_graph(model_config(model, 10, (1, 8, 8), nmaps=8)).trainable
    want = [n for n in names if n.startswith(unit + "/")] + ["affine/W", "affine/b"]
    assert len(want) > 2 and select_params(names, "last_block") == want


def test_pure_functions():
    """A zero gradient has no direction: its terms count 0 (no NaN); rounding above 1 is clipped."""
    np.testing.assert_array_equal(normalize.inverse_norms([4.0, 0.0, 0.25]), [0.5, 0.0, 2.0])
    dots = np.array([[2.0 + 1e-15, 1.0], [0.0, -3.0]])
    cos = normalize.checkpoint_term(dots, np.array([1.0, 0.0]), np.array([4.0, 1.0]), "cosine")
    np.testing.assert_array_equal(cos, [[1.0, 1.0], [0.0, 0.0]])
    ren = normalize.checkpoint_term(dots, np.array([1.0, 0.0]), np.array([4.0, 0.0]), "renorm")
    np.testing.assert_array_equal(ren, [[(2.0 + 1e-15) / 2, 0.0], [0.0, 0.0]])
    assert normalize.checkpoint_term(dots, None, None, "total_cosine") is dots
    fin = normalize.finish(np.array([[4.0, -9.0]]), np.array([4.0]), np.array([1.0, 0.0]), "total_cosine")
    np.testing.assert_array_equal(fin, [[1.0, 0.0]])
    assert set(normalize.DEFINITIONS) == set(NORMS) and defaults.NORMALIZE in NORMS


def test_api_rejects_an_unknown_normalisation(tiny):
    with pytest.raises(InputError, match="normalize is 'cos'; choose one of none, cosine"):
        tracin.influence(tiny["ck"], tiny["x"], tiny["y"], tiny["xt"], normalize="cos")


def cli(t, out, *extra, check=True):
    """calculate_score.py in this process: (exit code, stdout, stderr)."""
    return run_main("calculate_score.py", "--input", t["run"]["data"], "--checkpoint", t["run"]["ckpt"],
                    "--output", out, "-c", "cpu", *extra, cwd=t["run"]["root"], check=check)


def test_cli_flag_round_trip(tiny, tmp_path):
    """--normalize reaches the scores, influence_topk.npz and influence.json; the default is recorded too;
    mislabel_analysis draws the file; a self-influence run or an unknown name is one line, exit 2."""
    common = ("--mode", "influence", "--test_indices", "0,1,2,3,4,5,6,7,8,9,10,11", "--top_k", 5, "--save_matrix",
              "True")
    cli(tiny, tmp_path / "tc", *common, "--normalize", "total_cosine", "--layers", "last")
    cli(tiny, tmp_path / "default", *common)
    default_layers = DEFAULT_LAYERS["influence"]
    for name, layers, how in (("tc", "last", "total_cosine"), ("default", default_layers, defaults.NORMALIZE)):
        z = formats.read_topk(str(tmp_path / name / formats.TOPK))
        meta = json.loads((tmp_path / name / formats.INFLUENCE_JSON).read_text())
        assert z["normalize"] == how and meta["normalize"] == how and meta["layers"] == layers
        assert meta["definition"].startswith(normalize.DEFINITIONS[how])
        np.testing.assert_allclose(np.load(tmp_path / name / formats.MATRIX), matrix(tiny, layers, how).matrix,
                                   rtol=1e-12, atol=1e-15)
    run_main("mislabel_analysis.py", "--influence", tmp_path / "tc" / formats.TOPK, "--output", tmp_path / "fig")
    assert (tmp_path / "fig" / formats.INFLUENCE_PNG).stat().st_size > 1000
    for extra, words in ((("--normalize", "cosine"), "--normalize only applies to --mode influence"),
                         (("--mode", "influence", "--normalize", "dot"), "argument --normalize: invalid choice")):
        code, _, err = cli(tiny, tmp_path / "bad", *extra, check=False)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


def test_older_topk_files_read_as_raw(tmp_path):
    path = tmp_path / formats.TOPK
    np.savez(path, test_indices=np.arange(2), test_labels=np.zeros(2, int), proponents=np.zeros((2, 3), int),
             proponent_scores=np.zeros((2, 3)), opponents=np.zeros((2, 3), int), opponent_scores=np.zeros((2, 3)),
             input=np.array("a"), test_input=np.array("b"))
    assert formats.read_topk(str(path))["normalize"] == "none"


@needs_mpi
@pytest.mark.parametrize("layers, how", [("all", "cosine"), ("last", "total_cosine"), ("last_block", "cosine")])
def test_two_ranks_are_bitwise_one_process(tiny, data300, tmp_path, layers, how):
    common = ("--input", data300, "--checkpoint", tiny["run"]["ckpt"], "-c", "cpu", "--mode", "influence",
              "--layers", layers, "--normalize", how, "--save_matrix", "True", "--top_k", 6, "--test_chunk", 16)
    # one process under mpiexec, with the ranks' single BLAS thread: the last bit of a float64 dot product of
    # per-sample gradients depends on the BLAS thread count (not on the rank count)
    mpi_score(1, *common, "--output", tmp_path / "one")
    mpi_score(2, *common, "--output", tmp_path / "two")
    same_files(tmp_path / "one", tmp_path / "two", ["influence_topk.npz", "influence_matrix.npy"])
    m = np.load(tmp_path / "one" / "influence_matrix.npy")
    assert m.shape == (40, 300) and np.abs(m).max() <= (1.0 if how == "total_cosine" else
                                                        sum(c.lr for c in tiny["ck"]))
