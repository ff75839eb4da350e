"""The README is short and points into docs/ (issue 19): what laterbased is, the quick start
with its two commands as written, the production install, links; every link of the README
and of docs/*.md leads to a file (and heading) that exists."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    kept = [c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN"]
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, fence = set(), False
    for line in path.read_text("utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and re.match(r"^#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


def test_the_readme_is_short_and_keeps_the_two_quick_start_commands() -> None:
    text = README.read_text("utf-8")
    assert len(text.splitlines()) <= 150, "the reference belongs in docs/"
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "sudo bash scripts/setup && .venv/bin/laterbased demo" in quick
    assert "sudo bash scripts/setup && .venv/bin/python -m pytest" in quick
    assert "scripts/install --major 13" in text
    for doc in ("configuration", "setup", "failover", "backups", "monitoring", "deployment",
                "troubleshooting"):
        assert f"(docs/{doc}.md)" in text, doc
        assert (ROOT / "docs" / f"{doc}.md").is_file(), doc


def test_every_link_of_the_readme_and_the_docs_leads_somewhere() -> None:
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        fence = False
        for line in page.read_text("utf-8").splitlines():
            if line.lstrip().startswith("```"):
                fence = not fence
            if fence:
                continue
            for target in LINK.findall(line):
                if target.startswith(("http://", "https://", "mailto:")):
                    continue
                file_part, _, anchor = target.partition("#")
                path = (page.parent / file_part).resolve() if file_part else page
                if not path.exists():
                    broken.append(f"{page.name}: {target} (no such file)")
                elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == [], "\n".join(broken)
