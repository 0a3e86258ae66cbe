"""Whole-process self-influence scoring against the model's own batched forward pass, on a train.py run.

    python train.py --dataset digits --output /tmp/run/data --model_save_path /tmp/run/ckpt    (1-3 min)
    python -m bench.whole_scoring --input /tmp/run/data --checkpoint /tmp/run/ckpt [--layers last] [--repeats 5]

`--layers last` (and last_bias) is one batched forward pass per checkpoint and sample, so the model's forward over
the same samples and checkpoints bounds it; the goal is >= 0.95 of it. Each round times, in turn:
  forward   this process: the model's own inference graph, batched forward of every sample at every selected
            checkpoint: the limit; reported alone, and with the checkpoints' nn.load_parameters (+load), the
            model evaluated at every checkpoint as nnabla users run it
  main      this process: calculate_score.main() from its arguments to its last file (everything but starting
            Python and importing the scripts): validation, manifest, checkpoints read and hashed, graph
            building, scoring, cache units and outputs written
  process   `python calculate_score.py ...` in a fresh process, wall time (adds interpreter start and imports)
Ratios are forward time / scorer time per round (same round: a change of machine load hits both alike); the
printed values are medians over rounds, of wall time and of CPU time (user + system: on a machine other jobs
load, CPU time is the steadier measure; wall time adds waiting for the disk). Speed is reported, never asserted.
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference(ckpts, x, batch_size):
    """The model evaluated as nnabla runs it, in this process: its inference graph built once, then per checkpoint
    nn.load_parameters and a batched forward of x. (wall, cpu) seconds of the forward passes alone and of the
    loads alone."""
    import nnabla as nn
    import numpy as np

    from tracin import network
    bs = min(batch_size, len(x))
    image = nn.Variable((bs,) + x.shape[1:])
    out = (ckpts.builder or network.from_config(ckpts.model))(image, True)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    fwd, load = [0.0, 0.0], [0.0, 0.0]

    def timed(acc, fn):
        t, c = time.perf_counter(), time.process_time()
        fn()
        acc[0] += time.perf_counter() - t
        acc[1] += time.process_time() - c

    def forward_all():
        for s in range(0, len(x), bs):
            xb = x[s:s + bs].astype(np.float32)
            image.d[:len(xb)] = xb
            logits.forward(clear_buffer=True)
            logits.d.copy()
    for c in ckpts:
        timed(load, lambda: nn.load_parameters(c.path))
        timed(fwd, forward_all)
    return fwd, load


def run_process(repo, flags, env):
    """(wall, cpu) seconds of `python calculate_score.py flags` run from `repo`."""
    t, c0 = time.perf_counter(), children_cpu()
    done = subprocess.run([sys.executable, "calculate_score.py", *flags], cwd=repo, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return time.perf_counter() - t, children_cpu() - c0


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def summary(rows, compare):
    """Median ratios (reference time / scorer time, per round) for wall and CPU time."""
    lines = []
    for ref, j in (("forward", 0), ("forward+load", 3)):
        for what, i in (("main", 1), ("process", 2)) + ((("compare process", 4),) if compare else ()):
            wall = statistics.median(row[j][0] / row[i][0] for row in rows)
            cpu = statistics.median(row[j][1] / row[i][1] for row in rows)
            lines.append(f"{ref} / {what}: wall {wall:.3f}x, cpu {cpu:.3f}x (goal >= 0.95)")
    return lines


def write_results(a, argv, n, k, rows, lines, load_before):
    """The rounds and medians as markdown (the numbers docs quote come from this file)."""
    cmd = "python -m bench.whole_scoring " + " ".join(argv if argv is not None else sys.argv[1:])
    out = ["# Whole-process scoring vs the model's forward pass", "", f"`{cmd}`", "",
           f"{n} samples x {k} checkpoints, layers {a.layers}, batch {a.batch_size}; load average before "
           f"{' '.join(f'{v:.2f}' for v in load_before)}, after {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
           f"on {os.cpu_count()} cpus.", "",
           "| round | forward wall / cpu s | +load wall / cpu s | main wall / cpu s | process wall / cpu s |"
           + (" compare process wall / cpu s |" if a.compare else ""),
           "|---|---|---|---|---|" + ("---|" if a.compare else "")]
    for r, (fwd, inproc, process, ref, other) in enumerate(rows):
        cells = [fwd, ref, inproc, process] + ([other] if other else [])
        out.append(f"| {r} | " + " | ".join(f"{c[0]:.2f} / {c[1]:.2f}" for c in cells) + " |")
    out += [""] + [f"- {line}" for line in lines]
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    with open(a.results, "w") as f:
        f.write("\n".join(out) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="train.py's --output (x_train.npy, y_shuffle_train.npy)")
    ap.add_argument("--checkpoint", required=True, help="train.py's --model_save_path")
    ap.add_argument("--layers", default="last")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", default=os.path.join(REPO, "bench", "results", "whole_scoring.md"),
                    help="markdown file the rounds and medians are written to")
    ap.add_argument("--compare", default=None,
                    help="another checkout of the project: its calculate_score.py is timed too (process), each round")
    a = ap.parse_args(argv)
    import numpy as np

    import calculate_score
    import tracin
    from tracin.context import quiet_nnabla
    quiet_nnabla()
    x = np.load(os.path.join(a.input, "x_train.npy"))
    ckpts = tracin.load_checkpoints(a.checkpoint)
    work = tempfile.mkdtemp(prefix="whole_scoring_")
    flags = ["--input", a.input, "--checkpoint", a.checkpoint, "--layers", a.layers, "--batch_size",
             str(a.batch_size), "-c", "cpu"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    print(f"# {len(x)} samples x {len(ckpts)} checkpoints, layers {a.layers}, batch {a.batch_size}; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rows = []
    load_before = os.getloadavg()
    try:
        for r in range(a.repeats):
            out = os.path.join(work, f"r{r}")
            process = run_process(REPO, flags + ["--output", out + "p"], env)
            other = run_process(a.compare, flags + ["--output", out + "c"], env) if a.compare else None
            fwd, load = reference(ckpts, x, a.batch_size)
            t, c0 = time.perf_counter(), time.process_time()
            calculate_score.main(flags + ["--output", out + "m"])
            inproc = (time.perf_counter() - t, time.process_time() - c0)
            rows.append((fwd, inproc, process, [f + g for f, g in zip(fwd, load)], other))
            print(f"round {r}: wall / cpu s: forward {fwd[0]:.2f} / {fwd[1]:.2f}, +load {rows[-1][3][0]:.2f} / "
                  f"{rows[-1][3][1]:.2f}, main {inproc[0]:.2f} / "
                  f"{inproc[1]:.2f}, process {process[0]:.2f} / {process[1]:.2f}"
                  + (f", compare process {other[0]:.2f} / {other[1]:.2f}" if other else "")
                  + f"; load {os.getloadavg()[0]:.2f}",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = summary(rows, a.compare)
    print("\n".join(lines))
    write_results(a, argv, len(x), len(ckpts), rows, lines, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
