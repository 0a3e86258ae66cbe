"""The public API: load checkpoints, then compute self-influence or train -> test influence, in process.

    import numpy as np, tracin
    ckpts = tracin.load_checkpoints("output/demo/checkpoints")           # every checkpoint but the initialisation
    x = np.load("output/demo/data/x_train.npy"); y = np.load("output/demo/data/y_shuffle_train.npy")
    scores = tracin.self_influence(ckpts, x, y)                           # (n,) higher = check first
    x_val = np.load("output/demo/data/x_val.npy"); y_val = np.load("output/demo/data/y_val.npy")
    res = tracin.influence(ckpts, x, y, x_val[:3], y_val[:3], top_k=8)    # res.proponents (3, 8), ...

Several runs of train.py on the same arrays (differing in --seed) make an ensemble: load_checkpoints([A, B, C])
returns a CheckpointEnsemble, and self_influence sums the runs' scores (an ensemble of five trainings is markedly
more robust to ambiguous label errors than one; docs/detection.md).

Images are (N, channels, height, width) arrays as stored (uint8 0-255 for train.py's data sets), labels (N,) or
(N, 1) integers. Every bad input raises tracin.InputError (a ValueError; MissingInputError is also a
FileNotFoundError); nothing exits or prints.
"""
import os
from typing import List, NamedTuple, Optional

from . import validate
from .checkpoints import check_same_data, discover, select
from .errors import InputError
from .normalize import DEFAULT as DEFAULT_NORMALIZE
from .normalize import DEFAULT_LAYERS as DEFAULT_INFLUENCE_LAYERS
from .runs import (  # noqa: F401
    EnsembleResult,
    EnsembleSelfInfluenceRun,
    InfluenceResult,
    InfluenceRun,
    SelfInfluenceResult,
    SelfInfluenceRun,
)


class Checkpoint(NamedTuple):
    epoch: int  # params_{epoch}.h5 holds the weights after `epoch` epochs
    lr: float  # eta: the learning rate of the epoch that produced the weights (1.0 without a manifest)
    path: str
    sha1: Optional[str] = None  # the file's digest recorded by train.py (checked when loading); None: unchecked


class Checkpoints:
    """Selected checkpoints of one training run (a sequence of Checkpoint) and the model config they belong to
    (`model`: name, nmaps, n_classes, input_shape, dataset)."""

    def __init__(self, model, entries, folder, has_manifest):
        self.model = model
        self.entries: List[Checkpoint] = list(entries)
        self.folder = folder
        self.has_manifest = has_manifest

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


def load_checkpoints(folder, epochs=None, interval=None, model=None):
    """The checkpoints of a train.py run (or of the original example's folder), or of several runs.

    Args:
        folder: the checkpoint folder (params_*.h5 and checkpoints.json); or a list of such folders, each a
            train.py run on the same arrays (their manifests' data fingerprints must agree): an ensemble.
        epochs: list of epochs to take (e.g. [29, 59]); default: every checkpoint but the initialisation.
        interval: K, instead of `epochs`: epochs K-1, 2K-1, ... (the weights at the start of every K-th epoch;
            K = 30 of 270 epochs gives the original's params_29, 59, ..., 269).
        model: model config (models.model_config(...)) for a folder without checkpoints.json; with a
            manifest, the manifest's model is used.
    Returns:
        Checkpoints (epoch order), with `.model`; for a list of two or more folders a CheckpointEnsemble (the same
        epochs selected in every run).
    Raises:
        MissingInputError: the folder or a listed file does not exist.
        InputError: no checkpoints, a damaged manifest, absent epochs, or no model for a manifest-less folder;
            for a list: a folder listed twice, one without a manifest, or runs on different data.
    """
    validate.selection(folder, epochs, interval)
    if isinstance(folder, (list, tuple)):
        return _load_ensemble(list(folder), epochs, interval)
    model_cfg, entries, manifest = discover(folder, model)
    chosen = select(entries, epochs, interval)
    return Checkpoints(model_cfg, [Checkpoint(e["epoch"], e["lr"], e["path"], e["sha1"]) for e in chosen], folder,
                       manifest is not None)


def _load_ensemble(folders, epochs, interval):
    if not folders:
        raise InputError("no checkpoint folders given")
    seen = {}
    for f in folders:
        key = os.path.realpath(f)
        if key in seen:
            raise InputError(f"'{f}' is listed twice (as '{seen[key]}'): each run of an ensemble counts once")
        seen[key] = f
    loaded = [discover(f) for f in folders]
    check_same_data(folders, [manifest for _, _, manifest in loaded])
    runs = [Checkpoints(cfg, [Checkpoint(e["epoch"], e["lr"], e["path"], e["sha1"]) for e in select(entries, epochs,
                                                                                                     interval)],
                        f, True) for f, (cfg, entries, _) in zip(folders, loaded)]
    return runs[0] if len(runs) == 1 else CheckpointEnsemble(runs)


