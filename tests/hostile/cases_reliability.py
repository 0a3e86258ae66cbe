"""Hostile cases of ownership and paths: a run into another run's folders, a resumed run given conflicting flags,
output paths that cannot be created (names over 255 bytes, dangling symbolic links, files in the way), numbers
beyond int64, contradictory flags, a user's own hidden files beside the outputs, stale per-checkpoint files, and
image folders as users have them (archive folders, other files, names that are not UTF-8, absurd sizes)."""
import os

import numpy as np

from .harness import BAD, OK, Case
from .mutate import chain
from .pipeline import TRAIN_FLAGS

TRAIN = ("--input", "data", "--model_save_path", "run", "--monitor-path", "mon2", "--train_epochs", "1") + TRAIN_FLAGS
MAKE = ("--dataset", "digits", "--output", "arrays", "--model_save_path", "run", "--monitor-path", "mon2",
        "--train_epochs", "1") + TRAIN_FLAGS
RESUME = ("--model_save_path", "resume", "--monitor-path", "mon", "--resume", "True", "-c", "cpu")
SCORE = ("--input", "data", "--checkpoint", "ckpt", "--output", "out", "-c", "cpu")
INFL = SCORE + ("--mode", "influence", "--top_k", "3")
ANA = ("--input", "data", "--scores", "scores/influence_all_epoch.npy", "--output", "fig")
LONG = "n" * 256
BIG = (str(2 ** 63), str(2 ** 64), str(10 ** 30))
# the base run's recipe (pipeline.py): 2 epochs, batch 16, width 4, seed 0, digits defaults otherwise
RECORDED = {"--train_epochs": "2", "--train_batch_size": "16", "--nmaps": "4", "--seed": "0",
            "--learning_rate": "0.01", "--weight_decay": "0.0005", "--lr_schedule": "cosine"}
OTHER = {"--train_epochs": "3", "--train_batch_size": "8", "--nmaps": "6", "--seed": "7", "--learning_rate": "0.05",
         "--weight_decay": "0", "--lr_schedule": "step"}


def replace(args, flag, value):
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
        return tuple(args)
    return tuple(args) + (flag, value)


def dangling(name):
    """A symbolic link to nothing beside the work folder (../name): the snapshot of the work folder cannot read
    through it, and the run must not create its target."""
    def m(work):
        link = os.path.join(os.path.dirname(work), name)
        if not os.path.lexists(link):
            os.symlink(link + "-target-never-made", link)
    return m


