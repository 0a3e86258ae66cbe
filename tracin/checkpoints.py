"""Checkpoints: naming, the manifest, discovery, selection and loading (file names come from tracin.formats).

A checkpoint folder holds, for every saved epoch k (k = 0 is the initialisation):
  params_{k}.h5   the weights after k epochs (nnabla's nn.save_parameters format, batch-norm statistics included)
  solver_{k}.h5   the momentum solver's state, for an exact --resume
and `checkpoints.json`, the manifest:
  {"format": 1, "model": {name, nmaps, n_classes, input_shape, dataset}, "train": {...recipe and seed...},
   "checkpoints": [{"epoch": k, "params": "params_k.h5", "solver": "solver_k.h5", "lr": eta_k,
                    "params_sha1": ..., "solver_sha1": ...}, ...]}
eta_k is the learning rate of the epoch that produced the weights (epoch k-1; for k = 0, epoch 0's): the step
size TracInCP weights checkpoint k by (Pruthi et al. 2020, eq. 3). The manifest is rewritten (atomically) only
after a checkpoint's files exist, so every entry it lists is complete; the SHA-1 digests let a reader tell a
damaged file from the one written (manifests without them are read without that check). Its schema is checked by
tracin.manifest.

A folder written by the original example has params_*.h5 and no manifest: it is still readable, with the model
given by the caller and eta = 1. Every problem is an InputError (a ValueError) naming the file.
"""
import hashlib
import io
import os

import numpy as np

from .errors import InputError, MissingInputError
from .formats import MANIFEST, PARAMS_RE, params_name, solver_name
from .io import load_json, save_json, write_bytes
from .manifest import FORMAT, check_manifest

# ------------------------------------------------------------------------------------------------------ writing

def save_checkpoint(folder, epoch, lr, solver, manifest):
    """Write params_{epoch}.h5 and solver_{epoch}.h5 atomically, then the manifest listing them with their SHA-1
    digests (a reader can tell a damaged file from the one written here, even one of plausible values)."""
    import nnabla as nn
    bad = next((k for k, v in nn.get_parameters(grad_only=False).items() if not np.isfinite(v.d).all()), None)
    if bad is not None:  # a NaN checkpoint would poison every score computed from it
        raise InputError(f"parameter {bad} holds NaN/inf: checkpoint {epoch} not written (training diverged)")
    params = io.BytesIO()
    nn.save_parameters(params, extension=".h5")
    entry = {"epoch": int(epoch), "params": params_name(epoch), "solver": solver_name(epoch), "lr": float(lr)}
    for key, data in (("params", params.getvalue()), ("solver", solver_state_bytes(solver))):
        write_bytes(os.path.join(folder, entry[key]), data)
        entry[key + "_sha1"] = hashlib.sha1(data).hexdigest()
    entries = [c for c in manifest["checkpoints"] if c["epoch"] != epoch]
    manifest["checkpoints"] = sorted(entries + [entry], key=lambda c: c["epoch"])
    save_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


def solver_state_bytes(solver):
    """The .h5 file solver.save_states would write (the same groups, datasets and attributes, which
    solver.load_states reads back), made in memory: save_states only takes a path, and HDF5 writing to a full disk
    can crash the process instead of raising."""
    import h5py
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for i, (name, state) in enumerate(solver.get_states().items()):
            f.create_group(name).attrs["index"] = i
            for j, (key, var) in enumerate(state.pstate.items()):
                f[f"{name}/{key}"] = var.d
                f[f"{name}/{key}"].attrs["index"] = j
            f[f"{name}/t"] = state.t
    return buf.getvalue()


def new_manifest(model_cfg, train_cfg):
    return {"format": FORMAT, "model": model_cfg, "train": train_cfg, "checkpoints": []}


# ------------------------------------------------------------------------------------------------------ reading

