"""Figures and metrics of mislabeled-sample detection from self-influence scores.

    python mislabel_analysis.py --input out/data [--scores FILE] [--output figure]
                                [--ckpt_analysis True] [--save_extracted True] [--influence influence_topk.npz]

Reads y_train.npy (clean labels), y_shuffle_train.npy (the labels training saw; mislabeled = they differ),
x_train.npy and the score file (default --input/influence_all_epoch.npy). Beside the score file it also uses
loss_last_epoch.npy (a baseline ranking), probabilities.npy (suggested labels), scores.json (data set name for class
names) and, with --ckpt_analysis, {epoch}_influence.npy; files.json of an image import gives file and class names,
and its validation images (x_val.npy, y_val.npy, scored as val_influence.npy and val_probabilities.npy) are audited
too. Always writes label_issues.csv (every sample, most suspicious first, with a suggested label; tracin/review.py) and
label_issues_top.png (its top --top rows), and report.html shows the top rows. With clean labels it also writes
self_influence_distribution.png, score_curve.png and metrics.json's detection metrics; without them (an image
import: no y_train.npy, formats.clean_labels_known) class_score_distribution.png and a review report instead, and
optionally {epoch}_top_influence_sample.png, checkpoint_metrics.png, extracted_samples/decile_XX.png
and influence_examples.png. Every input is validated before anything is written. Metrics: see tracin/metrics.py;
file layouts: tracin/formats.py.
"""
import os
import sys
import warnings

import numpy as np

import datasets
import imagefolder
from args import CliError, analysis_parser
from tracin import formats, gate, normalize, plots, review
from tracin.arrays import check_labels
from tracin.io import (
    atomic_path,
    check_writable,
    ensure_dir,
    load_json,
    lock_folder,
    remove_temporaries,
    save_json,
)
from tracin.manifest import check_model
from tracin.metrics import (
    RECALL_FRACTIONS,
    decile_bounds,
    oracle_scores,
    random_metrics,
    rank_order,
    ranking_metrics,
    top_fraction_per_class,
)
from tracin.report import issues_table, metrics_table, report_html
from utils import run_cli

REPORT_ROWS = 100  # report.html lists at most this many rows of label_issues.csv (the CSV has them all)


def readable(text):
    """`text` as UTF-8 can hold it: the bytes of a file or class name that is not UTF-8 (kept by Python as
    surrogates) become U+FFFD, so that report.html is valid UTF-8 and shows the rest of the name."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def warn(msg):
    print(f"mislabel_analysis.py: warning: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------- loading

def guess_dataset(image_shape, n_labels, info):
    """Data set name for class names: scores.json's model.dataset, else the one whose image shape matches."""
    name = ((info or {}).get("model") or {}).get("dataset")
    if name in datasets.SPECS:
        return name
    for key, spec in datasets.SPECS.items():
        if image_shape is not None and tuple(image_shape) == tuple(spec.input_shape) and n_labels <= spec.n_classes:
            return key
    return None


