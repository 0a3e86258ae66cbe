"""Importing an ImageFolder tree: pixels against PIL's own decode and resize, the colour and size rules, the
file mapping of the split, and the errors for bad folders (each names the file or folder)."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import imagefolder
from tracin import formats
from tracin.errors import InputError

BILINEAR = Image.BILINEAR
# (width, height) of a source -> the centred whole-pixel crop (left, top, right, bottom) for a square target
SQUARE_CROPS = {(16, 16): None, (20, 12): (4, 0, 16, 12), (12, 24): (0, 6, 12, 18), (33, 16): (8, 0, 24, 16)}


def grey(rng, w, h):
    return Image.fromarray(rng.randint(0, 256, (h, w)).astype(np.uint8), "L")


def write_folder(root, spec, seed=0):
    """spec: {class: [(name, PIL image) ...]}; returns {relative path: image}."""
    written = {}
    for cls, items in spec.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for name, img in items:
            rel = f"{cls}/{name}"
            img.save(os.path.join(root, rel))
            written[rel] = img
    return written


@pytest.fixture
def mixed(tmp_path):
    """Three classes of grey PNGs, 16x16 the most common size, three other sizes; two files of class 'b' lie in
    'a' and 'c' (planted errors: the import keeps the folder's label)."""
    rng = np.random.RandomState(0)
    sizes = [(16, 16)] * 6 + [(20, 12), (12, 24), (33, 16)]
    spec = {cls: [(f"{cls}{i}.png", grey(rng, *sizes[i % len(sizes)])) for i in range(9)] for cls in "abc"}
    spec["a"].append(("planted_b1.png", grey(rng, 16, 16)))
    spec["c"].append(("planted_b2.png", grey(rng, 20, 12)))
    root = tmp_path / "images"
    return str(root), write_folder(root, spec)


def reference(path, size, mode):
    """PIL's own pipeline for a plain (no alpha, no EXIF) file: convert, centre crop, bilinear resize."""
    img = Image.open(path).convert(mode)
    box = SQUARE_CROPS[img.size]
    if box is not None or img.size != size:
        img = img.resize(size, BILINEAR, box=box)
    return np.asarray(img)


# ------------------------------------------------------------------------------------------ pixels and rules

def test_grey_import_matches_pil_resize_and_keeps_folder_labels(mixed):
    root, written = mixed
    data = imagefolder.load_image_folder(root)
    assert data["classes"] == ["a", "b", "c"]
    assert data["size"] == (16, 16)  # the most common size
    assert data["x"].shape == (len(written), 1, 16, 16) and data["x"].dtype == np.uint8
    assert sorted(data["files"]) == sorted(written)
    for i, rel in enumerate(data["files"]):
        assert data["y"][i] == data["classes"].index(rel.split("/")[0])  # the folder, planted files included
        np.testing.assert_array_equal(data["x"][i, 0], reference(os.path.join(root, rel), (16, 16), "L"))
    unchanged = [i for i, rel in enumerate(data["files"]) if written[rel].size == (16, 16)]
    for i in unchanged:  # files of the target size keep their exact pixels
        np.testing.assert_array_equal(data["x"][i, 0], np.asarray(written[data["files"][i]]))


def test_one_colour_image_makes_every_image_rgb(tmp_path):
    rng = np.random.RandomState(1)
    colour = Image.fromarray(rng.randint(0, 256, (16, 16, 3)).astype(np.uint8), "RGB")
    root = tmp_path / "images"
    write_folder(root, {"x": [("g.png", grey(rng, 20, 12))], "y": [("c.png", colour), ("g2.jpg", grey(rng, 16, 16))]})
    data = imagefolder.load_image_folder(str(root))
    assert data["x"].shape == (3, 3, 16, 16)
    for i, rel in enumerate(data["files"]):
        np.testing.assert_array_equal(data["x"][i].transpose(1, 2, 0), reference(os.path.join(root, rel), (16, 16), "RGB"))
    g = data["x"][data["files"].index("x/g.png")]
    assert np.array_equal(g[0], g[1]) and np.array_equal(g[1], g[2])


def test_rgb_file_of_grey_pixels_stays_greyscale(tmp_path):
    rng = np.random.RandomState(2)
    root = tmp_path / "images"
    write_folder(root, {"x": [("rgb_grey.png", grey(rng, 16, 16).convert("RGB"))], "y": [("g.png", grey(rng, 16, 16))]})
    assert imagefolder.load_image_folder(str(root))["x"].shape == (2, 1, 16, 16)


def test_transparency_palette_and_16_bit_are_resolved(tmp_path):
    la = np.zeros((16, 16, 2), dtype=np.uint8)
    la[..., 0], la[:8, :, 1], la[8:, :, 1] = 40, 0, 255  # grey 40: top half transparent, bottom half opaque
    pal = Image.fromarray(np.tile(np.arange(16, dtype=np.uint8), (16, 1)), "P")
    pal.putpalette([v for i in range(256) for v in (i * 10 % 256,) * 3])
    pal.info["transparency"] = 0  # palette index 0 (column 0) is transparent
    deep = Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257), "I;16")
    root = tmp_path / "images"
    write_folder(root, {"a": [("la.png", Image.fromarray(la, "LA"))], "b": [("p.png", pal), ("deep.png", deep)]})
    data = imagefolder.load_image_folder(str(root))
    x = {rel: data["x"][i, 0] for i, rel in enumerate(data["files"])}
    assert data["x"].shape[1] == 1
    assert np.all(x["a/la.png"][:8] == 255) and np.all(x["a/la.png"][8:] == 40)  # transparent -> white
    assert np.all(x["b/p.png"][:, 0] == 255)
    np.testing.assert_array_equal(x["b/p.png"][:, 1:], np.tile(np.arange(1, 16) * 10 % 256, (16, 1)))
    np.testing.assert_array_equal(x["b/deep.png"], np.arange(256).reshape(16, 16))  # 257 k -> k


