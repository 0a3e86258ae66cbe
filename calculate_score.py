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

--mode influence (train -> test, see influence.py): TracIn(z, z') of test samples z' (--test_input's x_val.npy,
labels y_val.npy or --test_label predicted) against every training sample. Writes influence_topk.npz (per test
sample: top-k proponents and opponents with scores, its self-influence), influence.json and, with --save_matrix
True, influence_matrix.npy (n_test, n_train). Cached per (test chunk, training shard) unit the same way.

Under an MPI launcher (mpiexec -n N ...; see parallel.py) the units are spread over the ranks and rank 0 writes
the same files as one process.
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
from args import parse_score_args
from utils import CliError, ensure_dir, quiet_nnabla, save_json, save_npy, set_context

CACHE = "tracin_cache"


def resolve_checkpoints(args, warn=True):
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
    if manifest is None and warn:
        print(f"warning: {args.checkpoint} has no {checkpoints.MANIFEST}: scoring every params_*.h5 with "
              f"--model {args.model} and learning rate 1 (unweighted, as the original)", file=sys.stderr)
    elif args.model and args.model != model_cfg["name"] and warn:
        # the seed's command line names a model; the manifest, written by training, knows which one it was
        print(f"warning: --model {args.model} ignored: {checkpoints.MANIFEST} records {model_cfg['name']}",
              file=sys.stderr)
    selected = checkpoints.select(entries, args.checkpoint_epochs, args.checkpoint_interval)
    return model_cfg, selected


def gather_count(comm, n_done):
    """Total work done over all ranks; returns once every rank has finished its units (rank 0 then writes)."""
    if comm is None:
        return n_done
    total = comm.allreduce(n_done)
    comm.barrier()
    return total


def settings_key(**kw):
    import hashlib
    return hashlib.sha1(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:12]


INFLUENCE_ONLY = ("test_input", "test_indices", "test_label", "top_k", "save_matrix", "projection_dim",
                  "test_chunk", "max_memory_gb")


def main(argv=None, comm=None):
    args = parse_score_args(argv)
    if args.mode == "self":
        given = [f"--{n}" for n in INFLUENCE_ONLY if getattr(args, n) is not None]
        if given:
            raise CliError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to --mode influence")
    quiet_nnabla()
    rank, world = (comm.rank, comm.size) if comm is not None else (0, 1)
    data = datasets.load_arrays(args.input, need=("x_train.npy", "y_shuffle_train.npy"))
    x, y = data["x_train"], data["y_shuffle_train"][:, 0]
    model_cfg, ckpts = resolve_checkpoints(args, warn=rank == 0)
    if tuple(x.shape[1:]) != tuple(model_cfg["input_shape"]):
        raise CliError(f"x_train.npy holds images of shape {tuple(x.shape[1:])} but the checkpoints' model takes "
                       f"{tuple(model_cfg['input_shape'])}: --input and --checkpoint come from different runs")
    datasets.check_labels(y, model_cfg["n_classes"], f"{args.input}/y_shuffle_train.npy")
    output = args.output or args.input
    if os.path.exists(output) and not os.path.isdir(output):
        raise CliError(f"--output '{output}' is a file, not a folder: choose another path")
    # under MPI every rank takes the GPU of its rank on its node (mpiexec -n 8 on 8 GPUs: devices 0..7)
    device_id = str(getattr(comm, "local_rank", rank)) if world > 1 else args.device_id
    ctx = set_context(args.context, device_id, args.type_config)

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
    plan = prepare_influence(args, engine, names, model_cfg, ckpts, x) if args.mode == "influence" else None
    ensure_dir(output, "--output")  # only now: a mistake found above leaves no empty folder behind
    if plan is not None:
        return run_influence(args, plan, engine, names, model_cfg, ckpts, x, y, output, ctx, comm)
    key = settings_key(data=datasets.fingerprint(x, y), names=names, method=args.method,
                       batch=args.batch_size, shard=influence.SHARD, ctx=ctx.backend[0], type=args.type_config,
                       layers=args.layers if args.layers in influence.CLOSED_FORMS else "grad")
    cache_dir = os.path.join(output, CACHE, key)

    from tqdm import tqdm
    # one bar over every (checkpoint, sample) of this rank's units; cached units count as done
    mine = sum(e - s for u, (_, s, e) in enumerate(influence.self_units(ckpts, len(x))) if u % world == rank)
    bar = tqdm(total=mine, unit="sample", dynamic_ncols=True, disable=rank != 0,
               desc=f"self-influence, {len(ckpts)} checkpoints")

    def progress(ckpt, k, cached):
        bar.set_postfix_str(f"checkpoint {ckpt['epoch']}", refresh=False)
        bar.update(k)

    t0 = time.time()
    n_done = influence.run_units(engine, args.layers, names, ckpts, x, y, min(args.batch_size, len(x)), cache_dir,
                                 rank, world, progress)
    bar.close()
    elapsed = time.time() - t0
    n_done = gather_count(comm, n_done)
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
        "batch_size": args.batch_size, "context": ctx.backend[0].split(":")[0], "type_config": args.type_config,
        "ranks": world,
        "samples_computed": int(n_done), "seconds": round(elapsed, 3),
        "samples_per_second": round(n_done / elapsed, 2) if n_done and elapsed > 0 else None,
        "versions": {"nnabla": nnabla.__version__, "numpy": np.__version__, "python": platform.python_version()},
    })
    rate = f", {n_done / elapsed:.0f} samples/s" if n_done and elapsed > 0 else " (all from cache)"
    print(f"scored {len(x)} samples x {len(ckpts)} checkpoints (layers {args.layers}, {args.method}{rate}); "
          f"wrote {os.path.join(output, 'influence_all_epoch.npy')}", file=sys.stderr)
    return 0


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