def read_info(folder, notes, name=formats.SCORES_JSON):
    """The scorer's JSON record beside a score file, checked: its model (tracin.manifest's schema) and checkpoint
    list. None when absent or damaged (with a note for `notes`: it only adds class names and the checkpoints)."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    try:
        info = load_json(path)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        if "model" in info:
            check_model(info["model"], path)
        listed = info.get("checkpoints", [])
        if not (isinstance(listed, list) and all(isinstance(c, dict) and isinstance(c.get("epoch"), int)
                                                 for c in listed)):
            raise ValueError("'checkpoints' is not a list of {epoch: ...} objects")
        return info
    except (OSError, ValueError) as e:  # InputError is a ValueError
        notes.append(f"ignoring {path} ({e})")
        return None


def known_classes(info):
    """The number of classes of the model that made the scores (scores.json / influence.json), or None."""
    return (info or {}).get("model", {}).get("n_classes")


def checkpoint_files(folder, info, notes):
    """[(epoch, path)] of {epoch}_influence.npy beside the score file, in epoch order; restricted to the
    checkpoints scores.json lists when it is there (older files from another run are ignored, with a note)."""
    found = {}
    for name in os.listdir(folder):
        m = formats.EPOCH_SCORES_RE.match(name)
        if m:
            found[int(m.group(1))] = os.path.join(folder, name)
    listed = [c.get("epoch") for c in (info or {}).get("checkpoints", []) if isinstance(c, dict)]
    if listed:
        extra = sorted(set(found) - set(listed))
        if extra:
            notes.append(f"ignoring {', '.join(f'{e}_influence.npy' for e in extra)} in {folder}: not among the "
                         "checkpoints of its scores.json")
        found = {e: p for e, p in found.items() if e in listed}
    return sorted(found.items())


def load_analysis(args, input_dir, notes):
    need, optional = formats.label_files(input_dir)
    arrays = datasets.load_arrays(input_dir, need=need, optional=optional + (formats.X_TRAIN,))
    y_given = arrays["y_shuffle_train"][:, 0]
    y_true = arrays["y_train"][:, 0] if "y_train" in arrays else None  # formats.clean_labels_known
    if y_true is not None and y_true.size != y_given.size:
        raise CliError(f"{input_dir}/{formats.Y_TRAIN} has {y_true.size} labels but {formats.Y_NOISY} has "
                       f"{y_given.size}: the arrays come from different runs")
    x = arrays.get("x_train")
    if y_true is None and (args.ckpt_analysis or args.save_extracted):
        notes.append(f"--ckpt_analysis and --save_extracted measure detection against clean labels, which "
                     f"{input_dir} lacks ({formats.Y_TRAIN}): ignored; see {formats.LABEL_ISSUES} and its sheet")
    if args.save_extracted and x is None:
        raise CliError(f"{input_dir}/{formats.X_TRAIN} is missing: --save_extracted True draws the training images")
    n = y_given.size
    score_path = args.scores or os.path.join(input_dir, formats.SCORES)
    if not os.path.isfile(score_path):
        raise CliError(f"score file {score_path} is missing: write it with calculate_score.py --input {input_dir} "
                       "--checkpoint CHECKPOINT_FOLDER, or pass --scores FILE")
    scores = formats.read_score_vector(score_path, n)
    folder = os.path.dirname(os.path.abspath(score_path))
    info = read_info(folder, notes)
    if known_classes(info):  # labels the scored model could not have
        for name, y in ((formats.Y_TRAIN, y_true), (formats.Y_NOISY, y_given)):
            if y is not None:
                check_labels(y, known_classes(info), os.path.join(input_dir, name))
    loss_path = os.path.join(folder, formats.LOSS)
    loss = formats.read_score_vector(loss_path, n, "loss file") if os.path.isfile(loss_path) else None
    ckpts = []
    if args.ckpt_analysis and y_true is not None:
        files = checkpoint_files(folder, info, notes)
        if not files:
            raise CliError(f"no {{epoch}}_influence.npy beside {score_path}: --ckpt_analysis True needs "
                           "calculate_score.py --save_every_epoch True")
        ckpts = [(epoch, path, formats.read_score_vector(path, n, "checkpoint score file")) for epoch, path in files]
    file_list = imagefolder.read_file_list(input_dir, n)
    p_path = os.path.join(folder, formats.PROBABILITIES)
    probabilities = review.read_probabilities(p_path, y_given) if os.path.isfile(p_path) else None
    if probabilities is None:  # scores from before they were kept: a ranking without suggested labels
        notes.append(f"no {formats.PROBABILITIES} beside the scores ({p_path}): {formats.LABEL_ISSUES} gets no "
                     "suggested labels; rerun calculate_score.py to add them")
    n_classes = int(max(y_given.max(), -1 if y_true is None else y_true.max())) + 1
    dataset = None if file_list else guess_dataset(None if x is None else x.shape[1:], n_classes, info)
    n_classes = max(n_classes, datasets.SPECS[dataset].n_classes) if dataset else n_classes
    names = datasets.class_names(n_classes, dataset)
    if file_list is not None:
        names = file_list["classes"]
        if len(names) < n_classes or (probabilities is not None and len(names) != probabilities.shape[1]):
            raise CliError(f"{os.path.join(input_dir, formats.FILE_LIST)} names {len(names)} classes but the labels "
                           "or the probabilities need others: it comes from another import; import the images again")
    elif probabilities is not None:
        names = datasets.class_names(max(n_classes, probabilities.shape[1]), dataset)
    validation = gate.read_validation((info or {}).get("checkpoint"))
    val = load_validation(input_dir, folder, file_list, probabilities is not None, len(names), notes)
    return dict(val=val, x=x, y_true=y_true, y_given=y_given, scores=scores, score_path=os.path.abspath(score_path),
                validation=validation, trusted=validation is None or validation["trusted"],
                loss=loss, loss_path=os.path.abspath(loss_path) if loss is not None else None, ckpts=ckpts,
                names=names, n_classes=len(names), dataset=dataset, probabilities=probabilities,
                files=file_list["train"] if file_list else None)


def load_validation(input_dir, folder, file_list, with_probabilities, n_classes, notes):
    """An image import's validation images scored beside the training ones (formats.VAL_FILES in `folder`):
    {'x' (or None), 'given', 'scores', 'probabilities', 'files'}; None for other folders and older scorings."""
    if file_list is None or not file_list["val"]:
        return None
    if not os.path.isfile(os.path.join(folder, formats.VAL_SCORES)):
        notes.append(f"no {formats.VAL_SCORES} beside the scores: {formats.LABEL_ISSUES} lists the training images "
                     f"only; rerun calculate_score.py to audit the {len(file_list['val'])} validation images too")
        return None
    arrays = datasets.load_arrays(input_dir, need=(formats.Y_VAL,), optional=(formats.X_VAL,))
    given = check_labels(arrays["y_val"], n_classes, os.path.join(input_dir, formats.Y_VAL))
    if given.size != len(file_list["val"]):
        raise CliError(f"{os.path.join(input_dir, formats.FILE_LIST)} lists {len(file_list['val'])} validation files "
                       f"but {formats.Y_VAL} has {given.size} labels: it comes from another import")
    scores, probabilities = review.read_validation(folder, given, with_probabilities)
    return {"x": arrays.get("x_val"), "given": given, "scores": scores, "probabilities": probabilities,
            "files": file_list["val"]}


def _folder(value, npz_path, what):
    """A folder named in the .npz: as written, else relative to the .npz's own folder."""
    for cand in (value, os.path.join(os.path.dirname(os.path.abspath(npz_path)), value)):
        if os.path.isdir(cand):
            return cand
    raise CliError(f"{npz_path} names {what} folder '{value}', which does not exist: pass --input FOLDER "
                   "(train arrays) or move the folders back")