def text_file(rel, text="the user's notes\n"):
    def m(work):
        path = os.path.join(work, rel)
        os.makedirs(os.path.dirname(path) or work, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return m


def untouched(rel, text="the user's notes\n"):
    def check(work, err, base):
        path = os.path.join(work, rel)
        if not os.path.isfile(path):
            return [f"the user's {rel} was deleted"]
        with open(path) as f:
            return [] if f.read() == text else [f"the user's {rel} was changed"]
    return check


# ----------------------------------------------------------------------------------------------- ownership

def ownership_cases():
    out = []
    # a fresh run into the base run's checkpoint folder, whatever else differs: refused, nothing written
    for extra in [()] + [(f, v) for f, v in OTHER.items()] + [("--precise_bn", "False"), ("--augmentation", "False"),
                                                              ("--model_save_interval", "2")]:
        args = replace(TRAIN, "--model_save_path", "ckpt")
        if extra:
            args = replace(args, *extra)
        name = "-".join(extra).strip("-") or "same_flags"
        out.append(Case(f"own-train-into_another_run-{name}", "train.py", args, ("data", "ckpt"), None, BAD,
                        ("--model_save_path 'ckpt'",)))
    # a killed run's folder without --resume; a monitor folder of another run; arrays or scores of another run
    out += [Case("own-train-into_killed_run", "train.py", replace(TRAIN, "--model_save_path", "resume"),
                 ("data", "resume"), None, BAD, ("--model_save_path 'resume'",)),
            Case("own-train-monitor_of_another_run", "train.py", replace(TRAIN, "--monitor-path", "mon"),
                 ("data", "mon"), None, BAD, ("--monitor-path 'mon'",)),
            Case("own-train-made_arrays_over_arrays", "train.py", replace(MAKE, "--output", "data"), ("data",), None,
                 BAD, ("--output 'data'",)),
            Case("own-train-made_arrays_over_scores", "train.py", replace(MAKE, "--output", "scores"), ("scores",),
                 None, BAD, ("--output 'scores'",)),
            Case("own-train-made_arrays_default_into_ckpt", "train.py",
                 ("--dataset", "digits", "--model_save_path", "ckpt", "--monitor-path", "mon2") + TRAIN_FLAGS,
                 ("ckpt",), None, BAD, ("'ckpt'",)),
            Case("own-train-label_file_only", "train.py", MAKE, (), text_file("arrays/y_train.npy", "old"), BAD,
                 ("--output 'arrays'",)),
            # the user's own files beside a fresh run's outputs are neither a run nor touched
            Case("own-train-user_files_beside", "train.py", TRAIN, ("data",),
                 chain(text_file("run/notes.txt"), text_file("run/.meeting.tmp.txt"), text_file("mon2/README")),
                 OK, check=untouched("run/.meeting.tmp.txt")),
            Case("own-train-overwrite_with_resume", "train.py", RESUME + ("--overwrite", "True"), ("data", "resume"),
                 None, BAD, ("--overwrite",)),
            Case("own-train-checkpoint_with_other_save_path", "train.py",
                 ("--checkpoint", "resume/params_1.h5", "--model_save_path", "elsewhere", "--monitor-path", "mon",
                  "-c", "cpu"), ("data", "resume"), None, BAD, ("--model_save_path 'elsewhere'",))]
    return out


def resume_flag_cases():
    """A resumed run keeps its recipe: a flag that differs is refused; the recorded value is accepted."""
    out = [Case(f"own-resume-conflict{f}={v}", "train.py", RESUME + (f, v), ("data", "resume"), None, BAD, (f,))
           for f, v in OTHER.items()]
    out += [Case(f"own-resume-same{f}={RECORDED[f]}", "train.py", RESUME + (f, RECORDED[f]), ("data", "resume"),
                 None, OK, may_change=("resume/checkpoints.json",))
            for f in ("--train_epochs", "--seed", "--train_batch_size")]
    # the project moved: the manifest's relative array_dir, or --input, finds the arrays
    out.append(Case("own-resume-input_given", "train.py", RESUME + ("--input", "data"), ("data", "resume"), None, OK,
                    may_change=("resume/checkpoints.json",)))
    out.append(Case("own-resume-input_other_arrays", "train.py", RESUME + ("--input", "scores"),
                    ("data", "resume", "scores"), None, BAD, ("scores",)))
    return out


# ---------------------------------------------------------------------------------------------------- paths

def path_cases():
    """Output paths that cannot be created, found before the first write (strict: nothing new on disk)."""
    where = [("train", "train.py", MAKE, (), f) for f in ("--model_save_path", "--monitor-path", "--output")]
    where += [("score", "calculate_score.py", SCORE, ("data", "ckpt"), "--output"),
              ("infl", "calculate_score.py", INFL, ("data", "ckpt"), "--output"),
              ("ana", "mislabel_analysis.py", ANA, ("data", "scores"), "--output")]
    out = []
    for prefix, script, args, needs, flag in where:
        tag = flag.strip("-")
        out += [Case(f"path-{prefix}-{tag}-name_over_255", script, replace(args, flag, f"ok/{LONG}"), needs, None,
                     BAD, (flag,)),
                Case(f"path-{prefix}-{tag}-deep_name_over_255", script, replace(args, flag, f"{LONG}/sub"), needs,
                     None, BAD, (flag,)),
                Case(f"path-{prefix}-{tag}-dangling_link", script,
                     replace(args, flag, f"../dangling-{prefix}-{tag}/sub"), needs, dangling(f"dangling-{prefix}-{tag}"),
                     BAD, (flag,)),
                Case(f"path-{prefix}-{tag}-under_a_file", script, replace(args, flag, "afile/sub"), needs,
                     text_file("afile"), BAD, (flag,))]
    return out


# -------------------------------------------------------------------------------------------- numeric flags

def int64_cases():
    flags = [("train", "train.py", TRAIN, ("data",), f) for f in
             ("--val_batch_size", "--model_save_interval", "--train_epochs", "--micro_batches", "--train_batch_size")]
    flags += [("score", "calculate_score.py", SCORE, ("data", "ckpt"), f) for f in ("--batch_size",
                                                                                     "--checkpoint_interval")]
    flags += [("infl", "calculate_score.py", INFL, ("data", "ckpt"), f) for f in
              ("--top_k", "--projection_dim", "--test_chunk", "--test_indices")]
    flags += [("ana", "mislabel_analysis.py", ANA, ("data", "scores"), f) for f in ("--sheet_size", "--influence_rows")]
    out = []
    for prefix, script, args, needs, flag in flags:
        out += [Case(f"int64-{prefix}-flag{flag}={v[:8]}", script, replace(args, flag, v), needs, None, BAD, (flag,))
                for v in BIG[:2]]
    out.append(Case("int64-infl-flag--test_indices=0,huge", "calculate_score.py",
                    replace(INFL, "--test_indices", "0," + BIG[2]), ("data", "ckpt"), None, BAD, ("--test_indices",)))
    return out


# ---------------------------------------------------------------------------------------- contradictory flags

def conflict_cases():
    return [
        Case("conflict-train-input_and_data_dir", "train.py", TRAIN + ("--data-dir", "data"), ("data",), None, BAD,
             ("--data-dir",)),
        Case("conflict-train-input_and_imagefolder", "train.py", TRAIN + ("--dataset", "imagefolder", "--data-dir",
                                                                          "data"), ("data",), None, BAD,
             ("--data-dir",)),
        Case("conflict-score-influence_save_every_epoch", "calculate_score.py", INFL + ("--save_every_epoch", "True"),
             ("data", "ckpt"), None, BAD, ("--save_every_epoch",)),
        Case("conflict-train-overwrite_text", "train.py", TRAIN + ("--overwrite", "maybe"), ("data",), None, BAD,
             ("--overwrite",)),
    ]


# ------------------------------------------------------------------------------------- the user's own files

USER_FILES = (".meeting.tmp.txt", ".notes.abcdefgh.tmp.txt", ".x_train.12345678.tmp.npy", "draft.tmp",
              ".scores.json.tmp")


def user_file_cases():
    """A user's hidden or *.tmp* files in every output folder survive a successful run (only the tool's own
    temporaries, by their exact name, are cleaned up)."""
    where = [("score", "calculate_score.py", SCORE, ("data", "ckpt"), "out"),
             ("ana", "mislabel_analysis.py", ANA, ("data", "scores"), "fig"),
             ("resume", "train.py", RESUME, ("data", "resume"), "resume")]
    out = []
    for prefix, script, args, needs, folder in where:
        for name in USER_FILES:
            rel = f"{folder}/{name}"
            out.append(Case(f"userfile-{prefix}-{name.strip('.')}", script, args, needs, text_file(rel), OK,
                            check=untouched(rel), may_change=("resume/checkpoints.json",)))
    return out


# ------------------------------------------------------------------------------------------------ stale files

def per_checkpoint_files(allowed):
    def check(work, err, base):
        found = sorted(n for n in os.listdir(os.path.join(work, "scores")) if n.endswith("_influence.npy")
                       and n[0].isdigit())
        return [] if found == sorted(allowed) else [f"per-checkpoint files {found}, expected {sorted(allowed)}"]
    return check


def stale_cases():
    S = ("--input", "data", "--checkpoint", "ckpt", "--output", "scores", "-c", "cpu")
    every = tuple(f"scores/{n}" for n in ("influence_all_epoch.npy", "loss_last_epoch.npy", "probabilities.npy",
                                          "scores.json", "1_influence.npy", "2_influence.npy", "7_influence.npy"))
    fake = text_file("scores/7_influence.npy", "old")
    return [
        Case("stale-score-without_every_epoch", "calculate_score.py", S, ("data", "ckpt", "scores"), fake, OK,
             check=per_checkpoint_files([]), may_change=every),
        Case("stale-score-one_epoch", "calculate_score.py", S + ("--save_every_epoch", "True", "--checkpoint_epochs",
                                                                 "2"), ("data", "ckpt", "scores"), fake, OK,
             check=per_checkpoint_files(["2_influence.npy"]), may_change=every),
        Case("stale-score-every_epoch", "calculate_score.py", S + ("--save_every_epoch", "True"),
             ("data", "ckpt", "scores"), fake, OK, check=per_checkpoint_files(["1_influence.npy", "2_influence.npy"]),
             may_change=every),
    ]


# ------------------------------------------------------------------------------------------------ own images

def image_tree(names=(b"zero", b"one"), extra=None):
    """A mutation writing images/ (two classes of 12 small PNGs) plus `extra(root)`."""
    def m(work):
        from PIL import Image
        rng = np.random.RandomState(0)
        root = os.path.join(os.fsencode(work), b"images")
        for c in names:
            os.makedirs(os.path.join(root, c))
            for i in range(12):
                Image.fromarray((rng.rand(10, 10) * 255).astype(np.uint8)).save(os.path.join(root, c, b"%d.png" % i))
        if extra:
            extra(root)
    return m


def _macosx(root):
    os.makedirs(os.path.join(root, b"__MACOSX", b"zero"))
    with open(os.path.join(root, b"__MACOSX", b"zero", b"._0.png"), "wb") as f:
        f.write(b"\0\5\26\7 resource fork")


def _other_files(root):
    for name in (b"zero/notes.txt", b"zero/scan.gif", b"README.md"):
        with open(os.path.join(root, name), "wb") as f:
            f.write(b"not an image")


def _foreign_file_names(root):
    from PIL import Image
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(os.path.join(root, b"zero", b"caf\xe9 \xff.png"))


IMPORT = ("--dataset", "imagefolder", "--data-dir", "images", "--output", "arrays", "--model_save_path", "run",
          "--monitor-path", "mon2", "--train_epochs", "1", "--nmaps", "4", "--train_batch_size", "8", "-c", "cpu")


def image_cases():
    return [
        Case("img-macosx_folder", "train.py", IMPORT, (), image_tree(extra=_macosx), OK),
        Case("img-other_files", "train.py", IMPORT, (), image_tree(extra=_other_files), OK),
        Case("img-class_names_not_utf8", "train.py", IMPORT, (), image_tree(names=(b"caf\xe9", b"\xff\xfe")), OK),
        Case("img-file_names_not_utf8", "train.py", IMPORT, (), image_tree(extra=_foreign_file_names), OK),
        Case("img-class_names_cjk", "train.py", IMPORT, (), image_tree(names=("猫".encode(), "犬".encode())), OK),
    ] + [Case(f"img-image_size={v}", "train.py", IMPORT + ("--image_size", v), (), image_tree(), BAD,
              ("--image_size",)) for v in ("20000", "4096x16", "16x100000", BIG[2])]


def _of(script):
    return [c for c in path_cases() + int64_cases() + conflict_cases() + user_file_cases() if c.script == script]


def train_cases():
    return ownership_cases() + resume_flag_cases() + _of("train.py") + image_cases()


def score_cases():
    return _of("calculate_score.py") + stale_cases()


def analysis_cases():
    return _of("mislabel_analysis.py")
