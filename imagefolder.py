"""Import a folder of your own images (the ImageFolder layout) into the project's array format.

    root/
      cat/   img001.png  img002.jpg  sub/img003.png ...
      dog/   ...

Classes are the sorted names of root's sub-folders (label 0 = the first); every PNG/JPEG below a class folder
(sub-folders included, hidden files and folders skipped) is one sample of that class. Labels are taken as given:
nothing is shuffled, because the point is to audit the labels the folders hold.

Pixels (the rules the arrays follow):
- Colour: every file is decoded as its viewer shows it (EXIF orientation applied, palette resolved, transparency
  composited onto white, 16-bit grey scaled to 8 bits). An image is in colour when some pixel has R, G, B not
  all equal; if any image is, all become RGB (C=3), else all are greyscale (C=1). A greyscale set keeps one
  channel instead of three identical ones, and an RGB file of grey pixels does not force colour.
- Size: every image becomes `image_size` (H, W); an int S means S x S. By default, the most common (H, W) of the
  files (ties: the larger), scaled down, aspect kept, so that its longer side is at most DEFAULT_MAX_SIDE: most
  files of a uniform set then keep their exact pixels, while large photos shrink to a size a ResNet can train on
  and TracIn can score on a CPU.
- Resize: the centre of the image with the target's aspect ratio is cut out (whole pixels), then resized with
  PIL's bilinear filter (anti-aliased: when shrinking, every source pixel contributes). Cropping keeps shapes
  undistorted (stretching would not) and adds no borders (padding would, and border widths that follow each
  source's size can become a shortcut the model learns); bilinear does not overshoot at sharp edges as bicubic or
  Lanczos do on line art and digits. The price: an object at the edge of an elongated image may be cut off.

Split: a seeded, per-class validation split; each class gives floor(val_fraction * n + 0.5) of its n images.

Arrays (see make_arrays): x_train, y_shuffle_train (the folder labels: the labels training sees), x_val, y_val;
no y_train.npy, because clean labels are unknown: an array folder without y_train.npy has no ground truth. Beside
them, FILE_LIST (files.json) maps every train / val index back to its file, relative to the image folder:
  {"format": 1, "root": "/abs/images", "classes": ["cat", "dog"], "image_size": [H, W], "channels": 1,
   "val_fraction": 0.1, "seed": 0, "train": ["cat/img001.png", ...], "val": [...], "skipped": [...]}
"""
import collections
import math
import os
import warnings

import numpy as np

from datasets import DatasetSpec
from models import (
    MIN_SIZE as MIN_SIDE,  # the smallest side the models take; checked before any decoding
)
from tracin.errors import InputError, MissingInputError
from tracin.formats import FILE_LIST

FORMAT = 1
EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_MAX_SIDE = 64
# --image_size beyond this is refused before any allocation (20000 x 20000 RGB is 1.2 GB per image; a ResNet on such
# images is far beyond what TracIn can score); and the whole array must fit this many bytes
MAX_SIDE = 2048
MAX_ARRAY_BYTES = 8 << 30
# folders of archive tools, not classes: skipped (and listed in files.json's "skipped")
TOOL_FOLDERS = ("__MACOSX",)
ORIENTATION = 0x0112  # EXIF tag; values 5-8 mean the stored image is turned a quarter
BACKGROUND = (255, 255, 255)  # transparent pixels: white, as most viewers and web pages show them


# Every batch is split into two micro-batches (tracin/dataparallel.py): train.py then trains in two processes where
# two cores exist and in one elsewhere, with the same weights either way (they depend on the split, not on the
# processes), so a result is reproducible on any machine.
MICRO_BATCHES = 2

# The training recipe of an image import (train.py also uses it for arrays whose shape no known data set has):
# fixed settings here, training length and checkpoint spacing from the data (adapt_recipe). Own data sets are small
# (hundreds to a few thousand images) and trained on a CPU: a narrow resnet23 (width 16), batch 64 (at most the
# data's size), cosine decay from a peak rate of 0.1 with precise batch norm. Augmentation keeps every label of
# unknown content: small rotations, scaling and shifts (1/8 of the side), no mirroring (a mirrored digit, letter or
# diagonal texture is another class). docs/own_data.md has the measurements behind every number.
OWN_DATA = DatasetSpec(
    "imagefolder", (), None, augment=dict(angle=0.15, min_scale=0.9, max_scale=1.1, flip_lr=False, shift=0.125),
    train_defaults=dict(train_batch_size=64, train_epochs=None, learning_rate=0.1, lr_schedule="cosine",
                        weight_decay=5e-4, nmaps=16, micro_batches=MICRO_BATCHES))
