"""TracInCP self-influence of every training sample (see influence.py for the definition and the method).

    python calculate_score.py --input out/data --checkpoint out/ckpt [--output out/data] [-c cudnn]

Reads x_train.npy and y_shuffle_train.npy (the noisy labels training saw) from --input and the checkpoints, their
learning rates and the model from --checkpoint (checkpoints.json). Writes into --output:
  influence_all_epoch.npy   (N,) self-influence, aligned with x_train.npy
  {epoch}_influence.npy     with --save_every_epoch True: each checkpoint's eta-weighted term (they sum to the total)
  loss_last_epoch.npy       (N,) per-sample loss at the last selected checkpoint (a baseline ranking)
  scores.json               checkpoints, eta, layers, method, speed, versions
Work is cached per (checkpoint, shard of samples) under --output/tracin_cache: a killed run continues where it
stopped when rerun with the same settings.
"""
import json
import os
import platform
import sys
import time

import numpy as np

import checkpoints
import datasets
import influence
from args import score_parser
from utils import CliError, ensure_dir, quiet_nnabla, run_cli, save_json, save_npy, set_context

CACHE = "tracin_cache"


def resolve_checkpoints(args):
    legacy_cfg = None
    if args.model:
        x = np.load(os.path.join(args.input, "x_train.npy"), mmap_mode="r") \
            if os.path.isfile(os.path.join(args.input, "x_train.npy")) else None
        if x is not None:
            import models
            try:
                legacy_cfg = models.model_config(args.model, 10, x.shape[1:], args.nmaps)
            except ValueError as e:
                raise CliError(str(e)) from None
    model_cfg, entries, manifest = checkpoints.discover(args.checkpoint, legacy_cfg)
    if manifest is None:
        print(f"warning: {args.checkpoint} has no {checkpoints.MANIFEST}: scoring every params_*.h5 with "
              f"--model {args.model} and learning rate 1 (unweighted, as the original)", file=sys.stderr)
    selected = checkpoints.select(entries, args.checkpoint_epochs, args.checkpoint_interval)
    return model_cfg, selected


def settings_key(**kw):
    import hashlib
    return hashlib.sha1(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:12]


def main(argv=None, comm=None):
    args = score_parser().parse_args(argv)
    quiet_nnabla()
    data = datasets.load_arrays(args.input, need=("x_train.npy", "y_shuffle_train.npy"))
    x, y = data["x_train"], data["y_shuffle_train"][:, 0]
    model_cfg, ckpts = resolve_checkpoints(args)
    if tuple(x.shape[1:]) != tuple(model_cfg["input_shape"]):
        raise CliError(f"x_train.npy holds images of shape {tuple(x.shape[1:])} but the checkpoints' model takes "
                       f"{tuple(model_cfg['input_shape'])}: --input and --checkpoint come from different runs")
    datasets.check_labels(y, model_cfg["n_classes"], f"{args.input}/y_shuffle_train.npy")
    output = ensure_dir(args.output or args.input, "--output")
    ctx = set_context(args.context, args.device_id, args.type_config)

    rank, world = (comm.rank, comm.size) if comm is not None else (0, 1)
    if args.method == "loop":
        engine = influence.LoopGraph(model_cfg)
        trainable = engine.g.trainable
    else:
        engine = influence.ScoringGraph(model_cfg, min(args.batch_size, len(x)))
        trainable = engine.trainable
    names = influence.select_params(trainable, args.layers)
    for c in ckpts:  # validate every checkpoint up front, not hours into the run
        engine.load(c["path"])
        c["digest"] = influence.file_digest(c["path"])
    key = settings_key(data=datasets.fingerprint(x, y), names=names, method=args.method,
                       batch=args.batch_size, shard=influence.SHARD, ctx=ctx.backend[0], type=args.type_config,
                       layers="last" if args.layers == "last" else "grad")
    cache_dir = os.path.join(output, CACHE, key)

    from tqdm import tqdm
    bars = {}

    def progress(ckpt, k, cached):
        if rank != 0:
            return
        if ckpt["epoch"] not in bars:
            for b in bars.values():
                b.close()
            bars.clear()
            bars[ckpt["epoch"]] = tqdm(total=len(x), unit="sample", dynamic_ncols=True,
                                       desc=f"checkpoint {ckpt['epoch']} ({ckpts.index(ckpt) + 1}/{len(ckpts)})")
        bars[ckpt["epoch"]].update(k)

    t0 = time.time()
    n_done = influence.run_units(engine, args.layers, names, ckpts, x, y, min(args.batch_size, len(x)), cache_dir,
                                 rank, world, progress)
    for b in bars.values():
        b.close()
    elapsed = time.time() - t0
    if comm is not None:
        n_done = comm.allreduce(n_done)
        comm.barrier()
        if rank != 0:
            return 0

    terms, losses = influence.collect(ckpts, len(x), cache_dir)
    etas = [c["lr"] if args.lr_weight else 1.0 for c in ckpts]
    total, weighted = influence.weighted_sum(terms, etas)
    if args.save_every_epoch:
        for c, w in zip(ckpts, weighted):
            save_npy(os.path.join(output, f"{c['epoch']}_influence.npy"), w)
    save_npy(os.path.join(output, "loss_last_epoch.npy"), losses[-1])
    save_npy(os.path.join(output, "influence_all_epoch.npy"), total)
    import nnabla
    save_json(os.path.join(output, "scores.json"), {
        "definition": "score(z) = sum_i eta_i * ||grad loss(w_i, z)||^2 (TracInCP self-influence)",
        "n_train": int(len(x)), "input": os.path.abspath(args.input), "checkpoint": os.path.abspath(args.checkpoint),
        "model": model_cfg, "layers": args.layers, "n_parameters": int(sum(engine_size(engine, names))),
        "parameters": names, "method": args.method, "lr_weight": bool(args.lr_weight),
        "checkpoints": [{"epoch": c["epoch"], "lr": c["lr"], "eta": e, "params": os.path.basename(c["path"])}
                        for c, e in zip(ckpts, etas)],
        "loss_checkpoint": ckpts[-1]["epoch"],
        "batch_size": args.batch_size, "context": args.context, "type_config": args.type_config, "ranks": world,
        "samples_computed": int(n_done), "seconds": round(elapsed, 3),
        "samples_per_second": round(n_done / elapsed, 2) if n_done and elapsed > 0 else None,
        "versions": {"nnabla": nnabla.__version__, "numpy": np.__version__, "python": platform.python_version()},
    })
    rate = f", {n_done / elapsed:.0f} samples/s" if n_done and elapsed > 0 else " (all from cache)"
    print(f"scored {len(x)} samples x {len(ckpts)} checkpoints (layers {args.layers}, {args.method}{rate}); "
          f"wrote {os.path.join(output, 'influence_all_epoch.npy')}", file=sys.stderr)
    return 0


def engine_size(engine, names):
    g = engine.g if isinstance(engine, influence.LoopGraph) else engine
    return [int(np.prod(g.params[n].shape)) for n in names]


if __name__ == "__main__":
    sys.exit(run_cli(main))
