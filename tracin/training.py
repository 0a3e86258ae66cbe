"""Training: the learning-rate schedules, per-epoch seeds, and the Trainer (graphs, solver, precise batch norm,
evaluation). The loop, its checkpoints and messages are train.py's.

Every global batch is split into `micro_batches` (M) equal consecutive micro-batches, dealt to the MPI ranks by
tracin.dataparallel (one process: all of them). Each is a separate training-mode forward/backward (batch norm
normalises per micro-batch), their gradients are summed in micro-batch order and divided by M, and every rank
applies the same update; so for a fixed M the weights do not depend on the number of ranks. M = 1 is plain
mini-batch SGD.
"""
import math

import numpy as np

from .dataparallel import Shards, ordered_sum
from .maths import softmax_xent


CYCLES = 3  # restarts of the `cyclic` schedule (snapshot ensembles, Huang et al. 2017)


def learning_rate(epoch, base_lr, epochs, schedule):
    """Learning rate of (0-based) `epoch`.

    Every schedule starts with the original's linear warm-up over 15/270 of training. `step` then multiplies by
    0.1 at 90/270, 180/270 and 240/270 of training (the original's epochs 90, 180, 240 at 270 epochs); `cosine`
    decays to 0 along half a cosine; `cyclic` splits training into CYCLES equal cycles, each a cosine decay from
    the peak (so one run passes through several minima)."""
    warmup = max(1, round(epochs * 15 / 270))
    lr = base_lr * min(1.0, (epoch + 1) / warmup)
    if schedule == "step":
        steps = [round(epochs * s / 270) for s in (90, 180, 240)]
        return lr * 0.1 ** sum(epoch >= s for s in steps)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "cyclic":
        length = epochs / CYCLES
        return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch % length) / length))
    raise ValueError(f"unknown schedule {schedule}")


def checkpoint_lr(k, recipe):
    """eta of checkpoint k: the learning rate of the epoch that produced it (epoch 0's for the initialisation)."""
    return learning_rate(max(k - 1, 0), recipe["learning_rate"], recipe["train_epochs"], recipe["lr_schedule"])