def load_influence(args, notes):
    path = args.influence
    if not os.path.isfile(path):
        raise CliError(f"influence file {path} is missing: write it with calculate_score.py --mode influence")
    npz = formats.read_topk(path, need_input=not args.input)
    t = npz["test_indices"].reshape(-1)
    train_dir = args.input or _folder(str(npz["input"]), path, "train")
    test_dir = _folder(str(npz["test_input"]), path, "test")
    train = datasets.load_arrays(train_dir, need=(formats.X_TRAIN, formats.Y_NOISY), optional=(formats.Y_TRAIN,))
    test = datasets.load_arrays(test_dir, need=(formats.X_VAL,), optional=(formats.Y_VAL,))
    n_train, n_test = len(train["x_train"]), len(test["x_val"])
    if train["x_train"].shape[1:] != test["x_val"].shape[1:]:
        raise CliError(f"{path} pairs test images of shape {test['x_val'].shape[1:]} ({test_dir}/{formats.X_VAL}) "
                       f"with training images of shape {train['x_train'].shape[1:]} ({train_dir}/{formats.X_TRAIN}): "
                       "its folders come from different data sets; pass --input FOLDER of the run it was made from")
    if t.size and (t.min() < 0 or t.max() >= n_test):
        raise CliError(f"{path}: test_indices reach {int(t.max())} but {test_dir}/{formats.X_VAL} has {n_test} samples")
    for k in ("proponents", "opponents"):
        a = npz[k]
        if a.size and (a.min() < 0 or a.max() >= n_train):
            raise CliError(f"{path}: {k} reach index {int(a.max())} but {train_dir}/{formats.X_TRAIN} has {n_train} "
                           "samples: the file comes from another data folder")
    y_given = train["y_shuffle_train"][:, 0]
    y_true = train["y_train"][:, 0] if "y_train" in train else y_given
    folder = os.path.dirname(os.path.abspath(path))
    info = read_info(folder, notes, formats.INFLUENCE_JSON) or read_info(folder, notes)
    test_labels = npz["test_labels"].reshape(-1).astype(np.int64)
    labels = {os.path.join(train_dir, formats.Y_NOISY): y_given, os.path.join(train_dir, formats.Y_TRAIN): y_true}
    if "y_val" in test:
        labels[os.path.join(test_dir, formats.Y_VAL)] = test["y_val"][:, 0]
    n_classes = known_classes(info) or int(max(y.max() for y in labels.values())) + 1
    for where, y in labels.items():
        check_labels(y, n_classes, where)
    if test_labels.size and test_labels.max() >= n_classes:
        raise CliError(f"{path}: test_labels reach {int(test_labels.max())} but the model has {n_classes} classes "
                       f"(0..{n_classes - 1}): rewrite it with calculate_score.py's influence mode")
    dataset = guess_dataset(train["x_train"].shape[1:], n_classes, info)
    n_classes = max(n_classes, datasets.SPECS[dataset].n_classes) if dataset else n_classes
    return dict(npz=npz, x_train=train["x_train"], y_given=y_given, y_true=y_true, x_test=test["x_val"],
                y_test=test.get("y_val"), names=datasets.class_names(n_classes, dataset), path=path)


