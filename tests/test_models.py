"""Models: the original's parameter names and shapes, any input size >= 8x8, features and logits."""
import os

import nnabla as nn
import numpy as np
import pytest
from conftest import FIXTURES

import models


def _reference(name):
    rows = []
    with open(os.path.join(FIXTURES, f"{name}_parameters.tsv")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            pname, shape = line.rstrip("\n").split("\t")
            rows.append((pname, tuple(int(v) for v in shape.split("x"))))
    return rows


def _build(name, shape, n_classes=10, nmaps=None, test=True, batch=2):
    nn.clear_parameters()
    cfg = models.model_config(name, n_classes, shape, nmaps)
    x = nn.Variable((batch,) + tuple(shape))
    logits, feats = models.build(cfg, x, test=test)
    params = [(k, tuple(v.shape)) for k, v in nn.get_parameters(grad_only=False).items()]
    return x, logits, feats, params


@pytest.mark.parametrize("name", ["resnet23", "resnet56"])
def test_parameters_match_the_original(name):
    _, _, feats, params = _build(name, (3, 32, 32))
    assert params == _reference(name)  # same names, same order, same shapes
    assert feats.shape == (2, 64, 1, 1)


@pytest.mark.parametrize("name", ["resnet23", "resnet56"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (2, 12, 16)])
def test_forward_shapes_any_input(name, shape):
    x, logits, feats, params = _build(name, shape, n_classes=7, nmaps=16 if name == "resnet23" else None)
    x.d = np.random.RandomState(0).rand(*x.shape) * 255
    logits.forward()
    assert logits.shape == (2, 7) and np.all(np.isfinite(logits.d))
    assert feats.shape[:2] == (2, 16 if name == "resnet23" else 64)
    assert dict(params)["affine/W"] == (feats.shape[1], 7)
    assert dict(params)["conv1/conv/W"][1] == shape[0]


def test_nmaps_sets_resnet23_width():
    _, _, feats, params = _build("resnet23", (1, 8, 8), nmaps=8)
    assert dict(params)["conv1/conv/W"] == (8, 1, 3, 3)
    assert dict(params)["conv2/conv1/conv/W"] == (4, 8, 1, 1)


def test_registry_and_config_validation():
    assert set(models.MODELS) == {"resnet23", "resnet56"}
    with pytest.raises(ValueError, match="at least 8x8"):
        models.model_config("resnet23", 10, (1, 4, 4))
    with pytest.raises(ValueError, match="unknown model"):
        models.model_config("vgg", 10, (3, 32, 32))


def test_inference_mode_is_per_sample():
    """In test mode batch norm uses running statistics: a sample's logits do not depend on its batch mates."""
    x, logits, _, _ = _build("resnet23", (1, 8, 8), nmaps=8, batch=4)
    data = np.random.RandomState(0).rand(4, 1, 8, 8) * 255
    x.d = data
    logits.forward()
    full = logits.d.copy()
    x.d = np.concatenate([data[:1], data[:1], data[:1], data[:1]])
    logits.forward()
    assert np.allclose(logits.d[0], full[0], rtol=1e-5, atol=1e-6)
