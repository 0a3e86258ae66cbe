"""Pure numpy math of TracIn: softmax, closed forms of the last layer, per-sample gradients of convolution and
batch norm from a layer's input and output gradient, random projections. No nnabla, no I/O.

Last layer (affine W, b), from one forward pass: with p = softmax(logits), e = p - onehot(y) and h the penultimate
features, grad_W = h e^T and grad_b = e, so ||grad||^2 = ||e||^2 (||h||^2 + 1) (Pruthi et al., sec. 3.2) and the
gradient dot product of two samples is (e . e') (h . h' + 1). The bias alone ("last_bias") is ||e||^2.
"""
import numpy as np


def softmax(logits):
    """Row-wise softmax, in the dtype of `logits`."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_xent(logits, labels):
    """Per-sample softmax cross-entropy (natural log) in float64, labels (N,) int; log-sum-exp, so a tiny
    probability gives a large finite loss rather than log(0)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    return logz - z[np.arange(len(z)), labels]


def output_error(probs, labels):
    """e = p - onehot(labels) (float64): the cross-entropy's gradient with respect to the logits."""
    e = np.array(probs, dtype=np.float64)
    e[np.arange(len(e)), labels] -= 1.0
    return e


def last_layer_sq_norms(probs, feats, labels):
    """||grad_{W,b} loss||^2 of the final affine layer per sample: ||p - y||^2 (||h||^2 + 1)."""
    e = output_error(probs, labels)
    h = feats.reshape(len(feats), -1).astype(np.float64)
    return (e * e).sum(1) * ((h * h).sum(1) + 1.0)


def last_bias_sq_norms(probs, labels):
    """||grad_b loss||^2 of the final affine bias alone: ||p - y||^2 (the label-dependent factor of the last-layer
    closed form, without the label-agnostic ||h||^2 + 1)."""
    e = output_error(probs, labels)
    return (e * e).sum(1)


def last_layer_features(probs, feats, labels):
    """(e, h) float64: the factors of the final affine layer's per-sample gradient h e^T (and e for the bias)."""
    return output_error(probs, labels), feats.reshape(len(feats), -1).astype(np.float64)


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


# ---------------------------------------------------------------------------------- per-sample layer gradients

def im2col(x, kernel, pad, stride, dilation):
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


def _conv_operands(x, g, w_shape, args):
    if args.get("group", 1) != 1 or args.get("channel_last", False):
        raise ValueError("per-sample gradients support ungrouped NCHW convolutions only; use method='loop'")
    cols = im2col(x, w_shape[2:], args["pad"], args["stride"], args["dilation"])
    return cols, g.reshape(g.shape[0], g.shape[1], -1)


def conv_grads(x, g, w_shape, args):
    """Per-sample convolution weight gradients (B, *w_shape) from input x and output gradient g."""
    cols, gm = _conv_operands(x, g, w_shape, args)
    return np.matmul(gm, cols.transpose(0, 2, 1)).reshape((len(x),) + tuple(w_shape))


def conv_sq_norms(x, g, w_shape, args):
    """||per-sample convolution weight gradient||^2 without always forming it: G (Co, L), U (K, L) per sample,
    ||G U^T||^2 = sum((G^T G) * (U^T U)) costs (Co + K) L^2 against Co K L for the direct product."""
    cols, gm = _conv_operands(x, g, w_shape, args)
    co, k, length = gm.shape[1], cols.shape[1], gm.shape[2]
    if (co + k) * length < co * k:
        gg = np.matmul(gm.transpose(0, 2, 1), gm)
        uu = np.matmul(cols.transpose(0, 2, 1), cols)
        return np.einsum("bij,bij->b", gg, uu, dtype=np.float64)
    return sq_rows(np.matmul(gm, cols.transpose(0, 2, 1)))


def bn_grads(x, g, mean, var, eps):
    """Per-sample (beta, gamma) gradients (B, C) of inference-mode batch norm y = gamma x_hat + beta."""
    b, c = g.shape[:2]
    gm = g.reshape(b, c, -1)
    t = np.subtract(x.reshape(b, c, -1), np.reshape(mean, (1, c, 1)), dtype=np.float32)  # one temporary, reused
    t *= (1.0 / np.sqrt(np.reshape(var, (1, c, 1)).astype(np.float64) + eps)).astype(np.float32)  # x_hat
    t *= gm
    return gm.sum(axis=2), t.sum(axis=2)


def sq_rows(a):
    """Per-row squared norms (m,) float64 of an (m, ...) array. Long float32 rows: squares summed by numpy's
    pairwise float32 summation (relative error ~1e-7 log2(n)), ~10x faster than an einsum cast to float64."""
    a = a.reshape(len(a), -1)
    if a.dtype != np.float32 or a.shape[1] < 4096:
        return np.einsum("bk,bk->b", a, a, dtype=np.float64)
    return np.square(a).sum(axis=1).astype(np.float64)
