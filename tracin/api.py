"""The public API: load checkpoints, then compute self-influence or train -> test influence, in process.

    import numpy as np, tracin
    ckpts = tracin.load_checkpoints("output/demo/checkpoints")           # every checkpoint but the initialisation
    x = np.load("output/demo/data/x_train.npy"); y = np.load("output/demo/data/y_shuffle_train.npy")
    scores = tracin.self_influence(ckpts, x, y)                           # (n,) higher = check first
    x_val = np.load("output/demo/data/x_val.npy"); y_val = np.load("output/demo/data/y_val.npy")
    res = tracin.influence(ckpts, x, y, x_val[:3], y_val[:3], top_k=8)    # res.proponents (3, 8), ...

Any nnabla classifier: give the function that builds it (fn(x) -> logits, or fn(x, test) -> logits, with its
parametric functions under the scopes its nn.save_parameters files use) and the learning rates of the checkpoints:

    ckpts = tracin.load_checkpoints(["ck/epoch1.h5", "ck/epoch2.h5"], network=my_net, lrs=[0.1, 0.01])

Several runs of train.py on the same arrays (differing in --seed) make an ensemble: load_checkpoints([A, B, C])
returns a CheckpointEnsemble, and self_influence sums the runs' scores (an ensemble of five trainings is markedly
more robust to ambiguous label errors than one; docs/detection.md).

Images are (N, channels, height, width) arrays as stored (uint8 0-255 for train.py's data sets), labels (N,) or
(N, 1) integers. Every bad input raises tracin.InputError (a ValueError; MissingInputError is also a
FileNotFoundError); nothing exits or prints. nnabla's default context is used unless `context` names one for the
call (it is not changed for the caller).
"""
import contextlib
import math
import os
from typing import Callable, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import defaults, validate
from . import network as networks
from .checkpoints import check_same_data, discover, select
from .errors import InputError, MissingInputError
from .formats import PARAMS_RE
from .runs import (  # noqa: F401
    EnsembleResult,
    EnsembleSelfInfluenceRun,
    InfluenceResult,
    InfluenceRun,
    SelfInfluenceResult,
    SelfInfluenceRun,
    progress_bar,
)

Network = Union[str, Callable]  # fn(x) -> logits / fn(x, test) -> logits, or "module:function" / "file.py:function"
Progress = Union[bool, Callable[[int, str], None], None]


class Checkpoint(NamedTuple):
    epoch: int  # params_{epoch}.h5 holds the weights after `epoch` epochs
    lr: float  # eta: the learning rate of the epoch that produced the weights (1.0 without a manifest)
    path: str
    sha1: Optional[str] = None  # the file's digest recorded by train.py (checked when loading); None: unchecked


class Checkpoints:
    """Selected checkpoints of one training run (a sequence of Checkpoint), the model config they belong to
    (`model`: always a config dict, never a name: name, n_classes, input_shape, ...; n_classes and input_shape
    None for a network given as a function: taken from its logits and the images), `builder`, the network
    (tracin.network; None: the manifest's) and `manifest`, the folder's checkpoints.json as read (None without
    one)."""

    def __init__(self, model, entries, folder, manifest=None, builder=None):
        self.model = model
        self.entries: List[Checkpoint] = list(entries)
        self.folder = folder
        self.manifest = manifest
        self.has_manifest = manifest is not None
        self.builder = builder

    def __len__(self):
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def __getitem__(self, i):
        return self.entries[i]

    @property
    def epochs(self):
        return [c.epoch for c in self.entries]

    def __repr__(self):
        return f"Checkpoints({self.model['name']}, epochs={self.epochs}, folder={self.folder!r})"


class CheckpointEnsemble:
    """Several train.py runs on the same arrays (`runs`: one Checkpoints per folder, in the order given), scored as
    the sum of their self-influence; `model` is the first run's (every run has its input shape and classes)."""

    def __init__(self, runs):
        self.runs: List[Checkpoints] = list(runs)
        self.model = self.runs[0].model
        self.has_manifest = True
        self.folders = [r.folder for r in self.runs]

    def __len__(self):
        return len(self.runs)

    def __iter__(self):
        return iter(self.runs)

    def __repr__(self):
        return f"CheckpointEnsemble({len(self.runs)} runs: {self.folders!r})"


