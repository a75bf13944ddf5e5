"""Every relative link in README.md and docs/*.md resolves (issue 31: the README's details
moved into docs/, so links and images now point across folders). A link's file must exist
relative to the page that holds it, and a `#fragment` into a markdown page must name one of
its headings (GitHub's anchors). Run as a script to list what is broken."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            found.add(title.replace(" ", "-"))
    return found


def broken_links() -> list[str]:
    broken = []
    for page in pages():
        text = FENCE.sub("", page.read_text())
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#") and not target[1:]:
                continue  # http:, https:, mailto:
            path, _, fragment = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                broken.append(f"{where} (no heading #{fragment})")
    return broken


def test_relative_links_resolve():
    assert broken_links() == []


if __name__ == "__main__":
    problems = broken_links()
    count = sum(len(LINK.findall(FENCE.sub("", p.read_text()))) for p in pages())
    print(f"{count} links in {len(pages())} pages; {len(problems)} broken")
    print("\n".join(problems))
    sys.exit(1 if problems else 0)
