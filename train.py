"""Train a ResNet on labels of which a fraction per class is shuffled, saving a checkpoint every epoch.

    python train.py --dataset digits --output out/data --model_save_path out/ckpt -c cpu

Writes the arrays of the original layout into --output, checkpoints plus their manifest (checkpoints.json, see
checkpoints.py) into --model_save_path, and nnabla Monitor series into --monitor-path. `--resume` continues from
the newest complete checkpoint; on CPU the result is bit-identical to an uninterrupted run with the same seed.
"""
import math
import os
import sys
import time

import numpy as np

import checkpoints
import datasets
from args import train_parser
from utils import CliError, ensure_dir, quiet_nnabla, run_cli, set_context

MONITOR_SERIES = ("Training loss", "Training error", "Test loss", "Test error")


# ---------------------------------------------------------------------------------------------------- the recipe

def learning_rate(epoch, base_lr, epochs, schedule):
    """Learning rate of (0-based) `epoch`.

    Both schedules start with the original's linear warm-up over 15/270 of training. `step` then multiplies by
    0.1 at 90/270, 180/270 and 240/270 of training (the original's epochs 90, 180, 240 at 270 epochs); `cosine`
    decays to 0 along half a cosine."""
    warmup = max(1, round(epochs * 15 / 270))
    lr = base_lr * min(1.0, (epoch + 1) / warmup)
    if schedule == "step":
        steps = [round(epochs * s / 270) for s in (90, 180, 240)]
        return lr * 0.1 ** sum(epoch >= s for s in steps)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"unknown schedule {schedule}")


def checkpoint_lr(k, recipe):
    """eta of checkpoint k: the learning rate of the epoch that produced it (epoch 0's for the initialisation)."""
    return learning_rate(max(k - 1, 0), recipe["learning_rate"], recipe["train_epochs"], recipe["lr_schedule"])