def epoch_seed(seed, epoch, stream):
    """Independent, reproducible seed for one epoch's data order (stream 0) or augmentation (stream 1): a resumed
    run draws exactly what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0] % (2 ** 31 - 1))


def augment_seed(seed, epoch, k):
    """Seed of the augmentation of micro-batch position k in an epoch: one random stream per position, so no
    stream depends on how positions are dealt to ranks. Position 0 keeps the seed of the unsplit batch."""
    if k == 0:
        return epoch_seed(seed, epoch, 1)
    return int(np.random.SeedSequence([seed, epoch, 1, k]).generate_state(1)[0] % (2 ** 31 - 1))


def _unflatten(flat, variables, field):
    """Set each variable's `field` ("d" or "g") from consecutive slices of the 1-D array `flat`, in order;
    returns how many values were used."""
    at = 0
    for v in variables:
        setattr(v, field, flat[at:at + v.size].reshape(v.shape))
        at += v.size
    return at


class Trainer:
    """The graphs and solver of one run. Training graphs are rebuilt per epoch (cheap) so that the in-graph
    augmentation is seeded by (seed, epoch, micro-batch position), which makes --resume exact. shards: a
    dataparallel.Shards over the MPI ranks (None: one process)."""

    def __init__(self, model_cfg, recipe, val_batch_size, build, shards=None):
        import nnabla as nn
        import nnabla.functions as F
        import nnabla.solvers as S

        self.nn, self.F, self.build = nn, F, build
        self.cfg, self.recipe = model_cfg, recipe
        shape = tuple(model_cfg["input_shape"])
        nn.random.seed(recipe["seed"])  # parameter initialisation
        self.x_val = nn.Variable((val_batch_size,) + shape)
        self.logits_val, _ = build(self.x_val, test=True)
        self.params = nn.get_parameters(grad_only=False)
        self.solver = S.Momentum(lr=recipe["learning_rate"], momentum=recipe["momentum"])
        self.solver.set_parameters(nn.get_parameters())
        self.grads = list(nn.get_parameters().values())  # what the ranks exchange, in a fixed order
        self.stats = [v for k, v in self.params.items() if k.endswith("bn/mean") or k.endswith("bn/var")]
        self.shards = shards or Shards()
        self.micro_batches = recipe.get("micro_batches", 1)
        # unsplit batches (so one process): the gradients and the running statistics stay where the forward and
        # backward passes put them, as in plain SGD
        self.in_place = self.micro_batches == 1
        # split batches: the running statistics a training forward pass leaves depend on which micro-batches a rank
        # ran, so they are either overwritten by precise batch norm before any use (recalibrate_bn, every epoch) or
        # made the mean over micro-batches (_micro_batches)
        self.stats_in_rows = not self.in_place and not recipe.get("precise_bn")
        self._graphs = {}

    def _train_graph(self, batch_size, epoch, k):
        nn, F = self.nn, self.F
        key = (batch_size, epoch, k)
        if key not in self._graphs:
            self._graphs = {g: v for g, v in self._graphs.items() if g == "recal" or g[1] == epoch}
            x = nn.Variable((batch_size,) + tuple(self.cfg["input_shape"]))
            y = nn.Variable((batch_size, 1))
            augment = self.recipe["augmentation"]
            if augment:
                augment = dict(augment, seed=augment_seed(self.recipe["seed"], epoch, k))
            logits, _ = self.build(x, test=False, augment=augment)
            logits.persistent = True  # read for the error count: a cleared forward must keep it
            loss = F.mean(F.softmax_cross_entropy(logits, y))
            self._graphs[key] = (x, y, logits, loss)
        return self._graphs[key]

    def train_epoch(self, epoch, x_train, y_train, lr, on_batch):
        """One epoch of momentum SGD; returns (mean loss, error rate) of the training batches, or (loss, None)
        as soon as a batch's loss is not finite (that batch's update is not applied)."""
        bs = self.recipe["train_batch_size"]
        n = len(x_train)
        order = np.random.RandomState(epoch_seed(self.recipe["seed"], epoch, 0)).permutation(n)
        n_batches = math.ceil(n / bs)
        # the last batch wraps around to the start, as nnabla's data_iterator does (cyclically, should the batch be
        # larger than the data)
        order = np.resize(order, n_batches * bs)
        self.solver.set_learning_rate(lr)
        total_loss, errors = 0.0, 0
        for b in range(n_batches):
            rows = self._micro_batches(epoch, order[b * bs:(b + 1) * bs], x_train, y_train)
            value = float(ordered_sum(rows[:, 0].astype(np.float64)) / self.micro_batches)
            if not np.isfinite(rows[:, 0]).all():
                return value, None
            errors += int(rows[:, 1].sum())
            self._update(rows[:, 2:])
            total_loss += value * bs
            on_batch(value)
        return total_loss / (n_batches * bs), errors / (n_batches * bs)

    def _micro_batches(self, epoch, idx, x_train, y_train):
        """(M, 2 + gradients + BN statistics) float32, row k = micro-batch k's (loss, errors, gradient, running
        statistics after its forward pass if stats_in_rows), every rank's rows gathered. Each micro-batch's forward
        starts from the same running statistics, so their update depends on the micro-batch alone."""
        m = self.micro_batches
        mb = len(idx) // m
        stats = self.stats if self.stats_in_rows else []
        start = [v.d.copy() for v in stats]
        rows = {}
        for k in self.shards.mine(m):
            x, y, logits, loss = self._train_graph(mb, epoch, k)
            for v, r in zip(stats, start):
                v.d = r
            x.d, y.d = x_train[idx[k * mb:(k + 1) * mb]], y_train[idx[k * mb:(k + 1) * mb]]
            loss.forward(clear_no_need_grad=True)
            # counted now: backward(clear_buffer=True) below frees the logits' buffer
            errors = int((logits.d.argmax(1) != y.d[:, 0]).sum())
            self.solver.zero_grad()
            loss.backward(clear_buffer=True)
            rows[k] = np.concatenate([np.array([float(loss.d), errors], dtype=np.float32)] + (
                [] if self.in_place else [v.g.ravel() for v in self.grads] + [v.d.ravel() for v in stats]))
        width = 2 + (0 if self.in_place else sum(v.size for v in self.grads) + sum(v.size for v in stats))
        return self.shards.gather(rows, m, width, np.float32)

    def _update(self, rows):
        """The mean of the micro-batches' gradients, then weight decay and the momentum step: the same on every
        rank."""
        if not self.in_place:
            self._set_mean(rows)
        if self.recipe["weight_decay"]:
            self.solver.weight_decay(self.recipe["weight_decay"])
        self.solver.update()

    def _set_mean(self, rows):
        """Gradients (and running statistics if stats_in_rows) := the rows' mean, summed in micro-batch order."""
        total = ordered_sum(rows)
        if self.micro_batches > 1:
            total /= self.micro_batches
        at = _unflatten(total, self.grads, "g")
        if self.stats_in_rows:
            _unflatten(total[at:], self.stats, "d")

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
        batches of the micro-batch size that training normalised over, the last one wrapping, dealt to the ranks
        and summed in batch order; at most PRECISE_BN_SAMPLES evenly spaced samples, so
        a CIFAR-10 checkpoint costs a fifth of an epoch's forward passes). The moving averages lag the weights:
        they mix ~10 recent batches of older weights and augmented images, which early in training puts
        inference-mode features, and so TracIn's per-checkpoint gradient norms, orders of magnitude off (digits,
        epoch 1: mean ||h||^2 ~3000-30000 against ~250 once trained). Running statistics never enter a
        training-mode forward pass, so the weight trajectory is unchanged."""
        nn = self.nn
        if len(x_train) > self.PRECISE_BN_SAMPLES:
            x_train = x_train[np.linspace(0, len(x_train) - 1, self.PRECISE_BN_SAMPLES).round().astype(np.int64)]
        bs = min(self.recipe["train_batch_size"] // self.micro_batches, len(x_train))
        if "recal" not in self._graphs or self._graphs["recal"][0].shape[0] != bs:
            x = nn.Variable((bs,) + tuple(self.cfg["input_shape"]))
            logits, _ = self.build(x, test=False)
            decay = []
            logits.visit(lambda f: decay.append(f.info.args["decay_rate"])
                         if f.info.type_name == "BatchNormalization" else None)
            self._graphs["recal"] = (x, logits, decay[0])
        x, logits, decay = self._graphs["recal"]
        n_batches = math.ceil(len(x_train) / bs)
        order = np.arange(n_batches * bs) % len(x_train)
        rows = {}
        for b in self.shards.mine(n_batches):
            for v in self.stats:
                v.data.zero()
            x.d = x_train[order[b * bs:(b + 1) * bs]]
            logits.forward(clear_buffer=True)  # running = decay * 0 + (1 - decay) * batch statistic
            rows[b] = np.concatenate([v.d.ravel() for v in self.stats])
        width = sum(v.size for v in self.stats)
        rows = self.shards.gather(rows, n_batches, width, np.float64)
        total = ordered_sum(rows, start=np.zeros(width)) / (n_batches * (1.0 - decay))
        _unflatten(total.astype(np.float32), self.stats, "d")

    def evaluate(self, x_val, y_val):
        """Inference-mode (running batch-norm statistics) loss and error over every validation sample; the
        batches are dealt to the ranks and their sums added in batch order."""
        bs = self.x_val.shape[0]
        n_batches = math.ceil(len(x_val) / bs)
        rows = {}
        for b in self.shards.mine(n_batches):
            xb, yb = x_val[b * bs:(b + 1) * bs], y_val[b * bs:(b + 1) * bs, 0]
            m = len(xb)
            if m < bs:  # pad the last batch; padded rows are ignored
                xb = np.concatenate([xb, np.repeat(xb[:1], bs - m, axis=0)])
            self.x_val.d = xb
            self.logits_val.forward(clear_buffer=True)
            logits = self.logits_val.d[:m]
            rows[b] = (float(softmax_xent(logits, yb).sum()), int((logits.argmax(1) != yb).sum()))
        loss, errors = ordered_sum(self.shards.gather(rows, n_batches, 2, np.float64), start=np.zeros(2))
        return float(loss) / len(x_val), int(errors) / len(x_val)
