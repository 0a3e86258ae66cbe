"""Mutation sets shared by the three scripts' cases: what can go wrong with an image array and a label array."""
import os
import shutil

import numpy as np

from .harness import ANY, BAD, OK, Case
from .mutate import (
    as_float_with,
    edit_array,
    empty,
    overwrite,
    remove,
    set_value,
    truncate,
)

NAN, INF = float("nan"), float("inf")
NPY_HEADER = 128  # np.save's header length for these small arrays: damage after it hits the values


def damaged_file(rel):
    """Byte-level damage any .npy can suffer."""
    return [("truncated", truncate(rel, 0.5), BAD),
            ("header_only", truncate(rel, 64), BAD),
            ("empty", empty(rel), BAD),
            ("magic_overwritten", overwrite(rel, at=0, pattern=b"\0", n=8), BAD)]


def image_mutations(rel, full=True):
    """(name, mutation, expectation) for an image array (N, C, H, W); `full=False`: the essential six."""
    out = [damaged_file(rel)[0], damaged_file(rel)[2], ("missing", remove(rel), BAD),
           ("nan_pixel", edit_array(rel, as_float_with(NAN)), BAD),
           ("no_channels", edit_array(rel, lambda a: a[:, :0]), BAD),
           ("one_row_short", edit_array(rel, lambda a: a[:-1]), BAD)]
    if full:
        out += [damaged_file(rel)[1], damaged_file(rel)[3],
                ("inf_pixel", edit_array(rel, as_float_with(INF)), BAD),
                ("no_rows", edit_array(rel, lambda a: a[:0]), BAD),
                ("text_dtype", edit_array(rel, lambda a: a.astype(str)), BAD),
                ("extra_dim", edit_array(rel, lambda a: a[..., None]), BAD),
                # the same pixel values as float32: own data may come as float; must still be accepted
                ("float32_finite", edit_array(rel, lambda a: a.astype(np.float32)), OK),
                # damaged uint8 pixel bytes are valid pixels: undetectable, but must not break anything
                ("pixel_bytes_overwritten", overwrite(rel, at=0.5, pattern=None, n=64), ANY)]
    return out


def label_mutations(rel, full=True):
    """(name, mutation, expectation) for a label array (N, 1) of class indices; `full=False`: the essential eight."""
    out = [damaged_file(rel)[0], ("missing", remove(rel), BAD),
           ("nan_label", edit_array(rel, as_float_with(NAN)), BAD),
           ("fractional_label", edit_array(rel, as_float_with(0.5)), BAD),
           ("label_10_of_10_classes", edit_array(rel, set_value(10)), BAD),
           ("negative_label", edit_array(rel, set_value(-1)), BAD),
           ("one_row_short", edit_array(rel, lambda a: a[:-1]), BAD),
           ("text_dtype", edit_array(rel, lambda a: a.astype(str)), BAD)]
    if full:
        out += damaged_file(rel)[1:] + [
            ("inf_label", edit_array(rel, as_float_with(INF)), BAD),
            ("huge_label", edit_array(rel, set_value(2 ** 40)), BAD),
            ("two_columns", edit_array(rel, lambda a: np.hstack([a, a])), BAD),
            ("extra_dim", edit_array(rel, lambda a: a[:, :, None]), BAD),
            # 0xff bytes in the middle of int64 labels read as -1
            ("label_bytes_ff", overwrite(rel, at=NPY_HEADER + 8 * 40, pattern=b"\xff", n=64), BAD),
            # other integer layouts of the same labels are valid input
            ("int32", edit_array(rel, lambda a: a.astype(np.int32)), OK),
            ("flat", edit_array(rel, lambda a: a.reshape(-1)), OK)]
    return out


def file_cases(prefix, script, args, needs, rel, mutations, names=None, **kw):
    """One Case per mutation of file `rel`; the error line must name the file."""
    name = rel.split("/")[-1]
    return [Case(f"{prefix}-{name[:-4] if name.endswith('.npy') else name}-{m}", script, tuple(args), needs, fn,
                 expect, names or (name,), **kw)
            for m, fn, expect in mutations]


def with_flag(args, flag, value):
    """args with `flag` set to value (replaced when present, else appended)."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
        return tuple(args)
    return tuple(args) + (flag, value)


def flag_cases(prefix, script, args, needs, flag, values, expect=BAD, names=None, **kw):
    """One Case per value of `flag`; the error line must name the flag (or one of `names`)."""
    return [Case(f"{prefix}-flag{flag}={v}", script, with_flag(args, flag, v), needs, None, expect, names or (flag,),
                 **kw) for v in values]


NON_POSITIVE_INT = ("0", "-1", "nan", "inf", "x")


def entry(which, **fields):
    """A manifest edit: set fields of the checkpoint entry of epoch `which`."""
    def fn(m):
        next(c for c in m["checkpoints"] if c["epoch"] == which).update(fields)
    return fn


def params_elsewhere(folder, epoch):
    """A mutation: a complete params_{epoch}.h5 of `folder` copied outside it (for a manifest that then names it)."""
    def fn(work):
        os.makedirs(os.path.join(work, "elsewhere"))
        name = f"params_{epoch}.h5"
        shutil.copy(os.path.join(work, folder, name), os.path.join(work, "elsewhere", name))
    return fn