def load_checkpoints(source: Union[str, Sequence[str]], *, network: Optional[Network] = None,
                     lrs: Union[float, Sequence[float], None] = None, epochs: Optional[Sequence[int]] = None,
                     interval: Optional[int] = None, model: Optional[dict] = None
                     ) -> Union["Checkpoints", "CheckpointEnsemble"]:
    """The checkpoints of a training run (or of several), ready to score.

    Args:
        source: a checkpoint folder (params_*.h5, and checkpoints.json when train.py wrote it); a list of .h5
            files saved by nn.save_parameters (one training run, in training order); or a list of train.py
            folders on the same arrays (their manifests' data fingerprints must agree): an ensemble.
        network: the network the parameters belong to, for checkpoints of your own: a function fn(x) -> logits
            or fn(x, test) -> logits (test is True: batch normalization on running statistics), building its
            layers with nnabla.parametric_functions under the scopes of the saved names; or "module:function" /
            "path/to/file.py:function" naming one. Default: the manifest's model.
        lrs: the learning rate (TracIn's eta) of each selected checkpoint, in order, or one for all; for
            checkpoints without a manifest (default 1.0, the original's plain sum).
        epochs: list of epochs to take from a folder (e.g. [29, 59]); default: every checkpoint but the
            initialisation (params_0.h5).
        interval: K, instead of `epochs`: epochs K-1, 2K-1, ... (the weights at the start of every K-th epoch;
            K = 30 of 270 epochs gives the original's params_29, 59, ..., 269).
        model: a model-zoo config (models.model_config(...)) for an original-example folder without a manifest.
    Returns:
        Checkpoints (epoch order, or the order of the files given); for a list of two or more folders a
        CheckpointEnsemble (the same epochs selected in every run).
    Raises:
        MissingInputError: a folder or file does not exist.
        InputError: no checkpoints, a damaged manifest, absent epochs, no network for a folder without a manifest,
            learning rates that do not match the checkpoints; for an ensemble: a folder listed twice, one without a
            manifest, or runs on different data.
    """
    validate.selection(source, epochs, interval)
    builder = _builder(network)
    files = _files(source)
    if files is not None:
        if builder is None:
            raise InputError(f"'{files[0]}' is a file: give the folder holding train.py's checkpoints, or network= "
                             "(the function that builds the network) for checkpoint files of your own",
                             arg="network")
        if epochs is not None or interval is not None:
            raise InputError("epochs and interval select from a folder; list the files to score instead", arg="epochs")
        entries = _file_entries(files)
        return _checkpoints(_own_model(network), entries, _etas(lrs, entries), None, None, builder)
    if isinstance(source, (list, tuple)):
        if builder is not None or lrs is not None:
            raise InputError("network and lrs are for one training run; an ensemble's folders need train.py's "
                             "manifests", arg="network" if builder is not None else "lrs")
        return _load_ensemble(list(source), epochs, interval)
    model_cfg, entries, manifest = discover(source, _own_model(network) if builder is not None else model)
    chosen = select(entries, epochs, interval)
    if manifest is not None and lrs is not None:
        raise InputError(f"'{source}' has a manifest recording each checkpoint's learning rate: leave lrs out",
                         arg="lrs")
    if builder is None and model_cfg.get("network"):  # a manifest a user wrote for a network function
        builder = networks.from_config(model_cfg, base=source)
    etas = [e["lr"] for e in chosen] if manifest is not None else _etas(lrs, chosen)
    return _checkpoints(model_cfg, chosen, etas, source, manifest, builder)


def _checkpoints(model_cfg, entries, etas, folder, manifest, builder):
    return Checkpoints(model_cfg, [Checkpoint(e["epoch"], lr, e["path"], e["sha1"]) for e, lr in zip(entries, etas)],
                       folder, manifest, builder)


def _builder(network):
    """build(image, test) of a `network` argument, or None."""
    if network is None:
        return None
    if isinstance(network, str):
        return networks.adapt(networks.resolve(network), f"network {network}")
    return networks.adapt(network)


