"""nnabla graphs for per-sample gradients, behind one interface (params, trainable, batch_size, load, forward,
grads, sq_norms):

- ScoringGraph: batched. One batched backward of the summed loss keeps every selected layer's input and output
  gradient; per-sample parameter gradients are then assembled in numpy (tracin.maths): affine = outer products,
  convolution = output-gradient x im2col(input) products, inference batch norm = per-channel sums of g * x_hat
  (gamma) and g (beta). Memory is bounded by the batch (never N x parameters).
- LoopGraph: the original example's method, as a reference: batch size 1, backprop, read param.g.

The loss is the softmax cross-entropy of the model in inference mode (batch-norm running statistics, no
augmentation) on the sample's label; `select_params` (tracin.layers) names the parameters ("layers") gradients are
taken of.
"""
import itertools

import numpy as np

from . import defaults, network
from .checkpoints import read_fitting
from .errors import InputError
from .graph_copy import scoring_copy
from .layers import (
    HEAD_RELATIVE,
    LAST_BIAS,
    check_inference_graph,
    find_head,
    select_params,
)
from .maths import bn_grads, conv_grads, conv_sq_norms, sq_rows

SUPPORTED = ("Convolution", "Affine", "BatchNormalization")  # layer types of batched per-sample gradients
WEIGHT_CACHE_BYTES = 1 << 30  # checkpoint weights a graph keeps in memory, so each file is read once

_GRAPH_IDS = itertools.count()


def _outputs(out, batch_size, what):
    """(logits, features or None) of a builder's return value; InputError when it is not (batch, classes) logits."""
    import nnabla as nn
    logits, feats = (out[0], out[1]) if isinstance(out, (tuple, list)) and len(out) == 2 else (out, None)
    if not isinstance(logits, nn.Variable):
        raise InputError(f"{what} returned {type(out).__name__}, not an nnabla Variable of logits", arg="network")
    if logits.ndim != 2 or logits.shape[0] != batch_size:
        raise InputError(f"{what} returned logits of shape {tuple(logits.shape)} for a batch of {batch_size}; "
                         "expected (batch, classes)", arg="network")
    if logits.parent is not None and logits.parent.info.type_name == "Softmax":
        raise InputError(f"{what} returns probabilities (a Softmax); return the logits before it", arg="network")
    return logits, feats


