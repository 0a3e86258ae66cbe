"""The Python API checks every argument's type and range up front (tracin/validate.py): a wrong one is an
InputError naming it, never an AttributeError, TypeError or numpy error from inside, and nothing is computed."""

import numpy as np
import pytest
from conftest import run_main, write_subset

TRAIN = ("--nmaps", "4", "--train_batch_size", "16", "-c", "cpu")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    import tracin
    root = tmp_path_factory.mktemp("api_validation")
    write_subset(root / "data", n_train=48, n_val=16)
    run_main("train.py", "--input", "data", "--model_save_path", "ckpt", "--monitor-path", "mon", "--train_epochs",
             "1", *TRAIN, cwd=root)
    x, y = np.load(root / "data" / "x_train.npy"), np.load(root / "data" / "y_shuffle_train.npy")
    (root / "afile").write_text("x")
    return {"ck": tracin.load_checkpoints(str(root / "ckpt")), "x": x, "y": y, "root": root}


SELF_BAD = [("checkpoints", "FOLDER"), ("batch_size", None), ("batch_size", 2.0), ("batch_size", "8"),
            ("batch_size", True), ("batch_size", 0), ("layers", None), ("layers", ""), ("lr_weight", "False"),
            ("lr_weight", 0), ("cache_dir", "FILE"), ("method", None), ("context", "gpu"), ("details", "yes"),
            ("progress", 3), ("x", "X01"), ("x", "LIST"), ("y", "LIST")]
INFL_BAD = [("top_k", 2.5), ("top_k", 0), ("top_k", None), ("projection_dim", -3), ("projection_dim", 0),
            ("projection_dim", 1.5), ("test_chunk", -1), ("test_chunk", 0), ("seed", 1.5), ("seed", "0"),
            ("full_matrix", "True"), ("normalize", None), ("x_test", "X01"), ("y_test", "LIST")]


def _value(api, v):
    return {"FOLDER": str(api["root"] / "ckpt"), "FILE": str(api["root"] / "afile"),
            "X01": api["x"].astype(np.float32) / 255.0, "LIST": [1, 2]}.get(v, v) if isinstance(v, str) else v


@pytest.mark.parametrize("arg,value", SELF_BAD, ids=[f"{a}={v!r}" for a, v in SELF_BAD])
def test_api_self_influence_validates_up_front(api, arg, value):
    import tracin
    kw = {"checkpoints": api["ck"], "x": api["x"], "y": api["y"], arg: _value(api, value)}
    with pytest.raises(tracin.InputError) as e:
        tracin.self_influence(**kw)
    assert arg in str(e.value) or e.value.arg == arg


@pytest.mark.parametrize("arg,value", INFL_BAD + SELF_BAD[:12],
                         ids=[f"{a}={v!r}" for a, v in INFL_BAD + SELF_BAD[:12]])
def test_api_influence_validates_up_front(api, arg, value):
    import tracin
    kw = {"checkpoints": api["ck"], "x_train": api["x"], "y_train": api["y"], "x_test": api["x"][:2],
          "y_test": api["y"][:2], arg: _value(api, value)}
    with pytest.raises(tracin.InputError) as e:
        tracin.influence(**kw)
    assert arg in str(e.value) or e.value.arg == arg


@pytest.mark.parametrize("kw", [{"source": None}, {"source": 3}, {"epochs": "1,2"}, {"epochs": [1.5]},
                                {"interval": 0}, {"interval": "2"}])
def test_api_load_checkpoints_validates_up_front(api, kw):
    import tracin
    kw = dict({"source": str(api["root"] / "ckpt")}, **kw)
    with pytest.raises(tracin.InputError):
        tracin.load_checkpoints(**kw)


def test_api_accepts_numpy_integers_and_bools(api):
    import tracin
    a = tracin.self_influence(api["ck"], api["x"], api["y"], batch_size=np.int64(16), lr_weight=np.bool_(True))
    b = tracin.self_influence(api["ck"], api["x"], api["y"], batch_size=16, lr_weight=True)
    np.testing.assert_array_equal(a, b)