def self_influence(checkpoints, x, y, layers="last_bias", method="batched", lr_weight=True, batch_size=64,
                   context="cpu", details=False, cache_dir=None, comm=None, progress=None):
    """TracInCP self-influence score(z) = sum_i eta_i ||grad_theta loss(w_i, z)||^2 of every sample.

    Args:
        checkpoints: Checkpoints (load_checkpoints), or a CheckpointEnsemble (load_checkpoints of several
            folders): the score is then the sum over the runs, each run's computed as for one.
        x: images (n, C, H, W) of the model's input shape. y: labels (n,) or (n, 1), the labels to score
            (for mislabel detection: the noisy labels training saw).
        layers: 'last_bias' (final affine bias: ||p - y||^2, the best mislabel detector), 'last' (final affine
            W and b, the original's), 'all', or comma-separated fnmatch patterns of parameter names.
        method: 'batched' (closed forms / batched per-sample gradients) or 'loop' (the original's batch-size-1
            backprop, a slow reference).
        lr_weight: weight checkpoint i by its learning rate eta_i (TracIn); False: plain sum.
        batch_size: samples per forward/backward.
        context: 'cpu', 'cudnn' or 'auto'; None keeps nnabla's current default context.
        details: return a SelfInfluenceResult (scores, per-checkpoint terms (k, n), loss (n,) at the last
            checkpoint, probabilities (n, classes): eta-weighted mean softmax) instead of the scores; for an
            ensemble an EnsembleResult (scores, each run's SelfInfluenceResult in `runs`, loss and probabilities
            averaged over the runs).
        cache_dir: folder for resumable work units (a rerun skips finished ones); default: in memory.
        comm: tracin.parallel.world() under MPI (needs a shared cache_dir); the result is on rank 0, None
            elsewhere. progress: callable(count, label) called as samples are scored.
    Returns:
        np.ndarray (n,) float64, or a SelfInfluenceResult / EnsembleResult with details=True.
    """
    _check_self_args(checkpoints, x, y, layers, method, lr_weight, batch_size, context, details, cache_dir, progress)
    batch_size, lr_weight = int(batch_size), bool(lr_weight)  # numpy scalars as plain ones (cache keys are JSON)
    kind = EnsembleSelfInfluenceRun if isinstance(checkpoints, CheckpointEnsemble) else SelfInfluenceRun
    run = kind(checkpoints, x, y, layers, method, lr_weight, batch_size, context)
    result = run.run(cache_dir, comm, progress)
    return result if details or result is None else result.scores


def influence(checkpoints, x_train, y_train, x_test, y_test=None, top_k=10, layers=DEFAULT_INFLUENCE_LAYERS,
              method="batched", lr_weight=True, batch_size=64, projection_dim=None, seed=0, full_matrix=False,
              test_chunk=None, context="cpu", cache_dir=None, comm=None, progress=None, normalize=DEFAULT_NORMALIZE):
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
    _check_influence_args(checkpoints, x_train, y_train, x_test, y_test, top_k, layers, method, lr_weight, batch_size,
                          projection_dim, seed, full_matrix, test_chunk, context, cache_dir, progress, normalize)
    batch_size, lr_weight, top_k, seed, full_matrix = int(batch_size), bool(lr_weight), int(top_k), int(seed), \
        bool(full_matrix)
    projection_dim, test_chunk = (None if v is None else int(v) for v in (projection_dim, test_chunk))
    if isinstance(checkpoints, CheckpointEnsemble):
        raise InputError("influence takes the checkpoints of one training run; an ensemble is for self-influence")
    run = InfluenceRun(checkpoints, x_train, y_train, x_test, y_test, top_k, layers, method, lr_weight, batch_size,
                       projection_dim, seed, full_matrix, test_chunk, context, normalize)
    return run.run(cache_dir, comm, progress)


def _check_self_args(checkpoints, x, y, layers, method, lr_weight, batch_size, context, details, cache_dir, progress):
    validate.checkpoints(checkpoints, (CheckpointEnsemble,), (Checkpoints,))
    validate.images("x", x)
    validate.labels("y", y)
    validate.common(layers, method, lr_weight, batch_size, context, cache_dir, progress)
    validate.flag("details", details)


def _check_influence_args(checkpoints, x_train, y_train, x_test, y_test, top_k, layers, method, lr_weight, batch_size,
                          projection_dim, seed, full_matrix, test_chunk, context, cache_dir, progress, normalize):
    validate.checkpoints(checkpoints, (CheckpointEnsemble,), (Checkpoints,))
    validate.images("x_train", x_train)
    validate.labels("y_train", y_train)
    validate.images("x_test", x_test)
    validate.labels("y_test", y_test, optional=True)
    validate.common(layers, method, lr_weight, batch_size, context, cache_dir, progress)
    validate.influence_only(top_k, projection_dim, seed, full_matrix, test_chunk, normalize)
