"""Every mistake on the command line is explained in one line: exit code 2, one non-empty stderr line that names the
problem, no traceback, no progress bar, and no file in the work folder created, changed or removed.

Each case runs a script's main in this process (as its `__main__` block does) on a private copy of the session's
tiny run (`tiny_run`), damaged by the case's `setup`; the cases in SUBPROCESS also run as a real process.
"""
import json
import os
import shutil

import numpy as np
import pytest
from conftest import run_main, run_script, snapshot

TRAIN = ("--model_save_path", "{root}/run", "--monitor-path", "{root}/mon", "--nmaps", "4", "--train_epochs", "1",
         "--train_batch_size", "32", "-c", "cpu")
SCORE = ("--input", "{data}", "--checkpoint", "{ckpt}", "-c", "cpu")
RESUME = ("--model_save_path", "{ckpt}", "--monitor-path", "{root}/mon", "-c", "cpu")


# ------------------------------------------------------------------------------------------ damaging the copy

def edit_npy(name, fn):
    def setup(ctx):
        path = os.path.join(ctx["data"], name)
        np.save(path, fn(np.load(path)))
    return setup


def set_label(a):
    a = a.copy()
    a[5] = 10  # digits have classes 0..9
    return a


def pad_images(a):
    return np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))


def crop_images(ctx):
    for name in ("x_train.npy", "x_val.npy"):
        path = os.path.join(ctx["data"], name)
        np.save(path, np.load(path)[:, :, :4, :4])


def truncate(name, keep=0.5):
    def setup(ctx):
        path = os.path.join(ctx["ckpt"], name)
        with open(path, "rb") as f:
            head = f.read()
        with open(path, "wb") as f:
            f.write(head[:int(len(head) * keep)])
    return setup


def garble(name):
    def setup(ctx):
        path = os.path.join(ctx["ckpt"], name)
        n = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(np.random.RandomState(0).bytes(n))
    return setup


def remove(name):
    return lambda ctx: os.remove(os.path.join(ctx["ckpt"], name))


def other_model(ctx):
    shutil.copy(ctx["other_params"], os.path.join(ctx["ckpt"], "params_3.h5"))


def bad_manifest(ctx):
    with open(os.path.join(ctx["ckpt"], "checkpoints.json"), "w") as f:
        f.write('{"format": 1, "model": {"name": "resnet23"')


def legacy_folder(ctx):  # an original-example folder: params only, no manifest
    os.remove(os.path.join(ctx["ckpt"], "checkpoints.json"))


def write_scores(value):
    def setup(ctx):
        scores = np.abs(np.random.RandomState(0).randn(len(np.load(os.path.join(ctx["data"], "x_train.npy")))))
        if value is not None:
            scores[3] = value
        np.save(os.path.join(ctx["data"], "influence_all_epoch.npy"), scores)
    return setup


def short_scores(ctx):
    np.save(os.path.join(ctx["data"], "influence_all_epoch.npy"), np.ones(7))


def case(id_, script, args, expect, setup=None):
    return pytest.param(script, args, expect, setup, id=id_)


def _cuda_importable():
    try:
        import nnabla_ext.cuda  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or installed without a usable CUDA runtime
        return False
    return True


# -c cudnn is a bad input only where the CUDA extension does not import; where it does, these cases would train
# and score on the GPU, so they are not generated (not skipped: they have nothing to check there)
HAS_CUDA = _cuda_importable()


def without_cuda(*cases):
    return [] if HAS_CUDA else list(cases)


