"""Figures of mislabeled-sample detection and influence: functions of arrays and an output path that write a PNG
atomically (tracin.io.atomic_path); matplotlib is imported lazily and drawn by Agg without pyplot's global state.
"""
import numpy as np

from .io import atomic_path
from .metrics import (
    CURVE_FRACTIONS,
    as_inputs,
    detection_curve,
    oracle_scores,
    random_curve,
)

DPI = 120


def _figure(width, height):
    """A matplotlib Figure drawn by Agg, without pyplot's global state (nothing to close, nothing shown)."""
    import sys

    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:  # do not switch an interactive session's backend under it
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, **kw):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, **kw)
    return path


def spans_decades(values, decades=2.0):
    """True when the positive values span at least `decades` orders of magnitude and none is negative."""
    values = np.asarray(values, dtype=np.float64)
    pos = values[values > 0]
    return bool(values.size and values.min() >= 0 and pos.size and pos.max() / pos.min() >= 10 ** decades)


def plot_distribution(scores, mislabeled, path, score_name="Self-influence (TracIn)", bins=50):
    """Histograms of the scores of clean and shuffled samples, each normalised to its own size (fraction of the
    group per bin), on a log-x axis when the scores span two decades or more; the legend shows the counts."""
    scores, mislabeled = as_inputs(scores, mislabeled)
    log = spans_decades(scores)
    shown = scores
    n_zero = 0
    if log:
        pos_min = scores[scores > 0].min()
        n_zero = int((scores <= 0).sum())
        shown = np.maximum(scores, pos_min)
        edges = np.geomspace(pos_min, shown.max(), bins + 1)
    else:
        lo, hi = float(shown.min()), float(shown.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for mask, name, color in ((~mislabeled, "clean labels", "tab:blue"), (mislabeled, "shuffled labels", "tab:red")):
        n = int(mask.sum())
        if n == 0:
            ax.plot([], [], color=color, label=f"{name} (n={n})")
            continue
        v = shown[mask]
        ax.hist(v, bins=edges, weights=np.full(n, 1.0 / n), color=color, alpha=0.45, label=f"{name} (n={n})")
        ax.hist(v, bins=edges, weights=np.full(n, 1.0 / n), color=color, histtype="step", linewidth=1.5)
        ax.axvline(np.median(v), color=color, linestyle="--", linewidth=1)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(score_name + (" (log scale)" if log else ""))
    ax.set_ylabel("Fraction of the group per bin")
    title = "Score distribution: clean vs shuffled labels (dashed: medians)"
    if n_zero:
        title += f"\n{n_zero} scores <= 0 drawn in the leftmost bin"
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_score_curve(rankings, mislabeled, path, fractions=CURVE_FRACTIONS, mark=0.1):
    """Fraction of the mislabeled samples found vs fraction of the data checked, for each ranking in
    `rankings` ({name: scores}), plus random order and the oracle; recall at `mark` is marked on each curve."""
    mislabeled = np.asarray(mislabeled).reshape(-1).astype(bool)
    fractions = np.asarray(fractions, dtype=np.float64)
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    curves = [(name, detection_curve(s, mislabeled, fractions), dict(color=colors[i % len(colors)], linewidth=2))
              for i, (name, s) in enumerate(rankings.items())]
    curves.append(("oracle", detection_curve(oracle_scores(mislabeled), mislabeled, fractions),
                   dict(color="black", linestyle=":", linewidth=1.5)))
    curves.append(("random order (expected)", random_curve(mislabeled, fractions),
                   dict(color="gray", linestyle="--", linewidth=1.2)))
    defined = bool(mislabeled.any())  # without mislabeled samples every recall is undefined (NaN)
    for name, curve, style in curves:
        if not defined:
            ax.plot(fractions, np.zeros_like(fractions) * np.nan, label=name, **style)
            continue
        at = float(np.interp(mark, fractions, curve))
        ax.plot(fractions, curve, label=f"{name}: {at:.2f} at {mark:.0%}", **style)
        ax.plot([mark], [at], "o", color=style["color"], markersize=5)
    ax.axvline(mark, color="gray", linewidth=0.8, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Fraction of training data checked (highest score first)")
    ax.set_ylabel("Fraction of mislabeled identified")
    n_mis = int(mislabeled.sum())
    title = f"Mislabeled-sample detection ({n_mis} of {mislabeled.size} mislabeled)"
    if n_mis == 0:
        title += "\nno mislabeled samples: recall undefined"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", title=f"recall at {mark:.0%} checked")
    fig.tight_layout()
    return _save(fig, path)


def plot_class_counts(counts, names, path, title, xlabel="Mislabeled samples among the top 10%"):
    """Horizontal bar chart of one count per class (the original's {epoch}_top_influence_sample.png)."""
    counts = np.asarray(counts)
    fig = _figure(7.0, 0.35 * len(names) + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    ax.barh(y, counts, color="tab:red", alpha=0.8)
    for yi, c in zip(y, counts):
        ax.text(c, yi, f" {int(c)}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("True class")
    ax.set_xlim(0, max(1, counts.max() if counts.size else 1) * 1.15)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_checkpoint_metrics(epochs, recall10, auroc, path, total=None):
    """Recall at 10% and AUROC of each checkpoint's own term; `total` = (recall10, auroc) of the sum, drawn as
    horizontal reference lines. None values (undefined) are left out."""
    epochs = np.asarray(epochs)
    r = np.array([np.nan if v is None else v for v in recall10], dtype=float)
    a = np.array([np.nan if v is None else v for v in auroc], dtype=float)
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(epochs, r, "o-", color="tab:red", label="recall at 10% checked")
    ax.plot(epochs, a, "s-", color="tab:blue", label="AUROC")
    if total is not None:
        if total[0] is not None:
            ax.axhline(total[0], color="tab:red", linestyle="--", linewidth=1, label="recall at 10%, all checkpoints")
        if total[1] is not None:
            ax.axhline(total[1], color="tab:blue", linestyle="--", linewidth=1, label="AUROC, all checkpoints")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Checkpoint epoch")
    ax.set_ylabel("Detection quality of the checkpoint's term")
    ax.set_title("Which checkpoints carry the signal")
    if len(epochs) <= 20:
        ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------- image sheets

def to_rgb(image):
    """(C,H,W) or (H,W) image -> (H,W,3) floats in [0,1]; uint8 is taken as 0-255, other types are min-max scaled."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = np.transpose(img, (1, 2, 0))
    else:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] != 3:
        img = np.repeat(img[:, :, :1], 3, axis=2)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    img = img.astype(np.float64)
    lo, hi = np.nanmin(img), np.nanmax(img)
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


FRAME_COLORS = {"red": (0.85, 0.1, 0.1), "blue": (0.1, 0.35, 0.85), None: (1.0, 1.0, 1.0)}


def plot_image_grid(cells, ncols, path, title, col_headers=None, min_cell_px=48, border=3, caption_lines=2,
                    zoom=2.0):
    """One PNG of a grid of images, drawn as a single mosaic (fast for hundreds of cells).

    cells: list (row-major, len <= nrows*ncols) of None (empty slot) or dict(image=(C,H,W) array, caption=str,
    frame=None|'red'|'blue', color=caption colour). col_headers: {column: text} written above the first row."""
    n = len(cells)
    nrows = max(1, -(-n // ncols))
    first = next((c for c in cells if c is not None), None)
    h, w = (to_rgb(first["image"]).shape[:2]) if first is not None else (min_cell_px, min_cell_px)
    up = max(1, int(round(min_cell_px / max(h, w))))
    ch, cw = h * up + 2 * border, w * up + 2 * border
    gap, cap = 6, int(11 * caption_lines / zoom * DPI / 120 + 4)
    longest = max([len(line) for c in cells if c is not None for line in c.get("caption", "").split("\n")] + [0])
    hgap = max(gap, int(np.ceil(longest * 6.5 * 0.62 * DPI / 72 / zoom)) + 4 - cw)  # captions must not touch
    head = 16 if col_headers else 0
    H = head + nrows * (ch + cap + gap)
    W = ncols * (cw + hgap)
    mosaic = np.ones((H, W, 3))
    import textwrap
    w_in, h_in = W * zoom / DPI, H * zoom / DPI
    lines = textwrap.wrap(title, width=max(30, int(w_in * 72 / 10 / 0.55)))  # ~10 pt characters per line
    top = 0.2 * len(lines) + 0.15
    fig = _figure(w_in, h_in + top)
    ax = fig.add_axes([0, 0, 1, h_in / (h_in + top)])
    texts = []
    for i, cell in enumerate(cells):
        if cell is None:
            continue
        r, c = divmod(i, ncols)
        y0, x0 = head + r * (ch + cap + gap), c * (cw + hgap) + hgap // 2
        img = to_rgb(cell["image"])
        if img.shape[:2] != (h, w):  # mixed sizes: crop / pad to the first image's size
            pad = np.ones((h, w, 3))
            pad[:min(h, img.shape[0]), :min(w, img.shape[1])] = img[:h, :w]
            img = pad
        img = np.repeat(np.repeat(img, up, axis=0), up, axis=1)
        mosaic[y0:y0 + ch, x0:x0 + cw] = FRAME_COLORS.get(cell.get("frame"), FRAME_COLORS[None])
        mosaic[y0 + border:y0 + border + h * up, x0 + border:x0 + border + w * up] = img
        texts.append((x0 + cw / 2, y0 + ch + 1, cell.get("caption", ""), cell.get("color", "black")))
    ax.imshow(mosaic, interpolation="nearest", extent=(0, W, H, 0))
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.axis("off")
    for x, y, s, color in texts:
        ax.text(x, y, s, ha="center", va="top", fontsize=6.5, color=color, linespacing=1.0)
    for col, s in (col_headers or {}).items():
        ax.text(col * (cw + hgap) + hgap // 2, head - 3, s, ha="left", va="bottom", fontsize=8, fontweight="bold")
    fig.text(0.5, 1 - 0.08 / (h_in + top), "\n".join(lines), ha="center", va="top", fontsize=10)
    return _save(fig, path)


def sample_sheet_cells(indices, images, true_labels, given_labels, names, scores=None):
    """Cells for plot_image_grid: caption 'true / given' (+ score); mislabeled framed and captioned in red."""
    cells = []
    for i in indices:
        t, g = int(true_labels[i]), int(given_labels[i])
        bad = t != g
        cap = f"#{i}\n{names[t]}" + (f" / {names[g]}" if bad else "")
        if scores is not None:
            cap += f"\n{scores[i]:.3g}"
        cells.append(dict(image=images[i], caption=cap, frame="red" if bad else None,
                          color="tab:red" if bad else "black"))
    return cells


def plot_class_scores(distribution, path, score_name="Self-influence (TracIn)"):
    """Per-class score distributions (review.class_score_distribution) as box plots, one row per class, on a log-x
    axis when the scores span two decades; each label gives the class's size and its share of the overall top 10%,
    to compare with its share of the data: a class far above it holds unusually many suspicious samples."""
    groups = [d for d in distribution if d["n"]]
    all_scores = np.concatenate([d["scores"] for d in groups]) if groups else np.zeros(0)
    log = spans_decades(all_scores)
    floor = all_scores[all_scores > 0].min() if log else None
    n = int(sum(d["n"] for d in distribution))
    fig = _figure(7.5, 0.4 * len(distribution) + 1.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot([np.maximum(d["scores"], floor) if log else d["scores"] for d in groups], vert=False,
               labels=[f"{d['class']} (n={d['n']}: {d['n'] / n:.0%} of data, {d['top_share']:.0%} of top 10%)"
                       for d in groups], showfliers=True, flierprops=dict(markersize=3, alpha=0.6))
    if log:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel(score_name + (" (log scale)" if log else ""))
    ax.set_title("Score distribution per given class")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
