"""The report of bench.quality: one markdown table per cell (mean ± sample std over seeds), the goal checks,
quality.json and the figure of the whole matrix."""
import json
import os
import sys

import numpy as np

TUNING_SEEDS = (0, 1, 2)
DEFAULT = "TracIn (defaults)"
MEMBER = "TracIn (defaults), ensemble training"  # one run of an ensemble alone: the training-seed spread
MEMBER_ROW = "TracIn (defaults), any one training of the ensembles"  # mean ± std over every training and seed
BASELINES = ("loss (last checkpoint)", "AUM", "confident learning, logistic regression",
             "confident learning, our network")


def ensemble_name(k):
    return f"TracIn (defaults), sum of {k} trainings"


def summarise(results):
    """{cell: {ranking: {metric: [mean, std], "n": seeds}}} over the seeds of each cell that have the ranking
    (sample std; 0 for one seed)."""
    table = {}
    for cell in dict.fromkeys(r["cell"] for r in results):
        runs = [r for r in results if r["cell"] == cell]
        names = list(dict.fromkeys(n for r in runs for n in r["metrics"]))
        table[cell] = {n: _stats([r["metrics"][n] for r in runs if n in r["metrics"]]) for n in names}
        members = [m for r in runs for m in r.get("members", [])]
        if members:
            table[cell][MEMBER_ROW] = _stats(members)
    return table


def _stats(rows):
    """{metric: [mean, sample std]} of one ranking over the seeds that have it, and "n": how many."""
    out = {m: [float(np.mean([r[m] for r in rows])), float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1
               else 0.0] for m in ("auroc", "recall_k", "ap")}
    out["n"] = len(rows)
    out["auroc_range"] = [float(min(r["auroc"] for r in rows)), float(max(r["auroc"] for r in rows))]
    return out


def ensembled_baselines(k):
    return (f"AUM, mean over {k} trainings", f"loss, mean over {k} trainings")


def goal(cell, rows, name=DEFAULT, k=1):
    """A ranking (the default; or the sum over k trainings) against every baseline present (and the baselines
    averaged over the same k trainings), in mean AUROC and mean recall at k (and AUROC >= 0.99 on digits):
    {check: bool}."""
    d = rows[name]
    opponents = [b for b in BASELINES + (ensembled_baselines(k) if k > 1 else ()) if b in rows]
    out = {f"AUROC >= {b}": d["auroc"][0] >= rows[b]["auroc"][0] for b in opponents}
    out.update({f"recall@k >= {b}": d["recall_k"][0] >= rows[b]["recall_k"][0] for b in opponents})
    if cell.startswith("digits"):
        out["AUROC >= 0.99"] = d["auroc"][0] >= 0.99
    return out


def verdict(checks):
    return "met" if all(checks.values()) else "NOT met (" + ", ".join(c for c, v in checks.items() if not v) + ")"


def cell_markdown(cell, runs, rows):
    r0 = runs[0]
    noise = r0["noise"]
    seeds = [r["seed"] for r in runs]
    tuned = [s for s in seeds if s in TUNING_SEEDS]
    desc = (f"### {cell}\n\n{cell.split('-')[0]}, {r0['n_train']} training images, {noise['model']} noise at "
            f"{noise['rate']:.0%} per class ({', '.join(str(r['n_mislabeled']) for r in runs)} mislabeled)"
            + (f", map {noise['map']}" if "map" in noise else "") + f"; seeds {', '.join(map(str, seeds))} ("
            + (f"{tuned} used for tuning" if tuned else "held out") + "); validation error of the network "
            + ", ".join(f"{r['val_error']:.3f}" for r in runs) + ".")
    lines = [desc, "", "| ranking | AUROC | recall@k | AP |", "|---|---|---|---|"]
    for name, m in sorted(rows.items(), key=lambda kv: -kv[1]["auroc"][0]):
        cells = " | ".join(f"{m[k][0]:.4f} ± {m[k][1]:.4f}" for k in ("auroc", "recall_k", "ap"))
        label = f"**{name}**" if name == DEFAULT else name
        if name == MEMBER_ROW:
            label += f" ({m['n']} trainings; AUROC {m['auroc_range'][0]:.4f}-{m['auroc_range'][1]:.4f})"
        elif m["n"] < len(runs):
            label += f" ({m['n']} of {len(runs)} seeds)"
        lines.append(f"| {label} | {cells} |")
    checks = goal(cell, rows)
    train_s = [r["seconds"].get("train_s") for r in runs if r["seconds"].get("train_s")]
    lines += ["", "Goal (defaults at least every baseline; AUROC ≥ 0.99 on digits): "
              + ("met" if all(checks.values()) else "NOT met: " + ", ".join(k for k, v in checks.items() if not v))
              + "." + (f" Training: {np.mean(train_s):.0f} s per run." if train_s else "")]
    for k in (3, 5):
        if ensemble_name(k) in rows:
            verdicts = [verdict(goal(cell, rows, ensemble_name(k), n)) for n in (1, k)]
            lines.append(f"Sum of {k} trainings ({k}x the training cost): against the baselines of one training "
                         f"{verdicts[0]}; also against AUM and the loss averaged over the same {k} trainings "
                         f"{verdicts[1]}.")
    lines.append("")
    return "\n".join(lines)


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    cells = list(table)
    names = list(dict.fromkeys(n for c in cells for n in table[c]))
    fig = Figure(figsize=(5 + 1.9 * len(cells), 1.2 + 0.42 * len(names)), dpi=110)
    FigureCanvasAgg(fig)
    for i, (metric, title) in enumerate((("auroc", "AUROC"), ("recall_k", "recall at k (k = number mislabeled)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        grid = np.array([[table[c][n][metric][0] if n in table[c] else np.nan for c in cells] for n in names])
        best = np.nanmax(grid, axis=0)
        ax.imshow(grid - best, cmap="RdYlGn", vmin=-0.1 if metric == "auroc" else -0.3, vmax=0, aspect="auto")
        for (r, c), v in np.ndenumerate(grid):
            if not np.isnan(v):
                std = table[cells[c]][names[r]][metric][1]
                ax.text(c, r, f"{v:.3f}\n±{std:.3f}", ha="center", va="center", fontsize=6.5,
                        fontweight="bold" if v == best[c] else "normal")
        ax.set_xticks(range(len(cells)), [c.replace("-", "\n") for c in cells], fontsize=8)
        ax.set_yticks(range(len(names)), names if i == 0 else [""] * len(names), fontsize=7.5)
        ax.set_title(f"{title}\n(colour: gap to the best ranking of the cell)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_report(results, out, suffix, wall):
    table = summarise(results)
    parts = ["# Detection quality matrix\n",
             f"Mean ± sample std over seeds; rows sorted by mean AUROC. `python -m bench.quality "
             f"{' '.join(sys.argv[1:])}`, {wall / 60:.0f} min wall time for this invocation (cached runs reused).\n"]
    for cell in table:
        parts.append(cell_markdown(cell, [r for r in results if r["cell"] == cell], table[cell]))
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"quality{suffix}.{ext}") for ext in ("md", "json", "png")]
    for path, write in ((paths[0], lambda f: f.write("\n".join(parts))),
                        (paths[1], lambda f: json.dump({"table": table, "goals": {c: goal(c, table[c]) for c in table},
                                                        "runs": results}, f, indent=1))):
        with open(path + ".tmp", "w") as f:
            write(f)
        os.replace(path + ".tmp", path)
    plot(table, paths[2] + ".tmp.png")
    os.replace(paths[2] + ".tmp.png", paths[2])
    return paths
