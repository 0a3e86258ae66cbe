"""A failing disk under each folder the scripts write (a small tmpfs: read-only, or nearly full), stale
temporaries of a killed run, and an output folder that cannot be created."""
import os

from .cases_analysis import ANA, NPZ
from .cases_score import INFL, SCORE
from .cases_train import RESUME, TRAIN
from .common import with_flag
from .harness import BAD, FULL, OK, READ_ONLY, Case, Mount
from .pipeline import TRAIN_FLAGS

# train.py making the arrays itself (--dataset digits), so that it writes --output
MAKE = ("--dataset", "digits", "--output", "arrays", "--model_save_path", "run", "--monitor-path", "mon",
        "--train_epochs", "1") + TRAIN_FLAGS


def on(args, flag, where, sub):
    return with_flag(args, flag, f"{where}/{sub}")


def read_only(cid, script, args, flag, sub, needs=(), populate=(), names=None):
    return Case(cid, script, on(args, flag, "ro", sub), needs, None, READ_ONLY, names or (f"ro/{sub}",),
                mount=Mount("ro", read_only=True, populate=populate))


def full(cid, script, args, flag, sub, free_kb, needs=(), size_kb=1024):
    return Case(cid, script, on(args, flag, "full", sub), needs, None, FULL, (f"full/{sub}",),
                mount=Mount("full", size_kb=size_kb, free_kb=free_kb))


def disk_cases():
    D, DC, DI = ("data",), ("data", "ckpt"), ("data", "infl")
    out = [
        read_only("disk-train-output-read_only", "train.py", MAKE, "--output", "arrays"),
        full("disk-train-output-full", "train.py", MAKE, "--output", "arrays", 0),
        read_only("disk-train-ckpt-read_only", "train.py", TRAIN, "--model_save_path", "run", D),
        # params_0.h5 takes ~120 KB, solver_0.h5 ~195 KB: full at once, after params_0, after checkpoint 0
        full("disk-train-ckpt-full_0k", "train.py", TRAIN, "--model_save_path", "run", 0, D),
        full("disk-train-ckpt-full_150k", "train.py", TRAIN, "--model_save_path", "run", 150, D),
        full("disk-train-ckpt-full_420k", "train.py", TRAIN, "--model_save_path", "run", 420, D),
        read_only("disk-train-monitor-read_only", "train.py", TRAIN, "--monitor-path", "mon", D),
        full("disk-train-monitor-full", "train.py", TRAIN, "--monitor-path", "mon", 0, D),
        read_only("disk-resume-ckpt-read_only", "train.py", RESUME, "--model_save_path", "resume", D,
                  populate=("resume",)),
        read_only("disk-score-output-read_only", "calculate_score.py", SCORE, "--output", "out", DC),
        # earlier results in a folder that became read-only: they must survive
        read_only("disk-score-existing_output-read_only", "calculate_score.py", SCORE, "--output", "scores", DC,
                  populate=("scores",)),
        read_only("disk-infl-output-read_only", "calculate_score.py", INFL, "--output", "out", DC),
        full("disk-infl-output-full", "calculate_score.py", INFL, "--output", "out", 0, DC),
        read_only("disk-ana-output-read_only", "mislabel_analysis.py", ANA, "--output", "fig", ("data", "scores")),
        full("disk-ana-output-full_0k", "mislabel_analysis.py", ANA, "--output", "fig", 0, ("data", "scores")),
        full("disk-ana-output-full_100k", "mislabel_analysis.py", ANA, "--output", "fig", 100, ("data", "scores")),
        read_only("disk-npz-output-read_only", "mislabel_analysis.py", NPZ, "--output", "fig", DI),
    ]
    # free pages for: nothing, the cache units of both checkpoints, + the first outputs, + all but scores.json
    out += [full(f"disk-score-output-full_{kb}k", "calculate_score.py", SCORE, "--output", "out", kb, DC)
            for kb in (0, 4, 8, 16, 20)]
    return out


def stale(rel):
    """A temporary of an atomic write of `rel`, as a killed run leaves it."""
    d, name = os.path.split(rel)
    base, ext = os.path.splitext(name)
    return os.path.join(d, f".{base}.k1ll3d_0.tracin-tmp{ext}")  # tracin.io.atomic_path's naming


def put(rel):
    def m(work):
        os.makedirs(os.path.dirname(os.path.join(work, rel)), exist_ok=True)
        with open(os.path.join(work, rel), "wb") as f:
            f.write(b"half-written")
    return m


def gone(rel):
    return lambda work, err, base: [f"stale temporary {rel} left after a successful run"] \
        if os.path.exists(os.path.join(work, rel)) else []


def temporaries_cases():
    D, DC = ("data",), ("data", "ckpt")
    where = [("train-ckpt", "train.py", TRAIN, D, "run/params_0.h5"),
             ("train-output", "train.py", MAKE, (), "arrays/y_shuffle_train.npy"),
             ("score-output", "calculate_score.py", SCORE, DC, "out/influence_all_epoch.npy"),
             ("ana-output", "mislabel_analysis.py", ANA, ("data", "scores"), "fig/metrics.json")]
    # the stale temporary is the one pre-existing file a successful run must remove
    out = [Case(f"stale-{n}", s, a, needs, put(stale(rel)), OK, check=gone(stale(rel)), may_change=(stale(rel),))
           for n, s, a, needs, rel in where]

    def a_file(work):
        with open(os.path.join(work, "afile"), "w") as f:
            f.write("not a folder")
    # the checkpoint folder cannot be created (its parent is a file): found before the arrays are written
    out.append(Case("train-model_save_path_under_a_file", "train.py", on(MAKE, "--model_save_path", "afile", "sub"),
                    (), a_file, BAD, ("--model_save_path", "afile/sub")))
    return out


def cases():
    return disk_cases() + temporaries_cases()
