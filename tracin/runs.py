"""Validated runs behind the API: a run checks every input and loads every checkpoint when it is made (so a
caller can validate before writing anything), then `run(cache_dir, comm, progress)` does the work through the
unit engine and returns the result on rank 0 (None on the other MPI ranks)."""
import os
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from . import defaults, engine
from .arrays import check_images as _check_images
from .arrays import check_labels as _check_labels
from .arrays import fingerprint
from .errors import InputError
from .graphs import make_graph, predict
from .job_influence import InfluenceFeatures, InfluenceJob, test_chunk_size
from .job_self import SelfInfluenceJob
from .layers import INFLUENCE_CLOSED_FORMS, SELF_CLOSED_FORMS, check_projection, choose
from .normalize import NORMALIZATIONS

CACHE_FORMAT = 2  # bumped when a unit file's content changes, so older caches are never mixed in


@dataclass
class SelfInfluenceResult:
    """scores (n,) float64: sum_i eta_i ||grad loss(w_i, z)||^2; terms (k, n): eta_i ||grad||^2 per checkpoint;
    loss (n,): cross-entropy at the last checkpoint; probabilities (n, classes): eta-weighted mean softmax."""
    scores: np.ndarray
    terms: np.ndarray
    loss: np.ndarray
    probabilities: np.ndarray
    epochs: List[int]
    etas: List[float]
    parameters: List[str]
    computed: int = 0  # samples x checkpoints computed by this call over all ranks (0: everything from the cache)
    seconds: float = 0.0


@dataclass
class InfluenceResult:
    """Per test sample (row): top-k proponents (highest TracIn first) and opponents (lowest first) as indices
    into the training set (T, k) with their scores (T, k) float64, its self-influence (T,), its label (T,);
    matrix: the full (T, n_train) scores when asked for, else None. Ties go to the lower training index.
    normalize: how the scores are normalised (tracin.normalize); self_influence is never normalised."""
    proponents: np.ndarray
    proponent_scores: np.ndarray
    opponents: np.ndarray
    opponent_scores: np.ndarray
    self_influence: np.ndarray
    test_labels: np.ndarray
    matrix: Optional[np.ndarray]
    epochs: List[int]
    etas: List[float]
    parameters: List[str]
    computed: int = 0  # gradient evaluations (training sample x checkpoint) of this call over all ranks
    seconds: float = 0.0
    normalize: str = "none"


def check_images(x, model_cfg, what="x"):
    """x as images of the model's input shape (any shape of (channels, height, width) when the model config does not
    record one: a network given as a function takes what it is given). Errors name `what` (InputError.arg)."""
    x = _check_images(x, what, arg=what)
    shape = model_cfg.get("input_shape")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise InputError(f"{what} holds images of shape {tuple(x.shape[1:])} but the checkpoints' model takes "
                         f"{tuple(shape)}: the images come from another data set than the checkpoints", arg=what)
    return x


def check_labels(y, n, n_classes, what="y"):
    return _check_labels(y, n_classes, what, n, arg=what)


class _Run:
    """What both runs share: the graph, the selection (tracin.layers) and the loaded checkpoints. nnabla's current
    default context is used (the caller sets it)."""

    def _prepare(self, checkpoints, x, layers, method, lr_weight, batch_size, closed_forms):
        """Build the graph of the checkpoints' network for the images x and parse `layers`; nothing is loaded."""
        if len(checkpoints) == 0:
            raise InputError("no checkpoints to score")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}", arg="batch_size")
        self.model_cfg = dict(checkpoints.model, input_shape=list(x.shape[1:]))
        self.method = method
        self.graph = make_graph(self.model_cfg, method, min(batch_size, len(x)), checkpoints.builder)
        self.n_classes = self.graph.n_classes
        if self.model_cfg.get("n_classes") not in (None, self.n_classes):
            raise InputError(f"the network gives {self.n_classes} logits but the checkpoints' model has "
                             f"{self.model_cfg['n_classes']} classes")
        self.selection = choose(self.graph, layers, method, closed_forms)
        self.names = list(self.selection.names)
        if not self.selection.closed_form:
            self.graph.check_supported(self.names)
        self.ckpts = [{"epoch": c.epoch, "path": c.path, "lr": c.lr, "digest": None} for c in checkpoints]
        self.etas = [c.lr if lr_weight else 1.0 for c in checkpoints]
        self.n_params = int(sum(np.prod(self.graph.params[n].shape) for n in self.names))

    def _load(self, checkpoints, first_batch):
        """Read, hash and check every checkpoint up front, not hours into the run: `first_batch(i)` computes the
        first batch at checkpoint i (loaded), whose outputs must be finite (finite weights can still overflow)."""
        for i, (c, entry) in enumerate(zip(checkpoints, self.ckpts)):
            entry["digest"] = self.graph.load(c.path, c.sha1)[:12]
            if not all(a is None or np.isfinite(a).all() for a in first_batch(i)):
                raise InputError(f"{c.path} gives NaN/inf outputs for the first samples: its weights overflow "
                                 "(damaged, or training diverged); leave that checkpoint out")

    def work(self, rank=0, world=1):
        """Cost of this rank's units (samples x checkpoints): the length of a progress bar."""
        return engine.work(self.job, rank, world)

    def describe(self):
        """(what the run computes, the unit of its work) for a progress bar."""
        if isinstance(self, InfluenceRun):
            return (f"influence of {len(self.y_test)} test x {len(self.job.x_train)} train samples, "
                    f"{len(self.ckpts)} checkpoints"), "grad"
        return f"self-influence, {len(self.ckpts)} checkpoints", "sample"

    def _execute(self, key, cache_dir, comm, progress):
        if comm is not None and cache_dir is None:
            raise InputError("an MPI run needs a cache_dir shared by every rank")
        store = engine.DirStore(os.path.join(cache_dir, key)) if cache_dir else engine.MemoryStore()
        t0 = time.time()
        done, merged = engine.run(self.job, store, comm, progress)
        return done, merged, time.time() - t0

    @staticmethod
    def _backend():
        import nnabla as nn
        return nn.get_current_context().backend[0]


