"""Checkpoints: naming, the manifest, discovery, selection and loading (file names come from tracin.formats).

A checkpoint folder holds, for every saved epoch k (k = 0 is the initialisation):
  params_{k}.h5   the weights after k epochs (nnabla's nn.save_parameters format, batch-norm statistics included)
  solver_{k}.h5   the momentum solver's state, for an exact --resume
and `checkpoints.json`, the manifest:
  {"format": 1, "model": {name, nmaps, n_classes, input_shape, dataset}, "train": {...recipe and seed...},
   "checkpoints": [{"epoch": k, "params": "params_k.h5", "solver": "solver_k.h5", "lr": eta_k}, ...]}
eta_k is the learning rate of the epoch that produced the weights (epoch k-1; for k = 0, epoch 0's): the step
size TracInCP weights checkpoint k by (Pruthi et al. 2020, eq. 3). The manifest is rewritten (atomically) only
after a checkpoint's files exist, so every entry it lists is complete.

A folder written by the original example has params_*.h5 and no manifest: it is still readable, with the model
given by the caller and eta = 1. Every problem is an InputError (a ValueError) naming the file.
"""
import os
import re

import numpy as np

from .errors import InputError, MissingInputError
from .formats import MANIFEST, PARAMS_RE, params_name, solver_name
from .io import atomic_path, load_json, save_json

FORMAT = 1


# ------------------------------------------------------------------------------------------------------ writing

def save_checkpoint(folder, epoch, lr, solver, manifest):
    """Write params_{epoch}.h5 and solver_{epoch}.h5 atomically, then the manifest listing them."""
    import nnabla as nn
    with atomic_path(os.path.join(folder, params_name(epoch))) as tmp:
        nn.save_parameters(tmp)
    with atomic_path(os.path.join(folder, solver_name(epoch))) as tmp:
        solver.save_states(tmp)
    entries = [c for c in manifest["checkpoints"] if c["epoch"] != epoch]
    entries.append({"epoch": int(epoch), "params": params_name(epoch), "solver": solver_name(epoch), "lr": float(lr)})
    manifest["checkpoints"] = sorted(entries, key=lambda c: c["epoch"])
    save_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


_TEMP_RE = re.compile(r"^\.(params_\d+|solver_\d+|checkpoints)\..+\.tmp\.(h5|json)$")