def prepare_influence(args, engine, names, model_cfg, ckpts, x):
    """Validate every --mode influence input (before anything is written) and fix the test samples' labels."""
    test_dir = args.test_input or args.input
    label_mode = args.test_label or "true"
    tdata = datasets.load_arrays(test_dir, need=("x_val.npy", "y_val.npy") if label_mode == "true" else ("x_val.npy",))
    xt_all = tdata["x_val"]
    if tuple(xt_all.shape[1:]) != tuple(model_cfg["input_shape"]):
        raise CliError(f"{test_dir}/x_val.npy holds images of shape {tuple(xt_all.shape[1:])} but the model takes "
                       f"{tuple(model_cfg['input_shape'])}: --test_input comes from another data set")
    if args.test_indices is None:
        idx = np.arange(len(xt_all), dtype=np.int64)
    else:
        idx = np.asarray(args.test_indices, dtype=np.int64)
        bad = idx[idx >= len(xt_all)]
        if len(bad):
            raise CliError(f"--test_indices {bad[0]} is out of range: {test_dir}/x_val.npy holds {len(xt_all)} "
                           f"samples (0..{len(xt_all) - 1})")
    xt = xt_all[idx]
    n_test, n_train = len(idx), len(x)
    k = min(args.top_k or 10, n_train)
    kind = "last" if args.layers == "last" and args.method == "batched" else "grad"
    if args.projection_dim and args.layers == "last":
        raise CliError("--projection_dim applies to --layers all or parameter patterns; the last-layer closed form "
                       "is exact and already compact")
    featurizer = influence.InfluenceFeatures(engine, kind, names, min(args.batch_size, len(x)), args.projection_dim,
                                             args.seed)
    if args.projection_dim and args.projection_dim >= featurizer.n_params:
        raise CliError(f"--projection_dim {args.projection_dim} is not below the {featurizer.n_params} selected "
                       "parameters: a projection would only add error; leave it out")
    limit = args.max_memory_gb * 2 ** 30 if args.max_memory_gb else (available_memory() or 2 ** 62) * 0.8
    if args.save_matrix:
        need = n_test * n_train * 8
        if need > limit:
            raise CliError(f"--save_matrix True needs {_gb(need)} for the ({n_test}, {n_train}) matrix, more than the "
                           f"{_gb(limit)} allowed: leave it out and use --top_k K (top-k lists need no matrix), or "
                           "pass fewer --test_indices")
    if args.projection_dim:
        need = featurizer.n_params * args.projection_dim * 4
        if need > limit:
            raise CliError(f"--projection_dim {args.projection_dim} needs a {_gb(need)} projection matrix, more "
                           f"than the {_gb(limit)} allowed: use a smaller D or fewer --layers")
    if label_mode == "true":
        yt = tdata["y_val"][idx, 0]
        datasets.check_labels(yt, model_cfg["n_classes"], f"{test_dir}/y_val.npy")
    else:  # the class the final model (last selected checkpoint) predicts
        engine.load(ckpts[-1]["path"])
        yt = influence.predict(engine, xt)
    return {"test_dir": test_dir, "label_mode": label_mode, "idx": idx, "xt": xt, "yt": yt, "k": k, "kind": kind,
            "featurizer": featurizer}


