"""The docs hold together: every relative link of README.md and docs/*.md reaches a file, and an anchor a heading
of it (GitHub's slugs); the README stays a newcomer's page."""
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def prose(path):
    """The page without its code blocks and inline code (a link-like text there is no link)."""
    out, fenced = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if FENCE.match(line.lstrip()):
                fenced = not fenced
            elif not fenced:
                out.append(re.sub(r"`[^`]*`", "", line))
    return "".join(out)


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    for line in prose(path).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def test_slug_follows_github():
    assert slug("Mislabeled-sample analysis (`mislabel_analysis.py`)") == "mislabeled-sample-analysis-mislabel_analysispy"
    assert slug("Train → test influence") == "train--test-influence"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    path = os.path.join(REPO, page)
    broken = []
    for m in LINK.finditer(prose(path)):
        target = m.group(1) or m.group(2)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            broken.append(f"{target}: no {os.path.relpath(dest, REPO)}")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(dest, REPO)}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_readme_is_short():
    assert os.path.getsize(os.path.join(REPO, "README.md")) <= 15000