def remove_temporaries(folder):
    """Delete the temporaries (tracin.io.atomic_path) of checkpoint writes a killed run left behind; returns how many.
    Files under final names are never touched."""
    removed = 0
    for name in os.listdir(folder):
        if _TEMP_RE.match(name):
            try:
                os.remove(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed


def new_manifest(model_cfg, train_cfg):
    return {"format": FORMAT, "model": model_cfg, "train": train_cfg, "checkpoints": []}


# ------------------------------------------------------------------------------------------------------ reading

def read_manifest(folder):
    """The manifest of `folder`, or None when it has none (a folder of the original example)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        m = load_json(path)
        if not isinstance(m, dict):
            raise ValueError("not a JSON object")
        m["model"]["name"], m["model"]["n_classes"], m["model"]["input_shape"]
        for c in m["checkpoints"]:
            int(c["epoch"]), c["params"], float(c["lr"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a valid checkpoint manifest ({e}): retrain, or delete it and name the "
                         "model") from None
    return m


def scan_params(folder):
    """{epoch: filename} of every params_{epoch}.h5 in folder (also the original's zero-padded params_000270.h5)."""
    found = {}
    for name in os.listdir(folder):
        m = PARAMS_RE.match(name)
        if m:
            found[int(m.group(1))] = name
    return found


def discover(folder, model_cfg=None):
    """(model_cfg, entries, manifest or None) for a checkpoint folder; entries are dicts with epoch, path, lr,
    sorted by epoch.

    With a manifest, its model config wins over `model_cfg` and every listed file must exist. Without one,
    `model_cfg` is required and every params_*.h5 is a checkpoint with lr = 1."""
    if not folder or not os.path.isdir(folder):
        raise MissingInputError(f"checkpoint folder '{folder}' does not exist: give the folder train.py saved "
                                "its checkpoints to")
    manifest = read_manifest(folder)
    if manifest is not None:
        entries = []
        for c in manifest["checkpoints"]:
            path = os.path.join(folder, c["params"])
            if not os.path.isfile(path):
                raise MissingInputError(f"{MANIFEST} lists {c['params']} but {path} is missing: restore it or "
                                        "resume training")
            entries.append({"epoch": int(c["epoch"]), "path": path, "lr": float(c["lr"])})
        if not entries:
            raise InputError(f"{folder}/{MANIFEST} lists no checkpoints: train for at least one epoch first")
        return manifest["model"], sorted(entries, key=lambda e: e["epoch"]), manifest
    found = scan_params(folder)
    if not found:
        raise InputError(f"no checkpoints (params_*.h5) in '{folder}': give the folder train.py saved its "
                         "checkpoints to")
    if model_cfg is None:
        raise InputError(f"'{folder}' has no {MANIFEST} (an original-example folder): name its model "
                         "(resnet23 or resnet56)")
    entries = [{"epoch": e, "path": os.path.join(folder, n), "lr": 1.0} for e, n in sorted(found.items())]
    return model_cfg, entries, None


def select(entries, epochs=None, interval=None):
    """Pick checkpoints: the listed epochs, every `interval`-th, or all.

    params_k holds the weights after k epochs, i.e. at the start of epoch k (0-based), as in the original
    example. `interval` K keeps epochs K-1, 2K-1, 3K-1, ...: the weights at the start of every K-th epoch, which for
    K = 30 of 270 epochs are the original's params_29, 59, ..., 269. The initialisation (epoch 0) is left out
    unless named: its gradients are those of an untrained network and carry no information about what training
    did with a sample."""
    if epochs is not None and interval is not None:
        raise InputError("give either checkpoint epochs or an interval, not both")
    by_epoch = {e["epoch"]: e for e in entries}
    if epochs is not None:
        missing = [k for k in epochs if k not in by_epoch]
        if missing:
            raise InputError(f"no checkpoint for epoch(s) {','.join(map(str, missing))}; available: "
                             f"{_ranges(sorted(by_epoch))}")
        return [by_epoch[k] for k in sorted(set(epochs))]
    pool = [e for e in entries if e["epoch"] != 0] or list(entries)
    if interval is not None:
        if interval < 1:
            raise InputError(f"checkpoint interval must be at least 1, got {interval}")
        pool = [e for e in pool if (e["epoch"] + 1) % interval == 0]
        if not pool:
            raise InputError(f"no checkpoint at epochs {interval - 1}, {2 * interval - 1}, ... (every "
                             f"{interval}th); available: {_ranges(sorted(by_epoch))}")
    return pool


def _ranges(values):
    if len(values) <= 8:
        return ",".join(map(str, values))
    return f"{values[0]}..{values[-1]} ({len(values)} checkpoints)"


def read_params(path):
    """{name: array} of an nnabla .h5 parameter file; a damaged file is an InputError."""
    import h5py
    out = {}
    try:
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    out[name] = (int(obj.attrs.get("index", len(out))), obj[()])
            f.visititems(visit)
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable nnabla parameter file ({e}): it is truncated or corrupt; "
                         "re-save it or leave that checkpoint out") from None
    if not out:
        raise InputError(f"{path} holds no parameters: it is not a checkpoint of train.py")
    return {k: v for k, (_, v) in sorted(out.items(), key=lambda kv: kv[1][0])}


def load_into(path, params):
    """Copy the checkpoint at `path` into the existing nnabla parameters `params` ({name: Variable}).

    Names and shapes must match the model exactly: a checkpoint of another model or width is an InputError."""
    stored = read_params(path)
    missing = [k for k in params if k not in stored]
    if missing:
        raise InputError(f"{path} does not fit the model: it lacks {missing[0]} ({len(missing)} parameters "
                         "missing); was it saved by another model or width (nmaps)?")
    for name, var in params.items():
        arr = stored[name]
        if tuple(arr.shape) != tuple(var.shape):
            raise InputError(f"{path} does not fit the model: {name} has shape {tuple(arr.shape)}, the model needs "
                             f"{tuple(var.shape)} (another model, width or number of classes?)")
        var.d = np.asarray(arr, dtype=np.float32)
