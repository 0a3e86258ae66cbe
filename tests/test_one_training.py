"""bench.one_training's instruments: the sub-epoch checkpoints keep train.py's epoch checkpoints bit for bit, and
augmented views are seeded."""
import json

import h5py
import numpy as np

from bench import one_training, subepoch_train


def _params(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_subepoch_checkpoints_hold_train_py_epochs_bit_for_bit(tiny_run, tmp_path):
    import nnabla as nn
    nn.clear_parameters()
    out = tmp_path / "sub2"
    subepoch_train.main([str(out), "2", "--", "--input", str(tiny_run["data"]), "--model_save_path",
                         str(out / "ckpt"), "--monitor-path", str(out / "monitor"), "--nmaps", "8",
                         "--train_epochs", "3", "--train_batch_size", "32", "-c", "cpu"])
    sub = json.load(open(out / "sub" / "checkpoints.json"))
    assert [c["epoch"] for c in sub["checkpoints"]] == list(range(7))
    reference = json.load(open(tiny_run["ckpt"] / "checkpoints.json"))
    same_recipe = {k: v for k, v in reference["train"].items() if k != "array_dir"}  # a path relative to the run
    assert {k: v for k, v in sub["train"].items() if k != "array_dir"} == same_recipe
    for epoch in range(4):  # label 2 e is the end of epoch e: the same weights as train.py's checkpoint e
        a, b = _params(out / "sub" / f"params_{2 * epoch}.h5"), _params(tiny_run["ckpt"] / f"params_{epoch}.h5")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    half, end = _params(out / "sub" / "params_1.h5"), _params(out / "sub" / "params_2.h5")
    assert any(not np.array_equal(half[k], end[k]) for k in half)
    from tracin import training
    assert training.Trainer.train_epoch.__name__ == "train_epoch" and "after_batch" not in \
        training.Trainer.train_epoch.__code__.co_varnames  # the class is restored


def test_augmented_views_are_seeded_and_keep_shape_and_type():
    x = (np.arange(2 * 1 * 8 * 8) % 256).astype(np.uint8).reshape(2, 1, 8, 8)
    aug = dict(angle=0.15, min_scale=0.9, max_scale=1.1, flip_lr=False)
    a, b, c = (one_training.augmented(x, aug, s) for s in (1001, 1001, 1002))
    assert a.shape == x.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, x)
