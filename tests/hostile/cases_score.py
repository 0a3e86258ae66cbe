"""Hostile cases of calculate_score.py: arrays, the manifest (every field), damaged checkpoints, folders without a
manifest, every numeric flag, and --mode influence's test arrays and flags."""
import os

import numpy as np

from . import cases_reliability
from .common import (
    NAN,
    NON_POSITIVE_INT,
    entry,
    file_cases,
    flag_cases,
    image_mutations,
    label_mutations,
    params_elsewhere,
    with_flag,
)
from .harness import ANY, BAD, OK, Case
from .mutate import (
    as_float_with,
    chain,
    edit_array,
    edit_json,
    empty,
    h5_data,
    h5_reshape,
    overwrite,
    remove,
    truncate,
    write_text,
)

SCORE = ("--input", "data", "--checkpoint", "ckpt", "--output", "out", "-c", "cpu")
INFL = SCORE + ("--mode", "influence", "--test_indices", "0,1", "--top_k", "3")
NEEDS = ("data", "ckpt")
MF = "ckpt/checkpoints.json"


def same_scores(work, err, base):
    """The unmutated run reproduces the base pipeline's scores exactly (CPU scoring is deterministic)."""
    got = np.load(os.path.join(work, "out", "influence_all_epoch.npy"))
    want = np.load(os.path.join(base, "scores", "influence_all_epoch.npy"))
    return [] if np.array_equal(got, want) else ["scores differ from the base pipeline's"]


def array_cases():
    out = [Case("score-control", "calculate_score.py", SCORE, NEEDS, None, OK, check=same_scores)]
    out += file_cases("score", "calculate_score.py", SCORE, NEEDS, "data/x_train.npy",
                      image_mutations("data/x_train.npy"))
    out += file_cases("score", "calculate_score.py", SCORE, NEEDS, "data/y_shuffle_train.npy",
                      label_mutations("data/y_shuffle_train.npy"))
    # fewer samples than the batch (64) and than the classes (10)
    out.append(Case("score-data-3_samples", "calculate_score.py", SCORE, NEEDS,
                    chain(*[edit_array(f"data/{k}.npy", lambda a: a[:3]) for k in ("x_train", "y_train",
                                                                                   "y_shuffle_train")]),
                    ANY, ("x_train.npy",)))
    return out


def manifest_cases():
    nan, inf = float("nan"), float("inf")
    edits = [
        ("lr_nan", entry(2, lr=nan)), ("lr_inf", entry(2, lr=inf)), ("lr_negative", entry(2, lr=-0.01)),
        ("lr_zero", entry(2, lr=0.0)), ("lr_text", entry(2, lr="0.01")), ("lr_null", entry(2, lr=None)),
        ("lr_bool", entry(2, lr=True)),
        ("epoch_text", entry(2, epoch="2")), ("epoch_fractional", entry(2, epoch=1.5)),
        ("epoch_negative", entry(2, epoch=-2)), ("epoch_null", entry(2, epoch=None)),
        ("epoch_twice", lambda m: m["checkpoints"].append(dict(m["checkpoints"][-1]))),
        ("params_null", entry(2, params=None)), ("params_number", entry(2, params=2)),
        ("params_empty_name", entry(2, params="")),
        ("model_name_unknown", lambda m: m["model"].update(name="resnet999")),
        ("model_n_classes_0", lambda m: m["model"].update(n_classes=0)),
        ("model_n_classes_text", lambda m: m["model"].update(n_classes="10")),
        ("model_nmaps_0", lambda m: m["model"].update(nmaps=0)),
        ("model_input_shape_2d", lambda m: m["model"].update(input_shape=[8, 8])),
        ("model_input_shape_text", lambda m: m["model"].update(input_shape="1,8,8")),
        ("model_missing", lambda m: m.pop("model")),
        ("format_99", lambda m: m.update(format=99)),
        ("checkpoints_object", lambda m: m.update(checkpoints={"2": "params_2.h5"})),
        ("checkpoints_numbers", lambda m: m.update(checkpoints=[1, 2])),
    ]
    names = ("checkpoints.json",)
    out = [Case(f"score-manifest-{n}", "calculate_score.py", SCORE, NEEDS, edit_json(MF, fn), BAD, names)
           for n, fn in edits]
    out += [Case("score-manifest-params_outside_folder", "calculate_score.py", SCORE, NEEDS,
                 chain(params_elsewhere("ckpt", 2), edit_json(MF, entry(2, params="../elsewhere/params_2.h5"))), BAD, names),
            Case("score-manifest-params_absolute_path", "calculate_score.py", SCORE, NEEDS,
                 chain(params_elsewhere("ckpt", 2), lambda w: edit_json(MF, entry(
                     2, params=os.path.join(w, "elsewhere", "params_2.h5")))(w)), BAD, names),
            Case("score-manifest-empty", "calculate_score.py", SCORE, NEEDS, empty(MF), BAD, names),
            Case("score-manifest-truncated", "calculate_score.py", SCORE, NEEDS, truncate(MF), BAD, names),
            Case("score-manifest-array", "calculate_score.py", SCORE, NEEDS, write_text(MF, "[]"), BAD, names),
            Case("score-manifest-garbage", "calculate_score.py", SCORE, NEEDS, overwrite(MF, 0.3, None, 64), BAD,
                 names)]
    return out