def _own_model(network):
    """The model config of a network given by the caller: its shape and classes come from the images and logits."""
    cfg = {"name": networks.describe(network), "n_classes": None, "input_shape": None}
    if isinstance(network, str):
        cfg["network"] = network
    return cfg


def _files(source):
    """The list of checkpoint files `source` names (one .h5 file, or a list of them), or None for folders."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source) if isinstance(source, (list, tuple)) \
        else None
    if items is None:
        raise InputError(f"checkpoints must be a folder, a list of folders or a list of .h5 files, got "
                         f"{type(source).__name__}", arg="source")
    items = [os.fspath(i) for i in items]
    is_file = [i.endswith(".h5") or os.path.isfile(i) for i in items]
    if not any(is_file):
        return None
    if not all(is_file):
        raise InputError("give checkpoint files or checkpoint folders, not both", arg="source")
    return items


def _file_entries(files):
    """Entries of checkpoint files in the order given: epochs from their params_{k}.h5 names, else 1, 2, ..."""
    if not files:
        raise InputError("no checkpoint files given", arg="source")
    seen = set()
    for f in files:
        if not os.path.isfile(f):
            raise MissingInputError(f"checkpoint file '{f}' does not exist")
        key = os.path.realpath(f)
        if key in seen:
            raise InputError(f"'{f}' is listed twice: each checkpoint counts once", arg="source")
        seen.add(key)
    found = [PARAMS_RE.match(os.path.basename(f)) for f in files]
    epochs = [int(m.group(1)) for m in found] if all(found) else []
    if len(set(epochs)) != len(files):
        epochs = list(range(1, len(files) + 1))
    return [{"epoch": e, "path": f, "lr": 1.0, "sha1": None} for e, f in zip(epochs, files)]


def _etas(lrs, entries):
    """The learning rate of each entry: `lrs` (one number, or one per entry), default 1.0."""
    if lrs is None:
        return [1.0] * len(entries)
    values = [lrs] * len(entries) if isinstance(lrs, (int, float)) else list(lrs)
    if len(values) != len(entries):
        raise InputError(f"{len(values)} learning rates for {len(entries)} checkpoints (epochs "
                         f"{', '.join(str(e['epoch']) for e in entries)}): give one per checkpoint", arg="lrs")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v <= 0:
            raise InputError(f"learning rate {v!r} is not a finite number > 0", arg="lrs")
    return [float(v) for v in values]


def _load_ensemble(folders, epochs, interval):
    if not folders:
        raise InputError("no checkpoint folders given", arg="source")
    seen = {}
    for f in folders:
        key = os.path.realpath(f)
        if key in seen:
            raise InputError(f"'{f}' is listed twice (as '{seen[key]}'): each run of an ensemble counts once",
                             arg="source")
        seen[key] = f
    loaded = [discover(f) for f in folders]
    check_same_data(folders, [manifest for _, _, manifest in loaded])
    runs = []
    for f, (cfg, entries, manifest) in zip(folders, loaded):
        chosen = select(entries, epochs, interval)
        runs.append(_checkpoints(cfg, chosen, [e["lr"] for e in chosen], f, manifest, None))
    return runs[0] if len(runs) == 1 else CheckpointEnsemble(runs)


@contextlib.contextmanager
def _context(name):
    """nnabla's context `name` for the duration of a call ('cpu', 'cudnn', 'auto'); None: the current default."""
    if name is None:
        yield
        return
    import nnabla as nn

    from .context import get_context
    with nn.context_scope(get_context(name)):
        yield


def _progress(progress, run):
    if progress is True:
        return progress_bar(run, terminal_only=False)
    if progress is False or progress is None or callable(progress):
        return progress or None
    raise InputError(f"progress must be True, False or a function(count, label), got {progress!r}", arg="progress")


