"""TracInCP self-influence of every training sample (see tracin/maths.py and tracin/job_self.py).

    python calculate_score.py --input out/data --checkpoint out/ckpt [--output out/data] [-c cudnn]
    python calculate_score.py --input out/data --checkpoint run1/ckpt,run2/ckpt,run3/ckpt   (an ensemble)
    python calculate_score.py --input my/data --checkpoint my/ckpt --network my_net.py:net --lrs 0.1,0.01
                                                                    (your own network: docs/networks.md)

Reads x_train.npy and y_shuffle_train.npy (the noisy labels training saw) from --input and the checkpoints, their
learning rates and the model from --checkpoint (checkpoints.json). Writes into --output (layouts: tracin/formats.py):
  influence_all_epoch.npy   (N,) self-influence, aligned with x_train.npy
  {epoch}_influence.npy     with --save_every_epoch True: each checkpoint's eta-weighted term (they sum to the total)
  loss_last_epoch.npy       (N,) per-sample loss at the last selected checkpoint (a baseline ranking)
  probabilities.npy         (N, classes) eta-weighted mean softmax probabilities over the selected checkpoints
  scores.json               checkpoints, eta, layers, method, speed, versions
  val_influence.npy, val_loss_last_epoch.npy, val_probabilities.npy: an image import's (files.json) validation
                            images scored the same way with their labels y_val.npy (held-out self-influence), so
                            that the analysis audits every file; other folders' x_val.npy is a test set, not scored
An ensemble: --checkpoint A,B,C names several train.py runs on the same arrays (differing in --seed; their
manifests' data fingerprints must agree). The score is the sum of the runs' self-influence; influence_run{r}.npy
keeps run r's score, loss_last_epoch.npy and probabilities.npy are means over the runs, scores.json lists the runs.
Work is cached per (checkpoint, shard of samples) under --output/tracin_cache: a killed run continues where it
stopped when rerun with the same settings.

--mode influence (train -> test, see tracin/job_influence.py): TracIn(z, z') of test samples z' (--test_input's
x_val.npy, labels y_val.npy or --test_label predicted) against every training sample. Writes influence_topk.npz
(per test sample: top-k proponents and opponents with scores, its self-influence), influence.json and, with
--save_matrix True, influence_matrix.npy (n_test, n_train). Cached per (test chunk, training shard) unit the same way.
--normalize (tracin/normalize.py) chooses the scores: cosine (the default) = sum_i eta_i cos(g_i(z), g_i(z')), which
picks training samples that resemble the test sample; none = raw TracIn, where a few large-gradient (often mislabeled)
samples top every list; renorm and total_cosine divide by the training gradient's norm. --layers defaults to
last_block there: the last residual unit and the final affine layer (docs/explanations.md).

Under an MPI launcher (mpiexec -n N ...; see tracin/parallel.py) the units are spread over the ranks and rank 0
writes the same files as one process.
"""
import dataclasses
import os
import platform
import sys

import numpy as np

import datasets
from args import CliError, parse_score_args, score_parser
from tracin import checkpoints, defaults, formats, normalize
from tracin.api import (
    CheckpointEnsemble,
    EnsembleResult,
    load_checkpoints,
    plan_influence,
    plan_self_influence,
)
from tracin.arrays import check_labels
from tracin.context import set_context
from tracin.errors import InputError
from tracin.io import (
    check_writable,
    ensure_dir,
    folder_in_use,
    lock_folder,
    remove_temporaries,
    save_json,
    save_npy,
)
from tracin.parallel import launched_under_mpi
from tracin.runs import progress_bar
from utils import (
    check_processes,
    launch,
    mpi_launcher,
    parse_quietly,
    run_mpi_cli,
    skip_failed_imports,
    usable_cores,
)

INFLUENCE_ONLY = ("test_input", "test_indices", "test_label", "top_k", "save_matrix", "projection_dim",
                  "test_chunk", "max_memory_gb", "normalize")


def checkpoint_folders(value):
    """--checkpoint as a list of folders: one, or several separated by commas (an ensemble)."""
    if os.path.isdir(value) or "," not in value:
        return [value]
    return [f for f in value.split(",") if f]


