"""Train a ResNet on labels of which a fraction per class is shuffled, saving a checkpoint every epoch.

    python train.py --output out/data --model_save_path out/ckpt -c cpu                  # CIFAR-10, as the original
    python train.py --dataset digits --output out/data --model_save_path out/ckpt -c cpu  # 8x8 digits, offline
    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 4 .venv/bin/python train.py --dataset digits ... --micro_batches 4

Writes the arrays of the original layout into --output, checkpoints plus their manifest (checkpoints.json, see
tracin/checkpoints.py) into --model_save_path, and nnabla Monitor series into --monitor-path. `--resume` continues
from the newest complete checkpoint; on CPU the result is bit-identical to an uninterrupted run with the same seed.
Under mpiexec every rank trains its share of each batch's micro-batches (tracin/dataparallel.py, docs/mpi.md); the
weights depend on --micro_batches, not on the number of ranks, and rank 0 alone writes files and prints.
"""
import functools
import math
import os
import sys

import numpy as np

import datasets
import imagefolder
import models
from args import CliError, parse_train_args, train_parser
from tracin import checkpoints, formats, gate
from tracin.arrays import check_labels, fingerprint
from tracin.context import set_context
from tracin.dataparallel import Shards
from tracin.errors import InputError, MissingInputError
from tracin.io import (
    check_writable,
    ensure_dir,
    lock_folder,
    remove_temporaries,
    save_json,
    writes_to,
)
from tracin.parallel import launched_under_mpi
from tracin.training import Trainer, checkpoint_lr, learning_rate
from utils import (
    check_processes,
    claim_folders,
    clear_run_files,
    launch,
    mpi_launcher,
    on_terminal,
    parse_quietly,
    refuse_other_runs,
    run_mpi_cli,
    skip_failed_imports,
    usable_cores,
)


def infer_dataset(x):
    for name, spec in datasets.SPECS.items():
        if tuple(x.shape[1:]) == spec.input_shape:
            return name
    return None


def resolve_recipe(args, dataset, n_train):
    spec = datasets.SPECS.get(dataset) or imagefolder.OWN_DATA  # own images, or arrays of an unknown shape
    d = dict(spec.train_defaults)
    if d["train_epochs"] is None:  # own data: length from the data (imagefolder.adapt_recipe)
        d.update(imagefolder.adapt_recipe(n_train, args.train_batch_size or d["train_batch_size"], args.train_epochs))
    pick = (lambda key: getattr(args, key) if getattr(args, key) is not None else d[key])
    return {"save_interval": d.get("save_interval", 1), "micro_batches": d.get("micro_batches"),
        "dataset": dataset, "seed": args.seed, "shuffle_label": args.shuffle_label, "shuffle_rate": args.shuffle_rate,
        "train_epochs": pick("train_epochs"), "train_batch_size": pick("train_batch_size"),
        "learning_rate": pick("learning_rate"), "lr_schedule": pick("lr_schedule"),
        "weight_decay": pick("weight_decay"), "momentum": 0.9,
        "augmentation": dict(spec.augment) if args.augmentation else None,
        "nmaps": pick("nmaps") if args.model == "resnet23" else None,
        "precise_bn": bool(args.precise_bn),
    }


# ---------------------------------------------------------------------------------------------------------- data


def load_array_folder(folder):
    """The arrays of a folder train.py (or the original example) wrote; an image import's has no y_train.npy."""
    need, optional = formats.label_files(folder)
    return datasets.load_arrays(folder, need=(formats.X_TRAIN, formats.X_VAL, formats.Y_VAL) + need,
                                optional=optional)


def prepare_data(args):
    """(arrays, data set name or None, noise record or None): from --input (labels as given), or made from the
    data set with seeded label noise; made arrays are written by save_made_arrays once everything is validated."""
    if args.input:
        arrays = load_array_folder(args.input)
        return arrays, infer_dataset(arrays["x_train"]), None
    if args.dataset == "imagefolder":
        return import_images(args)
    try:
        arrays, noise_record = datasets.make_arrays(args.dataset, args.data_dir, args.shuffle_label,
                                                    args.shuffle_rate, args.seed, args.noise)
    except MissingInputError as e:  # CIFAR-10 offline, without the archive
        raise CliError(f"{e}, or pass --data-dir FOLDER holding it; to try the pipeline offline, train on the "
                       "bundled 8x8 digits with --dataset digits") from None
    return arrays, args.dataset, noise_record