def plan_self_influence(checkpoints, x, y, *, layers: str = defaults.SELF_LAYERS, method: str = defaults.METHOD,
                        lr_weight: bool = True, batch_size: int = defaults.BATCH_SIZE):
    """A validated self-influence run (every input checked, every checkpoint read, hashed and tried on the first
    batch) that has computed nothing else yet: `.work()` is its length, `.run(cache_dir, comm, progress)` its
    result. For callers that must validate everything before writing (calculate_score.py); arguments as in
    self_influence."""
    validate.checkpoints(checkpoints, (CheckpointEnsemble,), (Checkpoints,))
    validate.images("x", x, checkpoints.model.get("pixel_max"))
    validate.labels("y", y)
    # numpy scalars become plain ones (cache keys are JSON)
    lr_weight, batch_size = validate.scoring(layers, method, lr_weight, batch_size)
    run_class = EnsembleSelfInfluenceRun if isinstance(checkpoints, CheckpointEnsemble) else SelfInfluenceRun
    return run_class(checkpoints, x, y, layers=layers, method=method, lr_weight=lr_weight, batch_size=batch_size)


def self_influence(checkpoints: Union[Checkpoints, CheckpointEnsemble], x: np.ndarray, y: np.ndarray, *,
                   layers: str = defaults.SELF_LAYERS, method: str = defaults.METHOD, lr_weight: bool = True,
                   batch_size: int = defaults.BATCH_SIZE, context: Optional[str] = None, details: bool = False,
                   cache_dir: Optional[str] = None, comm=None, progress: Progress = None
                   ) -> Union[np.ndarray, SelfInfluenceResult, EnsembleResult, None]:
    """TracInCP self-influence score(z) = sum_i eta_i ||grad_theta loss(w_i, z)||^2 of every sample.

    Args:
        checkpoints: Checkpoints (load_checkpoints), or a CheckpointEnsemble (load_checkpoints of several
            folders): the score is then the sum over the runs, each run's computed as for one.
        x: images (n, C, H, W) of the model's input shape. y: labels (n,) or (n, 1), the labels to score
            (for mislabel detection: the noisy labels training saw).
        layers: 'last_bias' (the bias of the affine layer computing the logits: ||p - y||^2, the best mislabel
            detector), 'last' (its W and b, the original's), 'last_block' (it and the last top-level parameter scope
            before it), 'all' (every trainable parameter: per-sample gradients of affine, convolution and
            inference batch-norm layers), or comma-separated fnmatch patterns of parameter names.
        method: 'batched' (closed forms / batched per-sample gradients) or 'loop' (the original's batch-size-1
            backprop, a slow reference that handles every layer type).
        lr_weight: weight checkpoint i by its learning rate eta_i (TracIn); False: plain sum.
        batch_size: samples per forward/backward.
        context: 'cpu', 'cudnn' or 'auto' for this call; None (default): nnabla's current default context.
        details: return a SelfInfluenceResult (scores, per-checkpoint terms (k, n), loss (n,) at the last
            checkpoint, probabilities (n, classes): eta-weighted mean softmax) instead of the scores; for an
            ensemble an EnsembleResult (scores, each run's SelfInfluenceResult in `runs`, loss and probabilities
            averaged over the runs).
        cache_dir: folder for resumable work units (a rerun skips finished ones); default: in memory.
        comm: tracin.parallel.world() under MPI (needs a shared cache_dir); the result is on rank 0, None
            elsewhere.
        progress: True for a progress bar on stderr, or a callable(count, label) called as samples are scored.
    Returns:
        np.ndarray (n,) float64, or a SelfInfluenceResult / EnsembleResult with details=True.
    """
    validate.call(context, cache_dir, details)
    with _context(context):
        run = plan_self_influence(checkpoints, x, y, layers=layers, method=method, lr_weight=lr_weight,
                                  batch_size=batch_size)
        result = run.run(cache_dir, comm, _progress(progress, run))
    return result if details or result is None else result.scores


