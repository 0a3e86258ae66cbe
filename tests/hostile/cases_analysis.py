"""Hostile cases of mislabel_analysis.py: the labels, the score files beside each other (scores, losses,
per-checkpoint terms, scores.json), the images for --save_extracted, influence_topk.npz, and its numeric flags."""
import json
import os

import numpy as np

from . import cases_reliability
from .common import INF, NAN, damaged_file, file_cases, flag_cases, label_mutations
from .harness import ANY, BAD, OK, Case
from .mutate import (
    as_float_with,
    chain,
    edit_array,
    edit_json,
    npz_edit,
    overwrite,
    remove,
    set_value,
    write_text,
)
from .pipeline import N_TRAIN

A = "mislabel_analysis.py"
ANA = ("--input", "data", "--scores", "scores/influence_all_epoch.npy", "--output", "fig")
NPZ = ("--influence", "infl/influence_topk.npz", "--output", "fig")
NEEDS = ("data", "scores")


def metrics_of_base(work, err, base):
    """The control run counts the base data's 10 shifted labels (every 10th of 96) and ranks 96 samples."""
    with open(os.path.join(work, "fig", "metrics.json")) as f:
        m = json.load(f)
    got = (m["n_train"], m["n_mislabeled"])
    return [] if got == (N_TRAIN, 10) else [f"metrics.json: (n_train, n_mislabeled) = {got}, expected (96, 10)"]


def score_mutations(rel):
    """A score-like vector (N,) float64."""
    return damaged_file(rel) + [
        ("bytes_ff_mid", overwrite(rel, at=128 + 8 * 40, pattern=b"\xff", n=16), BAD),  # float64 NaN
        ("nan_score", edit_array(rel, set_value(NAN)), BAD),
        ("inf_score", edit_array(rel, set_value(INF)), BAD),
        ("negative_score", edit_array(rel, set_value(-1.0)), ANY),
        ("text_dtype", edit_array(rel, lambda a: a.astype(str)), BAD),
        ("one_row_short", edit_array(rel, lambda a: a[:-1]), BAD),
        ("two_columns", edit_array(rel, lambda a: np.stack([a, a], 1)), BAD),
        ("no_rows", edit_array(rel, lambda a: a[:0]), BAD),
    ]


def score_cases():
    out = [Case("ana-control", A, ANA, NEEDS, None, OK, check=metrics_of_base)]
    # --scores may name any ranking (a loss, a margin): negative scores may be refused or ranked, not crash
    out += file_cases("ana", A, ANA, NEEDS, "scores/influence_all_epoch.npy",
                      score_mutations("scores/influence_all_epoch.npy"))
    loss = "scores/loss_last_epoch.npy"
    keep = ("truncated", "nan_score", "one_row_short", "text_dtype")
    out += file_cases("ana", A, ANA, NEEDS, loss, [m for m in score_mutations(loss) if m[0] in keep])
    ck = "scores/1_influence.npy"
    out += file_cases("ana", A, ANA + ("--ckpt_analysis", "True"), NEEDS, ck,
                      [m for m in score_mutations(ck) if m[0] in ("truncated", "nan_score", "one_row_short")])
    prob = "scores/probabilities.npy"  # (N, classes): the suggested labels of label_issues.csv
    out += file_cases("ana", A, ANA, NEEDS, prob, [
        damaged_file(prob)[0], ("nan_probability", edit_array(prob, set_value(NAN)), BAD),
        ("one_row_short", edit_array(prob, lambda a: a[:-1]), BAD),
        ("text_dtype", edit_array(prob, lambda a: a.astype(str)), BAD)])
    js = "scores/scores.json"
    # scores.json only adds class names and the checkpoint list: damage may be ignored (with a warning), never crash
    info = [("not_json", write_text(js, "{\"mod")), ("array", write_text(js, "[]")),
            ("model_text", edit_json(js, lambda m: m.update(model="digits"))),
            ("dataset_list", edit_json(js, lambda m: m["model"].update(dataset=["digits"]))),
            ("checkpoints_number", edit_json(js, lambda m: m.update(checkpoints=2)))]
    out += [Case(f"ana-scores.json-{n}", A, ANA + ("--ckpt_analysis", "True"), NEEDS, fn, ANY, ("scores.json",))
            for n, fn in info]
    return out