def read_manifest(folder):
    """The manifest of `folder` checked against its schema (tracin.manifest), or None when it has none (a folder
    of the original example)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        m = load_json(path)
    except (ValueError, OSError) as e:
        raise InputError(f"{path} is not a valid checkpoint manifest ({e}): restore the file train.py wrote, or "
                         "retrain") from None
    return check_manifest(m, path)


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
            entries.append({"epoch": c["epoch"], "path": path, "lr": float(c["lr"]), "sha1": c.get("params_sha1")})
        if not entries:
            raise InputError(f"{folder}/{MANIFEST} lists no checkpoints: train for at least one epoch first")
        return manifest["model"], sorted(entries, key=lambda e: e["epoch"]), manifest
    found = scan_params(folder)
    if not found:
        raise InputError(f"no checkpoints (params_*.h5) in '{folder}': give the folder train.py saved its "
                         "checkpoints to")
    if model_cfg is None:
        raise InputError(f"'{folder}' has no {MANIFEST}: give the network its checkpoints belong to (network=, the "
                         "function that builds it; or model=, resnet23 or resnet56 of the original example)")
    entries = [{"epoch": e, "path": os.path.join(folder, n), "lr": 1.0, "sha1": None}
               for e, n in sorted(found.items())]
    return model_cfg, entries, None


def select(entries, epochs=None, interval=None):
    """Pick checkpoints: the listed epochs, every `interval`-th, or all.

    params_k holds the weights after k epochs, i.e. at the start of epoch k (0-based), as in the original
    example. `interval` K keeps epochs K-1, 2K-1, 3K-1, ...: the weights at the start of every K-th epoch, which for
    K = 30 of 270 epochs are the original's params_29, 59, ..., 269. The initialisation (epoch 0) is left out
    unless named: its gradients are those of an untrained network and carry no information about what training
    did with a sample."""
    if epochs is not None and interval is not None:
        raise InputError("give either the epochs or the interval of the checkpoints to score, not both",
                         arg="interval")
    by_epoch = {e["epoch"]: e for e in entries}
    if epochs is not None:
        missing = [k for k in epochs if k not in by_epoch]
        if missing:
            raise InputError(f"no checkpoint for epoch(s) {','.join(map(str, missing))}; available: "
                             f"{_ranges(sorted(by_epoch))}", arg="epochs")
        return [by_epoch[k] for k in sorted(set(epochs))]
    pool = [e for e in entries if e["epoch"] != 0] or list(entries)
    if interval is not None:
        if interval < 1:
            raise InputError(f"checkpoint interval must be at least 1, got {interval}", arg="interval")
        pool = [e for e in pool if (e["epoch"] + 1) % interval == 0]
        if not pool:
            raise InputError(f"no checkpoint at epochs {interval - 1}, {2 * interval - 1}, ... (every "
                             f"{interval}th); available: {_ranges(sorted(by_epoch))}", arg="interval")
    return pool


def _ranges(values):
    if len(values) <= 8:
        return ",".join(map(str, values))
    return f"{values[0]}..{values[-1]} ({len(values)} checkpoints)"


class ModelMismatchError(InputError):
    """A checkpoint does not fit the model it is loaded into (parameter names or shapes differ)."""


def read_params(path):
    """{name: array} of an nnabla .h5 parameter file, in the file's order (its datasets' `index` attributes); a
    damaged file, or one holding NaN/inf, is an InputError."""
    return _read_params(path)[0]


def _read_params(path, ordered=True):
    """(read_params(path), the file's SHA-1): the file is read once, its bytes both hashed and parsed. Without
    `ordered`, the names come in HDF5's order (the index attributes are not read)."""
    import h5py
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path} is not a readable nnabla parameter file ({e.strerror})") from None
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            found = _datasets(f, ordered)
    except Exception as e:  # noqa: BLE001 - HDF5 reports damage as OSError, RuntimeError, KeyError, ValueError, ...
        raise InputError(f"{path} is not a readable nnabla parameter file ({type(e).__name__}: {e}): it is truncated "
                         "or corrupt; re-save it or leave that checkpoint out") from None
    if not found:
        raise InputError(f"{path} holds no parameters: it is not a checkpoint of train.py")
    for name, (_, arr) in found.items():
        if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
            raise InputError(f"{path} holds {'NaN/inf' if arr.dtype.kind == 'f' else arr.dtype} values in {name}: "
                             "the checkpoint is damaged; restore it or leave that checkpoint out")
    return {k: v for k, (_, v) in sorted(found.items(), key=lambda kv: kv[1][0])}, hashlib.sha1(data).hexdigest()


def _datasets(f, ordered=True):
    """{name: (its 'index' attribute when `ordered` and it has one, else its position; array)} of every dataset of
    an open h5py File, through h5py's low-level API: the high-level one's per-object overhead is most of the time
    a checkpoint takes to read (docs/performance.md, "Whole-process scoring")."""
    from h5py import h5a, h5d, h5o, h5s
    names = []
    h5o.visit(f.id, lambda name, info: names.append(name) if info.type == h5o.TYPE_DATASET else None, info=True)
    out = {}
    for name in names:
        d = h5d.open(f.id, name)
        arr = np.empty(d.shape, dtype=d.dtype)
        d.read(h5s.ALL, h5s.ALL, arr)
        index = len(out)
        if ordered and h5a.exists(d, b"index"):
            attr = h5a.open(d, b"index")
            value = np.empty(attr.shape, dtype=attr.dtype)
            attr.read(value)
            index = int(value)
        out[name.decode()] = (index, arr)
    return out