class ScoringGraph:
    """One inference-mode graph for a fixed batch size (the last batch is padded): logits, features, the summed
    loss, and the layer functions whose inputs and output gradients give per-sample parameter gradients."""

    def __init__(self, model_cfg, batch_size, builder=None):
        """`builder(image, test) -> logits or (logits, features)` (tracin.network); default: the manifest's. Without
        features, those of the closed forms are the input of the final affine layer (`head`)."""
        import nnabla as nn
        import nnabla.functions as F

        builder = builder or network.from_config(model_cfg)
        what = getattr(builder, "tracin_name", "the network")
        self.batch_size = batch_size
        shape = (batch_size,) + tuple(model_cfg["input_shape"])
        with nn.parameter_scope(f"tracin_bs{batch_size}_{next(_GRAPH_IDS)}"):  # id(self) can be reused
            # a private scope: graphs of several batch sizes, or a training run in the same process, never share
            self.x = nn.Variable(shape)
            self.y = nn.Variable((batch_size, 1))
            self.logits, self.feats = _outputs(builder(self.x, True), batch_size, what)
            # summed (not averaged) so that each sample's output gradient is its own loss's gradient
            self.loss = F.sum(F.softmax_cross_entropy(self.logits, self.y))
            self.params = nn.get_parameters(grad_only=False)
            self.trainable = [k for k, v in nn.get_parameters(grad_only=True).items()]
        if not self.trainable:
            raise InputError(f"{what} creates no trainable parameters: build its layers with "
                             "nnabla.parametric_functions", arg="network")
        check_inference_graph(self.loss, what)
        self.n_classes = int(self.logits.shape[1])
        head, self.head = find_head(self.logits, self.params)
        self.head_from = self.logits.parent.info.type_name if self.logits.parent is not None else "the input"
        if self.feats is None and head is not None:
            self.feats = head.inputs[0]
        if self.feats is not None:
            self.feats.persistent = True
        self.logits.persistent = True
        # scoring runs on a copy of this graph (tracin.graph_copy); the model graph above stays as built (LoopGraph)
        (self._logits, self._loss), self._layers = scoring_copy(self.loss, [self.logits, self.loss], self.params)
        self._logits.persistent = True
        for layer in self._layers:  # kept through a cleared forward/backward (data and gradient)
            layer["x"].persistent = True
            layer["out"].persistent = True
        self._marked = set()  # layers whose output gradient the backward computes (only ever grows)
        self._weights = {}  # checkpoint path -> (SHA-1, {name: array}): see load

    def select(self, spec):
        """select_params of this network: 'last', 'last_bias' and 'last_block' refer to the affine layer whose
        output the logits are (InputError when there is none, or 'last_bias' without a bias)."""
        if spec in HEAD_RELATIVE:
            if self.head is None:
                raise InputError(f"layers '{spec}' needs logits computed by an affine layer, but the network's come "
                                 f"from {self.head_from}: use layers 'all' or parameter-name patterns",
                                 arg="layers")
            if spec == LAST_BIAS and len(self.head) < 2:
                raise InputError(f"layers 'last_bias': the final affine layer ({self.head[0]}) has no bias; use "
                                 "layers 'last'", arg="layers")
        return select_params(self.trainable, spec, last=self.head)

    def check_supported(self, names):
        """InputError, before any work, when a selected parameter belongs to a layer whose per-sample gradients
        are not implemented (tracin.maths) or is shared by several layers."""
        wanted, seen = set(names), {}
        for layer in self._layers:
            mine = [n for n in layer["names"] if n in wanted]
            if not mine:
                continue
            ftype, args = layer["type"], layer["args"]
            problem = None
            if ftype not in SUPPORTED:
                problem = f"{ftype} layers are not supported (supported: {', '.join(SUPPORTED)})"
            elif ftype == "Affine" and args.get("base_axis", 1) != 1:
                problem = f"an affine layer with base_axis {args['base_axis']} is not supported"
            elif ftype == "Convolution" and (args.get("group", 1) != 1 or args.get("channel_last")):
                problem = "grouped or channel-last convolutions are not supported"
            for n in mine:
                if n in seen:
                    problem = problem or f"it is shared by two layers ({seen[n]} and {ftype})"
                seen[n] = ftype
            if problem:
                raise InputError(f"per-sample gradients of {mine[0]}: {problem}; leave it out of layers (e.g. "
                                 "parameter-name patterns) or use method='loop'", arg="layers")

    def load(self, path, sha1=None):
        """Copy the checkpoint file `path` (checked against its SHA-1 `sha1` when given) into the graph's parameters
        (InputError if it does not fit); returns the file's SHA-1. The file is read and hashed once: the weights it
        leaves are kept in memory (up to WEIGHT_CACHE_BYTES) for the next load of the same path."""
        digest, arrays = self._weights.get(path) or read_fitting(path, self.params, sha1)
        for n, v in self.params.items():
            v.d = arrays[n]  # a copy into nnabla's memory: the arrays stay as read
        size = sum(a.nbytes for a in arrays.values())
        if path not in self._weights and size * (len(self._weights) + 1) <= WEIGHT_CACHE_BYTES:
            self._weights[path] = (digest, arrays)
        return digest

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
        feats = None if self.feats is None else self.feats.d[:m].reshape(m, -1).copy()
        return self.logits.d[:m].copy(), feats

    def _backward(self, x, y, names):
        """One forward and one backward of the summed loss that stops at the selected layers' outputs."""
        wanted = set(names)
        for i, layer in enumerate(self._layers):
            if i in self._marked or not any(n in wanted for n in layer["names"]):
                continue
            if layer["type"] not in SUPPORTED:
                n = next(n for n in layer["names"] if n in wanted)
                raise InputError(f"per-sample gradients of {layer['type']} layers ({n}) are not implemented; "
                                 "use method='loop'")
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
            ftype = layer["type"]
            x = layer["x"].d[:m]
            g = layer["out"].g[:m]
            if ftype == "Affine":
                a = x.reshape(m, -1)
                gg = g.reshape(m, -1)
                for n, shape in zip(layer["names"], layer["shapes"]):
                    if n not in wanted:
                        continue
                    if len(shape) == 1 or n.endswith("/b"):
                        yield n, (sq_rows(gg) if want_sq else gg)
                    elif want_sq:
                        yield n, sq_rows(a) * sq_rows(gg)
                    else:
                        yield n, a[:, :, None] * gg[:, None, :]
            elif ftype == "Convolution":
                for n, shape in zip(layer["names"], layer["shapes"]):
                    if n not in wanted:
                        continue
                    if len(shape) == 1:  # bias
                        s = g.reshape(m, g.shape[1], -1).sum(2)
                        yield n, (sq_rows(s) if want_sq else s)
                    elif want_sq:
                        yield n, conv_sq_norms(x, g, shape, layer["args"])
                    else:
                        yield n, conv_grads(x, g, shape, layer["args"])
            else:  # BatchNormalization, inference mode: parameters beta, gamma, mean, var
                if layer["args"].get("batch_stat"):
                    raise InputError("batch norm must run in inference mode for per-sample gradients")
                mean, var = layer["stats"]
                gb, gg = bn_grads(x, g, mean.d, var.d, layer["args"]["eps"])
                for n, blk in ((layer["names"][0], gb), (layer["names"][1], gg)):
                    if n in wanted:
                        yield n, (sq_rows(blk) if want_sq else blk)

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
        # a parameter the loss does not depend on has a zero gradient
        return np.concatenate([blocks[n].reshape(m, -1).astype(np.float32) if n in blocks else
                               np.zeros((m, self.params[n].size), np.float32) for n in names], axis=1)


