"""The one owner of every file the scripts exchange: names and layouts. Producers and consumers both use it.

Array folder (train.py --output; the original example's layout), images uint8 NCHW, labels int (N, 1):
  x_train.npy, y_train.npy (clean labels), y_shuffle_train.npy (the labels training saw), x_val.npy, y_val.npy
  files.json                an image-folder import's file list: index -> file, class names (tracin.imagefolder)
Checkpoint folder (train.py --model_save_path): params_{k}.h5, solver_{k}.h5, checkpoints.json (tracin.checkpoints) and
  validation.json (the model check, tracin.gate)
Self-influence (calculate_score.py), float64:
  influence_all_epoch.npy   (N,) score, aligned with x_train.npy
  {epoch}_influence.npy     (N,) one checkpoint's eta-weighted term (the terms sum to the score)
  loss_last_epoch.npy       (N,) cross-entropy of the given label at the last selected checkpoint
  probabilities.npy         (N, classes) eta-weighted mean softmax probabilities over the selected checkpoints
  scores.json               what was computed: checkpoints, eta, layers, method, speed, versions
  influence_run{r}.npy      (N,) of an ensemble (several checkpoint folders): run r's score (r = 1, 2, ...); the
                            score is their sum, loss and probabilities their means over the runs
  val_influence.npy, val_loss_last_epoch.npy, val_probabilities.npy: the same three for the validation images of
                            an image import (x_val.npy, labels y_val.npy; (V,), (V,), (V, classes)): held-out
                            self-influence, from checkpoints that never trained on them (VAL_FILES)
Train -> test influence (calculate_score.py --mode influence):
  influence_topk.npz        see TOPK_ARRAYS; influence.json; influence_matrix.npy (n_test, n_train), optional
Work units of both: tracin_cache/<settings>/... (tracin.engine). Analysis (mislabel_analysis.py): metrics.json,
report.html, label_issues.csv (tracin.review) and the PNG names below.
"""
import os
import re
import zipfile
import zlib

import numpy as np

from .errors import InputError
from .io import npz_bytes, write_bytes
from .normalize import NORMALIZATIONS

# ------------------------------------------------------------------------------------------------ array folder
ARRAYS = ("x_train", "y_train", "y_shuffle_train", "x_val", "y_val")
ARRAY_FILES = tuple(a + ".npy" for a in ARRAYS)
X_TRAIN, Y_TRAIN, Y_NOISY, X_VAL, Y_VAL = ARRAY_FILES  # Y_NOISY: the labels training saw
FILE_LIST = "files.json"


def clean_labels_known(folder):
    """True when the array folder holds ground truth: y_train.npy exists. train.py writes it only when it knows
    the clean labels: the data sets it shuffles itself (digits, CIFAR-10; with --shuffle_label False it equals
    y_shuffle_train.npy: clean labels known, none wrong) and an image import with --shuffle_label True (the folder
    labels, before shuffling). An image import without shuffling writes none: its folder labels may hold errors
    nobody knows, so there is nothing to measure detection against, only a ranking to review."""
    return os.path.isfile(os.path.join(folder, Y_TRAIN))


def label_files(folder):
    """(needed, optional) label files of an array folder: y_train.npy may be absent only in an image import's
    folder (it has FILE_LIST); elsewhere its absence is damage, reported as a missing file."""
    if os.path.isfile(os.path.join(folder, FILE_LIST)):
        return (Y_NOISY,), (Y_TRAIN,)
    return (Y_TRAIN, Y_NOISY), ()

# ------------------------------------------------------------------------------------------- checkpoint folder
MANIFEST = "checkpoints.json"
VALIDATION = "validation.json"  # the trained model's validation accuracy against chance (tracin.gate)
PARAMS_RE = re.compile(r"^params_(\d+)\.h5$")


def params_name(epoch):
    return f"params_{epoch}.h5"


def solver_name(epoch):
    return f"solver_{epoch}.h5"


MONITOR_SERIES = ("Training loss", "Training error", "Test loss", "Test error")


def monitor_file(series):
    """nnabla MonitorSeries' file name for a series name ('Test error' -> 'Test-error.series.txt')."""
    return series.replace(" ", "-") + ".series.txt"


# --------------------------------------------------------------------------------------------- self-influence
SCORES = "influence_all_epoch.npy"
LOSS = "loss_last_epoch.npy"
PROBABILITIES = "probabilities.npy"
SCORES_JSON = "scores.json"
CACHE_DIR = "tracin_cache"
EPOCH_SCORES_RE = re.compile(r"^(\d+)_influence\.npy$")
RUN_SCORES_RE = re.compile(r"^influence_run\d+\.npy$")  # run_scores_name
# an image import's validation images, scored beside x_train (only with FILE_LIST: elsewhere x_val is a test set)
VAL_SCORES = "val_influence.npy"
VAL_LOSS = "val_loss_last_epoch.npy"
VAL_PROBABILITIES = "val_probabilities.npy"
VAL_FILES = (VAL_SCORES, VAL_LOSS, VAL_PROBABILITIES)


def epoch_scores_name(epoch):
    return f"{epoch}_influence.npy"


def run_scores_name(run):
    """An ensemble member's self-influence (run = 1, 2, ... in the order the checkpoint folders were given)."""
    return f"influence_run{run}.npy"


