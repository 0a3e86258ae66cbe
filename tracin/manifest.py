"""The schema of checkpoints.json (see tracin.checkpoints), checked in one place for every reader: scoring reads the
model and the checkpoint list, --resume also the training recipe. A manifest that breaks it is an InputError naming
the file, before anything runs: a wrong type or a NaN learning rate would otherwise surface as a traceback, a
signal or silently wrong scores hours later.
"""
import math
import os

from . import network
from .errors import InputError

FORMAT = 1
SCHEDULES = ("step", "cosine", "cyclic")


def _whole(v, lo=0, hi=None):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v):
    return _number(v) and v > 0


def _file_name(v):
    """A plain file name inside the manifest's folder (no folder part, not absolute, not '.' or '..')."""
    return isinstance(v, str) and v not in ("", ".", "..") and os.path.basename(v) == v and "\\" not in v


def _augmentation(v):
    return v is None or (isinstance(v, dict) and all(_number(x) or isinstance(x, bool) for x in v.values()))


# field -> (check, what it must be): the training recipe train.py records and --resume continues from
RECIPE = {
    "array_dir": (lambda v: isinstance(v, str) and v != "", "a folder name"),
    "data_fingerprint": (lambda v: isinstance(v, str) and v != "", "a fingerprint string"),
    "train_epochs": (lambda v: _whole(v, 1), "a whole number >= 1"),
    "train_batch_size": (lambda v: _whole(v, 2), "a whole number >= 2"),
    "learning_rate": (_positive, "a finite number > 0"),
    "lr_schedule": (lambda v: v in SCHEDULES, " or ".join(SCHEDULES)),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "seed": (lambda v: _whole(v, 0, 2 ** 32 - 1), "a whole number in [0, 2**32)"),
    "augmentation": (_augmentation, "null or an object of numbers"),
    "precise_bn": (lambda v: isinstance(v, bool), "true or false"),
}
OPTIONAL = {"precise_bn"}  # absent in manifests of runs before it existed: train.py reads it with a default


def _fail(path, problem):
    raise InputError(f"{path} is not a valid checkpoint manifest ({problem}): restore the file train.py wrote, or "
                     "retrain")


def check_model(model, path):
    """The model description: a name, n_classes >= 1, a (channels, height, width) input shape, optional width
    (nmaps), data set, builder or network reference (tracin.network), and the builder's own rules (e.g. an even
    width)."""
    if not isinstance(model, dict):
        _fail(path, "'model' must be an object")
    name, shape, nmaps = model.get("name"), model.get("input_shape"), model.get("nmaps")
    if not isinstance(name, str) or not name:
        _fail(path, f"model name {name!r} is not a name")
    if not _whole(model.get("n_classes"), 1):
        _fail(path, f"model n_classes {model.get('n_classes')!r} is not a whole number >= 1")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_whole(v, 1) for v in shape)):
        _fail(path, f"model input_shape {shape!r} is not [channels, height, width]")
    if not (nmaps is None or _whole(nmaps, 1)) or not (isinstance(model.get("dataset"), str) or
                                                       model.get("dataset") is None):
        _fail(path, f"model nmaps {nmaps!r} or dataset {model.get('dataset')!r} has the wrong type")
    for key in ("builder", "network"):  # a model-zoo builder, or a network function fn(x[, test]) -> logits
        ref = model.get(key)
        if ref is not None and not (isinstance(ref, str) and ":" in ref):
            _fail(path, f"model {key} {ref!r} is not MODULE:FUNCTION or FILE.py:FUNCTION")
    try:
        network.check_config(model)
    except InputError as e:
        _fail(path, str(e))


def check_entries(entries, path):
    """The checkpoint list: objects with a unique whole epoch >= 0, plain file names inside the folder, a finite
    learning rate > 0, and optional SHA-1 digests."""
    if not isinstance(entries, list):
        _fail(path, "'checkpoints' must be a list")
    seen = set()
    for c in entries:
        if not isinstance(c, dict):
            _fail(path, f"checkpoint entry {c!r} is not an object")
        epoch = c.get("epoch")
        if not _whole(epoch):
            _fail(path, f"checkpoint epoch {epoch!r} is not a whole number >= 0")
        if epoch in seen:
            _fail(path, f"epoch {epoch} is listed twice")
        seen.add(epoch)
        if not _file_name(c.get("params")) or ("solver" in c and not _file_name(c["solver"])):
            _fail(path, f"epoch {epoch}: params {c.get('params')!r} / solver {c.get('solver')!r} must be file names "
                        "inside the checkpoint folder")
        if not _positive(c.get("lr")):
            _fail(path, f"epoch {epoch}: learning rate {c.get('lr')!r} is not a finite number > 0")
        for key in ("params_sha1", "solver_sha1"):
            if key in c and not (isinstance(c[key], str) and len(c[key]) == 40):
                _fail(path, f"epoch {epoch}: {key} {c[key]!r} is not a SHA-1 digest")


def check_recipe(recipe, path):
    """The training recipe --resume continues from (RECIPE)."""
    if not isinstance(recipe, dict):
        _fail(path, "'train' must be an object")
    for field, (ok, what) in RECIPE.items():
        if field not in recipe:
            if field in OPTIONAL:
                continue
            _fail(path, f"train.{field} is missing")
        if not ok(recipe[field]):
            _fail(path, f"train.{field} {recipe[field]!r} is not {what}")


def check_manifest(m, path):
    """m, if it follows the schema (the training recipe, 'train', is checked when present); else an InputError
    naming `path`."""
    if not isinstance(m, dict):
        _fail(path, "not a JSON object")
    if not _whole(m.get("format")) or m["format"] != FORMAT:
        _fail(path, f"format {m.get('format')!r}; this version reads format {FORMAT}")
    check_model(m.get("model"), path)
    check_entries(m.get("checkpoints"), path)
    if "train" in m:
        check_recipe(m["train"], path)
    return m