def label_cases():
    out = []
    for rel in ("data/y_train.npy", "data/y_shuffle_train.npy"):
        out += file_cases("ana", A, ANA, NEEDS, rel, label_mutations(rel, full=False))
    # a label of 2**40 makes the number of classes 2**40 + 1 (one costly case: it runs into the memory limit)
    out += file_cases("ana", A, ANA, NEEDS, "data/y_train.npy",
                      [m for m in label_mutations("data/y_train.npy") if m[0] == "huge_label"])
    # without x_train.npy nothing else fixes the number of labels: their shape alone must be checked
    out.append(Case("ana-y_train-extra_dim_without_images", A, ANA, NEEDS,
                    chain(remove("data/x_train.npy"), edit_array("data/y_train.npy", lambda a: a[:, :, None])), BAD,
                    ("y_train.npy",)))
    x = "data/x_train.npy"
    imgs = [("nan_pixel", edit_array(x, as_float_with(NAN)), BAD), ("truncated", damaged_file(x)[0][1], BAD),
            ("no_channels", edit_array(x, lambda a: a[:, :0]), BAD),
            ("text_dtype", edit_array(x, lambda a: a.astype(str)), BAD),
            ("three_dims", edit_array(x, lambda a: a[:, 0]), BAD)]
    out += file_cases("ana", A, ANA + ("--save_extracted", "True"), NEEDS, x, imgs)
    out.append(Case("ana-data-5_samples", A, ANA, NEEDS,
                    chain(*[edit_array(f"data/{k}.npy", lambda a: a[:5]) for k in ("x_train", "y_train",
                                                                                   "y_shuffle_train")],
                          *[edit_array(f"scores/{k}.npy", lambda a: a[:5]) for k in ("influence_all_epoch",
                                                                                     "loss_last_epoch",
                                                                                     "probabilities")]),
                    ANY, ("y_train.npy",)))
    return out


def flags():
    out = flag_cases("ana", A, ANA + ("--save_extracted", "True"), NEEDS, "--sheet_size", ("0", "-1", "nan", "x"))
    out += flag_cases("ana", A, NPZ, ("data", "infl"), "--influence_rows", ("0", "nan"))
    return out


def other_data_set(work):
    """Test images of another shape (3x8x8) in a folder the .npz names as its test input."""
    os.makedirs(os.path.join(work, "other"))
    np.save(os.path.join(work, "other", "x_val.npy"), np.zeros((32, 3, 8, 8), dtype=np.uint8))
    np.save(os.path.join(work, "other", "y_val.npy"), np.zeros((32, 1), dtype=np.int64))
    npz_edit("infl/influence_topk.npz", lambda z: z.update(test_input=np.array(os.path.join(work, "other"))))(work)


def npz_cases():
    z = "infl/influence_topk.npz"
    edit = (lambda fn: npz_edit(z, fn))
    muts = [
        ("truncated", damaged_file(z)[0][1]), ("empty", damaged_file(z)[2][1]),
        ("bytes_overwritten", overwrite(z, 0.5, None, 64)),
        ("missing_opponents", edit(lambda a: a.pop("opponents"))),
        ("proponents_extra_row", edit(lambda a: a.update(proponents=np.vstack([a["proponents"]] * 2)[:4]))),
        ("proponents_nan", edit(lambda a: a.update(proponents=as_float_with(NAN, 0)(a["proponents"])))),
        ("proponents_out_of_range", edit(lambda a: a.update(proponents=set_value(N_TRAIN, 0)(a["proponents"])))),
        ("test_labels_negative", edit(lambda a: a.update(test_labels=set_value(-1, 0)(a["test_labels"])))),
        ("test_labels_99", edit(lambda a: a.update(test_labels=set_value(99, 0)(a["test_labels"])))),
        ("test_indices_out_of_range", edit(lambda a: a.update(test_indices=set_value(999, 0)(a["test_indices"])))),
        ("self_influence_nan", edit(lambda a: a.update(self_influence=set_value(NAN, 0)(a["self_influence"])))),
        ("self_influence_negative", edit(lambda a: a.update(self_influence=set_value(-1.0, 0)(a["self_influence"])))),
        ("scores_inf", edit(lambda a: a.update(proponent_scores=set_value(INF, 0)(a["proponent_scores"])))),
        ("test_images_of_another_data_set", other_data_set),
    ]
    out = [Case("npz-control", A, NPZ, ("data", "infl"), None, OK)]
    out += [Case(f"npz-{n}", A, NPZ, ("data", "infl"), fn, BAD, ("influence_topk.npz",)) for n, fn in muts]
    return out


def cases():
    return score_cases() + label_cases() + flags() + npz_cases() + cases_reliability.analysis_cases()