def check_flags(args):
    args.checkpoints = checkpoint_folders(args.checkpoint)
    if len(args.checkpoints) > 1:
        if args.mode == "influence":
            raise CliError("--mode influence takes one --checkpoint folder; several (an ensemble) are for --mode self")
        if args.save_every_epoch:
            raise CliError("--save_every_epoch True takes one --checkpoint folder: score a run alone for its "
                           "per-checkpoint terms")
        for flag in ("model", "network", "lrs"):
            if getattr(args, flag):
                raise CliError(f"--{flag} is for one checkpoint folder without {formats.MANIFEST}; an ensemble's "
                               f"folders need train.py's {formats.MANIFEST}")
    if args.network and args.model:
        raise CliError("give either --network (your own network) or --model (a model of the original example)")
    if args.mode == "influence" and args.save_every_epoch:
        raise CliError("--save_every_epoch True applies to --mode self (per-checkpoint self-influence); --mode "
                       "influence writes influence_topk.npz: drop one of them")
    if args.mode == "self":
        given = [f"--{n}" for n in INFLUENCE_ONLY if getattr(args, n) is not None]
        if given:
            raise CliError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to --mode influence")


def resolve_checkpoints(args, x):
    """(the selected checkpoints, warnings to print once everything is validated); a folder without a manifest
    needs --network (your own network) or --model (the original example's)."""
    import models
    if len(args.checkpoints) > 1:
        ensemble = load_checkpoints(args.checkpoints, epochs=args.checkpoint_epochs, interval=args.checkpoint_interval)
        return ensemble, same_seed_warnings(ensemble)
    legacy_cfg = models.model_config(args.model, 10, x.shape[1:], args.nmaps) if args.model else None
    folder = args.checkpoint
    if os.path.isfile(folder):
        raise CliError(f"--checkpoint '{folder}' is a file: give the folder holding it "
                       f"('{os.path.dirname(folder) or '.'}'), and pick epochs with --checkpoint_epochs")
    if (legacy_cfg is None and not args.network and folder and os.path.isdir(folder)
            and not os.path.isfile(os.path.join(folder, formats.MANIFEST)) and checkpoints.scan_params(folder)):
        raise CliError(f"'{folder}' has no {formats.MANIFEST}: pass --model resnet23|resnet56 (an original-example "
                       "folder) or --network FILE.py:FUNCTION (your own network)")
    ckpts = load_checkpoints(folder, network=args.network, lrs=args.lrs, epochs=args.checkpoint_epochs,
                             interval=args.checkpoint_interval, model=legacy_cfg)
    warnings = []
    if args.network and not ckpts.has_manifest:
        if args.lrs is None:
            warnings.append(f"no --lrs: every checkpoint of {folder} weighs 1 (unweighted, as the original)")
    elif not ckpts.has_manifest:
        rates = "the learning rates of --lrs" if args.lrs else "learning rate 1 (unweighted, as the original)"
        warnings.append(f"{folder} has no {formats.MANIFEST}: scoring every params_*.h5 with --model {args.model} "
                        f"and {rates}")
    elif args.model and args.model != ckpts.model["name"]:
        # the seed's command line names a model; the manifest, written by training, knows which one it was
        warnings.append(f"--model {args.model} ignored: {formats.MANIFEST} records {ckpts.model['name']}")
    warnings += unfinished_warnings(folder, ckpts.manifest)
    return ckpts, warnings


def unfinished_warnings(folder, manifest):
    """A run that has not reached its last epoch: still training (its folder is locked by train.py) or stopped.
    `manifest`: the folder's, as load_checkpoints read it (None without one)."""
    total = (manifest or {}).get("train", {}).get("train_epochs")
    done = max((c["epoch"] for c in (manifest or {}).get("checkpoints", [])), default=None)
    if not isinstance(total, int) or done is None or done >= total:
        return []
    if folder_in_use(folder):
        return [(f"{folder} is still training (epoch {done} of {total} so far): scoring the checkpoints written so "
                 "far; score again when training has finished")]
    return [(f"{folder} stopped after epoch {done} of {total}: scoring the checkpoints written so far (train.py "
             "--resume continues the run)")]


def same_seed_warnings(ensemble):
    """Runs trained with the same seed on the same data are the same run: summing them only repeats it."""
    seeds = {}
    for run in ensemble.runs:
        seeds.setdefault(run.manifest["train"]["seed"], []).append(run.folder)
    return [f"{', '.join(fs)} were trained with the same --seed {s}: the ensemble counts that run {len(fs)} times"
            for s, fs in seeds.items() if len(fs) > 1]


