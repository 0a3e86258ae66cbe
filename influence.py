"""TracIn math (Pruthi et al., "Estimating Training Data Influence by Tracing Gradient Descent", NeurIPS 2020).

TracInCP self-influence of a training sample z = (x, y) over checkpoints w_1..w_k with step sizes eta_i:

    score(z) = sum_i eta_i * || grad_theta loss(w_i, z) ||^2

loss is the softmax cross-entropy of the model in inference mode (batch-norm running statistics, no augmentation)
on the sample's (noisy) training label; theta are the selected parameters ("layers").

Per-sample gradients, batched (no batch-size-1 loop):
- last layer (affine W, b), closed form from one forward pass: with p = softmax(logits), e = p - onehot(y) and h
  the penultimate features, grad_W = h e^T and grad_b = e, so ||grad||^2 = ||e||^2 (||h||^2 + 1) (paper, sec. 3.2).
- any layer set: one batched backward of the summed loss keeps every layer's input and output gradient; then per
  sample and layer type: affine = outer products, convolution = output-gradient x im2col(input) products, batch
  norm in inference mode = per-channel sums of g * x_hat (gamma) and g (beta). Squared norms of convolution
  gradients use whichever of the direct product or the Gram identity ||G U^T||^2 = <G^T G, U^T U> is cheaper.
Memory is bounded by the batch (never N x parameters).

The loop reference (`method="loop"`) does what the original example does: batch size 1, backprop, read param.g.
"""
import fnmatch
import hashlib
import os

import numpy as np

from utils import CliError

SUPPORTED = ("Convolution", "Affine", "BatchNormalization")


# ----------------------------------------------------------------------------------------------- closed forms

def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_xent(logits, labels):
    """Per-sample softmax cross-entropy (natural log), labels (N,) int."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    return logz - z[np.arange(len(z)), labels]


def output_error(logits, labels):
    """e = softmax(logits) - onehot(labels): the gradient of the cross-entropy with respect to the logits."""
    e = softmax(logits.astype(np.float64))
    e[np.arange(len(e)), labels] -= 1.0
    return e


def last_layer_sq_norms(logits, feats, labels):
    """||grad_{W,b} loss||^2 of the final affine layer for every sample: ||p - y||^2 (||h||^2 + 1)."""
    e = output_error(logits, labels)
    h = feats.reshape(len(feats), -1).astype(np.float64)
    return (e * e).sum(1) * ((h * h).sum(1) + 1.0)


def last_layer_grads(logits, feats, labels):
    """Per-sample last-layer gradients flattened as [vec(h e^T), e] (the order of nnabla's affine/W, affine/b)."""
    e = output_error(logits, labels)
    h = feats.reshape(len(feats), -1).astype(np.float64)
    return np.concatenate([(h[:, :, None] * e[:, None, :]).reshape(len(h), -1), e], axis=1)


# --------------------------------------------------------------------------------------------- layer selection

def select_params(names, spec):
    """Parameter names selected by `spec`: 'last' (the final affine layer, as the original: names containing
    'affine'), 'all' (every trainable parameter), or comma-separated fnmatch patterns / name prefixes."""
    names = list(names)
    if spec == "last":
        chosen = [n for n in names if "affine" in n]
    elif spec == "all":
        chosen = names
    else:
        pats = [p.strip() for p in spec.split(",") if p.strip()]
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) or n.startswith(p.rstrip("/") + "/") or n == p
                                          for p in pats)]
    if not chosen:
        raise CliError(f"--layers '{spec}' selects no trainable parameter; use last, all, or patterns such as "
                       f"'affine/*' (names look like {names[0]}, {names[-1]})")
    return chosen


# ---------------------------------------------------------------------------------- per-sample layer gradients

def _im2col(x, kernel, pad, stride, dilation):
    """(B, C*kh*kw, Ho*Wo) columns of x (B, C, H, W), matching nnabla's convolution weight layout (C, kh, kw)."""
    b, c, _, _ = x.shape
    kh, kw = kernel
    (ph, pw), (sh, sw), (dh, dw) = pad, stride, dilation
    if kh == kw == 1 and ph == pw == 0:
        return np.ascontiguousarray(x[:, :, ::sh, ::sw]).reshape(b, c, -1)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    hp, wp = xp.shape[2:]
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    s = xp.strides
    win = np.lib.stride_tricks.as_strided(
        xp, shape=(b, c, kh, kw, ho, wo), strides=(s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw),
        writeable=False)
    return win.reshape(b, c * kh * kw, ho * wo)


