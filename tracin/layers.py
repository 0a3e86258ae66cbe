"""Which parameters a selection ("layers") names, and what the library checks of a network's graph: the affine
layer whose output the logits are (the final layer of the closed forms, whatever its name), and that scoring runs a
deterministic inference graph."""
import fnmatch

from .errors import InputError


def select_params(names, spec, last=None):
    """Parameter names selected by `spec`: 'last' (the final affine layer: `last`, its parameter names [W, b]; when
    not given, the names containing 'affine', as the original), 'last_bias' (its bias only), 'last_block' (the final
    affine layer and the last top-level scope before it: the last residual unit, whatever the model calls it), 'all'
    (every trainable parameter), or comma-separated fnmatch patterns / name prefixes."""
    names = list(names)
    head = [n for n in names if "affine" in n] if last is None else [n for n in last if n in names]
    if spec == "last":
        chosen = head
    elif spec == "last_block":  # names are in creation order, so the last other scope is the last unit
        body = [n.split("/")[0] for n in names if n not in head]
        chosen = [n for n in names if n in head or (body and n.split("/")[0] == body[-1])]
    elif spec == "last_bias":
        chosen = [n for n in head if n.endswith("/b")] if last is None else [n for n in last[1:] if n in names]
    elif spec == "all":
        chosen = names
    else:
        pats = [p.strip() for p in spec.split(",") if p.strip()]
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) or n.startswith(p.rstrip("/") + "/") or n == p
                                          for p in pats)]
    if not chosen:
        raise InputError(f"layers '{spec}' selects no trainable parameter; use last_bias, last, last_block, all, "
                         f"or patterns such as 'affine/*' (names look like {names[0]}, {names[-1]})", arg="layers")
    return chosen


# nnabla functions that draw random numbers: a per-sample gradient must be a function of the sample alone
RANDOM = {"Dropout", "Rand", "Randn", "Randint", "RandomChoice", "RandomCrop", "RandomFlip", "RandomShift",
          "RandomErase", "ImageAugmentation"}


def find_head(logits, params):
    """(the Affine function whose output the logits are, its parameter names [W] or [W, b]) or (None, None)."""
    f = logits.parent
    if f is None or f.info.type_name != "Affine":
        return None, None
    name_of = {v: n for n, v in params.items()}
    names = [name_of.get(v) for v in f.inputs[1:]]
    return (f, names) if names and all(names) else (None, None)


def check_inference_graph(loss, what):
    """InputError when the graph under `loss` is not a deterministic inference graph: batch normalization on
    batch statistics (a sample's gradient would depend on its batch) or random functions."""
    funcs = []
    loss.visit(funcs.append)
    for f in funcs:
        kind = f.info.type_name
        if kind == "BatchNormalization" and f.info.args.get("batch_stat"):
            raise InputError(f"{what} normalizes with batch statistics in inference mode: give it a `test` argument "
                             "and build batch normalization with batch_stat=not test", arg="network")
        if kind in RANDOM:
            raise InputError(f"{what} uses {kind} in inference mode: give it a `test` argument and leave random "
                             "layers out when test is True", arg="network")