def load_training_data(args):
    """The arrays (checked as files by datasets.load_arrays; against the model by the library, plan_run) and the
    checkpoints."""
    data = datasets.load_arrays(args.input, need=(formats.X_TRAIN, formats.Y_NOISY))
    x, y = data["x_train"], data["y_shuffle_train"][:, 0]
    ckpts, warnings = resolve_checkpoints(args, x)
    return x, y, ckpts, warnings


def load_validation(args, x, n_classes):
    """(x_val, y_val) of an image import (files.json beside the arrays) for --mode self, checked against x_train's
    images and the model's classes; None elsewhere (x_val.npy of other folders is a test set) and when there is no
    validation image."""
    folder = args.input
    if args.mode != "self" or not os.path.isfile(os.path.join(folder, formats.FILE_LIST)):
        return None
    data = datasets.load_arrays(folder, need=(), optional=(formats.X_VAL, formats.Y_VAL))
    if "x_val" not in data or "y_val" not in data or not len(data["x_val"]):
        return None
    xv, path = data["x_val"], os.path.join(folder, formats.X_VAL)
    if xv.shape[1:] != x.shape[1:] or xv.dtype != x.dtype:
        raise CliError(f"{path} holds {xv.dtype} images of shape {xv.shape[1:]} but {formats.X_TRAIN} "
                       f"{x.dtype} {x.shape[1:]}: the arrays come from different imports; import the images again")
    return xv, check_labels(data["y_val"], n_classes, os.path.join(folder, formats.Y_VAL))


def split_result(result, n):
    """(the result of the first n samples, x_train's, as if scored alone; {file name: array} of the others, the
    validation images). A sample's values do not depend on the samples sharing its batch (batch norm in inference
    mode; tests/test_audit_all.py checks it bit for bit)."""
    held = {formats.VAL_SCORES: result.scores[n:], formats.VAL_LOSS: result.loss[n:],
            formats.VAL_PROBABILITIES: result.probabilities[n:]}
    part = {"scores": result.scores[:n], "loss": result.loss[:n], "probabilities": result.probabilities[:n]}
    if isinstance(result, EnsembleResult):
        return dataclasses.replace(result, runs=[split_result(r, n)[0] for r in result.runs], **part), held
    return dataclasses.replace(result, terms=result.terms[:, :n], **part), held


def array_files(args):
    """The file behind each array argument of the API: the library's error about one names the file instead."""
    test_dir = args.test_input or args.input
    files = {"x": formats.X_TRAIN, "y": formats.Y_NOISY, "x_train": formats.X_TRAIN, "y_train": formats.Y_NOISY}
    files = {arg: f"{args.input}/{name}" for arg, name in files.items()}
    return dict(files, x_test=f"{test_dir}/{formats.X_VAL}", y_test=f"{test_dir}/{formats.Y_VAL}")


def name_file(error, files):
    """`error` with the argument name its message starts with replaced by the file in `files`, else None."""
    path, message = files.get(error.arg), str(error)
    if path is None or not message.startswith(f"{error.arg} "):
        return None
    return InputError(path + message[len(error.arg):])


def plan_run(args, ckpts, x, y, val=None):
    """The validated run of --mode (every checkpoint loaded); {'run': ...} and, for influence, its test samples.
    val: (x_val, y_val) scored after x_train in the same self-influence run (load_validation), or None."""
    try:
        if args.mode == "influence":
            return prepare_influence(args, ckpts, x, y)
        if val is not None:
            x, y = np.concatenate([x, val[0]]), np.concatenate([y, val[1]])
        return {"run": plan_self_influence(ckpts, x, y, layers=args.layers, method=args.method,
                                           lr_weight=args.lr_weight, batch_size=args.batch_size)}
    except checkpoints.ModelMismatchError as e:
        if ckpts.has_manifest:
            raise
        if args.network:
            raise CliError(f"{e}; --network {args.network} must build the network the checkpoints were saved "
                           "from, with the same parameter scopes") from None
        raise CliError(f"{e}; without {formats.MANIFEST} the model is --model {args.model} --nmaps "
                       f"{ckpts.model['nmaps']}: pass the ones the checkpoints were trained with") from None
    except InputError as e:
        named = name_file(e, array_files(args))
        if named is None:
            raise
        raise named from None


