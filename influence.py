"""TracIn math (Pruthi et al., "Estimating Training Data Influence by Tracing Gradient Descent", NeurIPS 2020).

TracInCP self-influence of a training sample z = (x, y) over checkpoints w_1..w_k with step sizes eta_i:

    score(z) = sum_i eta_i * || grad_theta loss(w_i, z) ||^2

loss is the softmax cross-entropy of the model in inference mode (batch-norm running statistics, no augmentation)
on the sample's (noisy) training label; theta are the selected parameters ("layers").

Per-sample gradients, batched (no batch-size-1 loop):
- last layer (affine W, b), closed form from one forward pass: with p = softmax(logits), e = p - onehot(y) and h
  the penultimate features, grad_W = h e^T and grad_b = e, so ||grad||^2 = ||e||^2 (||h||^2 + 1) (paper, sec. 3.2).
  The bias alone ("last_bias", calculate_score.py's self-influence default) is ||e||^2: the label-agnostic
  ||h||^2 factor only adds noise to mislabel detection (README, "Detection quality").
- any layer set: one batched backward of the summed loss keeps every layer's input and output gradient; then per
  sample and layer type: affine = outer products, convolution = output-gradient x im2col(input) products, batch
  norm in inference mode = per-channel sums of g * x_hat (gamma) and g (beta). Squared norms of convolution
  gradients use whichever of the direct product or the Gram identity ||G U^T||^2 = <G^T G, U^T U> is cheaper.
Memory is bounded by the batch (never N x parameters).

The loop reference (`method="loop"`) does what the original example does: batch size 1, backprop, read param.g.
"""
import fnmatch
import hashlib
import itertools
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


def last_bias_sq_norms(logits, labels):
    """||grad_b loss||^2 of the final affine bias alone: ||p - y||^2 (the label-dependent factor of the last-layer
    closed form, without the feature-norm factor ||h||^2 + 1)."""
    e = output_error(logits, labels)
    return (e * e).sum(1)


def last_layer_grads(logits, feats, labels):
    """Per-sample last-layer gradients flattened as [vec(h e^T), e] (the order of nnabla's affine/W, affine/b)."""
    e = output_error(logits, labels)
    h = feats.reshape(len(feats), -1).astype(np.float64)
    return np.concatenate([(h[:, :, None] * e[:, None, :]).reshape(len(h), -1), e], axis=1)


# --------------------------------------------------------------------------------------------- layer selection

def select_params(names, spec):
    """Parameter names selected by `spec`: 'last' (the final affine layer, as the original: names containing
    'affine'), 'last_bias' (its bias only), 'all' (every trainable parameter), or comma-separated fnmatch
    patterns / name prefixes."""
    names = list(names)
    if spec == "last":
        chosen = [n for n in names if "affine" in n]
    elif spec == "last_bias":
        chosen = [n for n in names if "affine" in n and n.endswith("/b")]
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
    return _sq_rows(np.matmul(gm, cols.transpose(0, 2, 1)))


def bn_grads(x, g, mean, var, eps):
    """Per-sample (beta, gamma) gradients (B, C) of inference-mode batch norm y = gamma x_hat + beta."""
    b, c = g.shape[:2]
    gm = g.reshape(b, c, -1)
    t = np.subtract(x.reshape(b, c, -1), np.reshape(mean, (1, c, 1)), dtype=np.float32)  # one temporary, reused
    t *= (1.0 / np.sqrt(np.reshape(var, (1, c, 1)).astype(np.float64) + eps)).astype(np.float32)  # x_hat
    t *= gm
    return gm.sum(axis=2), t.sum(axis=2)


def _sq_rows(a):
    """Per-row squared norms (m,) float64 of an (m, ...) array. Long float32 rows: squares summed by numpy's
    pairwise float32 summation (relative error ~1e-7 log2(n)), ~10x faster than an einsum cast to float64."""
    a = a.reshape(len(a), -1)
    if a.dtype != np.float32 or a.shape[1] < 4096:
        return np.einsum("bk,bk->b", a, a, dtype=np.float64)
    return np.square(a).sum(axis=1).astype(np.float64)


_EXACT_BN = []