def import_images(args):
    """(arrays, "imagefolder", noise record or None) of --data-dir's ImageFolder tree; arrays["file_list"] is its
    files.json. The folder labels are taken as given (y_shuffle_train, no y_train: clean labels unknown) unless
    --shuffle_label True asks for an experiment: then they become y_train and a shuffled copy y_shuffle_train."""
    import noise
    if not args.data_dir:
        raise CliError("--dataset imagefolder needs --data-dir FOLDER: the folder holding one sub-folder of images "
                       "per class")
    arrays, file_list = imagefolder.make_arrays(args.data_dir, args.image_size, args.val_fraction, args.seed,
                                                progress=on_terminal())
    record = None
    if args.shuffle_label:
        arrays["y_train"] = arrays["y_shuffle_train"]
        try:
            arrays["y_shuffle_train"], record = noise.corrupt(args.noise, arrays["y_train"], args.shuffle_rate,
                                                              len(file_list["classes"]), args.seed, x=arrays["x_train"])
        except ValueError as e:  # e.g. pair noise: its class maps are made for digits and CIFAR-10
            raise CliError(f"--noise {args.noise}: {e}") from None
    arrays["file_list"] = file_list
    return arrays, "imagefolder", record


def save_made_arrays(args, arrays, array_dir):
    ensure_dir(array_dir, "--output")
    remove_temporaries(array_dir)  # half-written arrays of a run that was killed
    datasets.save_arrays(array_dir, arrays)
    if "file_list" in arrays:
        imagefolder.save_file_list(array_dir, arrays["file_list"])
    if "y_train" not in arrays:
        fl = arrays["file_list"]
        print(f"{args.data_dir}: {len(fl['train'])} training and {len(fl['val'])} validation images of "
              f"{len(fl['classes'])} classes at {fl['image_size'][0]}x{fl['image_size'][1]} pixels, labels as "
              f"given; arrays and {formats.FILE_LIST} in {array_dir}" + skipped_note(fl["skipped"]), file=sys.stderr)
        return
    moved = int((arrays["y_shuffle_train"] != arrays["y_train"]).sum())
    print(f"{args.dataset}: {len(arrays['y_train'])} training samples, {moved} labels changed "
          f"({args.noise} noise, {args.shuffle_rate:.0%} per class, seed {args.seed}); arrays in {array_dir}",
          file=sys.stderr)


def skipped_note(skipped):
    """A word on the files an import left out (not PNG/JPEG, outside the class folders, archive folders)."""
    if not skipped:
        return ""
    n = len(skipped)
    return (f"; skipped {n} file{'s' if n > 1 else ''} that {'are' if n > 1 else 'is'} not a PNG/JPEG in a class "
            f"folder (e.g. '{skipped[0]}'; all listed in {formats.FILE_LIST})")


def open_monitors(path, start_epoch):
    """nnabla Monitor series; on resume, keeps the lines of the epochs already done (MonitorSeries truncates)."""
    from nnabla.monitor import Monitor, MonitorSeries, MonitorTimeElapsed
    ensure_dir(path, "--monitor-path")
    lock_folder(path, "--monitor-path")  # made only now (see take_folders)
    kept = {}
    for name in formats.MONITOR_SERIES:
        f = os.path.join(path, formats.monitor_file(name))
        if start_epoch > 0 and os.path.isfile(f):
            with open(f) as fh:
                kept[f] = [line for line in fh if line.split() and int(line.split()[0]) <= start_epoch]
    monitor = Monitor(path)
    series = {name: MonitorSeries(name, monitor, interval=1, verbose=False) for name in formats.MONITOR_SERIES}
    for f, lines in kept.items():
        with open(f, "a") as fh:
            fh.writelines(lines)
    series["time"] = MonitorTimeElapsed("Training time", monitor, interval=1, verbose=False)
    return series


