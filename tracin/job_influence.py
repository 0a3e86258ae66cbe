"""Train -> test influence as a job of the unit engine.

TracIn(z, z') = sum_i eta_i grad loss(w_i, z) . grad loss(w_i, z')   (z a training sample, z' a test sample)

Units are (test chunk, training shard). Inside a unit, per checkpoint, the test chunk's per-sample "features" (last
layer: e = p - y and h; otherwise the flattened, optionally projected, gradients) are computed once and the
training shard's are streamed batch by batch: each batch adds eta_i * (test x batch) dot products to a
(chunk, shard) block. A unit keeps only its block's top-k (and the block itself when the full matrix is asked for),
so n_test x n_train scores never exist unless requested; top-k lists merge exactly (tracin.topk).

A normalisation (tracin.normalize) needs only squared norms of the same features, per checkpoint: the test chunk's
are cached with its features and a training batch's are taken from the batch just computed, so a unit still sees
every checkpoint of its training shard once and its block is final (normalised) before its top-k is taken.
"""
import numpy as np

from .engine import shard_size, shards
from .layers import LAST
from .maths import (
    gradient_dots,
    last_layer_dots,
    last_layer_features,
    last_layer_sq_norms,
    projection_matrix,
    softmax,
)
from .normalize import checkpoint_term, finish
from .topk import KEYS, RunningTopK

TEST_FEATURE_BUDGET = 512 << 20  # bytes of cached test features (all checkpoints) per test chunk
MAX_TEST_CHUNK = 4096