# Training length as a budget of optimizer steps, not epochs: 30 epochs are ~690 steps on 1,500 digits but ~150 on
# 300 images, which then memorise instead of learning. At least MIN_STEPS steps and MIN_EPOCHS epochs.
MIN_STEPS = 1000
MIN_EPOCHS = 40
MAX_CHECKPOINTS = 30  # scoring costs images x checkpoints: small folders, with many epochs, save every k-th


def adapt_recipe(n_train, batch_size=64, epochs=None):
    """{train_epochs, save_interval} for n_train images at batch_size: the step budget (MIN_STEPS, MIN_EPOCHS)
    unless `epochs` is given (an explicit --train_epochs), and a checkpoint every k-th epoch, k the smallest
    spacing that keeps the scored checkpoints within MAX_CHECKPOINTS."""
    if epochs is None:
        steps_per_epoch = math.ceil(n_train / min(batch_size, n_train))
        epochs = max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
    return {"train_epochs": epochs, "save_interval": math.ceil(epochs / MAX_CHECKPOINTS)}


# ------------------------------------------------------------------------------------------------- listing

def _hidden(name):
    return name.startswith(".") or name in TOOL_FOLDERS


def _images_below(folder, root):
    """(images, others): paths relative to root (POSIX separators) below `folder`, sorted."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_list_error):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if _hidden(name):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            (images if name.lower().endswith(EXTENSIONS) else others).append(rel)
    return sorted(images), sorted(others)


def _list_error(error):
    raise InputError(f"cannot list folder '{error.filename}' ({error.strerror}): make it readable")


def scan(root):
    """(classes, files, labels, skipped) of an ImageFolder tree; files relative to root, in (class, path) order.

    skipped lists the files that are not PNG/JPEG or lie directly in root (outside every class folder)."""
    if not os.path.exists(root):
        raise MissingInputError(f"image folder '{root}' does not exist: pass the folder that holds one "
                                "sub-folder per class")
    if not os.path.isdir(root):
        raise InputError(f"'{root}' is a file, not a folder: pass the folder that holds one sub-folder per class")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"cannot list folder '{root}' ({e.strerror}): make it readable") from None
    classes = [e.name for e in entries if e.is_dir() and not _hidden(e.name)]
    skipped_folders = [e.name + "/" for e in entries if e.is_dir() and e.name in TOOL_FOLDERS]
    skipped = sorted(e.name for e in entries if not e.is_dir() and not _hidden(e.name))
    if not classes:
        loose = sum(name.lower().endswith(EXTENSIONS) for name in skipped)
        raise InputError(f"image folder '{root}' has no class sub-folders" + (f" (it holds {loose} images directly)"
                         if loose else "") + ": put each class's images into a sub-folder named after the class")
    if len(classes) == 1:
        raise InputError(f"image folder '{root}' has a single class sub-folder ('{classes[0]}'): a classifier "
                         "needs at least two classes; add one sub-folder per class")
    files, labels = [], []
    for label, name in enumerate(classes):
        images, others = _images_below(os.path.join(root, name), root)
        if not images:
            found = f" (it holds {len(others)} other files, e.g. '{others[0]}')" if others else ""
            raise InputError(f"class folder '{os.path.join(root, name)}' holds no PNG/JPEG images{found}: add "
                             "images, convert them to PNG, or remove the folder")
        files += images
        labels += [label] * len(images)
        skipped += others
    return classes, files, np.asarray(labels, dtype=np.int64), sorted(skipped + skipped_folders)


# ------------------------------------------------------------------------------------------------- decoding

def _unreadable(path, error):
    from PIL import Image
    if isinstance(error, Image.DecompressionBombError):  # valid, but too large to decode safely
        return InputError(f"image '{path}' is too large to read ({error}): shrink it, or remove it")
    if isinstance(error, PermissionError):
        return InputError(f"cannot read image '{path}' (permission denied): make it readable, or remove it")
    return InputError(f"cannot read image '{path}' ({type(error).__name__}: {error}): the file is damaged or not "
                      "a PNG/JPEG; replace or remove it")


def displayed_size(path):
    """(height, width) of the image at `path` as a viewer shows it, from its header (no pixel decoding)."""
    from PIL import Image
    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")  # PIL's notes on odd but readable files (large, palette transparency)
            w, h = img.size
            if img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w
    except Exception as e:  # PIL's format plugins raise many types (OSError, SyntaxError, struct.error, ...)
        raise _unreadable(path, e) from None
    return h, w


def _to_rgb(img):
    """An RGB image of what a viewer shows for `img` (see the module notes)."""
    from PIL import Image, ImageOps
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit greyscale PNG: 0-65535 -> 0-255
        a = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def crop_box(width, height, target_h, target_w):
    """(left, top, right, bottom) of the centred, largest whole-pixel region with the target's aspect ratio."""
    if width * target_h > height * target_w:  # wider than the target: cut the sides
        w = max(1, min(width, round(height * target_w / target_h)))
        left = (width - w) // 2
        return left, 0, left + w, height
    h = max(1, min(height, round(width * target_h / target_w)))
    top = (height - h) // 2
    return 0, top, width, top + h