# ---------------------------------------------------------------------------------------- train -> test influence
TOPK = "influence_topk.npz"
INFLUENCE_JSON = "influence.json"
MATRIX = "influence_matrix.npy"
# influence_topk.npz: test_indices (T,) int64 rows of x_val.npy; test_labels (T,) int64; proponents, opponents
# (T, k) int64 indices into x_train.npy, highest / lowest score first (ties: lower index); proponent_scores,
# opponent_scores (T, k) float64; self_influence (T,) float64 (never normalised); input, test_input: the folders
# (0-d strings); normalize: the scores' normalisation (0-d string, tracin.normalize; absent in older files: 'none').
TOPK_ARRAYS = ("test_indices", "test_labels", "proponents", "proponent_scores", "opponents", "opponent_scores",
               "self_influence", "input", "test_input", "normalize")
TOPK_OPTIONAL = ("self_influence", "normalize")

# ------------------------------------------------------------------------------------------------------ analysis
METRICS_JSON = "metrics.json"
REPORT = "report.html"
DISTRIBUTION_PNG = "self_influence_distribution.png"
CURVE_PNG = "score_curve.png"
CHECKPOINT_METRICS_PNG = "checkpoint_metrics.png"
INFLUENCE_PNG = "influence_examples.png"
SHEETS_DIR = "extracted_samples"
LABEL_ISSUES = "label_issues.csv"
CLASS_SCORES_PNG = "class_score_distribution.png"
REVIEW_SHEET_PNG = "label_issues_top.png"


def epoch_top_png(epoch):
    return f"{epoch}_top_influence_sample.png"


def decile_png(i):
    """Sheet of the i-th decile (1-based)."""
    return os.path.join(SHEETS_DIR, f"decile_{i:02d}.png")


# ------------------------------------------------------------------------------------------ readers and writers

def read_score_vector(path, n, what="score file"):
    """A finite float64 vector of n scores from a .npy file ((N,) or (N, 1)); every problem is an InputError."""
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{what} {path} is not a readable .npy array ({e}): rewrite it with "
                         "calculate_score.py") from None
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or a.ndim > 2 or (a.ndim == 2 and a.shape[1] != 1):
        raise InputError(f"{what} {path} holds a {a.dtype} array of shape {a.shape}; expected one number per "
                         "training sample")
    a = a.reshape(-1).astype(np.float64)
    if a.size != n:
        raise InputError(f"{what} {path} has {a.size} scores but the labels have {n} samples: "
                         "the score file comes from another data folder")
    bad = ~np.isfinite(a)
    if bad.any():
        raise InputError(f"{what} {path} holds {int(bad.sum())} NaN/inf values (first at sample "
                         f"{int(np.flatnonzero(bad)[0])}): rerun calculate_score.py")
    return a


def write_topk(path, result, test_indices, train_dir, test_dir):
    """Write influence_topk.npz atomically from an InfluenceResult (tracin.api.influence) of the test samples
    `test_indices` (rows of test_dir's x_val.npy) against train_dir's x_train.npy."""
    write_bytes(path, npz_bytes(dict(
        test_indices=np.asarray(test_indices, dtype=np.int64),
        test_labels=np.asarray(result.test_labels, dtype=np.int64), proponents=result.proponents,
        proponent_scores=result.proponent_scores, opponents=result.opponents, opponent_scores=result.opponent_scores,
        self_influence=result.self_influence,
        input=np.array(os.path.abspath(train_dir)), test_input=np.array(os.path.abspath(test_dir)),
        normalize=np.array(result.normalize))))


def read_topk(path, need_input=True):
    """The arrays of an influence_topk.npz, with their layout checked: shapes, whole-number indices and labels
    (>= 0), finite scores, finite non-negative self-influence; `input` may be absent when need_input is False.
    Upper bounds of indices and labels are checked by the caller, who knows the data."""
    try:
        with np.load(path, allow_pickle=False) as z:
            npz = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise InputError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e}): rewrite it with "
                         "calculate_score.py's influence mode") from None
    wanted = [k for k in TOPK_ARRAYS if k not in TOPK_OPTIONAL and (need_input or k != "input")]
    missing = [k for k in wanted if k not in npz]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}: it is not an {TOPK} of calculate_score.py's "
                         "influence mode")
    n_rows = npz["test_indices"].reshape(-1).size
    for k in ("proponents", "proponent_scores", "opponents", "opponent_scores"):
        if npz[k].ndim != 2 or npz[k].shape[0] != n_rows:
            raise InputError(f"{path}: {k} has shape {npz[k].shape}; expected ({n_rows}, k) for {n_rows} test samples")
    for k in ("test_labels", "self_influence"):
        if k in npz and npz[k].size != n_rows:
            raise InputError(f"{path}: {k} has {npz[k].size} entries for {n_rows} test samples")
    for k in ("test_indices", "test_labels", "proponents", "opponents"):
        a = npz[k]
        if a.dtype.kind not in "iu" or (a.size and a.min() < 0):
            raise InputError(f"{path}: {k} must hold whole numbers >= 0 (it holds {a.dtype} values from "
                             f"{a.min() if a.size else '-'}): rewrite it with calculate_score.py's influence mode")
    for k in ("proponent_scores", "opponent_scores", "self_influence"):
        a = npz.get(k, np.zeros(0))
        if a.dtype.kind not in "iuf" or not np.all(np.isfinite(a)) or (k == "self_influence" and np.any(a < 0)):
            raise InputError(f"{path}: {k} holds NaN/inf{' or negative' if k == 'self_influence' else ''} values: "
                             "rerun calculate_score.py's influence mode")
    npz["normalize"] = str(npz.get("normalize", "none"))
    if npz["normalize"] not in NORMALIZATIONS:
        raise InputError(f"{path}: normalize is '{npz['normalize']}', not one of {', '.join(NORMALIZATIONS)}: "
                         "rewrite it with calculate_score.py's influence mode")
    return npz