def plan_influence(checkpoints, x_train, y_train, x_test, y_test=None, *, top_k: int = defaults.TOP_K,
                   layers: str = defaults.INFLUENCE_LAYERS, method: str = defaults.METHOD, lr_weight: bool = True,
                   batch_size: int = defaults.BATCH_SIZE, projection_dim: Optional[int] = None, seed: int = 0,
                   full_matrix: bool = False, test_chunk: Optional[int] = None, normalize: str = defaults.NORMALIZE):
    """A validated influence run, not computed yet (see plan_self_influence); arguments as in influence."""
    validate.checkpoints(checkpoints, (CheckpointEnsemble,), (Checkpoints,))
    if isinstance(checkpoints, CheckpointEnsemble):
        raise InputError("influence takes the checkpoints of one training run; an ensemble is for self-influence")
    for name, value in (("x_train", x_train), ("x_test", x_test)):
        validate.images(name, value, checkpoints.model.get("pixel_max"))
    validate.labels("y_train", y_train)
    validate.labels("y_test", y_test, optional=True)
    lr_weight, batch_size = validate.scoring(layers, method, lr_weight, batch_size)
    top_k, projection_dim, seed, full_matrix, test_chunk = validate.influence_only(
        top_k, projection_dim, seed, full_matrix, test_chunk, normalize)
    return InfluenceRun(checkpoints, x_train, y_train, x_test, y_test, top_k=top_k, layers=layers, method=method,
                        lr_weight=lr_weight, batch_size=batch_size, projection_dim=projection_dim, seed=seed,
                        full_matrix=full_matrix, test_chunk=test_chunk, normalize=normalize)


def influence(checkpoints: Checkpoints, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
              y_test: Optional[np.ndarray] = None, *, top_k: int = defaults.TOP_K,
              layers: str = defaults.INFLUENCE_LAYERS, method: str = defaults.METHOD, lr_weight: bool = True,
              batch_size: int = defaults.BATCH_SIZE, projection_dim: Optional[int] = None, seed: int = 0,
              full_matrix: bool = False, test_chunk: Optional[int] = None, context: Optional[str] = None,
              cache_dir: Optional[str] = None, comm=None, progress: Progress = None,
              normalize: str = defaults.NORMALIZE) -> Optional[InfluenceResult]:
    """TracIn(z, z') = sum_i eta_i grad loss(w_i, z) . grad loss(w_i, z') of test samples z' against every
    training sample z, normalised by `normalize`: proponents (most positive) and opponents (most negative) per
    test sample.

    Args:
        checkpoints, layers, method, lr_weight, batch_size, context, cache_dir, comm, progress: as in
            self_influence (layers defaults to 'last_block', the last residual unit and the final affine
            layer: a proponent must share the test sample's features, not only its error direction;
            docs/explanations.md).
        x_train (n, C, H, W), y_train (n,): the training samples and the labels training saw.
        x_test (T, C, H, W); y_test (T,) labels, or None for the class the last checkpoint predicts.
        top_k: proponents and opponents kept per test sample (at most n).
        projection_dim: D, a seeded Gaussian random projection of the gradients (layers other than 'last');
            error std <= sqrt(2 / D) sqrt(self(z) self(z')). seed: its seed.
        full_matrix: also return the (T, n) matrix (needs T x n x 8 bytes).
        test_chunk: test samples per work unit (default: as many as 512 MB of their features allow).
        normalize: 'none' (raw TracIn), 'cosine' (sum_i eta_i cos(g_i(z), g_i(z')), the default), 'renorm'
            (sum_i eta_i g_i(z) . g_i(z') / ||g_i(z)||) or 'total_cosine' (TracIn / sqrt(self(z) self(z')));
            see tracin.normalize. Raw scores let the training samples with the largest gradients (often
            mislabeled ones) top every list; the normalised ones pick training samples that resemble the test
            sample.
    Returns:
        InfluenceResult: proponents, proponent_scores, opponents, opponent_scores (T, k); self_influence (T,);
        test_labels (T,); matrix (T, n) or None.
    """
    validate.call(context, cache_dir)
    with _context(context):
        run = plan_influence(checkpoints, x_train, y_train, x_test, y_test, top_k=top_k, layers=layers,
                             method=method, lr_weight=lr_weight, batch_size=batch_size, projection_dim=projection_dim,
                             seed=seed, full_matrix=full_matrix, test_chunk=test_chunk, normalize=normalize)
        return run.run(cache_dir, comm, _progress(progress, run))