def main(argv=None, comm=None):
    args = parse_score_args(argv)
    check_flags(args)
    skip_failed_imports()  # process-wide, so the script's business: every checkpoint load sets ~100 nnabla arrays
    rank, world = (comm.rank, comm.size) if comm is not None else (0, 1)
    check_processes(args.processes, world)
    output = args.output or args.input
    if rank == 0:  # the probe creates and removes folders, which ranks doing it at once would trip over
        check_writable(output, "--output")
    x, y, ckpts, warnings = load_training_data(args)
    val = load_validation(args, x, ckpts.model["n_classes"])
    # under MPI every rank takes the GPU of its rank on its node (mpiexec -n 8 on 8 GPUs: devices 0..7)
    device_id = str(getattr(comm, "local_rank", rank)) if world > 1 else args.device_id
    ctx = set_context(args.context, device_id, args.type_config)
    plan = plan_run(args, ckpts, x, y, val)
    # only now: a mistake found above leaves nothing behind, not even an empty folder
    ensure_dir(output, "--output")
    if rank == 0:
        lock_folder(output, "--output")
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        remove_temporaries(output)  # half-written outputs of a run that was killed (the ranks write only units)
    run = plan["run"]
    result = run.run(os.path.join(output, formats.CACHE_DIR), comm, progress_bar(run, rank, world))
    if result is None:  # another rank than 0: rank 0 writes
        return 0
    n_classes = run.members[0].n_classes if isinstance(ckpts, CheckpointEnsemble) else run.n_classes
    record = {"input": os.path.abspath(args.input), "checkpoint": os.path.abspath(args.checkpoint),
              "model": dict(ckpts.model, input_shape=list(x.shape[1:]), n_classes=n_classes), "layers": args.layers,
              "method": args.method, "lr_weight": bool(args.lr_weight), "batch_size": args.batch_size,
              "context": ctx.backend[0].split(":")[0], "type_config": args.type_config, "ranks": world}
    held = None
    if val is not None:
        result, held = split_result(result, len(x))
        record.update(n_val=len(val[0]), validation_files=list(formats.VAL_FILES))
    if isinstance(ckpts, CheckpointEnsemble):
        return write_ensemble(args, ckpts, run, result, record, output, held)
    record["checkpoints"] = checkpoint_list(ckpts, result.etas)
    if args.mode == "influence":
        return write_influence(args, plan, result, record, output)
    return write_self(args, run, result, record, output, held)


def checkpoint_list(ckpts, etas):
    return [{"epoch": c.epoch, "lr": c.lr, "eta": e, "params": os.path.basename(c.path)} for c, e in zip(ckpts, etas)]


def versions():
    import nnabla
    return {"nnabla": nnabla.__version__, "numpy": np.__version__, "python": platform.python_version()}


def remove_stale(output, keep):
    """Remove per-checkpoint, per-run and validation score files of an earlier scoring in `output` that this run
    does not write (`keep`): every such file beside scores.json belongs to the run it describes."""
    for name in os.listdir(output):
        ours = formats.EPOCH_SCORES_RE.match(name) or formats.RUN_SCORES_RE.match(name) or name in formats.VAL_FILES
        if ours and name not in keep:
            os.remove(os.path.join(output, name))


def write_validation(output, held):
    """The validation images' files (split_result's `held`; None: nothing to write) and the words for the summary."""
    for name, array in (held or {}).items():
        save_npy(os.path.join(output, name), array)
    return f" and {len(held[formats.VAL_SCORES])} validation images" if held else ""


def write_self(args, run, result, record, output, held=None):
    n = len(result.scores)
    epochs = {formats.epoch_scores_name(e) for e in result.epochs} if args.save_every_epoch else set()
    remove_stale(output, epochs | set(held or ()))
    validated = write_validation(output, held)
    if args.save_every_epoch:
        for epoch, term in zip(result.epochs, result.terms):
            save_npy(os.path.join(output, formats.epoch_scores_name(epoch)), term)
    save_npy(os.path.join(output, formats.LOSS), result.loss)
    save_npy(os.path.join(output, formats.PROBABILITIES), result.probabilities)
    save_npy(os.path.join(output, formats.SCORES), result.scores)
    done, secs = result.computed, result.seconds
    save_json(os.path.join(output, formats.SCORES_JSON), dict(
        {"definition": "score(z) = sum_i eta_i * ||grad loss(w_i, z)||^2 (TracInCP self-influence)", "n_train": n},
        **record, n_parameters=run.n_params, parameters=result.parameters, loss_checkpoint=result.epochs[-1],
        probabilities=formats.PROBABILITIES, samples_computed=done, seconds=round(secs, 3),
        samples_per_second=round(done / secs, 2) if done and secs > 0 else None, versions=versions()))
    rate = f", {done / secs:.0f} samples/s" if done and secs > 0 else " (all from cache)"
    print(f"scored {n} samples{validated} x {len(result.epochs)} checkpoints (layers {args.layers}, "
          f"{args.method}{rate}); wrote {os.path.join(output, formats.SCORES)}", file=sys.stderr)
    return 0


