"""The scoring copy of a model's inference graph: the same functions computing the same values bit for bit, with
constant parameters (nnabla computes no parameter gradient) and, on CPU, a cheaper exact inference batch norm.
tracin.graphs.ScoringGraph differentiates it to get each selected layer's input and output gradient."""
import numpy as np

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


def scoring_copy(loss, outputs, params):
    """A copy of the inference graph under `loss` for per-sample gradients, on the same input and label variables:
    the same functions with the same arguments, computing the same values bit for bit, except that
    - every parameter is an unlinked, no-grad view of the same data: loads show through, and nnabla computes no
      parameter gradient at all (no convolution weight gradient, no batch-norm beta/gamma pass over the whole
      activation): the per-sample ones are assembled in numpy from each layer's input and output gradient;
    - on CPU, inference batch norm is _exact_bn (same values, ~10x cheaper backward).
    Its forward+backward runs 2-3x faster than the model's (resnet23/56 at 8x8 and 32x32). Which output gradients it
    computes is set per selection (tracin.graphs.ScoringGraph._backward).

    (Replacing batch norm by the equal per-channel map x s + (beta - mean s) on a 1x1 depthwise convolution was
    faster still, but float32 rounding then differs from the model's, and a max-pooling or ReLU near-tie can flip:
    ~1 sample in 100 of a random resnet23 at 32x32 had its gradient norm off by 1e-3. Exactness won.)

    Returns (copies of `outputs`, layer records {type, names, shapes, args, x, out, stats}) in forward order:
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
        ftype, args = f.info.type_name, dict(f.info.args)
        names = [name_of.get(v) for v in f.inputs[1:]]
        ins = [get(v) for v in f.inputs]
        if (on_cpu and ftype == "BatchNormalization" and not args.get("batch_stat") and len(ins) == 5
                and len(f.outputs) == 1 and ins[1].shape[0] == 1):
            x, beta, gamma, mean, var = ins
            iv = gamma * F.pow_scalar(F.add_scalar(var, args["eps"]), -0.5)  # the kernel's own gamma / std
            outs = [_exact_bn(ctx, args["eps"])(x, F.concatenate(beta, gamma, mean, var, iv, axis=0))]
        else:
            outs = getattr(NF, ftype)(ctx, **args)(*ins, auto_forward=False)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        for o, c in zip(f.outputs, outs):
            copy[o] = c
        if any(names):
            stats = (ins[3], ins[4]) if ftype == "BatchNormalization" and len(ins) == 5 else None
            layers.append({"type": ftype, "names": names, "shapes": [tuple(v.shape) for v in f.inputs[1:]],
                           "args": args, "x": ins[0], "out": outs[0], "stats": stats})
    return [copy[o] for o in outputs], layers