def conv_grads(x, g, w_shape, args):
    """Per-sample convolution weight gradients (B, *w_shape) from input x and output gradient g."""
    if args.get("group", 1) != 1 or args.get("channel_last", False):
        raise CliError("per-sample gradients support ungrouped NCHW convolutions only; use --method loop")
    cols = _im2col(x, w_shape[2:], args["pad"], args["stride"], args["dilation"])
    gm = g.reshape(g.shape[0], g.shape[1], -1)
    return np.matmul(gm, cols.transpose(0, 2, 1)).reshape((len(x),) + tuple(w_shape))


def conv_sq_norms(x, g, w_shape, args):
    """||per-sample convolution weight gradient||^2 without always forming it: G (Co, L), U (K, L) per sample,
    ||G U^T||^2 = sum((G^T G) * (U^T U)) costs (Co + K) L^2 against Co K L for the direct product."""
    if args.get("group", 1) != 1 or args.get("channel_last", False):
        raise CliError("per-sample gradients support ungrouped NCHW convolutions only; use --method loop")
    cols = _im2col(x, w_shape[2:], args["pad"], args["stride"], args["dilation"])
    gm = g.reshape(g.shape[0], g.shape[1], -1)
    co, k, length = gm.shape[1], cols.shape[1], gm.shape[2]
    if (co + k) * length < co * k:
        gg = np.matmul(gm.transpose(0, 2, 1), gm)
        uu = np.matmul(cols.transpose(0, 2, 1), cols)
        return np.einsum("bij,bij->b", gg, uu, dtype=np.float64)
    prod = np.matmul(gm, cols.transpose(0, 2, 1)).reshape(len(x), -1)
    return np.einsum("bk,bk->b", prod, prod, dtype=np.float64)


def bn_grads(x, g, mean, var, eps):
    """Per-sample (beta, gamma) gradients (B, C) of inference-mode batch norm y = gamma x_hat + beta."""
    axes = tuple(range(2, x.ndim))
    x_hat = (x - mean) / np.sqrt(var + eps)
    return g.sum(axis=axes), (g * x_hat).sum(axis=axes)


