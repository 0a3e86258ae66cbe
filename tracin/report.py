"""Text and HTML reports of detection metrics (metrics.json's 'rankings' and 'checkpoints')."""
import base64
import html
import os

from .metrics import RECALL_FRACTIONS


def format_value(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def metrics_table(rankings, fractions=RECALL_FRACTIONS):
    """Plain-text table (one row per ranking) of a metrics.json 'rankings' dict."""
    head = ["ranking", "AUROC", "AP"] + [f"R@{float(f):.0%}" for f in fractions]
    rows = [head]
    for name, m in rankings.items():
        rows.append([name, format_value(m["auroc"]), format_value(m["average_precision"])]
                    + [format_value(m["recall_at"].get(str(float(f)))) for f in fractions])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


ISSUE_COLUMNS = (("rank", "rank"), ("index", "index"), ("split", "split"), ("file", "file"), ("given_class", "given"),
                 ("suggested_class", "suggested"), ("self_influence", "self-influence"),
                 ("suggested_probability", "p(suggested)"), ("given_probability", "p(given)"))


def issues_table(rows, total, csv_name):
    """HTML of the first label-issue rows (tracin.review.label_issues) of `total`, most suspicious first."""
    esc = html.escape
    cell = (lambda k, v: "" if v is None else f"{v:.4g}" if k == "self_influence"
            else f"{v:.3f}" if k.endswith("probability") else esc(str(v)))
    parts = [f"<h2>Label issues: the {len(rows)} most suspicious of {total}</h2><p>All {total} rows, most "
             f"suspicious first: <code>{esc(csv_name)}</code>. Suggested: the most probable other class of the "
             "checkpoints' learning-rate-weighted mean softmax; red: flagged as a label issue (is_label_issue: "
             "the model prefers the suggestion to the given label, or the self-influence is an outlier; never for "
             "a model too weak to trust).</p>"
             "<table><tr>" + "".join(f"<th>{h}</th>" for _, h in ISSUE_COLUMNS) + "</tr>"]
    for r in rows:
        red = bool(r.get("is_label_issue"))
        parts.append("<tr" + (" style='color:#b00'" if red else "") + ">"
                     + "".join(f"<td>{cell(k, r[k])}</td>" for k, _ in ISSUE_COLUMNS) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def gate_html(metrics):
    """The model check (tracin.gate) at the top of the report: accuracy, chance, the sentence, the estimate."""
    v, esc = metrics.get("validation"), html.escape
    parts = []
    if v:
        colour = "#060" if v["trusted"] else "#b00"
        parts.append(f"<p style='font-size:1.15em;color:{colour};border:2px solid {colour};padding:0.5em'>"
                     f"<b>Model check: validation accuracy {v['accuracy']:.3f}, chance level {v['chance']:.3f}.</b> "
                     f"{esc(v['sentence'])}</p>")
    if metrics.get("estimated_label_issues") is not None:
        parts.append(f"<p><b>Estimated label issues: {metrics['estimated_label_issues']}</b> (rows of "
                     "label_issues.csv with is_label_issue = 1: the model prefers the suggested class, or the "
                     "self-influence is an outlier; review those, most suspicious first).</p>")
    return "".join(parts)


def report_html(metrics, figures, title="TracIn mislabeled-sample detection", issues_html=""):
    """One self-contained HTML page: summary, metrics table (or, without clean labels, a note saying why there is
    none), definitions, `issues_html` (issues_table) and the figures embedded as base64.

    figures: [(heading, png_path)], drawn in order; missing files are skipped."""
    esc = html.escape
    fr = list(metrics.get("recall_fractions", RECALL_FRACTIONS))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 10px;"
             "text-align:right}th:first-child,td:first-child{text-align:left}th{background:#eee}"
             "img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}code{background:#f4f4f4;padding:0 3px}"
             f"</style></head><body><h1>{esc(title)}</h1>"]
    parts.append(gate_html(metrics))
    if metrics.get("clean_labels") is False:
        parts.append(f"<p>Score file <code>{esc(str(metrics.get('score_file')))}</code>; {metrics['n_train']} "
                     "training samples. <b>Clean labels are unknown</b> (no y_train.npy: the labels are the data's "
                     "own), so no detection metrics can be computed: review the ranking below, most suspicious "
                     "first, and the score distribution per class.</p>")
    elif "n_train" in metrics:
        rate = metrics["n_mislabeled"] / metrics["n_train"] if metrics["n_train"] else 0.0
        parts.append(f"<p>Score file <code>{esc(str(metrics.get('score_file')))}</code>; "
                     f"{metrics['n_train']} training samples, {metrics['n_mislabeled']} mislabeled ({rate:.1%}).")
        if metrics.get("loss_file"):
            parts.append(f" Loss baseline <code>{esc(metrics['loss_file'])}</code>.")
        parts.append("</p>")
    if metrics.get("rankings"):
        parts.append("<h2>Metrics</h2><table><tr><th>ranking</th><th>AUROC</th><th>average precision</th>"
                     + "".join(f"<th>recall@{float(f):.0%}</th>" for f in fr) + "</tr>")
        for name, m in metrics["rankings"].items():
            parts.append(f"<tr><td>{esc(name)}</td><td>{format_value(m['auroc'])}</td>"
                         f"<td>{format_value(m['average_precision'])}</td>"
                         + "".join(f"<td>{format_value(m['recall_at'].get(str(float(f))))}</td>" for f in fr)
                         + "</tr>")
        parts.append("</table><p><small>recall@f: fraction of all mislabeled samples among the "
                     "floor(f&middot;N + 0.5) highest-scored (ties: lower index first). AUROC: chance that a random "
                     "mislabeled sample scores above a random clean one (0.5 = random). Average precision: mean "
                     "precision at the rank of each mislabeled sample (random &asymp; noise rate). "
                     "n/a: undefined (no mislabeled or no clean samples). Random order: expected values.</small></p>")
    if metrics.get("checkpoints"):
        parts.append("<h2>Per checkpoint</h2><table><tr><th>epoch</th><th>AUROC</th><th>average precision</th>"
                     "<th>recall@10%</th></tr>")
        for c in metrics["checkpoints"]:
            parts.append(f"<tr><td>{c['epoch']}</td><td>{format_value(c['auroc'])}</td>"
                         f"<td>{format_value(c['average_precision'])}</td>"
                         f"<td>{format_value(c['recall_at'].get('0.1'))}</td></tr>")
        parts.append("</table>")
    parts.append(issues_html)
    for heading, path in figures:
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        parts.append(f"<h2>{esc(heading)}</h2><p><small>{esc(os.path.basename(path))}</small><br>"
                     f"<img alt='{esc(heading)}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>\n")
    return "".join(parts)