def _exact_bn(ctx, eps):
    """nnabla function (x, P) -> inference batch norm of x, on CPU, bit for bit nnabla's BatchNormalization: forward
    (x - mean) gamma / sqrt(var + eps) + beta in its kernel's float32 order; backward dx = dy * iv, iv = gamma *
    (var + eps)^-0.5 computed by nnabla in the graph as its kernel does. P stacks (beta, gamma, mean, var, iv) on
    axis 0. Whole-array numpy operations and no beta/gamma gradients: nnabla's own CPU backward (a broadcasting Mul2,
    then Sub2/Mul2/Mul2/Sum for beta and gamma) is ~10x slower at 32x32."""
    if not _EXACT_BN:
        from nnabla.function import PythonFunction

        class ExactInferenceBatchNorm(PythonFunction):
            def __init__(self, ctx, eps):
                super().__init__(ctx)
                self.eps = np.float32(eps)

            @property
            def name(self):
                return "ExactInferenceBatchNorm"

            def min_outputs(self):
                return 1

            def grad_depends_output_data(self, i, o):
                return False

            def grad_depends_input_data(self, i, j):
                return i == 0 and j == 1  # dx needs iv (in P) only

            def setup_impl(self, inputs, outputs):
                outputs[0].reset_shape(inputs[0].shape, True)

            def forward_impl(self, inputs, outputs):
                f32 = np.float32  # (an array set from float64 stays float64 until a kernel asks for float32)
                x = inputs[0].data.get_data("r", dtype=f32)
                beta, gamma, mean, var, _ = inputs[1].data.get_data("r", dtype=f32)[:, None]
                y = outputs[0].data.get_data("w", dtype=f32)
                np.subtract(x, mean, out=y)  # float32 throughout, in the kernel's order
                y *= gamma
                y /= np.sqrt(var + self.eps)
                y += beta

            def backward_impl(self, inputs, outputs, propagate_down, accum):
                if not propagate_down[0]:
                    return
                f32 = np.float32
                dy = outputs[0].grad.get_data("r", dtype=f32)
                iv = inputs[1].data.get_data("r", dtype=f32)[4:5]
                if accum[0]:
                    dx = inputs[0].grad.get_data("rw", dtype=f32)
                    dx += dy * iv
                else:
                    np.multiply(dy, iv, out=inputs[0].grad.get_data("w", dtype=f32))

        _EXACT_BN.append(ExactInferenceBatchNorm)
    return _EXACT_BN[0](ctx, eps)


def _scoring_copy(loss, outputs, params):
    """A copy of the inference graph under `loss` for per-sample gradients, on the same input and label variables:
    the same functions with the same arguments, computing the same values bit for bit, except that
    - every parameter is an unlinked, no-grad view of the same data: loads show through, and nnabla computes no
      parameter gradient at all (no convolution weight gradient, no batch-norm beta/gamma pass over the whole
      activation): the per-sample ones are assembled in numpy from each layer's input and output gradient;
    - on CPU, inference batch norm is _exact_bn (same values, ~10x cheaper backward).
    Its forward+backward runs 2-3x faster than the model's (resnet23/56 at 8x8 and 32x32). Which output gradients it
    computes is set per selection (ScoringGraph._backward).

    (Replacing batch norm by the equal per-channel map x s + (beta - mean s) on a 1x1 depthwise convolution was
    faster still, but float32 rounding then differs from the model's, and a max-pooling or ReLU near-tie can flip:
    ~1 sample in 100 of a random resnet23 at 32x32 had its gradient norm off by 1e-3. Exactness won.)

    Returns (copies of `outputs`, layer records {kind, names, shapes, args, x, out, stats}) in forward order:
    x is the layer's input in the copy, out its output; stats the batch norm's (mean, var)."""
    import nnabla as nn
    import nnabla.function as NF
    import nnabla.functions as F

    name_of = {v: n for n, v in params.items()}
    ctx = nn.get_current_context()
    on_cpu = all(b.startswith("cpu") for b in ctx.backend)
    copy, consts, layers = {}, {}, []

    def get(v):
        if v in copy:
            return copy[v]
        n = name_of.get(v)
        if n is None:
            return v  # a graph input (image, label)
        if n not in consts:
            consts[n] = params[n].get_unlinked_variable(need_grad=False)
        return consts[n]

    funcs = []
    loss.visit(funcs.append)
    for f in funcs:
        kind, args = f.info.type_name, dict(f.info.args)
        names = [name_of.get(v) for v in f.inputs[1:]]
        ins = [get(v) for v in f.inputs]
        if (on_cpu and kind == "BatchNormalization" and not args.get("batch_stat") and len(ins) == 5
                and len(f.outputs) == 1 and ins[1].shape[0] == 1):
            x, beta, gamma, mean, var = ins
            iv = gamma * F.pow_scalar(F.add_scalar(var, args["eps"]), -0.5)  # the kernel's own gamma / std
            outs = [_exact_bn(ctx, args["eps"])(x, F.concatenate(beta, gamma, mean, var, iv, axis=0))]
        else:
            outs = getattr(NF, kind)(ctx, **args)(*ins, auto_forward=False)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        for o, c in zip(f.outputs, outs):
            copy[o] = c
        if any(names):
            stats = (ins[3], ins[4]) if kind == "BatchNormalization" and len(ins) == 5 else None
            layers.append({"kind": kind, "names": names, "shapes": [tuple(v.shape) for v in f.inputs[1:]],
                           "args": args, "x": ins[0], "out": outs[0], "stats": stats})
    return [copy[o] for o in outputs], layers