class SelfInfluenceRun(_Run):
    """Self-influence of every sample of x (n, C, H, W) with labels y (n,); see tracin.api.self_influence."""

    def __init__(self, checkpoints, x, y, *, layers=defaults.SELF_LAYERS, method=defaults.METHOD, lr_weight=True,
                 batch_size=defaults.BATCH_SIZE):
        x = check_images(x, checkpoints.model)
        self._prepare(checkpoints, x, layers, method, lr_weight, batch_size, SELF_CLOSED_FORMS)
        self.job = None

        def first_batch(i):  # its scores are kept for the job: the check costs no extra forward pass
            if i == 0:  # the labels are checked against the network once a checkpoint has shown it is the right one
                labels = check_labels(y, len(x), self.n_classes)
                self.job = SelfInfluenceJob(self.graph, self.selection.scoring, self.names, self.ckpts, self.etas,
                                            x, labels, min(batch_size, len(x)))
            return self.job.first_batch(i)
        self._load(checkpoints, first_batch)
        x, y = self.job.x, self.job.y
        # (the key's field names stay as they were: a renamed field would orphan the caches of earlier runs)
        self.key = engine.settings_key(format=CACHE_FORMAT, data=fingerprint(x, y), names=self.names,
                                       method=method, batch=batch_size, shard=engine.shard_size(len(x)),
                                       ctx=self._backend(), kind=self.selection.scoring)

    def run(self, cache_dir=None, comm=None, progress=None):
        done, merged, seconds = self._execute(self.key, cache_dir, comm, progress)
        if merged is None:
            return None
        return SelfInfluenceResult(
            scores=merged["scores"], terms=np.stack(merged["terms"]), loss=merged["loss"],
            probabilities=merged["probabilities"], epochs=[c["epoch"] for c in self.ckpts], etas=self.etas,
            parameters=self.names, computed=int(done), seconds=seconds)


@dataclass
class EnsembleResult:
    """Self-influence of an ensemble of training runs: scores (n,) = the runs' scores summed in run order;
    runs: each run's SelfInfluenceResult; loss (n,) and probabilities (n, classes): their means over the runs."""
    scores: np.ndarray
    runs: List[SelfInfluenceResult]
    loss: np.ndarray
    probabilities: np.ndarray
    computed: int = 0
    seconds: float = 0.0


class EnsembleSelfInfluenceRun:
    """The sum of the self-influence of several training runs on the same samples (a CheckpointEnsemble): one
    SelfInfluenceRun per run, every one validated and loaded up front. The runs share one cache folder: a unit's
    name holds its checkpoint file's digest, so the runs' units never collide and a rerun resumes each of them."""

    def __init__(self, ensemble, x, y, **config):
        self.members = [SelfInfluenceRun(c, x, y, **config) for c in ensemble.runs]
        self.ckpts = [c for m in self.members for c in m.ckpts]
        self.names, self.n_params = self.members[0].names, self.members[0].n_params

    def work(self, rank=0, world=1):
        return sum(m.work(rank, world) for m in self.members)

    def describe(self):
        return f"self-influence, {len(self.members)} runs, {len(self.ckpts)} checkpoints", "sample"

    def run(self, cache_dir=None, comm=None, progress=None):
        results = [m.run(cache_dir, comm, progress) for m in self.members]
        if results[0] is None:
            return None
        total = results[0].scores.copy()
        for r in results[1:]:  # in run order: the same floating-point sum as adding the single runs' scores
            total += r.scores
        return EnsembleResult(
            scores=total, runs=results, loss=np.mean([r.loss for r in results], axis=0),
            probabilities=np.mean([r.probabilities for r in results], axis=0),
            computed=sum(r.computed for r in results), seconds=sum(r.seconds for r in results))