def read_fitting(path, params, sha1=None):
    """(the file's SHA-1, {name: float32 array}) of the checkpoint at `path`, checked against its SHA-1 `sha1` when
    given and against the model's nnabla parameters `params` ({name: Variable}).

    Names and shapes must match the model exactly: a checkpoint of another model or width is a ModelMismatchError."""
    stored, digest = _read_params(path, ordered=False)  # taken by name
    missing = [k for k in params if k not in stored]
    if missing:
        raise ModelMismatchError(f"{path} does not fit the model: it lacks {missing[0]} ({len(missing)} parameters "
                                 "missing); was it saved by another model or width (nmaps)?")
    for name, var in params.items():
        arr = stored[name]
        if tuple(arr.shape) != tuple(var.shape):
            raise ModelMismatchError(f"{path} does not fit the model: {name} has shape {tuple(arr.shape)}, the model "
                                     f"needs {tuple(var.shape)} (another model, width or number of classes?)")
    if sha1 is not None and digest != sha1:  # damage that left plausible values
        raise InputError(f"{path} is corrupt: its SHA-1 differs from the one {MANIFEST} recorded when train.py wrote "
                         "it; restore it or leave that checkpoint out")
    return digest, {name: np.asarray(stored[name], dtype=np.float32) for name in params}


def load_into(path, params, sha1=None):
    """Copy the checkpoint at `path` into the existing nnabla parameters `params` ({name: Variable}), checked as by
    read_fitting; returns the file's SHA-1."""
    digest, arrays = read_fitting(path, params, sha1)
    for name, var in params.items():
        var.d = arrays[name]
    return digest


def load_matching(path, params):
    """Start from weights trained elsewhere: copy every parameter of the file at `path` whose name and shape match
    one of `params` ({name: Variable}); the others (a final layer for another number of classes) keep their values.
    Returns (the file's SHA-1, names copied, names kept). A file sharing no parameter is a ModelMismatchError."""
    stored, digest = _read_params(path, ordered=False)
    copied = [k for k, v in params.items() if k in stored and tuple(stored[k].shape) == tuple(v.shape)]
    if not copied:
        raise ModelMismatchError(f"{path} shares no parameter (name and shape) with the model: it was saved by another "
                                 "model or width (--model, --nmaps); start from a checkpoint of the same network")
    for name in copied:
        params[name].d = np.asarray(stored[name], dtype=np.float32)
    return digest, copied, [k for k in params if k not in copied]


def load_solver(path, solver, sha1=None):
    """Restore a momentum solver's state from `path` (checked against its SHA-1 `sha1` when given); a damaged
    file is an InputError."""
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        if sha1 is not None and digest != sha1:
            raise ValueError(f"its SHA-1 differs from the one in {MANIFEST}")
        solver.load_states(path)
    except Exception as e:  # noqa: BLE001 - nnabla reports damage as RuntimeError, OSError, KeyError, ...
        raise InputError(f"{path} is not a readable solver state ({type(e).__name__}: {e}): it is truncated or "
                         "corrupt; resume from an earlier epoch") from None
    for name, state in solver.get_states().items():
        if not all(np.isfinite(v.d).all() for v in state.pstate.values()):
            raise InputError(f"{path} holds NaN/inf in the state of {name}: it is damaged; resume from an earlier "
                             "epoch")


def check_same_data(folders, manifests):
    """Runs summed into one score must come from train.py on the same arrays (the manifests' data fingerprints of
    x_train and y_shuffle_train agree) with models of the same input and classes; an InputError names the first
    folder that differs from the first one."""
    if any(m is None for m in manifests):
        bad = folders[manifests.index(None)]
        raise InputError(f"'{bad}' has no {MANIFEST}: an ensemble needs train.py's manifest in every folder, to check "
                         "that the runs trained on the same data")
    ref, ref_print = folders[0], manifests[0]["train"]["data_fingerprint"]
    ref_model = manifests[0]["model"]
    for folder, m in zip(folders[1:], manifests[1:]):
        if m["train"]["data_fingerprint"] != ref_print:
            raise InputError(f"'{folder}' was trained on other arrays than '{ref}' (data fingerprint "
                             f"{m['train']['data_fingerprint']} vs {ref_print}): an ensemble sums runs on the same "
                             "x_train and y_shuffle_train; leave it out or retrain it on those arrays")
        for key in ("input_shape", "n_classes"):
            if list(np.atleast_1d(m["model"][key])) != list(np.atleast_1d(ref_model[key])):
                raise InputError(f"'{folder}' holds a model with {key} {m['model'][key]}, '{ref}' one with "
                                 f"{ref_model[key]}: an ensemble needs runs of the same data set")
