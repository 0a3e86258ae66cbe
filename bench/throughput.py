"""Scoring throughput and peak memory against the model's own forward and forward+backward (`make bench`).

    python -m bench.throughput [--models resnet23,resnet56] [--sizes 8,32] [--repeats 5] [--samples 8:512,32:64]
                               [--loop-samples 8:64,32:8] [--batch-size 8:64,32:32] [--no-memory]

For every model and input size (1x8x8 and 3x32x32), with random weights (fresh initialisation: batch-norm running
mean 0, variance 1), in inference mode, samples per second of
  forward        the model's own graph, batched forward (the limit for `--layers last`)
  fwd+bwd        the model's own graph, batched forward + backward of the summed loss with every parameter's
                 gradient (a training step without the update; the yardstick for `--layers all`)
  last           scorer, --layers last  --method batched   (compute_unit: one forward + closed form)
  last-loop      scorer, --layers last  --method loop      (the original: batch size 1, forward + backward, read
                 param.g; only the affine parameters need a gradient, yet nnabla still backpropagates through every
                 layer, as in the original)
  all            scorer, --layers all   --method batched   (every trainable parameter, batch norm included)
  all-loop       scorer, --layers all   --method loop
and the ratios last/forward (goal >= 0.95), last/last-loop (>= 50), all/fwd+bwd (>= 1), all/all-loop (> 1).

Timing: one process per model and size runs all six, interleaved round-robin `--repeats` times (so a change of
machine load hits them alike); rates are medians over rounds, ratios medians of the per-round ratios. Loops run on
fewer samples (they are slow): samples/s is comparable, wall time is not. `maxrel` is the largest relative
difference of the batched squared norms from the loop's on the loop's samples (exactness, not speed).

Peak memory: nnabla's arrays live in C++ (tracemalloc cannot see them), so each (model, size, method) runs once more
in a fresh process and reports its peak resident set size (ru_maxrss); `+MB` is the peak minus the resident size
after imports and graph construction (interpreter, libraries and weights), i.e. what the computation adds. A last
table runs `all` batched at several batch sizes and sample counts: memory grows with the batch, not with N.
Speed thresholds are reported, never asserted.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = ("forward", "fwd+bwd", "last", "last-loop", "all", "all-loop")
GOALS = (("last/forward", "last", "forward", 0.95, ">="), ("last/last-loop", "last", "last-loop", 50.0, ">="),
         ("all/fwd+bwd", "all", "fwd+bwd", 1.0, ">="), ("all/all-loop", "all", "all-loop", 1.0, ">"))


def per_size(text, cast=int):
    """'8:512,32:64' -> {8: 512, 32: 64}; a bare number applies to every size."""
    out = {}
    for part in str(text).split(","):
        if ":" in part:
            k, v = part.split(":")
            out[int(k)] = cast(v)
        else:
            out[None] = cast(part)
    return out


def pick(table, size):
    return table.get(size, table.get(None))


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


# ------------------------------------------------------------------------------------------------------ worker

class Bench:
    """One model at one input size: the model's graph, the scorer's batched graph and the loop reference."""

    def __init__(self, model, size, batch_size, nmaps, context, need_loop=True):
        import numpy as np

        import models
        from tracin.context import quiet_nnabla, set_context
        from tracin.graphs import LoopGraph, ScoringGraph
        quiet_nnabla()
        set_context(context)
        self.np = np
        c = 1 if size == 8 else 3
        self.cfg = models.model_config(model, 10, (c, size, size), nmaps if model == "resnet23" else None)
        self.bs = batch_size
        self.g = ScoringGraph(self.cfg, batch_size)  # its model graph (g.logits, g.loss) is the yardstick
        self.loop = LoopGraph(self.cfg) if need_loop else None
        if self.loop is not None:
            for k, p in self.g.params.items():  # the same weights everywhere
                self.loop.g.params[k].d = p.d
        self.all_names = self.g.select("all")
        self.last_names = self.g.select("last")
        rng = np.random.RandomState(0)
        self.rng = rng
        self.shape = (c, size, size)

    def data(self, n):
        x = self.rng.randn(n, *self.shape).astype(self.np.float32)
        y = self.rng.randint(0, 10, n)
        return x, y

    def run(self, method, x, y):
        """Process all of x with `method`; returns squared norms for scorer methods, else None."""
        from tracin.job_self import score_batch
        from tracin.layers import scoring
        g, bs = self.g, self.bs
        if method == "forward":
            for s in range(0, len(x), bs):
                g.x.d = x[s:s + bs]
                g.logits.forward(clear_buffer=True)
                g.logits.d  # the result on the host, as the scorer reads it
            return None
        if method == "fwd+bwd":
            for p in g.params.values():
                p.need_grad = True
            for k in g.params:  # running statistics are not trainable
                if k not in g.trainable:
                    g.params[k].need_grad = False
            for s in range(0, len(x), bs):
                g.x.d = x[s:s + bs]
                g.y.d = y[s:s + bs].reshape(-1, 1)
                g.loss.forward(clear_no_need_grad=True)
                g.loss.backward(clear_buffer=True)
            return None
        layers = method.split("-")[0]
        names = self.last_names if layers == "last" else self.all_names
        loop = method.endswith("loop")
        how = scoring(layers, "loop" if loop else "batched")
        graph = self.loop if loop else g
        return self.np.concatenate([score_batch(graph, how, names, x[s:s + bs], y[s:s + bs])[0]
                                    for s in range(0, len(x), bs)])


def worker_timing(a):
    np = __import__("numpy")
    b = Bench(a.model, a.size, a.batch_size, a.nmaps, a.context)
    xb, yb = b.data(a.samples)
    xl, yl = xb[:a.loop_samples], yb[:a.loop_samples]
    for m in METHODS:  # warm-up: every buffer allocated once
        b.run(m, xb[:b.bs] if "loop" not in m else xl[:2], yb[:b.bs] if "loop" not in m else yl[:2])
    times = {m: [] for m in METHODS}
    for _ in range(a.repeats):
        for m in METHODS:
            x, y = (xl, yl) if m.endswith("loop") else (xb, yb)
            t = time.perf_counter()
            b.run(m, x, y)
            times[m].append(len(x) / (time.perf_counter() - t))
    # exactness on the loop's samples: batched squared norms against the loop's
    maxrel = {}
    for layers in ("last", "all"):
        sb = b.run(layers, xl, yl)
        sl = b.run(layers + "-loop", xl, yl)
        maxrel[layers] = float(np.max(np.abs(sb - sl) / np.abs(sl)))
    return {"rates": times, "maxrel": maxrel}


def worker_memory(a):
    b = Bench(a.model, a.size, a.batch_size, a.nmaps, a.context, need_loop=a.method.endswith("loop"))
    n = a.samples if not a.method.endswith("loop") else a.loop_samples
    x, y = b.data(n)
    base = rss_mb()
    b.run(a.method, x, y)
    return {"base": base, "peak": peak_mb()}


# ------------------------------------------------------------------------------------------------------ driver

def call(a, mode, **kw):
    args = [sys.executable, "-m", "bench.throughput", "--worker", mode, "--nmaps", str(a.nmaps),
            "--context", a.context, "--repeats", str(a.repeats)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(args)}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt_rate(v):
    return f"{v:8.1f}" if v < 1000 else f"{v:8.0f}"


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="resnet23,resnet56")
    ap.add_argument("--sizes", default="8,32", help="input sizes: 8 (1x8x8) and/or 32 (3x32x32)")
    ap.add_argument("--nmaps", type=int, default=64, help="resnet23 width (default 64, as the original)")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds; rows are medians (default 5)")
    ap.add_argument("--samples", default="8:512,32:64", help="samples per timing round for batched methods")
    ap.add_argument("--loop-samples", default="8:64,32:8", help="samples per timing round for the loops")
    ap.add_argument("--batch-size", default="8:64,32:32", help="batch size of the batched methods")
    ap.add_argument("--mem-batches", default="16,32,64", help="batch sizes of the memory scaling table")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak memory measurements")
    ap.add_argument("--context", default="cpu", help="nnabla context (cpu; cudnn untested here)")
    ap.add_argument("--worker", choices=("timing", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    return ap


def measure(a, models_, sizes):
    """[(model, size, settings, median rates, maxrel, memory, all rates)], one worker process per measurement."""
    samples, loop_samples, batch = per_size(a.samples), per_size(a.loop_samples), per_size(a.batch_size)
    results = []
    for model in models_:
        for size in sizes:
            kw = dict(model=model, size=size, samples=pick(samples, size), loop_samples=pick(loop_samples, size),
                      batch_size=pick(batch, size))
            r = call(a, "timing", **kw)
            med = {m: statistics.median(v) for m, v in r["rates"].items()}
            mem = {} if a.no_memory else {m: call(a, "memory", method=m, **kw) for m in METHODS}
            results.append((model, size, kw, med, r["maxrel"], mem, r["rates"]))
    return results


def print_rates(results):
    print()
    print("samples/s (median) and peak RSS MB (+MB over the process after graph construction)")
    print(f"{'model':9s} {'input':7s} {'batch':>5s} " + " ".join(f"{m:>17s}" for m in METHODS))
    for model, size, kw, med, _, mem, _ in results:
        cells = []
        for m in METHODS:
            c = fmt_rate(med[m])
            if mem:
                c += f" {mem[m]['peak']:4.0f}+{mem[m]['peak'] - mem[m]['base']:<3.0f}"
            cells.append(f"{c:>17s}")
        shape = "1x8x8" if size == 8 else "3x32x32"
        print(f"{model:9s} {shape:7s} {kw['batch_size']:5d} " + " ".join(cells))


def print_ratios(results):
    print()
    print("ratios (goal)          " + "  ".join(f"{g[0]} ({g[4]}{g[3]:g})" for g in GOALS)
          + "   maxrel last / all")
    for model, size, kw, med, maxrel, _, rates in results:
        cells = []
        for name, num, den, goal, op in GOALS:
            v = statistics.median(p / q for p, q in zip(rates[num], rates[den]))  # paired: same round
            ok = v >= goal if op == ">=" else v > goal
            cells.append(f"{v:{len(name) + len(op) + len(f'{goal:g}') - 1}.2f} {'met' if ok else 'NOT'}")
        shape = "1x8x8" if size == 8 else "3x32x32"
        print(f"{model:9s} {shape:7s}       " + "  ".join(cells)
              + f"   {maxrel['last']:.1e} / {maxrel['all']:.1e}")


def print_memory_scaling(a, models_, sizes):
    print()
    print("peak RSS of `all` batched vs batch size and number of samples (MB; +MB over the built process)")
    for model in models_:
        size = 32 if 32 in sizes else sizes[0]
        cells = []
        batches = [int(v) for v in a.mem_batches.split(",") if v]
        runs = [(bs, 2 * bs) for bs in batches] + [(batches[0], 8 * batches[0])]
        for bs, n in runs:
            r = call(a, "memory", model=model, size=size, samples=n, loop_samples=1, batch_size=bs, method="all")
            cells.append(f"bs {bs} N {n}: {r['peak']:.0f} (+{r['peak'] - r['base']:.0f})")
        print(f"{model:9s} {size}x{size}  " + "  ".join(cells))


def main(argv=None):
    a = parser().parse_args(argv)
    if a.worker:
        a.samples, a.loop_samples, a.batch_size = int(a.samples), int(a.loop_samples), int(a.batch_size)
        out = worker_timing(a) if a.worker == "timing" else worker_memory(a)
        print(json.dumps(out))
        return 0
    import nnabla
    import numpy

    import tracin  # noqa: F401  (before nnabla: quiets its import-time INFO line)
    models_ = [m for m in a.models.split(",") if m]
    sizes = [int(s) for s in a.sizes.split(",") if s]
    print(f"# nnabla {nnabla.__version__} ({a.context}), numpy {numpy.__version__}, {os.cpu_count()} cpus, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; resnet23 nmaps {a.nmaps}; "
          f"median of {a.repeats} rounds")
    t0 = time.time()
    results = measure(a, models_, sizes)
    print_rates(results)
    print_ratios(results)
    if not a.no_memory:
        print_memory_scaling(a, models_, sizes)
    print(f"\n# {time.time() - t0:.0f} s; load average now {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