class InfluenceRun(_Run):
    """TracIn of test samples against training samples; see tracin.api.influence."""

    def __init__(self, checkpoints, x_train, y_train, x_test, y_test=None, *, top_k=defaults.TOP_K,
                 layers=defaults.INFLUENCE_LAYERS, method=defaults.METHOD, lr_weight=True,
                 batch_size=defaults.BATCH_SIZE, projection_dim=None, seed=0, full_matrix=False, test_chunk=None,
                 normalize=defaults.NORMALIZE):
        if normalize not in NORMALIZATIONS:
            raise InputError(f"normalize is {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}", arg="normalize")
        self.normalize = normalize
        x_train = check_images(x_train, checkpoints.model, "x_train")
        x_test = check_images(x_test, dict(checkpoints.model, input_shape=list(x_train.shape[1:])), "x_test")
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}", arg="top_k")
        check_projection(layers, projection_dim)
        self._prepare(checkpoints, x_train, layers, method, lr_weight, batch_size, INFLUENCE_CLOSED_FORMS)
        self.featurizer = InfluenceFeatures(self.graph, self.selection.scoring, self.names,
                                            min(batch_size, len(x_train)), projection_dim, seed)
        if projection_dim and projection_dim >= self.n_params:
            raise InputError(f"projection_dim {projection_dim} is not below the {self.n_params} selected "
                             "parameters: a projection would only add error; leave it out", arg="projection_dim")
        first = x_train[:self.graph.batch_size].astype(np.float32)
        self._load(checkpoints, lambda i: self.graph.forward(first))
        y_train = check_labels(y_train, len(x_train), self.n_classes, "y_train")
        if y_test is None:  # the class the final model (last selected checkpoint) predicts
            self.graph.load(self.ckpts[-1]["path"])
            y_test = predict(self.graph, x_test)
        self.y_test = check_labels(y_test, len(x_test), self.n_classes, "y_test")
        self.k = min(top_k, len(x_train))
        n_test, n_train = len(x_test), len(x_train)
        chunk = min(test_chunk, n_test) if test_chunk else test_chunk_size(n_test, self.featurizer.width(),
                                                                           len(self.ckpts))
        self.key = engine.settings_key(
            format=CACHE_FORMAT, mode="influence", data=fingerprint(x_train, y_train),
            test=fingerprint(x_test, self.y_test), names=self.names, method=method, kind=self.selection.scoring,
            batch=self.featurizer.batch_size, shard=engine.shard_size(n_train), chunk=chunk, k=self.k,
            matrix=bool(full_matrix), projection=[projection_dim, seed] if projection_dim else None,
            normalize=normalize,
            ckpts=[[c["epoch"], c["digest"], e] for c, e in zip(self.ckpts, self.etas)], ctx=self._backend())
        self.job = InfluenceJob(self.featurizer, self.ckpts, self.etas, x_test, self.y_test, x_train, y_train,
                                self.k, chunk, keep_block=bool(full_matrix), normalize=normalize)

    def run(self, cache_dir=None, comm=None, progress=None):
        done, merged, seconds = self._execute(self.key, cache_dir, comm, progress)
        if merged is None:
            return None
        top, self_inf, matrix = merged
        return InfluenceResult(
            proponents=top["prop_idx"], proponent_scores=top["prop_score"], opponents=top["opp_idx"],
            opponent_scores=top["opp_score"], self_influence=self_inf, test_labels=self.y_test, matrix=matrix,
            epochs=[c["epoch"] for c in self.ckpts], etas=self.etas, parameters=self.names, computed=int(done),
            seconds=seconds, normalize=self.normalize)


def progress_bar(run, rank=0, world=1, terminal_only=True):
    """progress(count, label) drawing one tqdm bar (on stderr) over this rank's units of `run` (cached units count
    as done); drawn by rank 0 only, and with terminal_only only when stderr is a terminal."""
    from tqdm import tqdm
    desc, unit = run.describe()
    disable = True if rank else (None if terminal_only else False)  # None: tqdm's own test for a terminal
    bar = tqdm(total=run.work(rank, world), unit=unit, dynamic_ncols=True, disable=disable, desc=desc)

    def progress(count, label):
        bar.set_postfix_str(label, refresh=False)
        bar.update(count)
        if bar.n >= bar.total:
            bar.close()
    return progress