def test_exif_orientation_is_applied(tmp_path):
    rng = np.random.RandomState(3)
    img = grey(rng, 24, 12)  # stored 24 wide, 12 high; orientation 6: shown turned a quarter clockwise
    exif = Image.Exif()
    exif[imagefolder.ORIENTATION] = 6
    root = tmp_path / "images"
    os.makedirs(root / "a")
    os.makedirs(root / "b")
    img.save(root / "a" / "turned.png", exif=exif)
    img.transpose(Image.ROTATE_270).save(root / "b" / "upright.png")
    assert imagefolder.displayed_size(str(root / "a" / "turned.png")) == (24, 12)
    data = imagefolder.load_image_folder(str(root), image_size=(24, 12))
    np.testing.assert_array_equal(data["x"][0], data["x"][1])
    np.testing.assert_array_equal(data["x"][1, 0], np.rot90(np.asarray(img), -1))


def test_image_size_rules():
    assert imagefolder.check_image_size(None) is None
    assert imagefolder.check_image_size(32) == (32, 32)
    assert imagefolder.check_image_size((24, 40)) == (24, 40)
    for bad in (7, (8,), (8, 4), 16.0, "16", True):
        with pytest.raises(InputError, match="image_size"):
            imagefolder.check_image_size(bad)
    assert imagefolder.parse_image_size("32") == (32, 32) and imagefolder.parse_image_size("48x64") == (48, 64)
    for bad in ("", "32x", "x32", "3.5", "8x8x8", "4", "-16"):
        with pytest.raises(ValueError):
            imagefolder.parse_image_size(bad)
    assert imagefolder.default_size([(28, 28)] * 3 + [(40, 30)] * 2) == (28, 28)
    assert imagefolder.default_size([(20, 20), (30, 30)]) == (30, 30)  # tie: the larger
    assert imagefolder.default_size([(480, 640)] * 2 + [(32, 32)]) == (48, 64)  # longer side capped, aspect kept
    with pytest.raises(InputError, match="image_size"):
        imagefolder.default_size([(1000, 50)])