def read_image(path, size):
    """(pixels (H, W, 3) uint8 at `size` = (H, W), in colour?) of one file; errors name the file."""
    from PIL import Image
    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")  # PIL's notes on odd but readable files (large, palette transparency)
            rgb = _to_rgb(img)
    except Exception as e:  # a truncated or corrupt file fails while decoding, with the plugin's own type
        raise _unreadable(path, e) from None
    a = np.asarray(rgb)
    colour = bool(np.any(a[..., 0] != a[..., 1]) or np.any(a[..., 1] != a[..., 2]))
    th, tw = size
    if rgb.size != (tw, th):
        rgb = rgb.resize((tw, th), Image.BILINEAR, box=crop_box(rgb.width, rgb.height, th, tw))
    return np.asarray(rgb, dtype=np.uint8), colour


# ---------------------------------------------------------------------------------------------------- sizes

def check_image_size(image_size):
    """(H, W) from an int S (S x S) or a pair; None stays None (the default rule)."""
    if image_size is None:
        return None
    size = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= MIN_SIDE
                                 for v in size):
        raise InputError(f"image_size {image_size!r} is not a size: give an integer of at least {MIN_SIDE} "
                         "(square) or a pair (height, width) of such integers")
    if max(size) > MAX_SIDE:
        raise InputError(f"image_size {image_size!r} is larger than {MAX_SIDE} pixels a side: choose a smaller "
                         "size (the default shrinks images to at most 64)")
    return int(size[0]), int(size[1])