def write_ensemble(args, ensemble, run, result, record, output, held=None):
    """The sum of the runs' self-influence, each run's score (influence_run{r}.npy), the mean loss and
    probabilities, and scores.json listing the runs."""
    runs = []
    remove_stale(output, {formats.run_scores_name(r) for r in range(1, len(ensemble.runs) + 1)} | set(held or ()))
    validated = write_validation(output, held)
    for r, (ckpts, res) in enumerate(zip(ensemble.runs, result.runs), start=1):
        save_npy(os.path.join(output, formats.run_scores_name(r)), res.scores)
        runs.append({"checkpoint": os.path.abspath(ckpts.folder), "scores": formats.run_scores_name(r),
                     "seed": ckpts.manifest["train"]["seed"],
                     "checkpoints": checkpoint_list(ckpts, res.etas)})
    save_npy(os.path.join(output, formats.LOSS), result.loss)
    save_npy(os.path.join(output, formats.PROBABILITIES), result.probabilities)
    save_npy(os.path.join(output, formats.SCORES), result.scores)
    done, secs, n = result.computed, result.seconds, len(result.scores)
    record["checkpoint"] = [entry["checkpoint"] for entry in runs]
    save_json(os.path.join(output, formats.SCORES_JSON), dict(
        {"definition": "score(z) = sum over runs r of sum_i eta_ri * ||grad loss(w_ri, z)||^2 (TracInCP "
                       "self-influence summed over an ensemble of training runs on the same data)", "n_train": n},
        **record, runs=runs, loss_checkpoint="the last selected of each run (the loss is their mean)",
        probabilities=formats.PROBABILITIES, n_parameters=run.n_params,
        parameters=result.runs[0].parameters, samples_computed=done, seconds=round(secs, 3),
        samples_per_second=round(done / secs, 2) if done and secs > 0 else None, versions=versions()))
    rate = f", {done / secs:.0f} samples/s" if done and secs > 0 else " (all from cache)"
    print(f"scored {n} samples{validated} x {len(runs)} runs ({sum(len(c) for c in ensemble.runs)} checkpoints, "
          f"layers {args.layers}, {args.method}{rate}); wrote {os.path.join(output, formats.SCORES)}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------- --mode influence

def available_memory():
    """Bytes of memory available now (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(nbytes):
    return f"{nbytes / 2 ** 30:.3g} GB"


def load_test_samples(args, n_classes):
    """(test folder, label mode, indices into x_val.npy, images, labels or None for predicted). The images are
    checked against the model by the library (plan_run); the labels of the whole file here, as the file's check."""
    test_dir = args.test_input or args.input
    label_mode = args.test_label or "true"
    need = (formats.X_VAL, formats.Y_VAL) if label_mode == "true" else (formats.X_VAL,)
    tdata = datasets.load_arrays(test_dir, need=need)
    xt_all = tdata["x_val"]
    idx = np.arange(len(xt_all), dtype=np.int64) if args.test_indices is None else \
        np.asarray(args.test_indices, dtype=np.int64)
    bad = idx[idx >= len(xt_all)]
    if len(bad):
        raise CliError(f"--test_indices {bad[0]} is out of range: {test_dir}/{formats.X_VAL} holds {len(xt_all)} "
                       f"samples (0..{len(xt_all) - 1})")
    yt = None
    if label_mode == "true":  # every label is checked, not only those of --test_indices: the file is damaged
        yt = check_labels(tdata["y_val"], n_classes, f"{test_dir}/{formats.Y_VAL}")[idx]
    return test_dir, label_mode, idx, xt_all[idx], yt


def prepare_influence(args, ckpts, x, y):
    """Validate every --mode influence input (before anything is written); the run fixes the test labels."""
    test_dir, label_mode, idx, xt, yt = load_test_samples(args, ckpts.model["n_classes"])
    limit = args.max_memory_gb * 2 ** 30 if args.max_memory_gb else (available_memory() or 2 ** 62) * 0.8
    need = len(idx) * len(x) * 8
    if args.save_matrix and need > limit:
        raise CliError(f"--save_matrix True needs {_gb(need)} for the ({len(idx)}, {len(x)}) matrix, more than the "
                       f"{_gb(limit)} allowed: leave it out and use --top_k K (top-k lists need no matrix), or "
                       "pass fewer --test_indices")
    run = plan_influence(ckpts, x, y, xt, yt, top_k=args.top_k or defaults.TOP_K, layers=args.layers,
                         method=args.method, lr_weight=args.lr_weight, batch_size=args.batch_size,
                         projection_dim=args.projection_dim, seed=args.seed, full_matrix=bool(args.save_matrix),
                         test_chunk=args.test_chunk, normalize=args.normalize)
    need = run.n_params * (args.projection_dim or 0) * 4
    if need > limit:
        raise CliError(f"--projection_dim {args.projection_dim} needs a {_gb(need)} projection matrix, more "
                       f"than the {_gb(limit)} allowed: use a smaller D or fewer --layers")
    return {"run": run, "test_dir": test_dir, "label_mode": label_mode, "idx": idx}


def write_influence(args, plan, result, record, output):
    """--mode influence outputs: influence_topk.npz, influence_matrix.npy (--save_matrix True), influence.json."""
    run, idx = plan["run"], plan["idx"]
    n_test, n_train = len(idx), len(run.job.x_train)
    topk_path = os.path.join(output, formats.TOPK)
    formats.write_topk(topk_path, result, idx, args.input, plan["test_dir"])
    if result.matrix is not None:
        save_npy(os.path.join(output, formats.MATRIX), result.matrix)
    done, secs = result.computed, result.seconds
    save_json(os.path.join(output, formats.INFLUENCE_JSON), dict(
        {"definition": normalize.DEFINITIONS[args.normalize] + normalize.NOTATION, "normalize": args.normalize,
         "n_train": n_train, "n_test": n_test, "top_k": run.k}, **record,
        test_input=os.path.abspath(plan["test_dir"]), test_label=plan["label_mode"], parameters=result.parameters,
        n_parameters=run.n_params, closed_form=run.selection.closed_form, projection_dim=args.projection_dim,
        seed=args.seed if args.projection_dim else None,
        matrix=formats.MATRIX if result.matrix is not None else None, gradient_evaluations=done,
        seconds=round(secs, 3), seconds_per_test_sample=round(secs / n_test, 4) if done else None,
        versions=versions()))
    how = f"{secs:.1f} s, {secs / n_test:.3f} s per test sample" if done else "all from cache"
    print(f"influence of {n_test} test samples on {n_train} training samples x {len(result.epochs)} checkpoints "
          f"(layers {args.layers}, {args.method}, normalize {args.normalize}; {how}); wrote {topk_path}"
          + (f" and {os.path.join(output, formats.MATRIX)}" if result.matrix is not None else ""), file=sys.stderr)
    return 0


# a second rank takes ~0.3 s to start and saves ~20 ms an image at 23 checkpoints (docs/own_data.md): below this
# many images a rank the saving is a few seconds, not worth another process
MIN_IMAGES_PER_RANK = 200


def processes_wanted(argv):
    """How many processes to start for this command when not under an MPI launcher: --processes, else for an
    image import (files.json beside the arrays) scored on the CPU one per usable core, at most one per
    MIN_IMAGES_PER_RANK images, when the MPI runtime is there (the scores are bitwise those of one process), else 1.
    A command that does not parse, or whose arrays cannot be read, runs here, which reports it."""
    args = parse_quietly(score_parser(), argv)
    if args is None:
        return 1
    if args.processes is not None or launched_under_mpi():
        return args.processes or 1
    if args.context == "cudnn" or mpi_launcher() is None or cuda_installed():
        return 1
    if not os.path.isfile(os.path.join(args.input, formats.FILE_LIST)):
        return 1
    try:  # the header only: the image count of the training and validation arrays
        n = sum(np.load(os.path.join(args.input, name), mmap_mode="r").shape[0]
                for name in (formats.X_TRAIN, formats.X_VAL))
    except (OSError, ValueError):
        return 1
    return max(1, min(usable_cores(), n // MIN_IMAGES_PER_RANK))


def cuda_installed():
    """Whether nnabla's CUDA extension is installed (then --context auto scores on the GPU, in one process)."""
    from importlib.util import find_spec
    return find_spec("nnabla_ext") is not None and find_spec("nnabla_ext.cuda") is not None


if __name__ == "__main__":
    code = launch(__file__, sys.argv[1:], processes_wanted(sys.argv[1:]))
    sys.exit(code if code is not None else run_mpi_cli(main))