def test_crop_box_is_centred_and_keeps_target_aspect():
    for (w, h), box in SQUARE_CROPS.items():
        assert imagefolder.crop_box(w, h, 16, 16) == (box or (0, 0, w, h))
    assert imagefolder.crop_box(40, 40, 10, 20) == (0, 10, 40, 30)  # target twice as wide as high


def test_explicit_size_resizes_every_file(mixed):
    root, written = mixed
    data = imagefolder.load_image_folder(root, image_size=12)
    assert data["x"].shape == (len(written), 1, 12, 12)
    rel = data["files"][0]
    np.testing.assert_array_equal(data["x"][0, 0], reference(os.path.join(root, rel), (12, 12), "L"))


# ------------------------------------------------------------------------------------------ split and mapping

def test_split_maps_every_index_to_its_file_and_class(mixed, tmp_path):
    root, written = mixed
    arrays, fl = imagefolder.make_arrays(root, val_fraction=0.2, seed=5)
    assert set(arrays) == {"x_train", "y_shuffle_train", "x_val", "y_val"}  # no y_train: clean labels unknown
    assert sorted(fl["train"] + fl["val"]) == sorted(written)
    assert fl["classes"] == ["a", "b", "c"] and fl["image_size"] == [16, 16] and fl["channels"] == 1
    for split in ("train", "val"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}" if split == "val" else "y_shuffle_train"]
        assert y.shape == (len(fl[split]), 1) and y.dtype == np.int64 and len(x) == len(fl[split])
        for i, rel in enumerate(fl[split]):
            assert fl["classes"][y[i, 0]] == rel.split("/")[0]
            np.testing.assert_array_equal(x[i, 0], reference(os.path.join(root, rel), (16, 16), "L"))
    counts = np.bincount(arrays["y_val"][:, 0], minlength=3)
    assert counts.tolist() == [2, 2, 2]  # floor(0.2 * 10 + 0.5) per class
    again, fl2 = imagefolder.make_arrays(root, val_fraction=0.2, seed=5)
    assert fl2 == fl and all(np.array_equal(again[k], arrays[k]) for k in arrays)
    assert imagefolder.make_arrays(root, val_fraction=0.2, seed=6)[1]["val"] != fl["val"]
    imagefolder.save_file_list(str(tmp_path), fl)
    assert imagefolder.read_file_list(str(tmp_path), n_train=len(fl["train"])) == fl
    assert imagefolder.read_file_list(str(tmp_path / "images")) is None  # no file list there


def test_skipped_and_hidden_files(mixed):
    root, written = mixed
    for junk in ("a/notes.txt", "b/.DS_Store", "stray.png", ".hidden/x.png", "c/.ipynb_checkpoints/x.png"):
        os.makedirs(os.path.dirname(os.path.join(root, junk)), exist_ok=True)
        grey(np.random.RandomState(0), 16, 16).save(os.path.join(root, junk), format="PNG")
    os.makedirs(os.path.join(root, "c", "deeper"))
    grey(np.random.RandomState(0), 16, 16).save(os.path.join(root, "c", "deeper", "nested.png"))
    data = imagefolder.load_image_folder(root)
    assert data["classes"] == ["a", "b", "c"]
    assert data["skipped"] == ["a/notes.txt", "stray.png"]
    assert sorted(data["files"]) == sorted(list(written) + ["c/deeper/nested.png"])


def test_progress_bar_goes_to_stderr_and_can_be_disabled(mixed, capsys):
    root, _ = mixed
    imagefolder.load_image_folder(root, progress=False)
    assert capsys.readouterr().err == ""
    imagefolder.load_image_folder(root, progress=True)
    assert "reading images" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad folders

def two_classes(root, n=(2, 2)):
    rng = np.random.RandomState(0)
    return write_folder(root, {cls: [(f"{i}.png", grey(rng, 16, 16)) for i in range(k)] for cls, k in zip("ab", n)})


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        imagefolder.load_image_folder(str(tmp_path / "nope"))
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(InputError, match="f.png' is a file"):
        imagefolder.load_image_folder(str(tmp_path / "f.png"))


