"""nnabla's compute context: 'cpu', 'cudnn' or 'auto' (cuDNN when its extension is installed, else CPU)."""
import logging

from .errors import InputError


def get_context(name="auto", device_id="0", type_config="float"):
    """nnabla's standard extension context; 'auto' takes cuDNN when its extension is installed, else CPU.

    An explicit `cudnn` without nnabla-ext-cuda is an InputError, not a silent fallback."""
    from nnabla.ext_utils import get_extension_context

    if name not in ("auto", "cpu", "cuda", "cudnn"):
        raise InputError(f"unknown context '{name}': use cpu, cudnn or auto")
    if name in ("auto", "cuda", "cudnn"):
        log = logging.getLogger("nnabla")
        level = log.level
        log.setLevel(logging.CRITICAL)  # nnabla logs its own ERROR line before raising
        try:
            return get_extension_context(name if name != "auto" else "cudnn",
                                         device_id=str(device_id), type_config=type_config)
        except Exception:
            if name != "auto":
                raise InputError(f"context '{name}' needs the CUDA extension, which is not installed: "
                                 "pip install -r requirements-cuda.txt, or use the cpu context") from None
        finally:
            log.setLevel(level)
    if type_config != "float":
        raise InputError(f"type_config '{type_config}' needs a GPU context; on CPU use 'float'")
    return get_extension_context("cpu", type_config="float")


def set_context(name="auto", device_id="0", type_config="float"):
    """Make get_context(...) nnabla's default context; returns it."""
    import nnabla as nn
    ctx = get_context(name, device_id, type_config)
    nn.set_default_context(ctx)
    return ctx


def quiet_nnabla():
    """nnabla logs an INFO line per extension it initialises, the first while it is imported. Called before
    nnabla is imported (the level set here is kept), so that a terminal keeps one-line errors and progress bars."""
    logging.getLogger("nnabla").setLevel(logging.WARNING)