def checkpoint_cases():
    p = "ckpt/params_2.h5"
    damage = [
        ("missing", remove(p)), ("truncated", truncate(p)), ("header_only", truncate(p, 512)), ("empty", empty(p)),
        ("signature_overwritten", overwrite(p, at=0, pattern=b"\0", n=8)),
        ("bytes_ff_mid", overwrite(p, 0.5, b"\xff")), ("bytes_zero_mid", overwrite(p, 0.5, b"\0")),
        ("bytes_random_quarter", overwrite(p, 0.25, None)),
        ("nan_weights", h5_data(p, "affine/b", b"\xff")),  # 0xff bytes: NaN
        ("huge_weights", h5_data(p, "conv1/conv/W", b"\x7f")),  # 3.4e38: finite, overflows the logits
        # zeroed weights are plausible values: only a digest recorded at save time can tell them from the real ones
        ("zeroed_weights", h5_data(p, "conv1/conv/W", b"\0")),
        ("other_width", h5_reshape(p, "affine/W", (6, 10))),
        ("a_folder", chain(remove(p), lambda w: os.mkdir(os.path.join(w, p)))),
    ]
    out = [Case(f"score-params_2-{n}", "calculate_score.py", SCORE, NEEDS, fn, BAD, ("params_2.h5",))
           for n, fn in damage]
    legacy = remove(MF)  # an original-example folder: params only
    out += [
        Case("score-legacy-no_model", "calculate_score.py", SCORE, NEEDS, legacy, BAD, ("--model",)),
        Case("score-legacy-control", "calculate_score.py", SCORE + ("--model", "resnet23", "--nmaps", "4"), NEEDS,
             legacy, OK),
        Case("score-legacy-wrong_nmaps", "calculate_score.py", SCORE + ("--model", "resnet23", "--nmaps", "16"), NEEDS,
             legacy, BAD, ("--nmaps",)),
        Case("score-legacy-truncated_params", "calculate_score.py", SCORE + ("--model", "resnet23", "--nmaps", "4"),
             NEEDS, chain(legacy, truncate(p)), BAD, ("params_2.h5",)),
        Case("score-model_flag_disagrees-truncated_params", "calculate_score.py", SCORE + ("--model", "resnet56"),
             NEEDS, truncate(p), BAD, ("params_2.h5",)),
        Case("score-checkpoint_names_a_file", "calculate_score.py", with_flag(SCORE, "--checkpoint", p), NEEDS, None,
             BAD, ("--checkpoint", "params_2.h5"), forbid=("does not exist",)),
    ]
    return out


def flag_cases_score():
    S = "calculate_score.py"
    out = flag_cases("score", S, SCORE, NEEDS, "--batch_size", NON_POSITIVE_INT)
    # 99: the selection takes epochs K-1, 2K-1, ... (98, 197, ...), none of which a 2-epoch run has
    out += flag_cases("score", S, SCORE, NEEDS, "--checkpoint_interval", ("0", "-1", "nan", "x", "99"))
    out += flag_cases("score", S, SCORE, NEEDS, "--checkpoint_epochs", ("x", "-1", "99", "nan", "1.5", ","))
    out += flag_cases("score", S, SCORE + ("--model", "resnet23"), NEEDS, "--nmaps", ("0", "-2", "nan"))
    out += flag_cases("score", S, SCORE, NEEDS, "--seed", ("nan", "x"))
    out += flag_cases("score", S, SCORE, NEEDS, "--batch_size", ("1000",), expect=OK)
    return out


def influence_cases():
    S = "calculate_score.py"
    out = [Case("infl-control", S, INFL, NEEDS, None, OK)]
    out += file_cases("infl", S, INFL, NEEDS, "data/x_val.npy", image_mutations("data/x_val.npy", full=False))
    out += file_cases("infl", S, INFL, NEEDS, "data/y_val.npy", label_mutations("data/y_val.npy", full=False))
    out += flag_cases("infl", S, INFL, NEEDS, "--test_indices", ("-1", "999", "x", ","))
    out += flag_cases("infl", S, INFL, NEEDS, "--top_k", ("0", "-1", "nan"))
    out += flag_cases("infl", S, INFL, NEEDS, "--top_k", ("1000000",), expect=OK)
    out += flag_cases("infl", S, INFL + ("--layers", "all"), NEEDS, "--projection_dim", ("0", "nan", "1000000000"))
    out += flag_cases("infl", S, INFL, NEEDS, "--test_chunk", ("0", "nan"))
    out += flag_cases("infl", S, INFL, NEEDS, "--max_memory_gb", ("nan", "0", "-1", "x"))
    out += flag_cases("infl", S, INFL + ("--save_matrix", "True"), NEEDS, "--max_memory_gb", ("1e-12",),
                      names=("--max_memory_gb", "--save_matrix"))
    out += flag_cases("infl", S, INFL + ("--layers", "all", "--projection_dim", "4"), NEEDS, "--seed", ("-1",),
                      expect=OK)
    out.append(Case("infl-predicted_label-x_val-nan_pixel", S, INFL + ("--test_label", "predicted"), NEEDS,
                    edit_array("data/x_val.npy", as_float_with(NAN)), BAD, ("x_val.npy",)))
    return out


def cases():
    return (array_cases() + manifest_cases() + checkpoint_cases() + flag_cases_score() + influence_cases()
            + cases_reliability.score_cases())
