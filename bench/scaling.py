"""Training and scoring throughput on 1..N MPI processes, side by side in one run (`make bench-scaling`).

    python -m bench.scaling [--procs 1,2,4] [--epochs 7] [--micro_batches 4] [--layers all] [--repeats 1]

Data: the bundled digits (1,438 training images, 8x8), the demo's recipe (resnet23, nmaps 16, batch 64, precise
batch norm). For every N (default 1..os.cpu_count()), one thread per process (OMP_NUM_THREADS=1 ...):
  train  `mpiexec -n N python train.py --micro_batches M`: epochs/s and samples/s from the seconds per epoch that
         train.py's monitor records (Training-time: the epoch, precise batch norm, validation and the checkpoint;
         the first epoch, which also builds graphs, is dropped). M is the same for every N (default: the smallest
         power of two >= max N), so every N trains the same weights; the final params files are compared bitwise.
         A row `1 (M=1)` is the unsplit batch on one process, today's default without mpiexec.
  score  `mpiexec -n N python calculate_score.py --layers all` on the checkpoints of the N = 1 run: samples/s =
         samples_computed / seconds of scores.json; influence_all_epoch.npy compared bitwise across N.
Speed-up = rate(N) / rate(1) with the same M; goals (reported, never asserted): training >= 0.8 N, scoring >= 0.9 N.
`--repeats R` runs every configuration R times, round-robin (so a change of machine load hits all alike), and
reports medians. Writes bench/results/scaling.md, .json and .png; runs are kept under output/bench/scaling.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
GOALS = {"train": 0.8, "score": 0.9}


def launch(n, script, args):
    """Run `script` on n processes (mpiexec for n > 1); stderr's last lines on failure."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = ([mpiexec, "-n", str(n)] if n > 1 else []) + [sys.executable, os.path.join(REPO, script)] + \
        [str(a) for a in args]
    env = dict(os.environ, **THREADS)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"bench.scaling: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")


def train(out, data, n, m, epochs):
    """(epochs/s, samples/s) of one training run (epochs after the first)."""
    shutil.rmtree(out, ignore_errors=True)
    launch(n, "train.py", ["--input", data, "--model_save_path", os.path.join(out, "ckpt"), "--monitor-path",
                           os.path.join(out, "monitor"), "--train_epochs", epochs, "--micro_batches", m, "-c", "cpu"])
    times = np.loadtxt(os.path.join(out, "monitor", "Training-time.timer.txt"), ndmin=2)[1:, 1]
    per_epoch = float(np.median(times))
    return 1.0 / per_epoch, len(np.load(os.path.join(data, "x_train.npy"), mmap_mode="r")) / per_epoch


