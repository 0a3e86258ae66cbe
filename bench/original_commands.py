"""The original example's three commands, verbatim but for `-c cpu`, on a tiny CIFAR-10 archive in the official
format (no network here, so no real archive).

    python -m bench.original_commands [--images_per_batch 20] [--work output/bench/original_commands]

Writes cifar-10-python.tar.gz (data_batch_1..5 and test_batch of random images, labels 0..9 in turn) into
WORK/nnabla_data and runs, in WORK, each script's main() with the original's argv:

    python train.py --output output_path --monitor-path tmp.monitor --model resnet23 \\
                    --model_save_path tmp.monitor --shuffle_label True -c cpu
    python calculate_score.py --output output_path --checkpoint tmp.monitor --model resnet56 --input output_path -c cpu
    python mislabel_analysis.py --input output_path --output figure

Two things differ from a user's run, both outside the scripts: the data cache folder is WORK/nnabla_data instead
of ~/nnabla_data, and the archive's MD5 check expects this archive's digest instead of the official one. Random
images carry no signal, so the metrics printed are meaningless; what is checked is that every command runs the
original's 270-epoch recipe end to end and exits 0. Takes about 40 min with 20 images per batch (100 training
images) on one CPU core.
"""
import argparse
import hashlib
import os
import sys
import time

import numpy as np

COMMANDS = (
    ("train.py", "--output output_path --monitor-path tmp.monitor --model resnet23 --model_save_path tmp.monitor "
                 "--shuffle_label True -c cpu"),
    ("calculate_score.py", "--output output_path --checkpoint tmp.monitor --model resnet56 --input output_path -c cpu"),
    ("mislabel_analysis.py", "--input output_path --output figure"),
)


def write_archive(path, per_batch, seed=0):
    """An archive in the official layout: cifar-10-batches-py/{batches.meta, data_batch_1..5, test_batch}."""
    import datasets
    rng = np.random.RandomState(seed)
    labels = [i % 10 for i in range(per_batch)]
    members = [("batches.meta", {b"label_names": [c.encode() for c in datasets.CIFAR10_CLASSES]})]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        members.append((name, {b"data": rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8), b"labels": labels}))
    datasets.write_cifar10_archive(path, members)
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def run(script, argv):
    """Run an entry script's main as its __main__ block does; returns the exit code."""
    import calculate_score
    import mislabel_analysis
    import train
    from utils import run_cli, run_mpi_cli
    runner, main = {"train.py": (run_cli, train.main), "calculate_score.py": (run_mpi_cli, calculate_score.main),
                    "mislabel_analysis.py": (run_cli, mislabel_analysis.main)}[script]
    try:
        return runner(main, argv.split(), prog=script)
    except SystemExit as e:
        return e.code


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.original_commands", description=__doc__.splitlines()[0])
    p.add_argument("--images_per_batch", type=int, default=20)
    p.add_argument("--work", default=os.path.join("output", "bench", "original_commands"))
    args = p.parse_args(argv)
    import datasets
    work = os.path.abspath(args.work)
    data_home = os.path.join(work, "nnabla_data")
    os.makedirs(data_home, exist_ok=True)
    md5 = write_archive(os.path.join(data_home, datasets.CIFAR10_ARCHIVE), args.images_per_batch)
    datasets.default_data_dir = lambda: data_home
    datasets.cifar10_archive.__defaults__ = (None, True, datasets.CIFAR10_URL, md5)
    os.chdir(work)
    for script, argv_text in COMMANDS:
        start = time.time()
        print(f"$ python {script} {argv_text}", file=sys.stderr, flush=True)
        code = run(script, argv_text)
        print(f"-> exit {code} in {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
