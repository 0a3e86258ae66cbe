"""Which parameters a selection ("layers") names and how they are scored, and what the library checks of a
network's graph: the affine layer whose output the logits are (the final layer of the closed forms, whatever its
name), and that scoring runs a deterministic inference graph.

A `layers` value is parsed here and nowhere else: `choose` turns it into a Selection (the parameter names and the
scoring: a closed form from one forward pass, or per-sample gradients) that the runs and jobs act on.
"""
import fnmatch
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from .errors import InputError

LAST_BIAS, LAST, LAST_BLOCK, ALL = "last_bias", "last", "last_block", "all"
HEAD_RELATIVE = (LAST, LAST_BIAS, LAST_BLOCK)  # named relative to the final affine layer
GRAD = "grad"  # scoring by per-sample gradients (any selection, either method)
# closed forms from one forward pass: self-influence ||e||^2 (||h||^2 + 1) and ||e||^2; train -> test influence has
# the dot product (e . e')(h . h' + 1) of `last` (tracin.maths)
SELF_CLOSED_FORMS = (LAST, LAST_BIAS)
INFLUENCE_CLOSED_FORMS = (LAST,)


@dataclass(frozen=True)
class Selection:
    """A parsed `layers` value: `spec` as given, the selected parameter `names` (creation order) and `scoring`:
    'last' / 'last_bias' (a closed form from one forward pass) or 'grad' (per-sample gradients)."""
    spec: str
    names: Tuple[str, ...]
    scoring: str

    @property
    def closed_form(self) -> bool:
        return self.scoring != GRAD


def scoring(spec: str, method: str, closed_forms: Sequence[str] = SELF_CLOSED_FORMS,
            head: Optional[Sequence[str]] = None) -> str:
    """How a selection is scored: its closed form (method 'batched', a selection in `closed_forms`, and for 'last'
    a final affine layer `head` [W, b] with a bias, when known) or 'grad'."""
    closed = method == "batched" and spec in closed_forms and (spec != LAST or head is None or len(head) == 2)
    return spec if closed else GRAD


def choose(graph, spec: str, method: str, closed_forms: Sequence[str]) -> Selection:
    """The Selection `spec` makes of `graph`'s parameters (tracin.graphs: its select and head); InputError when
    it selects nothing."""
    names = tuple(graph.select(spec))
    return Selection(spec, names, scoring(spec, method, closed_forms, graph.head or []))


def check_projection(spec: str, projection_dim: Optional[int]):
    """A random projection compresses per-sample gradients; the last-layer closed form is exact and compact."""
    if projection_dim is not None and spec == LAST:
        raise InputError("projection_dim applies to layers 'all' or parameter patterns; the last-layer closed form "
                         "is exact and already compact", arg="projection_dim")


def select_params(names, spec, last=None):
    """Parameter names selected by `spec`: 'last' (the final affine layer: `last`, its parameter names [W, b]; when
    not given, the names containing 'affine', as the original), 'last_bias' (its bias only), 'last_block' (the final
    affine layer and the last top-level scope before it: the last residual unit, whatever the model calls it), 'all'
    (every trainable parameter), or comma-separated fnmatch patterns / name prefixes."""
    names = list(names)
    head = [n for n in names if "affine" in n] if last is None else [n for n in last if n in names]
    if spec == LAST:
        chosen = head
    elif spec == LAST_BLOCK:  # names are in creation order, so the last other scope is the last unit
        body = [n.split("/")[0] for n in names if n not in head]
        chosen = [n for n in names if n in head or (body and n.split("/")[0] == body[-1])]
    elif spec == LAST_BIAS:
        chosen = [n for n in head if n.endswith("/b")] if last is None else [n for n in last[1:] if n in names]
    elif spec == ALL:
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
        ftype = f.info.type_name
        if ftype == "BatchNormalization" and f.info.args.get("batch_stat"):
            raise InputError(f"{what} normalizes with batch statistics in inference mode: give it a `test` argument "
                             "and build batch normalization with batch_stat=not test", arg="network")
        if ftype in RANDOM:
            raise InputError(f"{what} uses {ftype} in inference mode: give it a `test` argument and leave random "
                             "layers out when test is True", arg="network")