def epoch_seed(seed, epoch, stream):
    """Independent, reproducible seed for one epoch's data order (stream 0) or augmentation (stream 1): a resumed
    run draws exactly what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0] % (2 ** 31 - 1))


def infer_dataset(x):
    for name, spec in datasets.SPECS.items():
        if tuple(x.shape[1:]) == spec.input_shape:
            return name
    return None


def resolve_recipe(args, dataset):
    spec = datasets.SPECS.get(dataset) or datasets.SPECS[args.dataset]
    d = spec.train_defaults
    pick = (lambda key: getattr(args, key) if getattr(args, key) is not None else d[key])
    return {
        "dataset": dataset, "seed": args.seed, "shuffle_label": args.shuffle_label, "shuffle_rate": args.shuffle_rate,
        "train_epochs": pick("train_epochs"), "train_batch_size": pick("train_batch_size"),
        "learning_rate": pick("learning_rate"), "lr_schedule": pick("lr_schedule"),
        "weight_decay": pick("weight_decay"), "momentum": 0.9,
        "augmentation": dict(spec.augment) if args.augmentation else None,
        "nmaps": pick("nmaps") if args.model == "resnet23" else None,
        "precise_bn": bool(args.precise_bn),
    }


# ---------------------------------------------------------------------------------------------------------- data

def prepare_data(args, array_dir):
    """Arrays from --input, or made from the data set (seeded shuffle) and written to `array_dir`."""
    if args.input:
        arrays = datasets.load_arrays(args.input)
        dataset = infer_dataset(arrays["x_train"])
    else:
        arrays = datasets.make_arrays(args.dataset, args.data_dir, args.shuffle_label, args.shuffle_rate, args.seed)
        dataset = args.dataset
        datasets.save_arrays(array_dir, arrays)
        moved = int((arrays["y_shuffle_train"] != arrays["y_train"]).sum())
        print(f"{dataset}: {len(arrays['y_train'])} training samples, {moved} labels shuffled "
              f"({args.shuffle_rate:.0%} per class, seed {args.seed}); arrays in {array_dir}", file=sys.stderr)
    return arrays, dataset


# ----------------------------------------------------------------------------------------------------- training

class Trainer:
    """The graphs and solver of one run. Training graphs are rebuilt per epoch (cheap) so that the in-graph
    augmentation is seeded by (seed, epoch), which makes --resume exact."""

    def __init__(self, model_cfg, recipe, val_batch_size):
        import nnabla as nn
        import nnabla.functions as F
        import nnabla.solvers as S

        import models
        self.nn, self.F, self.models = nn, F, models
        self.cfg, self.recipe = model_cfg, recipe
        shape = tuple(model_cfg["input_shape"])
        nn.random.seed(recipe["seed"])  # parameter initialisation
        self.x_val = nn.Variable((val_batch_size,) + shape)
        self.logits_val, _ = models.build(model_cfg, self.x_val, test=True)
        self.params = nn.get_parameters(grad_only=False)
        self.solver = S.Momentum(lr=recipe["learning_rate"], momentum=recipe["momentum"])
        self.solver.set_parameters(nn.get_parameters())
        self._graphs = {}

    def _train_graph(self, batch_size, epoch):
        nn, F = self.nn, self.F
        key = (batch_size, epoch)
        if key not in self._graphs:
            self._graphs = {k: v for k, v in self._graphs.items() if k == "recal" or k[1] == epoch}
            x = nn.Variable((batch_size,) + tuple(self.cfg["input_shape"]))
            y = nn.Variable((batch_size, 1))
            augment = self.recipe["augmentation"]
            if augment:
                augment = dict(augment, seed=epoch_seed(self.recipe["seed"], epoch, 1))
            logits, _ = self.models.build(self.cfg, x, test=False, augment=augment)
            loss = F.mean(F.softmax_cross_entropy(logits, y))
            self._graphs[key] = (x, y, logits, loss)
        return self._graphs[key]

    def train_epoch(self, epoch, x_train, y_train, lr, on_batch):
        """One epoch of momentum SGD; returns (mean loss, error rate) of the training batches."""
        bs = self.recipe["train_batch_size"]
        n = len(x_train)
        order = np.random.RandomState(epoch_seed(self.recipe["seed"], epoch, 0)).permutation(n)
        n_batches = math.ceil(n / bs)
        if n_batches * bs > n:  # the last batch wraps around to the start, as nnabla's data_iterator does
            order = np.concatenate([order, order[: n_batches * bs - n]])
        x, y, logits, loss = self._train_graph(bs, epoch)
        self.solver.set_learning_rate(lr)
        total_loss, errors = 0.0, 0
        for b in range(n_batches):
            idx = order[b * bs:(b + 1) * bs]
            x.d, y.d = x_train[idx], y_train[idx]
            loss.forward(clear_no_need_grad=True)
            value = float(loss.d)
            if not math.isfinite(value):
                return value, None
            self.solver.zero_grad()
            loss.backward(clear_buffer=True)
            if self.recipe["weight_decay"]:
                self.solver.weight_decay(self.recipe["weight_decay"])
            self.solver.update()
            total_loss += value * bs
            errors += int((logits.d.argmax(1) != y.d[:, 0]).sum())
            on_batch(value)
        return total_loss / (n_batches * bs), errors / (n_batches * bs)

    def nonfinite(self):
        """Name of the first parameter (or batch-norm statistic) holding NaN or inf, else None."""
        for name, var in self.params.items():
            if not np.isfinite(var.d).all():
                return name
        return None

    PRECISE_BN_SAMPLES = 10000  # at most this many training samples (evenly spaced) estimate the statistics

    def recalibrate_bn(self, x_train):
        """Precise batch norm: set every running mean / variance to the mean, over the training set, of the batch
        statistics that a training-mode forward pass computes under the current weights (un-augmented, in order,
        batches of the training size, the last one wrapping; at most PRECISE_BN_SAMPLES evenly spaced samples, so
        a CIFAR-10 checkpoint costs a fifth of an epoch's forward passes). The moving averages lag the weights:
        they mix ~10 recent batches of older weights and augmented images, which early in training puts
        inference-mode features, and so TracIn's per-checkpoint gradient norms, orders of magnitude off (digits,
        epoch 1: mean ||h||^2 ~3000-30000 against ~250 once trained). Running statistics never enter a
        training-mode forward pass, so the weight trajectory is unchanged."""
        nn = self.nn
        if len(x_train) > self.PRECISE_BN_SAMPLES:
            x_train = x_train[np.linspace(0, len(x_train) - 1, self.PRECISE_BN_SAMPLES).round().astype(np.int64)]
        bs = min(self.recipe["train_batch_size"], len(x_train))
        if "recal" not in self._graphs or self._graphs["recal"][0].shape[0] != bs:
            x = nn.Variable((bs,) + tuple(self.cfg["input_shape"]))
            logits, _ = self.models.build(self.cfg, x, test=False)
            decay = []
            logits.visit(lambda f: decay.append(f.info.args["decay_rate"])
                         if f.info.type_name == "BatchNormalization" else None)
            self._graphs["recal"] = (x, logits, decay[0])
        x, logits, decay = self._graphs["recal"]
        stats = {k: v for k, v in self.params.items() if k.endswith("bn/mean") or k.endswith("bn/var")}
        total = {k: np.zeros(v.shape, dtype=np.float64) for k, v in stats.items()}
        n_batches = math.ceil(len(x_train) / bs)
        order = np.arange(n_batches * bs) % len(x_train)
        for b in range(n_batches):
            for v in stats.values():
                v.data.zero()
            x.d = x_train[order[b * bs:(b + 1) * bs]]
            logits.forward(clear_buffer=True)  # running = decay * 0 + (1 - decay) * batch statistic
            for k, v in stats.items():
                total[k] += v.d
        for k, v in stats.items():
            v.d = (total[k] / (n_batches * (1.0 - decay))).astype(np.float32)

    def evaluate(self, x_val, y_val):
        """Inference-mode (running batch-norm statistics) loss and error over every validation sample."""
        from influence import softmax_xent  # the one place that computes per-sample cross-entropy
        bs = self.x_val.shape[0]
        losses, errors = 0.0, 0
        for start in range(0, len(x_val), bs):
            xb, yb = x_val[start:start + bs], y_val[start:start + bs, 0]
            m = len(xb)
            if m < bs:  # pad the last batch; padded rows are ignored
                xb = np.concatenate([xb, np.repeat(xb[:1], bs - m, axis=0)])
            self.x_val.d = xb
            self.logits_val.forward(clear_buffer=True)
            logits = self.logits_val.d[:m]
            losses += float(softmax_xent(logits, yb).sum())
            errors += int((logits.argmax(1) != yb).sum())
        return losses / len(x_val), errors / len(x_val)


def open_monitors(path, start_epoch):
    """nnabla Monitor series; on resume, keeps the lines of the epochs already done (MonitorSeries truncates)."""
    from nnabla.monitor import Monitor, MonitorSeries, MonitorTimeElapsed
    ensure_dir(path, "--monitor-path")
    kept = {}
    for name in MONITOR_SERIES:
        f = os.path.join(path, name.replace(" ", "-") + ".series.txt")
        if start_epoch > 0 and os.path.isfile(f):
            with open(f) as fh:
                kept[f] = [line for line in fh if line.split() and int(line.split()[0]) <= start_epoch]
    monitor = Monitor(path)
    series = {name: MonitorSeries(name, monitor, interval=1, verbose=False) for name in MONITOR_SERIES}
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
        match = checkpoints._PARAMS_RE.match(m)
        if not match:
            raise CliError(f"--checkpoint must name a params_{{epoch}}.h5 written by train.py, got '{args.checkpoint}'")
        wanted = int(match.group(1))
    elif args.resume is not False:
        wanted = None if args.resume is True else args.resume
    else:
        return None, None, folder
    manifest = checkpoints.read_manifest(folder) if os.path.isdir(folder) else None
    if manifest is None or not manifest["checkpoints"]:
        raise CliError(f"nothing to resume: no {checkpoints.MANIFEST} with checkpoints in '{folder}' "
                       "(start without --resume, or pass the --model_save_path of the earlier run)")
    usable = [c for c in manifest["checkpoints"]
              if os.path.isfile(os.path.join(folder, c["params"])) and os.path.isfile(os.path.join(folder, c["solver"]))]
    if wanted is not None:
        usable = [c for c in usable if c["epoch"] == wanted]
        if not usable:
            raise CliError(f"no complete checkpoint for epoch {wanted} in '{folder}'")
    if not usable:
        raise CliError(f"no complete checkpoint (params and solver files) in '{folder}' to resume from")
    return manifest, usable[-1], folder


def main(argv=None):
    args = train_parser().parse_args(argv)
    quiet_nnabla()
    args.model_save_path = args.model_save_path or args.monitor_path
    manifest, start, ckpt_dir = resume_point(args, args.model_save_path)
    for flag, path in (("--model_save_path", ckpt_dir), ("--monitor-path", args.monitor_path),
                       ("--output", args.output)):
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise CliError(f"{flag} '{path}' is a file, not a folder: choose another path")
    set_context(args.context, args.device_id, args.type_config)

    if manifest is not None:  # the recipe, data and model come from the run being resumed, never from new flags
        recipe, model_cfg = manifest["train"], manifest["model"]
        arrays = datasets.load_arrays(recipe["array_dir"])
        if datasets.fingerprint(arrays["x_train"], arrays["y_shuffle_train"]) != recipe["data_fingerprint"]:
            raise CliError(f"the arrays in {recipe['array_dir']} changed since training started: cannot resume")
    else:
        array_dir = os.path.abspath(args.input or args.output or ckpt_dir)
        if not args.input:  # check the model flags before the arrays are made and written
            import models
            spec = datasets.SPECS[args.dataset]
            try:
                models.model_config(args.model, spec.n_classes, spec.input_shape,
                                    args.nmaps or spec.train_defaults["nmaps"], args.dataset)
            except ValueError as e:
                raise CliError(str(e)) from None
            ensure_dir(array_dir, "--output")
        arrays, dataset = prepare_data(args, array_dir)
        n_classes = datasets.SPECS[dataset].n_classes if dataset else int(arrays["y_shuffle_train"].max()) + 1
        datasets.check_labels(arrays["y_shuffle_train"], n_classes, "y_shuffle_train.npy")
        datasets.check_labels(arrays["y_val"], n_classes, "y_val.npy")
        recipe = resolve_recipe(args, dataset)
        recipe.update(model=args.model, array_dir=array_dir,
                      data_fingerprint=datasets.fingerprint(arrays["x_train"], arrays["y_shuffle_train"]))
        try:
            import models
            model_cfg = models.model_config(args.model, n_classes, arrays["x_train"].shape[1:], recipe["nmaps"], dataset)
        except ValueError as e:
            raise CliError(str(e)) from None

    x_train = arrays["x_train"].astype(np.float32)
    y_train = arrays["y_shuffle_train"]
    x_val, y_val = arrays["x_val"].astype(np.float32), arrays["y_val"]
    ensure_dir(ckpt_dir, "--model_save_path")  # only now: a mistake found above leaves no empty folder behind
    trainer = Trainer(model_cfg, recipe, min(args.val_batch_size, len(x_val)))

    start_epoch = 0
    if manifest is not None:
        checkpoints.load_into(os.path.join(ckpt_dir, start["params"]), trainer.params)
        solver_path = os.path.join(ckpt_dir, start["solver"])
        try:
            trainer.solver.load_states(solver_path)
        except Exception as e:  # nnabla raises RuntimeError / OSError / KeyError depending on the damage
            raise CliError(f"{solver_path} is not a readable solver state ({type(e).__name__}): it is truncated or "
                           f"corrupt; resume from an earlier epoch with --resume EPOCH") from None
        start_epoch = start["epoch"]
        if start_epoch >= recipe["train_epochs"]:
            print(f"nothing to do: training already finished ({start_epoch} of {recipe['train_epochs']} epochs; "
                  f"{start['params']} in {ckpt_dir})", file=sys.stderr)
            return 0
        manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["epoch"] <= start_epoch]
        checkpoints.remove_temporaries(ckpt_dir)  # half-written files of the run that was killed
        print(f"resuming from epoch {start_epoch} ({start['params']})", file=sys.stderr)
    else:
        manifest = checkpoints.new_manifest(model_cfg, recipe)
        if recipe.get("precise_bn"):
            trainer.recalibrate_bn(x_train)
        manifest = checkpoints.save_checkpoint(ckpt_dir, 0, checkpoint_lr(0, recipe), trainer.solver, manifest)

    mon = open_monitors(args.monitor_path, start_epoch)
    epochs, interval = recipe["train_epochs"], args.model_save_interval
    n_batches = math.ceil(len(x_train) / recipe["train_batch_size"])
    from tqdm import tqdm
    bar = tqdm(total=(epochs - start_epoch) * n_batches, desc="train", unit="batch", dynamic_ncols=True)
    last_good = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            lr = learning_rate(epoch, recipe["learning_rate"], epochs, recipe["lr_schedule"])
            loss, err = trainer.train_epoch(epoch, x_train, y_train, lr,
                                            lambda v: (bar.update(1), bar.set_postfix(epoch=epoch + 1, loss=f"{v:.3f}")))
            if err is None or trainer.nonfinite() is not None:
                what = f"the loss became {loss}" if err is None else f"parameter {trainer.nonfinite()} became non-finite"
                raise CliError(f"training diverged: {what} in epoch {epoch + 1}; the last good "
                               f"checkpoint is {os.path.join(ckpt_dir, checkpoints.params_name(last_good))}; "
                               "lower --learning_rate and rerun")
            save = (epoch + 1) % interval == 0 or epoch + 1 == epochs
            if save and recipe.get("precise_bn"):
                trainer.recalibrate_bn(x_train)
            vloss, verr = trainer.evaluate(x_val, y_val)
            for name, v in zip(MONITOR_SERIES, (loss, err, vloss, verr)):
                mon[name].add(epoch + 1, v)
            mon["time"].add(epoch + 1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", val_err=f"{verr:.3f}")
            if save:
                manifest = checkpoints.save_checkpoint(ckpt_dir, epoch + 1, checkpoint_lr(epoch + 1, recipe),
                                                       trainer.solver, manifest)
                last_good = epoch + 1
    finally:
        bar.close()
    print(f"done: {epochs} epochs, validation error {verr:.4f} (loss {vloss:.4f}); checkpoints and "
          f"{checkpoints.MANIFEST} in {ckpt_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, resume_hint="add --resume to the same command to continue"))