class LoopGraph:
    """The original example's method, as a reference: batch size 1, backprop, read param.g. The same interface as
    ScoringGraph (its parameters are those of a batch-size-1 ScoringGraph)."""

    def __init__(self, model_cfg, builder=None):
        self.g = ScoringGraph(model_cfg, 1, builder)
        self.params, self.trainable, self.batch_size = self.g.params, self.g.trainable, 1
        self.head, self.n_classes, self.select = self.g.head, self.g.n_classes, self.g.select

    def check_supported(self, names):
        """Backpropagation handles every layer type."""

    def load(self, path, sha1=None):
        return self.g.load(path, sha1)

    def forward(self, x):
        """(logits, features) of any number of samples, one at a time."""
        out = [self.g.forward(x[i:i + 1]) for i in range(len(x))]
        feats = None if self.g.feats is None else np.concatenate([o[1] for o in out])
        return np.concatenate([o[0] for o in out]), feats

    def _loop(self, x, y, names):
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

    def grads(self, x, y, names):
        """Per-sample gradients of the selected parameters, flattened in `names` order: (m, P) float32."""
        return self._loop(x, y, names)[0]

    def sq_norms(self, x, y, names):
        """(squared gradient norms (m,), logits (m, classes))."""
        gr, logits = self._loop(x, y, names)
        return np.einsum("bk,bk->b", gr, gr, dtype=np.float64), logits


def make_graph(model_cfg, method=defaults.METHOD, batch_size=defaults.BATCH_SIZE, builder=None):
    """The graph of `method`: 'batched' (ScoringGraph) or 'loop' (LoopGraph, the original's reference)."""
    if method == "batched":
        return ScoringGraph(model_cfg, batch_size, builder)
    if method == "loop":
        return LoopGraph(model_cfg, builder)
    raise InputError(f"unknown method '{method}': use 'batched' or 'loop'")


def predict(graph, x):
    """Predicted classes (n,) int64 of x at the loaded checkpoint (inference mode)."""
    bs = graph.batch_size
    out = [graph.forward(x[s:s + bs].astype(np.float32))[0] for s in range(0, len(x), bs)]
    return np.concatenate(out).argmax(axis=1).astype(np.int64)
