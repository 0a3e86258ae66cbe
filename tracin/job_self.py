"""Self-influence as a job of the unit engine: score(z) = sum_i eta_i ||grad_theta loss(w_i, z)||^2.

Units are (checkpoint, shard of engine.shard_size(n) training samples). A unit stores, per sample at that
checkpoint, the squared gradient norm of the selected parameters, the loss and the softmax probabilities, all from
the same forward pass.
"""
import numpy as np

from .engine import shard_size, shards
from .layers import GRAD, LAST
from .maths import last_bias_sq_norms, last_layer_sq_norms, softmax, softmax_xent


def score_batch(graph, scoring, names, x, y):
    """(squared gradient norms (m,), losses (m,), softmax probabilities (m, classes)) of one batch at the loaded
    checkpoint; float64. `scoring` (tracin.layers.Selection): the closed forms need the forward pass only."""
    x = x.astype(np.float32)
    if scoring == GRAD:
        sq, logits = graph.sq_norms(x, y, names)
        probs = softmax(logits.astype(np.float64))
    else:
        logits, feats = graph.forward(x)
        probs = softmax(logits.astype(np.float64))
        sq = last_layer_sq_norms(probs, feats, y) if scoring == LAST else last_bias_sq_norms(probs, y)
    return sq, softmax_xent(logits, y), probs


def weighted_sum(terms, etas):
    """(score = sum_i eta_i * term_i, [eta_i * term_i]), accumulated in checkpoint order (deterministic)."""
    total = np.zeros(terms.shape[1], dtype=np.float64)
    weighted = []
    for t, eta in zip(terms, etas):
        w = eta * t
        weighted.append(w)
        total += w
    return total, weighted


class SelfInfluenceJob:
    """ckpts: [{epoch, path, digest}] in order (digests filled in as the run loads them); etas: their weights;
    x (n, ...), y (n,) int; scoring as in score_batch."""

    def __init__(self, graph, scoring, names, ckpts, etas, x, y, batch_size):
        self.graph, self.scoring, self.names = graph, scoring, list(names)
        self.ckpts, self.etas = ckpts, list(etas)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.units = [(i, s, e) for i in range(len(ckpts)) for (s, e) in shards(len(x), shard_size(len(x)))]
        self._loaded = None
        self._first = {}  # checkpoint index -> score_batch of the first batch, computed when the run checked it

    def first_batch(self, i):
        """score_batch of the first batch of checkpoint i (loaded by the caller), kept for the unit that starts
        with it: the run's up-front check of every checkpoint is then part of the work, not an extra pass."""
        end = min(self.batch_size, self.units[0][2])
        self._first[i] = score_batch(self.graph, self.scoring, self.names, self.x[:end], self.y[:end])
        return self._first[i]

    def name(self, unit):
        c, s, e = self.ckpts[unit[0]], unit[1], unit[2]
        return f"epoch{c['epoch']}_{c['digest']}/{s:09d}-{e:09d}.npz"

    def cost(self, unit):
        return unit[2] - unit[1]

    def label(self, unit):
        return f"checkpoint {self.ckpts[unit[0]]['epoch']}"

    def compute(self, unit, on_batch=None):
        i, s, e = unit
        if self._loaded != i:
            self.graph.load(self.ckpts[i]["path"])
            self._loaded = i
        parts = []
        for b in range(s, e, self.batch_size):
            xb, yb = self.x[b:min(b + self.batch_size, e)], self.y[b:min(b + self.batch_size, e)]
            first = self._first.pop(i) if b == 0 else None
            parts.append(first or score_batch(self.graph, self.scoring, self.names, xb, yb))
            if on_batch:
                on_batch(len(xb))
        return {"sq": np.concatenate([p[0] for p in parts]), "loss": np.concatenate([p[1] for p in parts]),
                "prob": np.concatenate([p[2] for p in parts])}

    def merge(self, load):
        """{'scores' (n,), 'terms' [(n,)] eta-weighted per checkpoint, 'loss' (n,) at the last checkpoint,
        'probabilities' (n, classes): the eta-weighted mean of the checkpoints' softmax probabilities}."""
        k, n = len(self.ckpts), len(self.x)
        terms, loss, probs = np.empty((k, n)), np.empty(n), None
        for i, s, e in self.units:
            z = load((i, s, e))
            terms[i, s:e] = z["sq"]
            if probs is None:
                probs = np.zeros((n, z["prob"].shape[1]))
            probs[s:e] += self.etas[i] * z["prob"]
            if i == k - 1:
                loss[s:e] = z["loss"]
        total, weighted = weighted_sum(terms, self.etas)
        probs /= sum(self.etas) if sum(self.etas) > 0 else 1.0
        return {"scores": total, "terms": weighted, "loss": loss, "probabilities": probs}