_GRAPH_IDS = itertools.count()


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
        with nn.parameter_scope(f"tracin_bs{batch_size}_{next(_GRAPH_IDS)}"):  # id(self) can be reused
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
        # scoring runs on a copy of this graph (see _scoring_copy); the model graph above stays as built (LoopGraph)
        (self._logits, self._loss), self._layers = _scoring_copy(self.loss, [self.logits, self.loss], self.params)
        self._logits.persistent = True
        for layer in self._layers:  # kept through a cleared forward/backward (data and gradient)
            layer["x"].persistent = True
            layer["out"].persistent = True
        self._marked = set()  # layers whose output gradient the backward computes (only ever grows)

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
        """(logits, features) of a batch, inference mode: one forward pass of the model's own graph (nnabla's
        batch-norm forward is the faster one; the copy's values are the same), buffers freed as it goes."""
        m = self._set(x)
        self.logits.forward(clear_buffer=True)
        return self.logits.d[:m].copy(), self.feats.d[:m].reshape(m, -1).copy()

    def _backward(self, x, y, names):
        """One forward and one backward of the summed loss that stops at the selected layers' outputs."""
        wanted = set(names)
        for i, layer in enumerate(self._layers):
            if i in self._marked or not any(n in wanted for n in layer["names"]):
                continue
            if layer["kind"] not in SUPPORTED:
                n = next(n for n in layer["names"] if n in wanted)
                raise CliError(f"per-sample gradients of {layer['kind']} layers ({n}) are not implemented; "
                               "use --method loop")
            # need_grad on a function's output: the backward reaches it and goes no further up (an explicit False
            # would block gradients through it, so marks are never removed; a stale one only costs time)
            layer["out"].need_grad = True
            self._marked.add(i)
        m = self._set(x, y)
        self._loss.forward(clear_no_need_grad=True)
        self._loss.backward(clear_buffer=True)
        return m

    def _blocks(self, names, m, want_sq):
        """Yield (param name, per-sample gradient block (m, ...)) or (name, squared norms (m,)) per layer."""
        wanted = set(names)
        for layer in self._layers:
            if not any(n in wanted for n in layer["names"]):
                continue
            kind = layer["kind"]
            x = layer["x"].d[:m]
            g = layer["out"].g[:m]
            if kind == "Affine":
                a = x.reshape(m, -1)
                gg = g.reshape(m, -1)
                for n, shape in zip(layer["names"], layer["shapes"]):
                    if n not in wanted:
                        continue
                    if len(shape) == 1 or n.endswith("/b"):
                        yield n, (_sq_rows(gg) if want_sq else gg)
                    elif want_sq:
                        yield n, _sq_rows(a) * _sq_rows(gg)
                    else:
                        yield n, a[:, :, None] * gg[:, None, :]
            elif kind == "Convolution":
                for n, shape in zip(layer["names"], layer["shapes"]):
                    if n not in wanted:
                        continue
                    if len(shape) == 1:  # bias
                        s = g.reshape(m, g.shape[1], -1).sum(2)
                        yield n, (_sq_rows(s) if want_sq else s)
                    elif want_sq:
                        yield n, conv_sq_norms(x, g, shape, layer["args"])
                    else:
                        yield n, conv_grads(x, g, shape, layer["args"])
            else:  # BatchNormalization, inference mode: parameters beta, gamma, mean, var
                if layer["args"].get("batch_stat"):
                    raise CliError("batch norm must run in inference mode for per-sample gradients")
                mean, var = layer["stats"]
                gb, gg = bn_grads(x, g, mean.d, var.d, layer["args"]["eps"])
                for n, blk in ((layer["names"][0], gb), (layer["names"][1], gg)):
                    if n in wanted:
                        yield n, (_sq_rows(blk) if want_sq else blk)

    def sq_norms(self, x, y, names):
        """(squared gradient norms (m,), logits (m, classes)) of a batch, batched per-sample gradients."""
        m = self._backward(x, y, names)
        total = np.zeros(m, dtype=np.float64)
        for _, sq in self._blocks(names, m, want_sq=True):
            total += sq
        return total, self._logits.d[:m].copy()

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