CASES = [
    # ---------------------------------------------------------------------------------------------- train.py
    case("train-input-missing", "train.py", ("--input", "{root}/nope") + TRAIN, "does not exist"),
    case("train-input-empty", "train.py", ("--input", "{empty}") + TRAIN, "x_train.npy is missing"),
    case("train-lengths-mismatch", "train.py", ("--input", "{data}") + TRAIN, "labels for",
         edit_npy("y_shuffle_train.npy", lambda a: a[:-5])),
    case("train-label-out-of-range", "train.py", ("--input", "{data}") + TRAIN, "labels in [0, 10]",
         edit_npy("y_shuffle_train.npy", set_label)),
    case("train-val-shape-mismatch", "train.py", ("--input", "{data}") + TRAIN, "x_val.npy holds images of shape",
         edit_npy("x_val.npy", pad_images)),
    case("train-images-too-small", "train.py", ("--input", "{data}") + TRAIN, "at least 8x8", crop_images),
    case("train-odd-nmaps-keeps-arrays", "train.py", ("--output", "{data}") + TRAIN + ("--nmaps", "3"),
         "even width (nmaps)"),
    case("train-unknown-model", "train.py", ("--model", "resnet99") + TRAIN, "invalid choice: 'resnet99'"),
    case("train-unknown-dataset", "train.py", ("--dataset", "mnist") + TRAIN, "invalid choice: 'mnist'"),
    case("train-shuffle-rate-text", "train.py", ("--shuffle_rate", "ten") + TRAIN, "expected a number"),
    case("train-shuffle-rate-range", "train.py", ("--shuffle_rate", "1.5") + TRAIN, "between 0 and 1"),
    case("train-shuffle-rate-negative", "train.py", ("--shuffle_rate=-0.1",) + TRAIN, "between 0 and 1"),
    case("train-epochs-zero", "train.py", ("--input", "{data}") + TRAIN + ("--train_epochs", "0"), "at least 1"),
    *without_cuda(case("train-cudnn-missing", "train.py", ("--input", "{data}") + TRAIN + ("-c", "cudnn"),
                       "CUDA extension")),
    case("train-save-path-is-file", "train.py", ("--input", "{data}") + TRAIN + ("--model_save_path", "{file}"),
         "is a file"),
    case("train-monitor-path-is-file", "train.py", ("--input", "{data}") + TRAIN + ("--monitor-path", "{file}"),
         "--monitor-path '"),
    case("train-resume-nothing", "train.py", ("--resume",) + TRAIN, "nothing to resume"),
    case("train-resume-absent-epoch", "train.py", ("--resume", "7") + RESUME, "no complete checkpoint for epoch 7"),
    case("train-resume-no-solver", "train.py", ("--resume", "2") + RESUME, "no complete checkpoint for epoch 2",
         remove("solver_2.h5")),
    case("train-checkpoint-truncated", "train.py", ("--checkpoint", "{ckpt}/params_2.h5", "-m", "{root}/mon"),
         "truncated or corrupt", truncate("params_2.h5")),
    case("train-checkpoint-bad-name", "train.py", ("--checkpoint", "{ckpt}/weights.h5", "-m", "{root}/mon"),
         "must name a params_{epoch}.h5"),
    case("train-resume-solver-corrupt", "train.py", ("--resume", "2") + RESUME, "solver_2.h5 is not a readable",
         garble("solver_2.h5")),
    case("train-resume-data-changed", "train.py", ("--resume",) + RESUME, "changed since training started",
         edit_npy("y_shuffle_train.npy", lambda a: a[::-1])),
    # ------------------------------------------------------------------------------------- calculate_score.py
    case("score-input-missing", "calculate_score.py", ("--input", "{root}/nope", "--checkpoint", "{ckpt}"),
         "does not exist"),
    case("score-input-empty", "calculate_score.py", ("--input", "{empty}", "--checkpoint", "{ckpt}"),
         "x_train.npy is missing"),
    case("score-checkpoint-missing", "calculate_score.py", ("--input", "{data}", "--checkpoint", "{root}/nope"),
         "does not exist"),
    case("score-checkpoint-empty", "calculate_score.py", ("--input", "{data}", "--checkpoint", "{empty}"),
         "no checkpoints"),
    case("score-legacy-without-model", "calculate_score.py", SCORE, "pass --model", legacy_folder),
    case("score-lengths-mismatch", "calculate_score.py", SCORE, "labels for",
         edit_npy("y_shuffle_train.npy", lambda a: a[:-5])),
    case("score-label-out-of-range", "calculate_score.py", SCORE, "labels in [0, 10]",
         edit_npy("y_shuffle_train.npy", set_label)),
    case("score-image-shape", "calculate_score.py", SCORE, "shape (1, 10, 10)",
         edit_npy("x_train.npy", pad_images)),
    case("score-params-truncated", "calculate_score.py", SCORE, "params_2.h5 is not a readable",
         truncate("params_2.h5")),
    case("score-params-empty-file", "calculate_score.py", SCORE, "params_3.h5 is not a readable",
         truncate("params_3.h5", keep=0)),
    case("score-params-corrupt", "calculate_score.py", SCORE, "params_1.h5 is not a readable", garble("params_1.h5")),
    case("score-other-model", "calculate_score.py", SCORE, "does not fit the model", other_model),
    case("score-manifest-missing-file", "calculate_score.py", SCORE, "params_2.h5 is missing", remove("params_2.h5")),
    case("score-manifest-corrupt", "calculate_score.py", SCORE, "not a valid checkpoint manifest", bad_manifest),
    case("score-absent-epochs", "calculate_score.py", SCORE + ("--checkpoint_epochs", "2,7,9"),
         "no checkpoint for epoch(s) 7,9"),
    case("score-epochs-text", "calculate_score.py", SCORE + ("--checkpoint_epochs", "last"), "comma-separated"),
    case("score-epochs-and-interval", "calculate_score.py",
         SCORE + ("--checkpoint_epochs", "2", "--checkpoint_interval", "2"), "--checkpoint_interval: give either"),
    case("score-unknown-layers", "calculate_score.py", SCORE + ("--layers", "nosuch/*"), "selects no trainable"),
    case("score-layers-new-output", "calculate_score.py", SCORE + ("--layers", "conv99", "--output", "{root}/new"),
         "selects no trainable"),
    *without_cuda(case("score-cudnn-new-output", "calculate_score.py", SCORE + ("-c", "cudnn", "--output",
                                                                             "{root}/new"), "CUDA extension"),
                  case("score-cudnn-missing", "calculate_score.py", SCORE + ("-c", "cudnn"), "CUDA extension")),
    case("score-unknown-model", "calculate_score.py", SCORE + ("--model", "resnet99"), "invalid choice: 'resnet99'"),
    case("score-output-is-file", "calculate_score.py", SCORE + ("--output", "{file}"), "is a file"),
    # ------------------------------------------------------------------------------------ mislabel_analysis.py
    case("analysis-input-missing", "mislabel_analysis.py", ("--input", "{root}/nope", "--output", "{root}/fig"),
         "does not exist"),
    case("analysis-scores-nan", "mislabel_analysis.py", ("--input", "{data}", "--output", "{root}/fig"), "NaN/inf",
         write_scores(np.nan)),
    case("analysis-scores-inf", "mislabel_analysis.py", ("--input", "{data}", "--output", "{root}/fig"), "NaN/inf",
         write_scores(np.inf)),
    case("analysis-scores-length", "mislabel_analysis.py", ("--input", "{data}", "--output", "{root}/fig"),
         "has 7 scores", short_scores),
    case("analysis-scores-missing", "mislabel_analysis.py", ("--input", "{data}", "--output", "{root}/fig"),
         "influence_all_epoch.npy is missing"),
    case("analysis-output-is-file", "mislabel_analysis.py", ("--input", "{data}", "--output", "{file}"),
         "is a file", write_scores(None)),
]


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def other_params(tiny_run, tmp_path_factory):
    """params_1.h5 of the same data trained with another width (--nmaps 4; the tiny run has 8)."""
    root = tmp_path_factory.mktemp("other_model")
    run_main("train.py", "--input", tiny_run["data"], "--model_save_path", root / "ckpt", "--monitor-path",
             root / "mon", "--nmaps", 4, "--train_epochs", 1, "--train_batch_size", 32, "-c", "cpu", cwd=root)
    return str(root / "ckpt" / "params_1.h5")