def test_chunk_size(n_test, width, n_ckpts, budget=TEST_FEATURE_BUDGET):
    """Test samples per unit: their features for every checkpoint are cached in at most `budget` bytes. Depends
    only on the settings (never on the machine or the rank count), so units are the same for every run."""
    per_sample = max(1, width) * 8 * max(1, n_ckpts)
    return int(max(1, min(n_test, MAX_TEST_CHUNK, budget // per_sample)))


class InfluenceFeatures:
    """Per-sample quantities whose dot products are gradient dot products, at the loaded checkpoint.

    scoring 'last': closed form from one forward pass (factors e, h); 'grad': per-sample gradients of `names`
    (either graph of tracin.graphs), projected to `projection_dim` when given (tracin.layers.Selection)."""

    def __init__(self, graph, scoring, names, batch_size, projection_dim=None, seed=0):
        self.graph, self.scoring, self.names = graph, scoring, list(names)
        self.batch_size = batch_size
        self.projection_dim = projection_dim
        self.seed = seed
        self.n_params = sum(int(np.prod(graph.params[n].shape)) for n in self.names)
        self.proj = None

    def set_checkpoint(self, index, ckpt):
        """Load checkpoint `ckpt` (number `index` in the run; the graph keeps the weights it read in memory)."""
        self.graph.load(ckpt["path"])
        if self.projection_dim:
            self.proj = projection_matrix(self.n_params, self.projection_dim, self.seed, index)

    def width(self):
        """Floats per sample of a feature vector (for memory budgets)."""
        if self.scoring == LAST:  # h (H,) and e (C,): the affine weight is (H, C)
            shapes = [self.graph.params[n].shape for n in self.names]
            return int(sum(s[0] + s[-1] for s in shapes if len(s) == 2) or self.n_params)
        return self.projection_dim or self.n_params

    def batch(self, x, y, want_sq=False):
        """(features of x with labels y, squared gradient norms (m,) float64 or None); x at most one batch."""
        x = x.astype(np.float32)
        if self.scoring == LAST:
            logits, feats = self.graph.forward(x)
            probs = softmax(logits.astype(np.float64))
            return last_layer_features(probs, feats, y), (last_layer_sq_norms(probs, feats, y) if want_sq else None)
        g = np.asarray(self.graph.grads(x, y, self.names), dtype=np.float32)
        sq = np.einsum("bk,bk->b", g, g, dtype=np.float64) if want_sq else None
        if self.proj is not None:
            g = g @ self.proj
        return g, sq

    def many(self, x, y, want_sq=False):
        """features of any number of samples, computed batch by batch (batch boundaries from the start of x)."""
        parts = [self.batch(x[s:s + self.batch_size], y[s:s + self.batch_size], want_sq)
                 for s in range(0, len(x), self.batch_size)]
        if self.scoring == LAST:
            f = (np.concatenate([p[0][0] for p in parts]), np.concatenate([p[0][1] for p in parts]))
        else:
            f = np.concatenate([p[0] for p in parts]).astype(np.float64)
        return f, (np.concatenate([p[1] for p in parts]) if want_sq else None)

    def dots(self, test, train):
        return last_layer_dots(test, train) if self.scoring == LAST else gradient_dots(test, train)

    def sq(self, features):
        """Squared norms (m,) float64 of the vectors whose dot products `dots` takes (projected, when projecting):
        what a normalisation divides by, so that a cosine of these vectors stays within [-1, 1]."""
        if self.scoring == LAST:
            e, h = features
            return (e * e).sum(1) * ((h * h).sum(1) + 1.0)
        return np.einsum("bk,bk->b", features, features, dtype=np.float64)


class InfluenceJob:
    """Scores of test samples (x_test, y_test) against training samples (x_train, y_train): per test sample the
    top-k proponents and opponents, its self-influence and, with keep_block, its full row; scores normalised by
    `normalize` (tracin.normalize)."""

    def __init__(self, featurizer, ckpts, etas, x_test, y_test, x_train, y_train, k, chunk, keep_block=False,
                 normalize="none"):
        self.f, self.ckpts, self.etas = featurizer, ckpts, list(etas)
        self.normalize = normalize
        self.x_test, self.y_test, self.x_train, self.y_train = x_test, y_test, x_train, y_train
        self.k, self.keep_block = k, keep_block
        n_test, n_train = len(x_test), len(x_train)
        self.units = [(t0, min(t0 + chunk, n_test), s, e) for t0 in range(0, n_test, chunk)
                      for (s, e) in shards(n_train, shard_size(n_train))]
        self._chunk, self._test_cache = None, {}  # the current test chunk's features per checkpoint

    def name(self, unit):
        t0, t1, s, e = unit
        return f"test{t0:07d}-{t1:07d}/train{s:09d}-{e:09d}.npz"

    def cost(self, unit):
        return (unit[3] - unit[2]) * len(self.ckpts)

    def label(self, unit):
        return f"test {unit[0]}-{unit[1]}"

    def _block(self, t0, t1, s, e, want_self, on_batch):
        """(sum_i eta_i term_i (T, n) float64, accumulated in checkpoint order and normalised; self-influence (T,)
        or None). term_i: the dot products, or their normalised form (tracin.normalize.checkpoint_term)."""
        how, bs, cache = self.normalize, self.f.batch_size, self._test_cache
        block = np.zeros((t1 - t0, e - s), dtype=np.float64)
        self_inf = np.zeros(t1 - t0, dtype=np.float64) if want_self else None
        total = how == "total_cosine"  # normalised after the sum by the eta-weighted squared norms
        sum_test, sum_train = np.zeros(t1 - t0), np.zeros(e - s)
        for i, (ckpt, eta) in enumerate(zip(self.ckpts, self.etas)):
            self.f.set_checkpoint(i, ckpt)
            if i not in cache or (want_self and cache[i][1] is None):
                ft, sq = self.f.many(self.x_test[t0:t1], self.y_test[t0:t1], want_sq=want_self)
                cache[i] = (ft, sq, self.f.sq(ft) if how != "none" else None)
            ft, sq, sq_test = cache[i]
            if want_self:
                self_inf += eta * sq
            if total:
                sum_test += eta * sq_test
            for b in range(s, e, bs):
                fj, _ = self.f.batch(self.x_train[b:min(b + bs, e)], self.y_train[b:min(b + bs, e)])
                dots = self.f.dots(ft, fj)
                if how != "none":
                    sq_train = self.f.sq(fj)
                    dots = checkpoint_term(dots, sq_test, sq_train, how)
                    if total:
                        sum_train[b - s:b - s + bs] += eta * sq_train
                block[:, b - s:b - s + bs] += eta * dots
                if on_batch:
                    on_batch(min(bs, e - b))
        return finish(block, sum_test, sum_train, how), self_inf

    def compute(self, unit, on_batch=None):
        t0, t1, s, e = unit
        if self._chunk != (t0, t1):
            self._chunk, self._test_cache = (t0, t1), {}
        block, self_inf = self._block(t0, t1, s, e, s == 0, on_batch)
        top = RunningTopK(t1 - t0, self.k)
        top.add_block(block, np.arange(s, e))
        out = top.arrays()
        if self.keep_block:
            out["block"] = block
        if self_inf is not None:
            out["self_influence"] = self_inf
        return out

    def merge(self, load):
        """({prop_idx, prop_score, opp_idx, opp_score} (T, k), self-influence (T,), the (T, n_train) matrix or
        None). Units are merged in a fixed order, so the result does not depend on the rank count."""
        n_test, n_train = len(self.x_test), len(self.x_train)
        top = {key: [] for key in KEYS}
        self_inf = np.empty(n_test, dtype=np.float64)
        full = np.empty((n_test, n_train), dtype=np.float64) if self.keep_block else None
        for t0 in sorted({u[0] for u in self.units}):
            row = [u for u in self.units if u[0] == t0]
            t1 = row[0][1]
            running = RunningTopK(t1 - t0, self.k)
            for unit in row:
                z = load(unit)
                running.add(*(z[key] for key in KEYS))
                if unit[2] == 0:
                    self_inf[t0:t1] = z["self_influence"]
                if full is not None:
                    full[t0:t1, unit[2]:unit[3]] = z["block"]
            for key, v in running.arrays().items():
                top[key].append(v)
        return {key: np.concatenate(v) for key, v in top.items()}, self_inf, full
