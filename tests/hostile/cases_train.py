"""Hostile cases of train.py: its --input arrays, every numeric flag, and the checkpoint folder of --resume."""
import json
import os

from . import cases_reliability
from .common import (
    NON_POSITIVE_INT,
    entry,
    file_cases,
    flag_cases,
    image_mutations,
    label_mutations,
    params_elsewhere,
)
from .harness import ANY, BAD, OK, Case
from .mutate import (
    chain,
    edit_array,
    edit_json,
    empty,
    h5_data,
    overwrite,
    truncate,
    write_text,
)
from .pipeline import TRAIN_FLAGS

TRAIN = ("--input", "data", "--model_save_path", "run", "--monitor-path", "mon", "--train_epochs", "1") + TRAIN_FLAGS
RESUME = ("--model_save_path", "resume", "--monitor-path", "mon", "--resume", "True", "-c", "cpu")
DATA = ("data",)


def subset(n_train, n_val):
    """A consistent, smaller array folder (ONE change: the data set's size)."""
    steps = [edit_array(f"data/{k}.npy", (lambda n: lambda a: a[:n])(n))
             for k, n in (("x_train", n_train), ("y_train", n_train), ("y_shuffle_train", n_train),
                          ("x_val", n_val), ("y_val", n_val))]
    return chain(*steps)


def array_cases():
    out = file_cases("train", "train.py", TRAIN, DATA, "data/x_train.npy", image_mutations("data/x_train.npy"))
    out += file_cases("train", "train.py", TRAIN, DATA, "data/y_shuffle_train.npy",
                      label_mutations("data/y_shuffle_train.npy"))
    out += file_cases("train", "train.py", TRAIN, DATA, "data/y_train.npy",
                      label_mutations("data/y_train.npy", full=False))
    out += file_cases("train", "train.py", TRAIN, DATA, "data/x_val.npy", image_mutations("data/x_val.npy", full=False))
    out += file_cases("train", "train.py", TRAIN, DATA, "data/y_val.npy", label_mutations("data/y_val.npy", full=False))
    # images without channels in both image files (consistent with each other)
    out.append(Case("train-data-images_without_channels", "train.py", TRAIN, DATA,
                    chain(*[edit_array(f"data/{k}.npy", lambda a: a[:, :0]) for k in ("x_train", "x_val")]), BAD,
                    ("x_train.npy",)))
    # data sets smaller than a batch (16) or than the number of classes (10): a clear refusal or a valid run
    for n_train, n_val in ((5, 32), (1, 32), (96, 1), (3, 3)):
        out.append(Case(f"train-data-{n_train}_train_{n_val}_val", "train.py", TRAIN, DATA, subset(n_train, n_val),
                        ANY, ("x_train.npy", "x_val.npy", "--train_batch_size")))
    return out


def flag_cases_train():
    out = []
    for flag in ("--train_batch_size", "--val_batch_size", "--train_epochs", "--nmaps", "--model_save_interval"):
        out += flag_cases("train", "train.py", TRAIN, DATA, flag, NON_POSITIVE_INT)
    out += flag_cases("train", "train.py", TRAIN, DATA, "--nmaps", ("1", "3"))  # resnet23 needs an even width
    out += flag_cases("train", "train.py", TRAIN, DATA, "--learning_rate", ("nan", "inf", "-0.1", "0", "x", "1e999"))
    out += flag_cases("train", "train.py", TRAIN, DATA, "--weight_decay", ("nan", "inf", "-0.1", "x"))
    out += flag_cases("train", "train.py", TRAIN, DATA, "--shuffle_rate", ("nan", "inf", "-0.1", "1.5", "x"))
    out += flag_cases("train", "train.py", TRAIN, DATA, "--seed", ("nan", "x", "1.5", "-1", str(2 ** 64)))
    out += flag_cases("train", "train.py", TRAIN, DATA, "--resume", ("-1", "x", "1.5"))
    out += flag_cases("train", "train.py", TRAIN, DATA, "--train_batch_size", ("1000",), expect=ANY)
    out += flag_cases("train", "train.py", TRAIN, DATA, "--val_batch_size", ("1000",), expect=OK)
    return out