class ScoringGraph:
    """One inference-mode graph for a fixed batch size (the last batch is padded): logits, features, the summed
    loss, and the layer functions whose inputs and output gradients give per-sample parameter gradients."""

    def __init__(self, model_cfg, batch_size, builder=None):
        """`builder(image, test) -> (logits, features)` replaces the model zoo (tests use hand-checkable nets)."""
        import nnabla as nn
        import nnabla.functions as F

        import models
        builder = builder or (lambda image, test: models.build(model_cfg, image, test=test))
        self.nn = nn
        self.cfg = model_cfg
        self.batch_size = batch_size
        shape = (batch_size,) + tuple(model_cfg["input_shape"])
        with nn.parameter_scope(f"tracin_bs{batch_size}_{id(self)}"):
            # a private scope: graphs of several batch sizes, or a training run in the same process, never share
            self.x = nn.Variable(shape)
            self.y = nn.Variable((batch_size, 1))
            self.logits, self.feats = builder(self.x, True)
            # summed (not averaged) so that each sample's output gradient is its own loss's gradient
            self.loss = F.sum(F.softmax_cross_entropy(self.logits, self.y))
            self.params = nn.get_parameters(grad_only=False)
            self.trainable = [k for k, v in nn.get_parameters(grad_only=True).items()]
        self.feats.persistent = True
        self.logits.persistent = True
        self._layers = self._find_layers()

    def _find_layers(self):
        by_var = list(self.params.items())

        def name_of(v):
            for n, p in by_var:
                if p == v:
                    return n
            return None

        found = []
        self.loss.visit(lambda f: found.append(f))
        layers = []
        for f in found:
            kind = f.info.type_name
            names = [name_of(v) for v in f.inputs[1:]]
            if not any(names):
                continue
            if kind not in SUPPORTED:
                layers.append({"kind": kind, "f": f, "names": names})
                continue
            layers.append({"kind": kind, "f": f, "names": names, "args": dict(f.info.args)})
        return layers

    def load(self, path):
        from checkpoints import load_into
        load_into(path, self.params)

    def _set(self, x, y=None):
        m = len(x)
        if m > self.batch_size:
            raise ValueError("batch larger than the graph")
        if m < self.batch_size:
            x = np.concatenate([x, np.repeat(x[:1], self.batch_size - m, axis=0)])
            if y is not None:
                y = np.concatenate([y, np.repeat(y[:1], self.batch_size - m, axis=0)])
        self.x.d = x
        if y is not None:
            self.y.d = np.asarray(y).reshape(-1, 1)
        return m

    def forward(self, x):
        """(logits, features) of a batch, inference mode."""
        m = self._set(x)
        self.logits.forward(clear_buffer=True)
        return self.logits.d[:m].copy(), self.feats.d[:m].reshape(m, -1).copy()

    def _backward(self, x, y, names):
        wanted = set(names)
        for n, p in self.params.items():  # prune the backward pass below the lowest selected layer
            if n in self.trainable:
                p.need_grad = n in wanted
        m = self._set(x, y)
        self.loss.forward(clear_no_need_grad=False)
        self.loss.backward(clear_buffer=False)
        return m

    def _blocks(self, names, m, want_sq):
        """Yield (param name, per-sample gradient block (m, ...)) or (name, squared norms (m,)) per layer."""
        wanted = set(names)
        for layer in self._layers:
            sel = [n for n in layer["names"] if n in wanted]
            if not sel:
                continue
            kind, f = layer["kind"], layer["f"]
            if kind not in SUPPORTED:
                raise CliError(f"per-sample gradients of {kind} layers ({sel[0]}) are not implemented; "
                               "use --method loop")
            x = f.inputs[0].d[:m]
            g = f.outputs[0].g[:m]
            if kind == "Affine":
                a = x.reshape(m, -1)
                gg = g.reshape(m, -1)
                for n, v in zip(layer["names"], f.inputs[1:]):
                    if n not in wanted:
                        continue
                    if v.ndim == 1 or n.endswith("/b"):
                        yield n, (np.einsum("bk,bk->b", gg, gg, dtype=np.float64) if want_sq else gg)
                    elif want_sq:
                        yield n, (np.einsum("bk,bk->b", a, a, dtype=np.float64)
                                  * np.einsum("bk,bk->b", gg, gg, dtype=np.float64))
                    else:
                        yield n, a[:, :, None] * gg[:, None, :]
            elif kind == "Convolution":
                for n, v in zip(layer["names"], f.inputs[1:]):
                    if n not in wanted:
                        continue
                    if v.ndim == 1:  # bias
                        s = g.reshape(m, g.shape[1], -1).sum(2)
                        yield n, (np.einsum("bk,bk->b", s, s, dtype=np.float64) if want_sq else s)
                    elif want_sq:
                        yield n, conv_sq_norms(x, g, v.shape, layer["args"])
                    else:
                        yield n, conv_grads(x, g, v.shape, layer["args"])
            else:  # BatchNormalization, inference mode: inputs x, beta, gamma, mean, var
                if layer["args"].get("batch_stat"):
                    raise CliError("batch norm must run in inference mode for per-sample gradients")
                _, beta, gamma, mean, var = f.inputs
                gb, gg = bn_grads(x, g, mean.d, var.d, layer["args"]["eps"])
                for n, blk in ((layer["names"][0], gb), (layer["names"][1], gg)):
                    if n in wanted:
                        yield n, (np.einsum("bk,bk->b", blk, blk, dtype=np.float64) if want_sq else blk)

    def sq_norms(self, x, y, names):
        """(squared gradient norms (m,), logits (m, classes)) of a batch, batched per-sample gradients."""
        m = self._backward(x, y, names)
        total = np.zeros(m, dtype=np.float64)
        for _, sq in self._blocks(names, m, want_sq=True):
            total += sq
        return total, self.logits.d[:m].copy()

    def grads(self, x, y, names):
        """Per-sample gradients of the selected parameters, flattened in `names` order: (m, P) float32."""
        m = self._backward(x, y, names)
        blocks = dict(self._blocks(names, m, want_sq=False))
        return np.concatenate([blocks[n].reshape(m, -1).astype(np.float32) for n in names], axis=1)


