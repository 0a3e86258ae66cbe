"""Up-front checks of the public API's arguments: a wrong type or range is an InputError naming the argument
(InputError.arg), raised before any checkpoint is loaded, never an AttributeError or numpy error from deep inside."""
import numbers
import os

import numpy as np

from .errors import InputError
from .normalize import NORMALIZATIONS

CONTEXTS = ("cpu", "cudnn", "auto")
METHODS = ("batched", "loop")
MAX_INT = 2 ** 31 - 1  # batch sizes, k, dimensions: far beyond any memory, but inside every integer type used


def _fail(name, value, what):
    return InputError(f"{name} must be {what}, got {value!r} ({type(value).__name__})", arg=name)


def whole(name, value, low=1, high=MAX_INT, optional=False):
    """An int (numpy ints too, never bool or float) in [low, high]; None when `optional`."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise _fail(name, value, f"a whole number from {low} to {high}" + (" or None" if optional else ""))
    if not low <= int(value) <= high:
        raise _fail(name, value, f"a whole number from {low} to {high}")
    return int(value)


def flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(name, value, "True or False")
    return bool(value)


def choice(name, value, choices, optional=False):
    if value is None and optional:
        return None
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"unknown {name}: {name} is {value!r}; choose one of {', '.join(choices)}", arg=name)
    return value


def layers(value):
    if not isinstance(value, str) or not value.strip():
        raise _fail("layers", value, "'last_bias', 'last', 'last_block', 'all' or comma-separated parameter "
                                     "patterns")
    return value


def folder(name, value, optional=True):
    """A folder path (str or os.PathLike) that is not a file; None when `optional`."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise _fail(name, value, "a folder path")
    if os.path.exists(value) and not os.path.isdir(value):
        raise InputError(f"{name} '{os.fspath(value)}' is a file, not a folder: pass a folder", arg=name)
    return value


def images(name, value, pixel_max=None, optional=False):
    """An array of images. A model that records the pixel range it was trained on (model["pixel_max"]: 255 for
    the bundled zoo, trained on pixels as stored) refuses float images scaled to [0, 1], which would look black
    to it. Other networks take whatever scale they were trained on."""
    if value is None and optional:
        return None
    if not isinstance(value, np.ndarray):
        raise _fail(name, value, "a numpy array of images (N, channels, height, width)")
    if (pixel_max is not None and pixel_max > 1 and value.dtype.kind == "f" and value.size
            and np.isfinite(value).all() and 0 < float(value.max()) <= 1.0):
        raise InputError(f"{name} holds pixels scaled to [0, 1] (max {float(value.max()):.3g}) but the model was "
                         f"trained on 0-{pixel_max:g}: pass them as stored (e.g. (x * {pixel_max:g}).round()"
                         ".astype(np.uint8))", arg=name)
    return value


def labels(name, value, optional=False):
    if value is None and optional:
        return None
    if not isinstance(value, np.ndarray):
        raise _fail(name, value, "a numpy array of class labels (N,) or (N, 1)")
    return value


def checkpoints(value, ensemble_types, single_types):
    if isinstance(value, ensemble_types + single_types):
        return value
    if isinstance(value, (str, os.PathLike)):
        raise InputError(f"checkpoints is a path ('{os.fspath(value)}'); pass tracin.load_checkpoints("
                         f"'{os.fspath(value)}') instead", arg="checkpoints")
    raise _fail("checkpoints", value, "the result of tracin.load_checkpoints")


def scoring(layers_, method, lr_weight, batch_size):
    """The scoring arguments self_influence and influence share: (lr_weight, batch_size) as plain Python values."""
    layers(layers_)
    choice("method", method, METHODS)
    return flag("lr_weight", lr_weight), whole("batch_size", batch_size)


def call(context, cache_dir, details=False):
    """The arguments of one call: its context, cache folder and the details switch."""
    choice("context", context, CONTEXTS, optional=True)
    folder("cache_dir", cache_dir)
    flag("details", details)


def selection(source, epochs, interval):
    """load_checkpoints' folder(s), epochs and interval."""
    for f in source if isinstance(source, (list, tuple)) else [source]:
        if not isinstance(f, (str, os.PathLike)) or not os.fspath(f):
            raise _fail("source", f, "a checkpoint folder path, or a list of folders or files")
    if epochs is not None:
        if isinstance(epochs, (str, bytes)) or not hasattr(epochs, "__iter__"):
            raise _fail("epochs", epochs, "a list of whole numbers or None")
        for e in epochs:
            whole("epochs", e, low=0, high=2 ** 62)
    whole("interval", interval, optional=True)


def influence_only(top_k, projection_dim, seed, full_matrix, test_chunk, normalize):
    """The arguments of influence alone, as plain Python values (top_k, projection_dim, seed, full_matrix,
    test_chunk)."""
    choice("normalize", normalize, NORMALIZATIONS)
    return (whole("top_k", top_k), whole("projection_dim", projection_dim, optional=True),
            whole("seed", seed, low=-2 ** 63, high=2 ** 63 - 1),  # any integer: its low 32 bits seed the projection
            flag("full_matrix", full_matrix), whole("test_chunk", test_chunk, optional=True))