# --------------------------------------------------------------------------------------------------- --resume

def resumed(work, err, base):
    """The control resume must have trained epoch 2 and listed it."""
    with open(os.path.join(work, "resume", "checkpoints.json")) as f:
        epochs = [c["epoch"] for c in json.load(f)["checkpoints"]]
    ok = epochs == [0, 1, 2] and os.path.isfile(os.path.join(work, "resume", "params_2.h5"))
    return [] if ok else [f"resume did not add epoch 2: manifest lists {epochs}"]


def manifest(fn):
    return edit_json("resume/checkpoints.json", fn)


def resume_cases():
    R = ("data", "resume")
    mf = ("checkpoints.json",)
    edits = [
        ("lr_nan", entry(1, lr=float("nan"))),
        ("lr_negative", entry(1, lr=-0.01)),
        ("epoch_twice", lambda m: m["checkpoints"].append(dict(m["checkpoints"][-1]))),
        ("train_array_dir_missing", lambda m: m["train"].pop("array_dir")),
        ("train_epochs_text", lambda m: m["train"].update(train_epochs="2")),
        ("train_epochs_nan", lambda m: m["train"].update(train_epochs=float("nan"))),
        ("train_learning_rate_nan", lambda m: m["train"].update(learning_rate=float("nan"))),
        ("train_lr_schedule_unknown", lambda m: m["train"].update(lr_schedule="bogus")),
        ("train_batch_size_0", lambda m: m["train"].update(train_batch_size=0)),
        ("train_seed_text", lambda m: m["train"].update(seed="x")),
        ("train_not_object", lambda m: m.update(train=[])),
        ("model_nmaps_0", lambda m: m["model"].update(nmaps=0)),
        ("model_name_unknown", lambda m: m["model"].update(name="resnet999")),
        ("format_99", lambda m: m.update(format=99)),
        ("checkpoints_not_list", lambda m: m.update(checkpoints="params_1.h5")),
    ]
    out = [Case("resume-control", "train.py", RESUME, R, None, OK, check=resumed,
                may_change=("resume/checkpoints.json",))]
    out += [Case(f"resume-manifest-{n}", "train.py", RESUME, R, manifest(fn), BAD, mf) for n, fn in edits]
    out += [Case("resume-manifest-params_outside_folder", "train.py", RESUME, R,
                 chain(params_elsewhere("resume", 1), manifest(entry(1, params="../elsewhere/params_1.h5"))), BAD, mf),
            Case("resume-manifest-empty", "train.py", RESUME, R, empty("resume/checkpoints.json"), BAD, mf),
            Case("resume-manifest-not_json", "train.py", RESUME, R, write_text("resume/checkpoints.json", "{\"fo"),
                 BAD, mf)]
    p, s = "resume/params_1.h5", "resume/solver_1.h5"
    out += [Case("resume-params_1-truncated", "train.py", RESUME, R, truncate(p), BAD, ("params_1.h5",)),
            Case("resume-params_1-bytes_overwritten", "train.py", RESUME, R, overwrite(p), BAD, ("params_1.h5",)),
            Case("resume-params_1-nan_weights", "train.py", RESUME, R, h5_data(p, "affine/b", b"\xff"), BAD,
                 ("params_1.h5",)),
            Case("resume-solver_1-truncated", "train.py", RESUME, R, truncate(s), BAD, ("solver_1.h5",)),
            Case("resume-solver_1-bytes_overwritten", "train.py", RESUME, R, overwrite(s), BAD, ("solver_1.h5",)),
            Case("resume-solver_1-empty", "train.py", RESUME, R, empty(s), BAD, ("solver_1.h5",))]
    out += flag_cases("resume", "train.py", RESUME, R, "--resume", ("7",), names=("--resume", "epoch 7"))
    return out


def cases():
    return array_cases() + flag_cases_train() + resume_cases() + cases_reliability.train_cases()