def run_influence(args, plan, engine, names, model_cfg, ckpts, x, y, output, ctx, comm=None):
    """--mode influence: top-k proponents / opponents (and optionally the full matrix) of test samples."""
    rank, world = (comm.rank, comm.size) if comm is not None else (0, 1)
    test_dir, label_mode, idx, xt, yt = plan["test_dir"], plan["label_mode"], plan["idx"], plan["xt"], plan["yt"]
    k, kind, featurizer = plan["k"], plan["kind"], plan["featurizer"]
    n_test, n_train = len(idx), len(x)
    etas = [c["lr"] if args.lr_weight else 1.0 for c in ckpts]
    chunk = min(args.test_chunk, n_test) if args.test_chunk else \
        influence.test_chunk_size(n_test, featurizer.width(), len(ckpts))
    key = settings_key(mode="influence", data=datasets.fingerprint(x, y), test=datasets.fingerprint(xt, yt),
                       names=names, method=args.method, kind=kind, batch=featurizer.batch_size,
                       shard=influence.influence_shard(n_train), chunk=chunk, k=k, matrix=bool(args.save_matrix),
                       projection=[args.projection_dim, args.seed] if args.projection_dim else None,
                       ckpts=[[c["epoch"], c["digest"], e] for c, e in zip(ckpts, etas)],
                       ctx=ctx.backend[0], type=args.type_config)
    cache_dir = os.path.join(output, CACHE, key)

    units = influence.influence_units(n_test, n_train, chunk)
    mine = sum((u[3] - u[2]) * len(ckpts) for i, u in enumerate(units) if i % world == rank)
    from tqdm import tqdm
    bar = tqdm(total=mine, unit="grad", dynamic_ncols=True, disable=rank != 0,
               desc=f"influence of {n_test} test x {n_train} train samples, {len(ckpts)} checkpoints")

    def progress(m, cached):
        bar.update(m)

    t0 = time.time()
    n_done = influence.run_influence_units(featurizer, ckpts, etas, xt, yt, x, y, k, chunk, cache_dir,
                                           keep_block=bool(args.save_matrix), rank=rank, world=world,
                                           progress=progress)
    bar.close()
    elapsed = time.time() - t0
    n_done = gather_count(comm, n_done)
    if rank != 0:
        return 0

    top, self_inf, matrix = influence.collect_influence(n_test, n_train, k, chunk, cache_dir,
                                                        matrix=bool(args.save_matrix))
    topk_path = os.path.join(output, "influence_topk.npz")
    from utils import atomic_path
    with atomic_path(topk_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, test_indices=idx, test_labels=np.asarray(yt, dtype=np.int64),
                     proponents=top["prop_idx"], proponent_scores=top["prop_score"],
                     opponents=top["opp_idx"], opponent_scores=top["opp_score"], self_influence=self_inf,
                     input=np.array(os.path.abspath(args.input)), test_input=np.array(os.path.abspath(test_dir)))
            f.flush()
            os.fsync(f.fileno())
    if matrix is not None:
        save_npy(os.path.join(output, "influence_matrix.npy"), matrix)
    import nnabla
    save_json(os.path.join(output, "influence.json"), {
        "definition": "TracIn(z, z') = sum_i eta_i * grad loss(w_i, z) . grad loss(w_i, z') (z train, z' test)",
        "n_train": int(n_train), "n_test": int(n_test), "top_k": int(k), "input": os.path.abspath(args.input),
        "test_input": os.path.abspath(test_dir), "test_label": label_mode, "checkpoint": os.path.abspath(args.checkpoint),
        "model": model_cfg, "layers": args.layers, "parameters": names, "n_parameters": int(featurizer.n_params),
        "method": args.method, "closed_form": kind == "last", "projection_dim": args.projection_dim,
        "seed": args.seed if args.projection_dim else None, "lr_weight": bool(args.lr_weight),
        "checkpoints": [{"epoch": c["epoch"], "lr": c["lr"], "eta": e, "params": os.path.basename(c["path"])}
                        for c, e in zip(ckpts, etas)],
        "matrix": "influence_matrix.npy" if matrix is not None else None,
        "batch_size": args.batch_size, "context": ctx.backend[0].split(":")[0], "type_config": args.type_config,
        "ranks": world,
        "gradient_evaluations": int(n_done), "seconds": round(elapsed, 3),
        "seconds_per_test_sample": round(elapsed / n_test, 4) if n_done else None,
        "versions": {"nnabla": nnabla.__version__, "numpy": np.__version__, "python": platform.python_version()},
    })
    how = f"{elapsed:.1f} s, {elapsed / n_test:.3f} s per test sample" if n_done else "all from cache"
    print(f"influence of {n_test} test samples on {n_train} training samples x {len(ckpts)} checkpoints "
          f"(layers {args.layers}, {args.method}; {how}); wrote {topk_path}"
          + (f" and {os.path.join(output, 'influence_matrix.npy')}" if matrix is not None else ""), file=sys.stderr)
    return 0


def engine_size(engine, names):
    g = engine.g if isinstance(engine, influence.LoopGraph) else engine
    return [int(np.prod(g.params[n].shape)) for n in names]


if __name__ == "__main__":
    import parallel
    sys.exit(parallel.run_cli(main))