def resume_point(args, folder):
    """(manifest, entry) to continue from, or (None, None) for a fresh start."""
    if args.checkpoint:
        m = os.path.basename(args.checkpoint)
        folder = os.path.dirname(os.path.abspath(args.checkpoint))
        match = formats.PARAMS_RE.match(m)
        if not match:
            raise CliError(f"--checkpoint must name a params_{{epoch}}.h5 written by train.py, got '{args.checkpoint}'")
        wanted = int(match.group(1))
    elif args.resume is not False:
        wanted = None if args.resume is True else args.resume
    else:
        return None, None, folder
    manifest = checkpoints.read_manifest(folder) if os.path.isdir(folder) else None
    if manifest is None or not manifest["checkpoints"]:
        raise CliError(f"nothing to resume: no {formats.MANIFEST} with checkpoints in '{folder}' "
                       "(start without --resume, or pass the --model_save_path of the earlier run)")
    if "train" not in manifest:
        raise CliError(f"cannot resume: {os.path.join(folder, formats.MANIFEST)} records no training recipe "
                       "('train'); retrain")
    usable = [c for c in manifest["checkpoints"]
              if all(c.get(k) and os.path.isfile(os.path.join(folder, c[k])) for k in ("params", "solver"))]
    if wanted is not None:
        usable = [c for c in usable if c["epoch"] == wanted]
        if not usable:
            raise CliError(f"no complete checkpoint for epoch {wanted} in '{folder}'")
    if not usable:
        raise CliError(f"no complete checkpoint (params and solver files) in '{folder}' to resume from")
    return manifest, usable[-1], folder


def resumed_state(manifest, args, ckpt_dir):
    """(recipe, model config, arrays) of the run being resumed: never from new flags. The arrays are --input's, or
    the manifest's array_dir (relative to the checkpoint folder, so that a moved project resumes)."""
    recipe, model_cfg = manifest["train"], manifest["model"]
    check_resume_flags(args, recipe, ckpt_dir)
    folder = args.input or os.path.normpath(os.path.join(ckpt_dir, recipe["array_dir"]))  # absolute stays absolute
    if not args.input and not os.path.isdir(folder):
        raise CliError(f"cannot resume: the arrays of the run ('{recipe['array_dir']}' in "
                       f"{os.path.join(ckpt_dir, formats.MANIFEST)}) are not at {folder}; if the folders were moved, "
                       "pass --input FOLDER holding them")
    if args.output and os.path.realpath(args.output) != os.path.realpath(folder):
        raise CliError(f"--output '{args.output}' conflicts with the run being resumed: its arrays are in {folder} "
                       "(a resumed run writes no arrays); drop --output")
    arrays = load_array_folder(folder)
    if fingerprint(arrays["x_train"], arrays["y_shuffle_train"]) != recipe["data_fingerprint"]:
        raise CliError(f"the arrays in {folder} changed since training started (or are another run's): cannot "
                       "resume")
    return recipe, model_cfg, arrays


# flags a resumed run takes from its manifest: given with --resume, they must agree with it
RESUME_FLAGS = ("train_epochs", "learning_rate", "seed", "train_batch_size", "lr_schedule", "weight_decay", "nmaps")


def check_resume_flags(args, recipe, ckpt_dir):
    """A flag of the recipe that differs from the run being resumed is refused, never silently ignored."""
    for key in RESUME_FLAGS:
        value = getattr(args, key, None)
        if value is not None and key in recipe and value != recipe[key]:
            raise CliError(f"--{key} {value} conflicts with the run being resumed "
                           f"({os.path.join(ckpt_dir, formats.MANIFEST)} records {key} {recipe[key]}): drop --{key} "
                           "(a resumed run keeps its recipe), or start a new run in another --model_save_path")