# --------------------------------------------------------------------------------------------------- writing

def run_review(d, args, out):
    """label_issues.csv and the sheet of its top rows (always); without clean labels also the per-class score
    figure and the metrics.json of a review. Returns (rows, metrics or None, figures)."""
    a = review.audited({"scores": d["scores"], "given": d["y_given"], "probabilities": d["probabilities"],
                        "files": d["files"], "x": d["x"]}, d["val"])
    rows = review.label_issues(a["scores"], a["given"], a["probabilities"], d["names"], a["files"], d["trusted"],
                               a["split"], a["index"])
    review.write_label_issues(os.path.join(out, formats.LABEL_ISSUES), rows)
    figures = []
    if a["x"] is not None:
        cells = review.sheet_cells(rows, a["x"], args.top)
        title = (f"The {len(cells)} most suspicious of {len(rows)} samples by self-influence (#rank, given "
                 "\u2192 suggested label, file, score; " + ("red: flagged as a label issue)"
                 if d["trusted"] else "the model is too weak to trust: suggestions are guesses)"))
        figures.append((f"Top {len(cells)} of {formats.LABEL_ISSUES}", plots.plot_image_grid(
            cells, min(8, max(1, len(cells))), os.path.join(out, formats.REVIEW_SHEET_PNG), title, caption_lines=3)))
    if d["y_true"] is not None:
        return rows, None, figures
    dist = review.class_score_distribution(a["scores"], a["given"], d["names"], a["split"])
    figures.insert(0, ("Self-influence per given class", plots.plot_class_scores(
        dist, os.path.join(out, formats.CLASS_SCORES_PNG))))
    metrics = {"score_file": d["score_path"], "n_train": int(d["scores"].size), "clean_labels": False,
               "label_issues": os.path.abspath(os.path.join(out, formats.LABEL_ISSUES)),
               "suggestions": d["probabilities"] is not None, "validation": d["validation"],
               "estimated_label_issues": review.estimated_issues(rows),
               "classes": [{k: v for k, v in c.items() if k != "scores"} for c in dist]}
    return rows, metrics, figures