@pytest.fixture
def ctx(tiny_run, other_params, tmp_path):
    """A private, damageable copy of the tiny run; its manifest points at the copied arrays."""
    c = {"root": str(tmp_path), "data": str(tmp_path / "data"), "ckpt": str(tmp_path / "ckpt"),
         "empty": str(tmp_path / "empty"), "file": str(tmp_path / "notes.txt"), "other_params": other_params}
    shutil.copytree(tiny_run["data"], c["data"])
    shutil.copytree(tiny_run["ckpt"], c["ckpt"])
    os.makedirs(c["empty"])
    with open(c["file"], "w") as f:
        f.write("not a folder\n")
    manifest = os.path.join(c["ckpt"], "checkpoints.json")
    with open(manifest) as f:
        m = json.load(f)
    m["train"]["array_dir"] = c["data"]
    with open(manifest, "w") as f:
        json.dump(m, f)
    return c


# ---------------------------------------------------------------------------------------------------- the test

# the entry scripts as real processes (their __main__ blocks), one case per kind of failure
SUBPROCESS = {"train-unknown-dataset", "score-params-truncated", "analysis-scores-nan"}


def check_one_line(script, expect, code, stdout, stderr, before, after):
    lines = [line for line in stderr.splitlines() if line.strip()]  # splitlines also splits tqdm's \r redraws
    assert code == 2, f"exit {code}\n{stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-2000:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr[-2000:]}"
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    assert expect in lines[0], f"{expect!r} not in {lines[0]!r}"
    assert stdout == "", stdout
    changed = sorted(k for k in set(before) | set(after) if before.get(k, 0) != after.get(k, 0))
    assert not changed, f"files created, changed or removed: {changed}"


@pytest.mark.parametrize("script,args,expect,setup", CASES)
def test_bad_input(script, args, expect, setup, ctx, request):
    if setup:
        setup(ctx)
    argv = [a.format(**ctx) for a in args]
    before = snapshot(ctx["root"])
    code, out, err = run_main(script, *argv, cwd=ctx["root"], check=False)
    check_one_line(script, expect, code, out, err, before, snapshot(ctx["root"]))
    if request.node.callspec.id in SUBPROCESS:
        p = run_script(script, *argv, cwd=ctx["root"], check=False, timeout=120)
        check_one_line(script, expect, p.returncode, p.stdout, p.stderr, before, snapshot(ctx["root"]))
