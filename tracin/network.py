"""Which network a checkpoint's parameters belong to: the library never imports a model zoo; it is handed a builder.

A builder is `build(image, test) -> logits` or `-> (logits, features)`, called inside a parameter scope, with
`image` an nn.Variable (batch, channels, height, width) and `test` True for inference mode. A checkpoint manifest
names its builder by reference (`model["builder"]`, "module:function" or "path/to/file.py:function"); such a
function is called as `fn(model_config, image, test=test)`, so one function serves every width and class count;
its module may define `check_config(model_config)`, which raises InputError for a config the network cannot build
(checked when a manifest is read, before anything runs).
"""
import importlib
import importlib.util
import os
import sys

from .errors import InputError

# train.py manifests written before the builder was recorded name one of the bundled models (resnet23, resnet56)
LEGACY_BUILDER = "models:build"


def resolve(spec: str, what: str = "network"):
    """The callable that "module:function" or "path/to/file.py:function" names; InputError when it cannot be
    imported or is not callable."""
    if not isinstance(spec, str) or spec.count(":") < 1 or not spec.rsplit(":", 1)[1]:
        raise InputError(f"{what} {spec!r} must be MODULE:FUNCTION or FILE.py:FUNCTION")
    target, name = spec.rsplit(":", 1)
    try:
        module = _load_file(target) if target.endswith(".py") else importlib.import_module(target)
    except InputError:
        raise
    except Exception as e:  # the user's module failed while importing: name it and the error
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


def check_config(model_cfg: dict):
    """Run the builder module's own check of a model config, when it has one (InputError)."""
    fn = resolve(model_cfg.get("builder", LEGACY_BUILDER), "model builder")
    check = getattr(sys.modules.get(fn.__module__), "check_config", None)
    if callable(check):
        check(model_cfg)


def from_config(model_cfg: dict):
    """build(image, test) for a manifest's model config (its `builder` reference)."""
    fn = resolve(model_cfg.get("builder", LEGACY_BUILDER), "model builder")
    return lambda image, test: fn(model_cfg, image, test=test)