def run_analysis(d, args, out, rows):
    mis = d["y_true"] != d["y_given"]
    n, n_mis = mis.size, int(mis.sum())
    if n_mis == 0:
        warn("no mislabeled samples (y_train.npy equals y_shuffle_train.npy): detection metrics are undefined "
             "(null); train with --shuffle_label True to measure them")
    rankings = {"tracin": d["scores"]}
    if d["loss"] is not None:
        rankings["loss"] = d["loss"]
    metrics = {
        "validation": d["validation"], "estimated_label_issues": review.estimated_issues(rows),
        "score_file": d["score_path"], "loss_file": d["loss_path"], "n_train": int(n), "n_mislabeled": n_mis,
        "noise_rate": n_mis / n, "dataset": d["dataset"],
        "recall_fractions": list(RECALL_FRACTIONS),
        "recall_rounding": "recall_at(f) counts the floor(f*N + 0.5) highest-scored samples (f*N rounded half up); "
                           "ties: stable sort of the descending score (lower index first)",
        "rankings": {name: ranking_metrics(s, mis) for name, s in rankings.items()},
    }
    metrics["rankings"]["random"] = random_metrics(mis)
    metrics["rankings"]["oracle"] = ranking_metrics(oracle_scores(mis), mis)
    figures = [("Self-influence of clean vs shuffled samples",
                plots.plot_distribution(d["scores"], mis, os.path.join(out, formats.DISTRIBUTION_PNG))),
               ("Detection curve", plots.plot_score_curve(
                   {("TracIn self-influence" if k == "tracin" else "loss at last checkpoint"): v
                    for k, v in rankings.items()}, mis, os.path.join(out, formats.CURVE_PNG)))]
    if d["ckpts"]:
        metrics["checkpoints"] = []
        for epoch, path, s in d["ckpts"]:
            m = ranking_metrics(s, mis)
            metrics["checkpoints"].append(dict(epoch=epoch, file=os.path.abspath(path), **m))
            counts = top_fraction_per_class(s, mis, d["y_true"], d["n_classes"], 0.1)
            figures.append((f"Checkpoint {epoch}: mislabeled per true class in its top 10%",
                            plots.plot_class_counts(counts, d["names"],
                                                       os.path.join(out, formats.epoch_top_png(epoch)),
                                                       f"Epoch {epoch}: mislabeled samples among the top 10% "
                                                       f"({int(counts.sum())} of {n_mis})")))
        tr = metrics["rankings"]["tracin"]
        figures.insert(2, ("Detection quality per checkpoint", plots.plot_checkpoint_metrics(
            [c["epoch"] for c in metrics["checkpoints"]], [c["recall_at"]["0.1"] for c in metrics["checkpoints"]],
            [c["auroc"] for c in metrics["checkpoints"]], os.path.join(out, formats.CHECKPOINT_METRICS_PNG),
            total=(tr["recall_at"]["0.1"], tr["auroc"]))))
    if args.save_extracted:
        order = rank_order(d["scores"])
        ensure_dir(os.path.join(out, formats.SHEETS_DIR))
        for i, (a, b) in enumerate(decile_bounds(n)):
            idx = order[a:b]
            shown = idx[:args.sheet_size]
            title = (f"Decile {i + 1} by self-influence: ranks {a + 1}-{b} of {n}, {int(mis[idx].sum())} of "
                     f"{len(idx)} mislabeled; showing the top {len(shown)} (#index, true / given label, score; "
                     "red = mislabeled)")
            cells = plots.sample_sheet_cells(shown, d["x"], d["y_true"], d["y_given"], d["names"], d["scores"])
            figures.append((f"Decile {i + 1} (ranks {a + 1}-{b})", plots.plot_image_grid(
                cells, min(8, max(1, len(cells))), os.path.join(out, formats.decile_png(i + 1)), title,
                caption_lines=3)))
    return metrics, figures


def draw_influence(d, args, out):
    z, names = d["npz"], d["names"]
    T = z["test_indices"].size
    rows = min(T, args.influence_rows)
    k_p, k_o = z["proponents"].shape[1], z["opponents"].shape[1]
    ncols = 1 + 1 + k_p + 1 + k_o  # test | gap | proponents | gap | opponents
    cells = []
    for r in range(rows):
        t, lab = int(z["test_indices"][r]), int(z["test_labels"][r])
        cap = f"test #{t}\nlabel {names[lab]}"
        if d["y_test"] is not None and int(d["y_test"][t, 0]) != lab:
            cap += f" (val {names[int(d['y_test'][t, 0])]})"
        if "self_influence" in z and z["self_influence"].size == T:
            cap += f"\nself {float(z['self_influence'][r]):.3g}"
        cells += [dict(image=d["x_test"][t], caption=cap, frame="blue"), None]
        for group, scores, gap in (("proponents", "proponent_scores", True), ("opponents", "opponent_scores", False)):
            for j in range(z[group].shape[1]):
                i = int(z[group][r, j])
                g, tr = int(d["y_given"][i]), int(d["y_true"][i])
                bad = g != tr
                cells.append(dict(image=d["x_train"][i], frame="red" if bad else None,
                                  color="tab:red" if bad else "black",
                                  caption=f"#{i}: {names[g]}" + (f"\n(true {names[tr]})" if bad else "")
                                  + f"\n{float(z[scores][r, j]):+.3g}"))
            if gap:
                cells.append(None)
    how = str(z["normalize"])
    title = (f"Influence of training samples on test predictions ({rows} of {T} test samples), scores "
             f"--normalize {how}: {normalize.DEFINITIONS[how]}. Proponents (highest score first) and opponents "
             "(most negative first); given label, red = mislabeled")
    headers = {0: "test", 2: f"top {k_p} proponents", 3 + k_p: f"top {k_o} opponents"}
    return plots.plot_image_grid(cells, ncols, os.path.join(out, formats.INFLUENCE_PNG), title,
                                    col_headers=headers, caption_lines=3)


