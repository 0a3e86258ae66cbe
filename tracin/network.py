"""Which network a checkpoint's parameters belong to: the library never imports a model zoo; it is handed a builder.

A builder is `build(image, test) -> logits` or `-> (logits, features)`, called inside a parameter scope, with
`image` an nn.Variable (batch, channels, height, width) and `test` True for inference mode. Three ways to name one:

- a network function of the caller's, `fn(x) -> logits` or `fn(x, test) -> logits` (`adapt`; a parameter named
  `test` is passed True, so batch normalization can use its running statistics); parametric functions
  under named scopes, so that the parameter names match the ones nn.save_parameters wrote;
- a reference "module:function" or "path/to/file.py:function" to such a function (a manifest's `model["network"]`,
  or calculate_score.py --network);
- a model-zoo builder named by a manifest's `model["builder"]`, called as `fn(model_config, image, test=test)`, so
  one function serves every width and class count (train.py's manifests); its module may define
  `check_config(model_config)`, which raises InputError for a config the network cannot build (checked when a
  manifest is read, before anything runs).

When a builder gives the logits alone, the features of the last-layer closed forms are the input of the affine
layer that computes the logits (tracin.layers.find_head walks the graph back from the logits to it).
"""
import importlib
import importlib.util
import inspect
import os
import sys

from .errors import InputError

# train.py manifests written before the builder was recorded name one of the bundled models (resnet23, resnet56)
LEGACY_BUILDER = "models:build"


def resolve(spec: str, what: str = "network", base: str = None):
    """The callable that "module:function" or "path/to/file.py:function" names (a relative file path is taken
    from `base` when given, else from the working directory); InputError when it cannot be imported or is not
    callable."""
    if not isinstance(spec, str) or spec.count(":") < 1 or not spec.rsplit(":", 1)[1]:
        raise InputError(f"{what} {spec!r} must be MODULE:FUNCTION or FILE.py:FUNCTION")
    target, name = spec.rsplit(":", 1)
    try:
        if target.endswith(".py"):
            module = _load_file(os.path.join(base, target) if base and not os.path.isabs(target) else target)
        else:
            module = importlib.import_module(target)
    except InputError:
        raise
    except BaseException as e:  # noqa: BLE001 - the user's module failed while importing (even sys.exit)
        raise InputError(f"{what} {spec!r}: importing {target} failed ({type(e).__name__}: {e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"{what} {spec!r}: {target} defines no function {name!r}")
    return fn


def _load_file(path):
    if not os.path.isfile(path):
        raise InputError(f"network file '{path}' does not exist")
    key = "tracin_network_" + os.path.abspath(path).replace(os.sep, "_").replace(".", "_")
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def _takes_test(fn):
    """True when fn has a parameter named `test` (the inference-mode flag it is then called with)."""
    try:
        return "test" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a signature: called with the image alone
        return False


def adapt(fn, what=None):
    """build(image, test) for a network function fn(x) or fn(x, test=...) returning the logits (or (logits,
    features)); an exception inside fn is an InputError naming it."""
    if not callable(fn):
        raise InputError(f"network must be a function fn(x) -> logits, got {type(fn).__name__}", arg="network")
    name = what or f"network {getattr(fn, '__name__', repr(fn))}"
    with_test = _takes_test(fn)

    def build(image, test):
        try:
            return fn(image, test=test) if with_test else fn(image)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's code: one line naming it, not a traceback
            raise InputError(f"{name} failed on input of shape {tuple(image.shape)} ({type(e).__name__}: "
                             f"{_last_line(e)})", arg="network") from None
    build.tracin_name = name
    return build


def _last_line(error):
    """The message of an exception on one line: nnabla's own end with `Failed <check>`: <what>` after a file and
    line number, where only <what> speaks to a user."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
    return lines[-1].split("`: ", 1)[-1] if lines[-1].startswith("Failed `") else " ".join(lines)


def check_config(model_cfg: dict):
    """Run the builder module's own check of a model config, when it has one (InputError). A network function
    (`model["network"]`) has none: it is resolved when its checkpoints are loaded."""
    if model_cfg.get("network"):
        return
    fn = resolve(model_cfg.get("builder", LEGACY_BUILDER), "model builder")
    check = getattr(sys.modules.get(fn.__module__), "check_config", None)
    if callable(check):
        check(model_cfg)


def from_config(model_cfg: dict, base: str = None):
    """build(image, test) for a manifest's model config: its `network` (a function fn(x[, test]) -> logits,
    relative file paths taken from `base`, the manifest's folder) or its zoo `builder` reference."""
    if model_cfg.get("network"):
        spec = model_cfg["network"]
        return adapt(resolve(spec, "network", base), f"network {spec}")
    fn = resolve(model_cfg.get("builder", LEGACY_BUILDER), "model builder")
    return lambda image, test: fn(model_cfg, image, test=test)


def describe(network):
    """A short name for a network given to load_checkpoints (a reference string, or a function's name)."""
    return network if isinstance(network, str) else getattr(network, "__name__", type(network).__name__)
