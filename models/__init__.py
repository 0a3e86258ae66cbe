"""Model zoo: graph builders only (no I/O). Each returns (logits, penultimate features).

`MODELS` feeds argparse `choices`; `build` is how every script makes a graph from a model config (the dict a
checkpoint manifest records), so no script restates the model by hand.
"""
from tracin.errors import InputError

MODELS = ("resnet23", "resnet56")  # names only: nnabla is imported when a graph is built, not with the zoo
DEFAULT_NMAPS = {"resnet23": 64, "resnet56": None}
BUILDER = "models:build"  # how a checkpoint manifest names this zoo (tracin.network)
PIXEL_MAX = 255  # the models take pixels as stored (uint8 0-255), as the original does
MIN_SIZE = 8  # three 2x2 poolings (resnet23) / two stride-2 stages (resnet56) need at least 8x8 pixels


def model_config(name, n_classes, input_shape, nmaps=None, dataset=None):
    """The self-description stored with every checkpoint."""
    if name not in MODELS:
        raise InputError(f"unknown model '{name}' (choose from {', '.join(sorted(MODELS))})")
    if name == "resnet23":
        nmaps = nmaps or DEFAULT_NMAPS[name]
        if nmaps < 2 or nmaps % 2:
            raise InputError(f"resnet23 needs an even width (nmaps) of at least 2, got {nmaps}")
    else:
        nmaps = None
    c, h, w = (int(v) for v in input_shape)
    if min(h, w) < MIN_SIZE:
        raise InputError(f"{name} needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {h}x{w}")
    return {"name": name, "nmaps": nmaps, "n_classes": int(n_classes), "input_shape": [c, h, w], "dataset": dataset,
            "builder": BUILDER, "pixel_max": PIXEL_MAX}


def check_config(config):
    """InputError unless `config` (a checkpoint manifest's model) follows the model's rules (tracin.network)."""
    wanted = model_config(config.get("name"), config["n_classes"], config["input_shape"], config.get("nmaps"))
    if wanted["nmaps"] != config.get("nmaps"):
        raise InputError(f"model nmaps {config.get('nmaps')!r} does not suit {config.get('name')}")


def build(config, image, test, augment=None):
    """Graph for `config` (see model_config) on the nn.Variable `image`: (logits, features)."""
    from . import resnet
    fn = getattr(resnet, config["name"])
    return fn(image, test=test, n_classes=config["n_classes"], nmaps=config.get("nmaps"), augment=augment)