class LoopGraph:
    """The original example's method, as a reference: batch size 1, backprop, read param.g."""

    def __init__(self, model_cfg, builder=None):
        self.g = ScoringGraph(model_cfg, 1, builder)

    def load(self, path):
        self.g.load(path)

    def grads(self, x, y, names):
        g = self.g
        for n, p in g.params.items():
            if n in g.trainable:
                p.need_grad = n in names
        out, logits = [], []
        for i in range(len(x)):
            for n in names:
                g.params[n].grad.zero()
            g.x.d = x[i:i + 1]
            g.y.d = np.asarray(y[i:i + 1]).reshape(1, 1)
            g.loss.forward()
            g.loss.backward()
            out.append(np.concatenate([g.params[n].g.reshape(-1) for n in names]))
            logits.append(g.logits.d.copy())
        return np.stack(out), np.concatenate(logits)

    def sq_norms(self, x, y, names):
        gr, logits = self.grads(x, y, names)
        return np.einsum("bk,bk->b", gr, gr, dtype=np.float64), logits


# -------------------------------------------------------------------------------------- self-influence engine

SHARD = 4096  # samples per work unit: the unit of resumption and of MPI sharding; independent of the rank count


def shards(n, shard=SHARD):
    return [(s, min(s + shard, n)) for s in range(0, n, shard)]


def file_digest(path, chunk=1 << 20):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()[:12]


def unit_path(cache_dir, ckpt, start, end):
    return os.path.join(cache_dir, f"epoch{ckpt['epoch']}_{ckpt['digest']}", f"{start:09d}-{end:09d}.npz")


def compute_unit(engine, layers, names, x, y, batch_size, on_batch=None):
    """Squared gradient norms and losses of samples x (n, ...) with labels y (n,) at the loaded checkpoint."""
    n = len(x)
    sq = np.empty(n, dtype=np.float64)
    loss = np.empty(n, dtype=np.float64)
    for s in range(0, n, batch_size):
        xb, yb = x[s:s + batch_size].astype(np.float32), y[s:s + batch_size]
        if layers == "last" and isinstance(engine, ScoringGraph):
            logits, feats = engine.forward(xb)
            sq[s:s + len(xb)] = last_layer_sq_norms(logits, feats, yb)
        else:
            sq[s:s + len(xb)], logits = engine.sq_norms(xb, yb, names)
        loss[s:s + len(xb)] = softmax_xent(logits, yb)
        if on_batch:
            on_batch(len(xb))
    return sq, loss


def run_units(engine, layers, names, ckpts, x, y, batch_size, cache_dir, rank=0, world=1, progress=None):
    """Compute every (checkpoint, shard) unit assigned to this rank that the cache does not hold yet.

    Each unit is written atomically to cache_dir as soon as it completes, so a killed run loses at most the units
    in flight, and a rerun (with any number of ranks) skips finished ones. Returns the number of samples computed."""
    from utils import atomic_path
    units = [(c, s, e) for c in ckpts for (s, e) in shards(len(x))]
    done_samples = 0
    loaded = None
    for u, (ckpt, s, e) in enumerate(units):
        if u % world != rank:
            continue
        path = unit_path(cache_dir, ckpt, s, e)
        if os.path.isfile(path):
            if progress:
                progress(ckpt, e - s, cached=True)
            continue
        if loaded is not ckpt:
            engine.load(ckpt["path"])
            loaded = ckpt
        sq, loss = compute_unit(engine, layers, names, x[s:e], y[s:e], batch_size,
                                on_batch=(lambda k: progress(ckpt, k, cached=False)) if progress else None)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, sq=sq, loss=loss)
        done_samples += e - s
    return done_samples


def collect(ckpts, n, cache_dir):
    """(terms (k, n) unweighted squared norms per checkpoint, losses (k, n)) from the cache."""
    terms = np.empty((len(ckpts), n), dtype=np.float64)
    losses = np.empty((len(ckpts), n), dtype=np.float64)
    for i, ckpt in enumerate(ckpts):
        for s, e in shards(n):
            with np.load(unit_path(cache_dir, ckpt, s, e)) as z:
                terms[i, s:e], losses[i, s:e] = z["sq"], z["loss"]
    return terms, losses


def weighted_sum(terms, etas):
    """score = sum_i eta_i * term_i, accumulated in checkpoint order (deterministic)."""
    total = np.zeros(terms.shape[1], dtype=np.float64)
    weighted = []
    for t, eta in zip(terms, etas):
        w = eta * t
        weighted.append(w)
        total += w
    return total, weighted