def fresh_state(args, ckpt_dir):
    """(recipe, model config, arrays) of a new run, every flag and array checked (nothing is written)."""
    array_dir = os.path.abspath(args.input or args.output or ckpt_dir)
    if not args.input and args.dataset in datasets.SPECS:
        spec = datasets.SPECS[args.dataset]
        models.model_config(args.model, spec.n_classes, spec.input_shape,
                            args.nmaps or spec.train_defaults["nmaps"], args.dataset)
    arrays, dataset, noise_record = prepare_data(args)
    keys = [k for k in ("y_train", "y_shuffle_train", "y_val") if k in arrays]
    if "file_list" in arrays:
        n_classes = len(arrays["file_list"]["classes"])
    else:
        n_classes = datasets.SPECS[dataset].n_classes if dataset else int(max(arrays[k].max() for k in keys)) + 1
    where = args.input or "--dataset"
    for key in keys:
        check_labels(arrays[key], n_classes, os.path.join(where, key + ".npy"))
    recipe = resolve_recipe(args, dataset, len(arrays["x_train"]))
    n, bs = len(arrays["x_train"]), recipe["train_batch_size"]
    if n < 2:  # batch normalisation over one sample has no variance
        raise CliError(f"{os.path.join(where, formats.X_TRAIN)} holds {n} training sample: training needs at least 2")
    if args.train_batch_size is None:  # a recipe's batch never exceeds a small data set, and splits evenly
        bs, m = min(bs, n), recipe["micro_batches"] or 1
        bs = recipe["train_batch_size"] = bs - bs % m if bs >= 2 * m else bs
    if bs > n:
        raise CliError(f"{os.path.join(where, formats.X_TRAIN)} holds {n} training samples, fewer than "
                       f"--train_batch_size {bs}: pass --train_batch_size {n} or less (or more data)")
    # array_dir relative to the checkpoint folder: the project folder can move and still resume
    recipe.update(model=args.model, array_dir=os.path.relpath(array_dir, os.path.abspath(ckpt_dir)),
                  noise=noise_record, data_fingerprint=fingerprint(arrays["x_train"], arrays["y_shuffle_train"]))
    model_cfg = models.model_config(args.model, n_classes, arrays["x_train"].shape[1:], recipe["nmaps"], dataset)
    return recipe, model_cfg, arrays


def start(trainer, manifest, entry, ckpt_dir, recipe, model_cfg, x_train):
    """(first epoch, manifest): the resumed checkpoint loaded (by every rank), or the initialisation saved as
    checkpoint 0. Stale temporaries of a killed run are removed once the checkpoint to resume from has loaded."""
    if manifest is not None:
        checkpoints.load_into(os.path.join(ckpt_dir, entry["params"]), trainer.params, entry.get("params_sha1"))
        checkpoints.load_solver(os.path.join(ckpt_dir, entry["solver"]), trainer.solver, entry.get("solver_sha1"))
    if trainer.shards.rank == 0:
        remove_temporaries(ckpt_dir)
    if manifest is None:
        manifest = checkpoints.new_manifest(model_cfg, recipe)
        if recipe.get("precise_bn"):
            trainer.recalibrate_bn(x_train)
        return 0, save(trainer, ckpt_dir, 0, recipe, manifest)
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["epoch"] <= entry["epoch"]]
    return entry["epoch"], manifest


def save(trainer, ckpt_dir, epoch, recipe, manifest):
    """Checkpoint `epoch`, written by rank 0 (atomic files, manifest last) while the other ranks wait for it."""
    if trainer.shards.rank == 0:
        manifest = checkpoints.save_checkpoint(ckpt_dir, epoch, checkpoint_lr(epoch, recipe), trainer.solver,
                                               manifest)
    if trainer.shards.comm is not None:
        trainer.shards.comm.barrier()  # a rank 0 that failed to write releases the others here
    return manifest