def self_units(ckpts, n):
    """The (checkpoint, start, end) work units of self-influence, in their fixed order; rank r of w does u % w == r."""
    return [(c, s, e) for c in ckpts for (s, e) in shards(n)]


def file_digest(path, chunk=1 << 20):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()[:12]


def unit_path(cache_dir, ckpt, start, end):
    return os.path.join(cache_dir, f"epoch{ckpt['epoch']}_{ckpt['digest']}", f"{start:09d}-{end:09d}.npz")


CLOSED_FORMS = ("last", "last_bias")  # layer selections scored from one forward pass, no backward


def compute_unit(engine, layers, names, x, y, batch_size, on_batch=None):
    """Squared gradient norms and losses of samples x (n, ...) with labels y (n,) at the loaded checkpoint."""
    n = len(x)
    sq = np.empty(n, dtype=np.float64)
    loss = np.empty(n, dtype=np.float64)
    for s in range(0, n, batch_size):
        xb, yb = x[s:s + batch_size].astype(np.float32), y[s:s + batch_size]
        if layers in CLOSED_FORMS and isinstance(engine, ScoringGraph):
            logits, feats = engine.forward(xb)
            sq[s:s + len(xb)] = (last_layer_sq_norms(logits, feats, yb) if layers == "last"
                                 else last_bias_sq_norms(logits, yb))
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
    units = self_units(ckpts, len(x))
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


# ------------------------------------------------------------------------------------- train -> test influence
#
# TracIn(z, z') = sum_i eta_i grad loss(w_i, z) . grad loss(w_i, z')   (z a training sample, z' a test sample)
#
# Work is split into units (test chunk, training shard). Inside a unit, per checkpoint, the test chunk's per-sample
# "features" (last layer: e = p - y and h; otherwise the flattened, optionally projected, gradients) are computed
# once and the training shard's are streamed batch by batch: each batch adds eta_i * (test x batch) dot products to
# a (chunk, shard) block. The unit keeps only its block's top-k (and the block itself when the full matrix is asked
# for), so n_test x n_train scores never exist unless requested. Per-unit top-k lists merge exactly into the
# global top-k (ties broken by the lower training index everywhere).

INFLUENCE_SHARD = (256, 4096)  # training samples per influence work unit: n_train / 64 within these bounds
TEST_FEATURE_BUDGET = 512 << 20  # bytes of cached test features (all checkpoints) per test chunk
MAX_TEST_CHUNK = 4096
PARAM_CACHE_BUDGET = 2 << 30  # bytes of checkpoint weights kept in memory between units