def score(out, data, ckpt, n, layers):
    """samples/s of one scoring run (scores.json: samples_computed / seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    launch(n, "calculate_score.py", ["--input", data, "--checkpoint", ckpt, "--output", out, "--layers", layers,
                                     "-c", "cpu"])
    with open(os.path.join(out, "scores.json")) as f:
        meta = json.load(f)
    return meta["samples_computed"] / meta["seconds"]


def same_bytes(paths):
    blobs = []
    for p in paths:
        with open(p, "rb") as f:
            blobs.append(f.read())
    return all(b == blobs[0] for b in blobs)


def measure(args, root, data):
    """{'train': {label: [(epochs/s, samples/s)]}, 'score': {n: [samples/s]}, 'identical': {...}}."""
    train_runs = list(dict.fromkeys([(n, args.micro_batches) for n in args.procs] + [(1, 1)]))
    res = {"train": {}, "score": {}}
    for r in range(args.repeats):
        for n, m in train_runs:
            rate = train(os.path.join(root, f"train_n{n}_m{m}"), data, n, m, args.epochs)
            res["train"].setdefault(f"{n},{m}", []).append(rate)
            print(f"round {r + 1}: train N={n} M={m}: {rate[0]:.3f} epochs/s", file=sys.stderr)
        ckpt = os.path.join(root, f"train_n1_m{args.micro_batches}", "ckpt")
        for n in args.procs:
            rate = score(os.path.join(root, f"score_n{n}"), data, ckpt, n, args.layers)
            res["score"].setdefault(str(n), []).append(rate)
            print(f"round {r + 1}: score N={n}: {rate:.0f} samples/s", file=sys.stderr)
    final = f"params_{args.epochs}.h5"
    res["identical"] = {
        "train": same_bytes([os.path.join(root, f"train_n{n}_m{args.micro_batches}", "ckpt", final)
                             for n in args.procs]),
        "score": same_bytes([os.path.join(root, f"score_n{n}", "influence_all_epoch.npy") for n in args.procs])}
    return res


def table(args, res):
    """Rows of the markdown table and the summary {n: (train speed-up, score speed-up)}."""
    med = {k: tuple(statistics.median(v[i] for v in runs) for i in range(2)) for k, runs in res["train"].items()}
    smed = {k: statistics.median(v) for k, v in res["score"].items()}
    m = args.micro_batches
    base_t, base_s, unsplit = med[f"1,{m}"][0], smed["1"], med["1,1"][0]
    rows, summary = [], {}
    for n in args.procs:
        ts, ss = med[f"{n},{m}"][0] / base_t, smed[str(n)] / base_s
        summary[n] = (ts, ss)
        ok = "yes" if ts >= GOALS["train"] * n and ss >= GOALS["score"] * n else "no"
        rows.append(f"| {n} | {med[f'{n},{m}'][0]:.3f} | {med[f'{n},{m}'][1]:.0f} | {ts:.2f}x "
                    f"({ts / n:.2f} N) | {med[f'{n},{m}'][0] / unsplit:.2f}x | {smed[str(n)]:.0f} | {ss:.2f}x "
                    f"({ss / n:.2f} N) | {ok} |")
    rows.append(f"| 1 (M=1, unsplit) | {unsplit:.3f} | {med['1,1'][1]:.0f} | | 1.00x | | | |")
    return rows, summary


def write_results(args, res, rows, summary):
    os.makedirs(args.results, exist_ok=True)
    m = args.micro_batches
    head = ["| N processes | train epochs/s | train samples/s | train speed-up (same M) | vs unsplit 1 process "
            "| score samples/s | score speed-up | goals met |", "|---|---|---|---|---|---|---|---|"]
    text = [f"# Scaling: training (--micro_batches {m}) and scoring (--layers {args.layers}) on 1..N processes", "",
            f"`python -m bench.scaling --procs {','.join(map(str, args.procs))} --epochs {args.epochs} "
            f"--micro_batches {m} --layers {args.layers} --repeats {args.repeats}` on {os.cpu_count()} cores "
            f"(load average at the end {os.getloadavg()[0]:.1f}); medians of {args.repeats} round(s). Goals: "
            "training >= 0.8 N, scoring >= 0.9 N the one-process rate with the same settings.", ""] + head + rows + [
            "", f"Final weights identical for every N (bitwise): {'yes' if res['identical']['train'] else 'NO'}; "
            f"scores identical for every N: {'yes' if res['identical']['score'] else 'NO'}.", ""]
    with open(os.path.join(args.results, "scaling.md"), "w") as f:
        f.write("\n".join(text))
    with open(os.path.join(args.results, "scaling.json"), "w") as f:
        json.dump(dict(vars(args), **res, summary=summary, cpu_count=os.cpu_count()), f, indent=1)
    plot(args, summary, os.path.join(args.results, "scaling.png"))
    print("\n".join(text))


def plot(args, summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = np.array(args.procs)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(n, n, "k:", label="ideal (N)")
    for what, col, marker in (("train", 0, "o"), ("score", 1, "s")):
        line, = ax.plot(n, [summary[k][col] for k in args.procs], marker=marker, label=f"{what} speed-up")
        ax.plot(n, GOALS[what] * n, "--", color=line.get_color(), alpha=0.5, label=f"{what} goal ({GOALS[what]} N)")
    ax.set_xlabel("MPI processes N")
    ax.set_ylabel("throughput / one process")
    ax.set_title(f"digits, --micro_batches {args.micro_batches}, --layers {args.layers}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    cores = os.cpu_count() or 1
    p.add_argument("--procs", default=",".join(map(str, range(1, cores + 1))), help="process counts, e.g. 1,2,4")
    # scoring reads the checkpoints after epoch 0 (7 here): 42 units of <= 256 samples, dealt evenly
    p.add_argument("--epochs", type=int, default=7, help="training epochs per run (the first is not timed)")
    p.add_argument("--micro_batches", type=int, default=None,
                   help="M for every training run (default: the smallest power of two >= the largest N)")
    p.add_argument("--layers", default="all", help="calculate_score.py --layers")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=os.path.join(REPO, "output", "bench", "scaling"))
    p.add_argument("--results", default=os.path.join(REPO, "bench", "results"))
    args = p.parse_args(argv)
    args.procs = sorted({int(v) for v in args.procs.split(",")} | {1})
    args.micro_batches = args.micro_batches or 1 << (max(args.procs) - 1).bit_length()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is not timed)")
    return args


def main(argv=None):
    args = parse(argv)
    import datasets
    data = os.path.join(args.out, "data")
    if not os.path.isfile(os.path.join(data, "x_train.npy")):
        os.makedirs(data, exist_ok=True)
        datasets.save_arrays(data, datasets.make_arrays("digits", shuffle_rate=0.1, seed=0)[0])
    res = measure(args, args.out, data)
    rows, summary = table(args, res)
    write_results(args, res, rows, summary)


if __name__ == "__main__":
    main()