def run_epochs(trainer, recipe, manifest, ckpt_dir, start_epoch, args, data):
    """Train from start_epoch to the end, saving checkpoints; returns (validation loss, error) of the last epoch."""
    x_train, y_train, x_val, y_val = data
    rank0 = trainer.shards.rank == 0
    if rank0:
        with writes_to(args.monitor_path):
            mon = open_monitors(args.monitor_path, start_epoch)
    epochs, interval = recipe["train_epochs"], args.model_save_interval or recipe.get("save_interval", 1)
    from tqdm import tqdm
    bar = tqdm(total=(epochs - start_epoch) * math.ceil(len(x_train) / recipe["train_batch_size"]), desc="train",
               unit="batch", dynamic_ncols=True, disable=not (rank0 and on_terminal()))
    last_good = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            lr = learning_rate(epoch, recipe["learning_rate"], epochs, recipe["lr_schedule"])
            loss, err = trainer.train_epoch(
                epoch, x_train, y_train, lr,
                lambda v, e=epoch + 1: (bar.update(1), bar.set_postfix(epoch=e, loss=f"{v:.3f}")))
            if err is None or trainer.nonfinite() is not None:
                what = (f"the loss became {loss}" if err is None
                        else f"parameter {trainer.nonfinite()} became non-finite")
                raise CliError(f"training diverged: {what} in epoch {epoch + 1}; the last good checkpoint is "
                               f"{os.path.join(ckpt_dir, formats.params_name(last_good))}; lower --learning_rate "
                               "and rerun")
            due = (epoch + 1) % interval == 0 or epoch + 1 == epochs
            # split batches do not track running statistics (Trainer.stats_in_rows): precise ones before validation
            if recipe.get("precise_bn") and (due or not trainer.in_place):
                trainer.recalibrate_bn(x_train)
            vloss, verr = trainer.evaluate(x_val, y_val)
            if rank0:
                with writes_to(args.monitor_path):  # nnabla's monitors name no file when the disk fails
                    for name, v in zip(formats.MONITOR_SERIES, (loss, err, vloss, verr)):
                        mon[name].add(epoch + 1, v)
                    mon["time"].add(epoch + 1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", val_err=f"{verr:.3f}")
            if due:
                manifest = save(trainer, ckpt_dir, epoch + 1, recipe, manifest)
                last_good = epoch + 1
    finally:
        bar.close()
    return vloss, verr


def check_dataset_flags(args):
    """Flags of an image import only with --dataset imagefolder; their defaults, and --shuffle_label's (an import
    audits the labels it is given, so it shuffles none unless asked)."""
    own = args.dataset == "imagefolder" and not args.input
    if args.input and args.data_dir:
        raise CliError(f"--data-dir does not apply to --input (training reads the arrays of '{args.input}'): drop "
                       "--data-dir, or drop --input to import --data-dir anew")
    for flag, value in (("--image_size", args.image_size), ("--val_fraction", args.val_fraction)):
        if value is not None and not own:
            raise CliError(f"{flag} applies to --dataset imagefolder only (an image import)")
    for flag, value in (("--noise", args.noise), ("--shuffle_rate", args.shuffle_rate),
                        ("--shuffle_label", args.shuffle_label)):
        if value is not None and args.input:
            raise CliError(f"{flag} does not apply to --input: its labels (y_shuffle_train.npy) are trained on as "
                           f"given; drop {flag}, or make new noisy arrays with --dataset instead of --input")
    args.val_fraction = 0.1 if args.val_fraction is None else args.val_fraction
    args.noise = args.noise or "uniform"
    args.shuffle_rate = 0.1 if args.shuffle_rate is None else args.shuffle_rate
    if args.shuffle_label is None:
        args.shuffle_label = not own


def set_micro_batches(args, recipe, ranks, resumed):
    """Record in the recipe the micro-batches per batch (M: --micro_batches, by default the number of ranks; on
    resume the recorded one) and the ranks of this run, after checking that M splits the batch for these ranks."""
    if resumed:
        m = recipe.get("micro_batches", 1)  # manifests of runs before micro-batches: unsplit batches
        if type(m) is not int or m < 1:
            raise CliError(f"cannot resume: the manifest's train.micro_batches {m!r} is not a whole number >= 1; "
                           f"restore the {formats.MANIFEST} train.py wrote, or retrain")
        if args.micro_batches not in (None, m):
            raise CliError(f"--micro_batches {args.micro_batches}: the run being resumed splits its batches into "
                           f"{m}; drop --micro_batches (--resume keeps the recorded split)")
    else:
        m = args.micro_batches or default_micro_batches(recipe, ranks)
    bs = recipe["train_batch_size"]
    what = f"--micro_batches {m}" + ("" if args.micro_batches or resumed else f" (the number of ranks, {ranks})")
    if not splits(bs, m):
        raise CliError(f"{what} does not split --train_batch_size {bs} into equal micro-batches of at least 2 "
                       "samples (batch norm needs 2): pass --micro_batches dividing it, at most half of it")
    if ranks > m:
        raise CliError(f"{ranks} MPI ranks for {m} micro-batches per batch: start at most {m} ranks "
                       f"(mpiexec -n {m}), or pass a --micro_batches of at least {ranks} dividing {bs} (a different "
                       "training)")
    recipe.update(micro_batches=m, ranks=ranks)


def default_micro_batches(recipe, ranks):
    """M when --micro_batches is not given: the recipe's (own data: 2, so that one and two processes train the
    same weights) when it splits the batch into micro-batches of at least 2 and there are no more ranks, else the
    number of ranks."""
    m = recipe.get("micro_batches")
    return m if m and ranks <= m and splits(recipe["train_batch_size"], m) else ranks


def splits(batch_size, m):
    """Whether m equal micro-batches of at least 2 samples (batch norm needs 2) make up the batch."""
    return batch_size % m == 0 and batch_size // m >= 2


def init_weights(trainer, path):
    """Load --init_from into the fresh model (checkpoints.load_matching); the record the manifest keeps of it."""
    try:
        digest, copied, kept = checkpoints.load_matching(path, trainer.params)
    except InputError as e:
        raise CliError(f"--init_from: {e}") from None
    if trainer.shards.rank == 0:
        print(f"starting from {path}: {len(copied)} of {len(copied) + len(kept)} parameters"
              + (f"; {', '.join(kept)} keep their initialisation" if kept else ""), file=sys.stderr)
    return {"file": os.path.abspath(path), "sha1": digest, "copied": len(copied), "kept": kept}


def check_run_flags(args):
    """--overwrite against --resume / --checkpoint, and --model_save_path against --checkpoint's folder."""
    resuming = args.checkpoint or args.resume is not False
    if args.overwrite and resuming:
        raise CliError("--overwrite True replaces an earlier run, --resume / --checkpoint continues it: pass one")
    if args.init_from and resuming:
        raise CliError("--init_from starts a new run from other weights, --resume / --checkpoint continues one: "
                       "pass one")
    if args.init_from and not os.path.isfile(args.init_from):
        raise CliError(f"--init_from: '{args.init_from}' is not a file: pass an nnabla parameter file (.h5), e.g. "
                       "a params_{epoch}.h5 of another run")
    ckpt_folder = os.path.realpath(os.path.dirname(os.path.abspath(args.checkpoint or ".")))
    if args.checkpoint and args.model_save_path and os.path.realpath(args.model_save_path) != ckpt_folder:
        raise CliError(f"--model_save_path '{args.model_save_path}' conflicts with --checkpoint '{args.checkpoint}': "
                       "a resumed run writes into the folder of its checkpoint; drop --model_save_path")


def output_folders(args, ckpt_dir, made, array_dir):
    """[(flag, folder, kinds of run files)] a run writes into."""
    out = [("--model_save_path", ckpt_dir, ("checkpoints",)), ("--monitor-path", args.monitor_path, ("monitor",))]
    if made:  # array_dir is --output (as the user spelt it), else the checkpoint folder
        out.append(("--output", args.output or array_dir, ("arrays",)))
    return out


def take_folders(args, manifest, ckpt_dir, made, array_dir):
    """Rank 0, everything validated: lock the run's folders, refusing those holding another run's files unless
    --overwrite True (whose files are then removed); a resumed run owns its folders."""
    folders = output_folders(args, ckpt_dir, made, array_dir)
    fresh = manifest is None
    if fresh:
        refuse_other_runs(folders, args.overwrite)  # before creating anything
    # a fresh run writes its checkpoint (and array) folder at once; the monitor folder only after the first epoch
    claim_folders(folders, create=("--model_save_path", "--output") if fresh else ())
    if fresh:  # again under the lock: a run that ended since the first look left its files
        clear_run_files(refuse_other_runs(folders, args.overwrite))


def main(argv=None, comm=None):
    args = parse_train_args(argv)  # with the folder defaults
    check_dataset_flags(args)
    check_run_flags(args)
    shards = Shards(comm)
    check_processes(args.processes, shards.size)
    manifest, entry, ckpt_dir = resume_point(args, args.model_save_path)
    if manifest is None and args.seed is None:
        args.seed = 0
    made = manifest is None and not args.input  # arrays made from --dataset, written to --output
    # by rank 0 only: the probe creates and removes folders, which ranks doing it at once would trip over
    for flag, folder in (("--model_save_path", ckpt_dir), ("--monitor-path", args.monitor_path),
                         ("--output", args.output if made else None)):
        if folder and shards.rank == 0:
            check_writable(folder, flag)
    if manifest is None:  # another run's folders are refused before any data is read (again once they are locked)
        refuse_other_runs(output_folders(args, ckpt_dir, made, os.path.abspath(args.output or ckpt_dir)),
                                args.overwrite)
    # under MPI, one GPU per rank: the rank's number on its node (as the scorer)
    set_context(args.context, str(comm.local_rank) if shards.size > 1 else args.device_id, args.type_config)
    recipe, model_cfg, arrays = (resumed_state(manifest, args, ckpt_dir) if manifest is not None
                                 else fresh_state(args, ckpt_dir))
    set_micro_batches(args, recipe, shards.size, manifest is not None)
    if manifest is not None and entry["epoch"] >= recipe["train_epochs"]:
        if shards.rank == 0:
            print(f"nothing to do: training already finished ({entry['epoch']} of {recipe['train_epochs']} "
                  f"epochs; {entry['params']} in {ckpt_dir})", file=sys.stderr)
        return 0
    data = (arrays["x_train"].astype(np.float32), arrays["y_shuffle_train"], arrays["x_val"].astype(np.float32),
            arrays["y_val"])
    # only now, and by rank 0 only: a mistake found above (by every rank alike) leaves nothing behind
    array_dir = os.path.normpath(os.path.join(os.path.abspath(ckpt_dir), recipe["array_dir"]))
    skip_failed_imports()  # process-wide: the script, not the library, changes sys.modules
    trainer = Trainer(model_cfg, recipe, min(args.val_batch_size, len(data[2])), functools.partial(models.build, model_cfg),
                      shards)
    if manifest is None and args.init_from:
        recipe["init_from"] = init_weights(trainer, args.init_from)
    if shards.rank == 0:
        take_folders(args, manifest, ckpt_dir, made, array_dir)
        if made:
            save_made_arrays(args, arrays, array_dir)
    start_epoch, manifest = start(trainer, manifest, entry, ckpt_dir, recipe, model_cfg, data[0])
    if start_epoch and shards.rank == 0:
        print(f"resuming from epoch {start_epoch} ({entry['params']})", file=sys.stderr)
    vloss, verr = run_epochs(trainer, recipe, manifest, ckpt_dir, start_epoch, args, data)
    if shards.rank == 0:
        n = recipe["train_epochs"]
        check = gate.model_check(1.0 - verr, arrays["y_val"], n)
        save_json(os.path.join(ckpt_dir, gate.VALIDATION), check)
        procs = f" in {shards.size} processes" if shards.size > 1 else ""
        print(f"done: {n} epoch{'' if n == 1 else 's'}{procs}, validation error {verr:.4f} (loss {vloss:.4f}); "
              f"checkpoints and {formats.MANIFEST} in {ckpt_dir}\n{check['sentence']}", file=sys.stderr)
    return 0


def processes_wanted(argv):
    """How many processes to start for this command when not under an MPI launcher: --processes, else for a fresh
    import of own images imagefolder.MICRO_BATCHES when that many cores and the MPI runtime are there (the weights
    are the same in one process), else 1. A command that does not parse runs here, which reports it."""
    args = parse_quietly(train_parser(), argv)
    if args is None:
        return 1
    if args.processes is not None or launched_under_mpi():
        return args.processes or 1
    fresh_import = (args.dataset == "imagefolder" and args.data_dir and not args.input and not args.checkpoint
                    and args.resume is False)
    if not fresh_import or mpi_launcher() is None:
        return 1
    try:  # a listing, no decoding: enough images for micro-batches of 2 (else one process; a bad folder: main says)
        enough = len(imagefolder.scan(args.data_dir)[1]) >= 8 * imagefolder.MICRO_BATCHES
    except InputError:
        return 1
    return min(usable_cores(), args.micro_batches or imagefolder.MICRO_BATCHES) if enough else 1


if __name__ == "__main__":
    code = launch(__file__, sys.argv[1:], processes_wanted(sys.argv[1:]))
    sys.exit(code if code is not None else run_mpi_cli(main, resume_hint="add --resume to the same command to "
                                                                          "continue"))