def influence_shard(n_train):
    """Training samples per influence unit: about 64 units per test chunk (enough to spread over many ranks),
    at least 256 (per-unit overhead) and at most 4096 (the per-unit top-k files stay small next to the work).
    A function of n_train only: units never depend on the number of ranks."""
    lo, hi = INFLUENCE_SHARD
    return int(min(hi, max(lo, -(-n_train // 64))))


def last_layer_features(logits, feats, labels):
    """(e, h) float64: the factors of the final affine layer's per-sample gradient h e^T (and e for the bias)."""
    return output_error(logits, labels), feats.reshape(len(feats), -1).astype(np.float64)


def last_layer_dots(test, train):
    """(T, B) last-layer gradient dot products from factors: (e_t . e_j) (h_t . h_j + 1)."""
    (et, ht), (ej, hj) = test, train
    return (et @ ej.T) * (ht @ hj.T + 1.0)


def gradient_dots(test, train):
    """(T, B) dot products of flattened (possibly projected) per-sample gradients, in float64."""
    return np.asarray(test, dtype=np.float64) @ np.asarray(train, dtype=np.float64).T


def projection_matrix(n_params, dim, seed, index):
    """Gaussian random projection (n_params, dim), entries N(0, 1/dim): E[(R^T g) . (R^T g')] = g . g'.

    Seeded by (seed, index): the same matrix for the training and the test samples of checkpoint `index`, an
    independent one for every checkpoint (so projection errors of the checkpoints average out)."""
    rng = np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, int(index)]))
    r = rng.standard_normal((n_params, dim), dtype=np.float32)
    r *= np.float32(1.0 / np.sqrt(dim))
    return r


def _select(scores, index, k, largest):
    """k best per row of scores (T, n) with training indices index (T, n): ties go to the lower index."""
    order = np.lexsort((index, -scores if largest else scores), axis=-1)[:, :k]
    return np.take_along_axis(index, order, 1), np.take_along_axis(scores, order, 1)


class RunningTopK:
    """Top-k proponents (highest scores) and opponents (lowest) of T test samples, over candidates added in any
    order and grouping: the result is always that of sorting the full rows (score, then lower training index)."""

    def __init__(self, n_rows, k):
        self.k = k
        self.prop_idx = np.zeros((n_rows, 0), dtype=np.int64)
        self.prop_score = np.zeros((n_rows, 0), dtype=np.float64)
        self.opp_idx, self.opp_score = self.prop_idx, self.prop_score

    def add_block(self, scores, index):
        """Candidates: a block of scores (T, n) for training samples index (n,)."""
        idx = np.broadcast_to(np.asarray(index, dtype=np.int64), scores.shape)
        self.add(idx, scores, idx, scores)

    def add(self, prop_idx, prop_score, opp_idx, opp_score):
        """Candidates already reduced to top-k lists (another RunningTopK's arrays)."""
        self.prop_idx, self.prop_score = _select(np.concatenate([self.prop_score, prop_score], 1),
                                                 np.concatenate([self.prop_idx, prop_idx], 1), self.k, True)
        self.opp_idx, self.opp_score = _select(np.concatenate([self.opp_score, opp_score], 1),
                                               np.concatenate([self.opp_idx, opp_idx], 1), self.k, False)

    def arrays(self):
        return {"prop_idx": self.prop_idx, "prop_score": self.prop_score,
                "opp_idx": self.opp_idx, "opp_score": self.opp_score}


def topk_full(matrix, k):
    """Reference: top-k of every row of a full (T, n) matrix by sorting it."""
    t = RunningTopK(len(matrix), k)
    t.add_block(matrix, np.arange(matrix.shape[1]))
    return t


class InfluenceFeatures:
    """Per-sample quantities whose dot products are gradient dot products, at the loaded checkpoint.

    kind 'last': closed form from one forward pass (factors e, h); kind 'grad': per-sample gradients of `names`
    (batched ScoringGraph, or the LoopGraph reference), projected to `projection_dim` when given."""

    def __init__(self, engine, kind, names, batch_size, projection_dim=None, seed=0):
        self.engine, self.kind, self.names = engine, kind, list(names)
        self.batch_size = batch_size
        self.projection_dim = projection_dim
        self.seed = seed
        self.n_params = sum(int(np.prod(self._graph().params[n].shape)) for n in self.names)
        self.proj = None
        self._weights = {}  # checkpoint path -> {param name: array}, the state engine.load(path) leaves

    def _graph(self):
        return self.engine.g if isinstance(self.engine, LoopGraph) else self.engine

    def set_checkpoint(self, index, ckpt):
        """Load checkpoint `ckpt` (number `index` in the run). Influence units reload every checkpoint, so the
        weights a load leaves in the graph's parameters are kept in memory (up to PARAM_CACHE_BUDGET)."""
        params = self._graph().params
        cached = self._weights.get(ckpt["path"])
        if cached is not None:
            for n, v in params.items():
                v.d = cached[n]
        else:
            self.engine.load(ckpt["path"])
            size = sum(v.size * 4 for v in params.values())
            if size * (len(self._weights) + 1) <= PARAM_CACHE_BUDGET:
                self._weights[ckpt["path"]] = {n: v.d.copy() for n, v in params.items()}
        if self.projection_dim:
            self.proj = projection_matrix(self.n_params, self.projection_dim, self.seed, index)

    def width(self):
        """Floats per sample of a feature vector (for memory budgets)."""
        if self.kind == "last":  # h (H,) and e (C,): the affine weight is (H, C)
            return int(sum(self._graph().params[n].shape[0] + self._graph().params[n].shape[-1]
                           for n in self.names if len(self._graph().params[n].shape) == 2) or self.n_params)
        return self.projection_dim or self.n_params

    def batch(self, x, y, want_sq=False):
        """(features of x with labels y, squared gradient norms (m,) float64 or None); x at most one batch."""
        x = x.astype(np.float32)
        if self.kind == "last":
            logits, feats = self.engine.forward(x)
            f = last_layer_features(logits, feats, y)
            return f, (last_layer_sq_norms(logits, feats, y) if want_sq else None)
        g = self.engine.grads(x, y, self.names)
        if isinstance(g, tuple):  # LoopGraph returns (grads, logits)
            g = g[0]
        g = np.asarray(g, dtype=np.float32)
        sq = np.einsum("bk,bk->b", g, g, dtype=np.float64) if want_sq else None
        if self.proj is not None:
            g = g @ self.proj
        return g, sq

    def many(self, x, y, want_sq=False):
        """features of any number of samples, computed batch by batch (batch boundaries from the start of x)."""
        parts, sqs = [], []
        for s in range(0, len(x), self.batch_size):
            f, sq = self.batch(x[s:s + self.batch_size], y[s:s + self.batch_size], want_sq)
            parts.append(f)
            sqs.append(sq)
        if self.kind == "last":
            f = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        else:
            f = np.concatenate(parts).astype(np.float64)
        return f, (np.concatenate(sqs) if want_sq else None)

    def dots(self, test, train):
        return last_layer_dots(test, train) if self.kind == "last" else gradient_dots(test, train)


def test_chunk_size(n_test, width, n_ckpts, budget=TEST_FEATURE_BUDGET):
    """Test samples per unit: their features for every checkpoint are cached in at most `budget` bytes. Depends
    only on the settings (never on the machine or the rank count), so units are the same for every run."""
    per_sample = max(1, width) * 8 * max(1, n_ckpts)
    return int(max(1, min(n_test, MAX_TEST_CHUNK, budget // per_sample)))


def influence_units(n_test, n_train, chunk, shard=None):
    """Work units (t0, t1, s, e): test samples t0:t1 against training samples s:e, test chunk major."""
    shard = shard or influence_shard(n_train)
    return [(t0, min(t0 + chunk, n_test), s, e) for t0 in range(0, n_test, chunk) for (s, e) in shards(n_train, shard)]


def influence_unit_path(cache_dir, unit):
    t0, t1, s, e = unit
    return os.path.join(cache_dir, f"test{t0:07d}-{t1:07d}", f"train{s:09d}-{e:09d}.npz")


def compute_influence_unit(featurizer, ckpts, etas, x_test, y_test, x_train, y_train, test_cache,
                           want_self=False, on_batch=None):
    """Scores of test samples x_test against training samples x_train: sum_i eta_i dots_i, accumulated in
    checkpoint order. Returns (block (T, n) float64, the test samples' self-influence (T,) or None).

    test_cache ({checkpoint index: (features, sq norms)}) holds the test chunk's features between units."""
    block = np.zeros((len(x_test), len(x_train)), dtype=np.float64)
    self_inf = np.zeros(len(x_test), dtype=np.float64) if want_self else None
    bs = featurizer.batch_size
    for i, (ckpt, eta) in enumerate(zip(ckpts, etas)):
        featurizer.set_checkpoint(i, ckpt)
        if i not in test_cache or (want_self and test_cache[i][1] is None):
            test_cache[i] = featurizer.many(x_test, y_test, want_sq=want_self)
        ft, sq = test_cache[i]
        if want_self:
            self_inf += eta * sq
        for s in range(0, len(x_train), bs):
            fj, _ = featurizer.batch(x_train[s:s + bs], y_train[s:s + bs])
            block[:, s:s + bs] += eta * featurizer.dots(ft, fj)
            if on_batch:
                on_batch(min(bs, len(x_train) - s))
    return block, self_inf


def run_influence_units(featurizer, ckpts, etas, x_test, y_test, x_train, y_train, k, chunk, cache_dir,
                        keep_block=False, rank=0, world=1, progress=None):
    """Compute every influence unit of this rank that the cache lacks; each is written atomically when done.
    Returns the number of (training sample, checkpoint) gradient evaluations done."""
    from utils import atomic_path
    units = influence_units(len(x_test), len(x_train), chunk)
    done, cache_chunk, test_cache = 0, None, {}
    for u, unit in enumerate(units):
        if u % world != rank:
            continue
        t0, t1, s, e = unit
        path = influence_unit_path(cache_dir, unit)
        if os.path.isfile(path):
            if progress:
                progress((e - s) * len(ckpts), cached=True)
            continue
        if cache_chunk != (t0, t1):
            cache_chunk, test_cache = (t0, t1), {}
        block, self_inf = compute_influence_unit(
            featurizer, ckpts, etas, x_test[t0:t1], y_test[t0:t1], x_train[s:e], y_train[s:e], test_cache,
            want_self=(s == 0), on_batch=(lambda m: progress(m, cached=False)) if progress else None)
        top = RunningTopK(t1 - t0, k)
        top.add_block(block, np.arange(s, e))
        out = top.arrays()
        if keep_block:
            out["block"] = block
        if self_inf is not None:
            out["self_influence"] = self_inf
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **out)
        done += (e - s) * len(ckpts)
    return done


def collect_influence(n_test, n_train, k, chunk, cache_dir, matrix=False):
    """Merge the cached units: ({prop_idx, prop_score, opp_idx, opp_score} (T, k), self-influence (T,),
    the full (T, n_train) matrix or None). Units are merged in a fixed order, so the result is rank-count free."""
    top = {key: [] for key in ("prop_idx", "prop_score", "opp_idx", "opp_score")}
    self_inf = np.empty(n_test, dtype=np.float64)
    full = np.empty((n_test, n_train), dtype=np.float64) if matrix else None
    units = influence_units(n_test, n_train, chunk)
    for t0 in sorted({u[0] for u in units}):
        row = [u for u in units if u[0] == t0]
        t1 = row[0][1]
        running = RunningTopK(t1 - t0, k)
        for unit in row:
            with np.load(influence_unit_path(cache_dir, unit)) as z:
                running.add(z["prop_idx"], z["prop_score"], z["opp_idx"], z["opp_score"])
                if unit[2] == 0:
                    self_inf[t0:t1] = z["self_influence"]
                if matrix:
                    full[t0:t1, unit[2]:unit[3]] = z["block"]
        for key, v in running.arrays().items():
            top[key].append(v)
    return {key: np.concatenate(v) for key, v in top.items()}, self_inf, full


def predict(engine, x):
    """Predicted classes of x at the loaded checkpoint (inference mode)."""
    g = engine.g if isinstance(engine, LoopGraph) else engine
    bs = g.batch_size
    out = [g.forward(x[s:s + bs].astype(np.float32))[0] for s in range(0, len(x), bs)]
    return np.concatenate(out).argmax(axis=1).astype(np.int64)