def print_metrics(rows, metrics, out):
    """The stdout summary with clean labels: detection metrics, and where the label-issue list is."""
    print(f"{metrics['n_mislabeled']} of {metrics['n_train']} samples mislabeled; scores: {metrics['score_file']}")
    print(metrics_table(metrics["rankings"]))
    if metrics.get("checkpoints"):
        print("\nper checkpoint (its own term of the sum):")
        print(metrics_table({f"epoch {c['epoch']}": c for c in metrics["checkpoints"]}))
    r10 = metrics["rankings"]["tracin"]["recall_at"].get("0.1")
    if r10 is not None:
        print(f"\nTracIn found {r10:.1%} of the mislabeled samples in the top 10% of the ranking; "
              f"figures and report: {os.path.abspath(out)}")
    print(f"all {len(rows)} samples, most suspicious first, with suggested labels: "
          f"{os.path.abspath(os.path.join(out, formats.LABEL_ISSUES))}")
    print_gate(metrics)
    sys.stdout.flush()


def print_gate(metrics):
    """The model check's sentence (tracin.gate) and the estimated number of label issues."""
    if metrics.get("validation"):
        print(metrics["validation"]["sentence"])
    if metrics.get("estimated_label_issues") is not None:
        print(f"estimated label issues: {metrics['estimated_label_issues']} (rows with is_label_issue = 1: the "
              "model prefers the suggested class, or the self-influence is an outlier; review those first)")


def print_review(rows, metrics, out):
    """The stdout summary of a review (no clean labels): where the list is and its first rows."""
    print(f"clean labels unknown: {len(rows)} samples listed, most suspicious first, in "
          f"{metrics['label_issues']}; figures and report: {os.path.abspath(out)}")
    print_gate(metrics)
    for r in rows[:10]:
        suggestion = f" -> {r['suggested_class']} (p={r['suggested_probability']:.2f})" if r["suggested_class"] else ""
        print(f"  #{r['rank']:<3} {r['file'] or 'index ' + str(r['index'])}: {r['given_class']}{suggestion}, "
              f"self-influence {r['self_influence']:.3g}")
    sys.stdout.flush()


def main(argv=None):
    # a class name in a script the font lacks draws as a box: not worth a warning on a successful run
    warnings.filterwarnings("ignore", message="Glyph .* missing from")
    args = analysis_parser().parse_args(argv)
    if args.input is None and args.influence is None:
        raise CliError("--input FOLDER is required (or --influence influence_topk.npz)")
    if args.input is None and (args.scores or args.ckpt_analysis or args.save_extracted):
        raise CliError("--scores, --ckpt_analysis and --save_extracted need --input FOLDER (the labels)")
    # validate everything before writing anything; notes (damaged side files ignored) only then
    check_writable(args.output, "--output")
    notes = []
    data = load_analysis(args, args.input, notes) if args.input is not None else None
    infl = load_influence(args, notes) if args.influence is not None else None
    for note in notes:
        warn(note)
    out = ensure_dir(args.output)
    lock_folder(out, "--output")
    for folder in (out, os.path.join(out, formats.SHEETS_DIR)):
        remove_temporaries(folder)  # half-written outputs of a run that was killed
    figures, metrics, rows = [], {}, None
    if data is not None:
        rows, metrics, review_figures = run_review(data, args, out)
        if metrics is None:  # clean labels known: detection metrics and curves; the report's table shows the top
            metrics, figures = run_analysis(data, args, out, rows)
        else:
            figures = review_figures
    if infl is not None:
        figures.append(("Proponents and opponents of test samples", draw_influence(infl, args, out)))
    if data is not None:
        n_val = sum(r["split"] == review.VALIDATION for r in rows)
        metrics.update(n_val=n_val, n_audited=len(rows))
        save_json(os.path.join(out, formats.METRICS_JSON), metrics)
        shown = rows[:min(REPORT_ROWS, review.top_count(len(rows), args.top))]
        table = issues_table(shown, len(rows), formats.LABEL_ISSUES)
        with atomic_path(os.path.join(out, formats.REPORT)) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(readable(report_html(metrics, figures, issues_html=table)))
        (print_review if data["y_true"] is None else print_metrics)(rows, metrics, out)
        if data["files"] is not None:
            print(f"audited {len(rows) - n_val} training and {n_val} validation images")
    print(f"wrote {len(figures)} figures" + (f", {formats.LABEL_ISSUES}, metrics.json and report.html"
                                             if data is not None else "")
          + f" to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