def test_folder_without_class_folders(tmp_path):
    with pytest.raises(InputError, match=f"'{tmp_path}' has no class sub-folders: put each"):
        imagefolder.load_image_folder(str(tmp_path))
    grey(np.random.RandomState(0), 16, 16).save(tmp_path / "loose.png")
    with pytest.raises(InputError, match=r"holds 1 images directly"):
        imagefolder.load_image_folder(str(tmp_path))


def test_single_class(tmp_path):
    two_classes(tmp_path)
    for f in os.listdir(tmp_path / "b"):
        os.remove(tmp_path / "b" / f)
    os.rmdir(tmp_path / "b")
    with pytest.raises(InputError, match=f"'{tmp_path}' has a single class sub-folder \\('a'\\)"):
        imagefolder.load_image_folder(str(tmp_path))


def test_empty_class_folder(tmp_path):
    two_classes(tmp_path)
    os.makedirs(tmp_path / "c")
    with pytest.raises(InputError, match=f"class folder '{tmp_path / 'c'}' holds no PNG/JPEG images: add"):
        imagefolder.load_image_folder(str(tmp_path))
    (tmp_path / "c" / "scan.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match=r"holds 1 other files, e.g. 'c/scan.bmp'"):
        imagefolder.load_image_folder(str(tmp_path))


@pytest.mark.parametrize("content", ["truncated", "not_an_image"])
def test_unreadable_file_is_named(tmp_path, content):
    two_classes(tmp_path)
    path = tmp_path / "b" / "1.png"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if content == "truncated" else b"hello, not a PNG")
    for size in (None, 16):  # found by the header pass (default size) or while decoding
        with pytest.raises(InputError, match=f"cannot read image '{path}'.*replace or remove it"):
            imagefolder.load_image_folder(str(tmp_path), image_size=size)


def test_split_errors_name_the_class_folder(tmp_path):
    two_classes(tmp_path, n=(1, 4))
    with pytest.raises(InputError, match=f"class folder '{tmp_path / 'a'}' holds 1 image"):
        imagefolder.make_arrays(str(tmp_path), val_fraction=0.5)
    with pytest.raises(InputError, match="selects no image"):
        imagefolder.make_arrays(str(tmp_path), val_fraction=0.1)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(InputError, match="val_fraction"):
            imagefolder.make_arrays(str(tmp_path), val_fraction=bad)


def test_file_list_that_does_not_fit(tmp_path):
    imagefolder.save_file_list(str(tmp_path), {"classes": ["a"], "train": ["a/1.png"], "val": []})
    path = os.path.join(tmp_path, formats.FILE_LIST)
    with pytest.raises(InputError, match=f"{path} lists 1 training files but the arrays hold 2"):
        imagefolder.read_file_list(str(tmp_path), n_train=2)
    with open(path, "w") as f:
        json.dump({"classes": "a", "train": [], "val": []}, f)
    with pytest.raises(InputError, match=f"{path} is not a file list"):
        imagefolder.read_file_list(str(tmp_path))
    with open(path, "w") as f:
        json.dump({"classes": ["a"], "train": [3], "val": []}, f)
    with pytest.raises(InputError, match="must hold strings"):
        imagefolder.read_file_list(str(tmp_path))


@pytest.mark.parametrize("n, batch, epochs", [(270, 64, 200), (900, 64, 67), (4500, 64, 40), (40, 64, 1000)])
def test_recipe_length_is_a_step_budget(n, batch, epochs):
    r = imagefolder.adapt_recipe(n, batch)
    steps = epochs * math.ceil(n / min(batch, n))
    assert r["train_epochs"] == epochs and steps >= imagefolder.MIN_STEPS and epochs >= imagefolder.MIN_EPOCHS
    k = r["save_interval"]  # the smallest spacing that keeps the scored checkpoints within the cap
    assert math.ceil(epochs / k) <= imagefolder.MAX_CHECKPOINTS
    assert k == 1 or math.ceil(epochs / (k - 1)) > imagefolder.MAX_CHECKPOINTS