def parse_image_size(text):
    """--image_size's value: "S" (S x S) or "HxW" (height x width) -> (H, W). Raises ValueError (argparse reports
    it), InputError (a ValueError) below the models' minimum."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"image size '{text}' is not S or HxW (e.g. 32 or 48x64)")
    return check_image_size(tuple(int(p) for p in parts) * (3 - len(parts)))


def default_size(sizes, max_side=DEFAULT_MAX_SIDE):
    """The most common (H, W) in `sizes` (ties: the larger area), shrunk (aspect kept) to a longer side of at
    most `max_side`."""
    counts = collections.Counter(sizes)
    h0, w0 = max(counts, key=lambda s: (counts[s], s[0] * s[1], s))
    scale = min(1.0, max_side / max(h0, w0))
    h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    if min(h, w) < MIN_SIDE:
        raise InputError(f"the most common image size, {h0}x{w0} pixels (height x width), gives {h}x{w}, below the "
                         f"{MIN_SIDE} pixels a side the models need: choose an image_size")
    return h, w


# ---------------------------------------------------------------------------------------------------- import

def load_image_folder(root, image_size=None, progress=False):
    """Every image of an ImageFolder tree as one array: a dict with x (N, C, H, W) uint8, y (N,) int64, files
    (relative to root, aligned with x), classes, skipped (files left out) and size (H, W).

    progress=True shows a tqdm bar on stderr while the files are decoded."""
    from tqdm import tqdm
    size = check_image_size(image_size)
    classes, files, labels, skipped = scan(root)
    paths = [os.path.join(root, f) for f in files]
    if size is None:  # headers only: the pixels are decoded once, below, straight to the final size
        size = default_size([displayed_size(p) for p in tqdm(paths, desc="image sizes", unit="image",
                                                             disable=not progress)])
    need = len(paths) * size[0] * size[1] * 3
    if need > MAX_ARRAY_BYTES:
        raise InputError(f"{len(paths)} images of {size[0]}x{size[1]} pixels need {need / 2 ** 30:.1f} GB, more "
                         f"than the {MAX_ARRAY_BYTES >> 30} GB allowed: choose a smaller image_size")
    x = np.empty((len(paths),) + size + (3,), dtype=np.uint8)
    colour = False
    for i, p in enumerate(tqdm(paths, desc="reading images", unit="image", disable=not progress)):
        x[i], c = read_image(p, size)
        colour = colour or c
    x = x.transpose(0, 3, 1, 2) if colour else x[:, None, :, :, 0]  # grey images have R = G = B
    return {"x": np.ascontiguousarray(x), "y": labels, "files": files, "classes": classes, "skipped": skipped,
            "size": size}


def split_indices(labels, classes, val_fraction, seed, root=""):
    """(train, val) index arrays, each in file order: class c gives floor(val_fraction * n_c + 0.5) of its n_c
    samples, drawn with RandomState(seed). Every class keeps a training sample; the validation set is not empty."""
    if not 0.0 < float(val_fraction) < 1.0:
        raise InputError(f"val_fraction {val_fraction} is outside (0, 1): training needs validation images and "
                         "training images")
    rng = np.random.RandomState(seed)
    val = np.zeros(len(labels), dtype=bool)
    for c, name in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        k = int(math.floor(val_fraction * len(idx) + 0.5))
        if k >= len(idx):
            raise InputError(f"class folder '{os.path.join(root, name)}' holds {len(idx)} image(s): a validation "
                             f"fraction of {val_fraction} takes all of them, leaving no training sample; add "
                             "images or choose a smaller val_fraction")
        val[rng.choice(idx, k, replace=False)] = True
    if not val.any():
        raise InputError(f"a validation fraction of {val_fraction} selects no image of '{root}' (classes of "
                         f"{np.bincount(labels).min()}-{np.bincount(labels).max()} images): choose a larger "
                         "val_fraction")
    return np.flatnonzero(~val), np.flatnonzero(val)


def make_arrays(root, image_size=None, val_fraction=0.1, seed=0, progress=False):
    """(arrays, file_list) of an ImageFolder tree.

    arrays: x_train, y_shuffle_train, x_val, y_val in the project's array format (x uint8 (N, C, H, W), y int64
    (N, 1)); y_shuffle_train holds the folder labels. There is no y_train: clean labels are unknown (a caller
    that shuffles labels for an experiment sets y_train to these labels and y_shuffle_train to the shuffled ones).
    file_list: the content of FILE_LIST (module notes)."""
    data = load_image_folder(root, image_size, progress)
    train, val = split_indices(data["y"], data["classes"], val_fraction, seed, root)
    x, y = data["x"], data["y"].reshape(-1, 1)
    arrays = {"x_train": x[train], "y_shuffle_train": y[train], "x_val": x[val], "y_val": y[val]}
    file_list = {
        "format": FORMAT, "root": os.path.abspath(root), "classes": list(data["classes"]),
        "image_size": list(data["size"]), "channels": int(x.shape[1]),
        "val_fraction": float(val_fraction), "seed": int(seed),
        "train": [data["files"][i] for i in train], "val": [data["files"][i] for i in val],
        "skipped": data["skipped"],
    }
    return arrays, file_list


# ------------------------------------------------------------------------------------------------ file list

def save_file_list(folder, file_list):
    """Write FILE_LIST into `folder` atomically."""
    from tracin.io import save_json
    save_json(os.path.join(folder, FILE_LIST), file_list)


def read_file_list(folder, n_train=None):
    """The FILE_LIST of an array folder, or None when it has none (arrays not imported from images).

    n_train, when given, must equal the number of training files listed (the arrays' length)."""
    import json
    path = os.path.join(folder, FILE_LIST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            fl = json.load(f)
        classes, train, val = fl["classes"], fl["train"], fl["val"]
        if not (isinstance(classes, list) and isinstance(train, list) and isinstance(val, list)):
            raise ValueError("classes, train and val must be lists")
        if not all(isinstance(s, str) for s in classes + train + val):
            raise ValueError("classes, train and val must hold strings")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a file list of an image import ({e}): import the image folder again") \
            from None
    if n_train is not None and len(train) != n_train:
        raise InputError(f"{path} lists {len(train)} training files but the arrays hold {n_train} samples: the "
                         "file list comes from another import; import the image folder again")
    return fl
