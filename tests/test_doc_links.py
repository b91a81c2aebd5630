"""The documentation holds together: every relative link resolves, and the README is a page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250

# [text](target) and ![alt](target), the target up to the first space or closing parenthesis
# (an optional "title" after a space is dropped); reference definitions "[name]: target".
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\".*\")?\s*$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = ("http://", "https://", "mailto:")


def documents() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "benchmarks/results/README.md"]
    found += sorted((ROOT / "docs").glob("*.md"))
    return found


def relative_links(text: str) -> list[str]:
    """Link targets outside code, with external links and pure anchors left out."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [t for t in targets if not t.startswith(EXTERNAL) and not t.startswith("#")]


def test_the_documents_exist() -> None:
    missing = [str(path.relative_to(ROOT)) for path in documents() if not path.is_file()]
    assert not missing


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    broken = []
    for target in relative_links(document.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (document.parent / path).exists():
            broken.append(target)
    assert not broken, f"{document.relative_to(ROOT)} links to missing files: {broken}"


def test_the_link_finder_sees_links_and_skips_code() -> None:
    text = (
        'See [a](docs/A.md#part), ![pic](img.png "title") and [web](https://x.org).\n'
        "[ref]: ../B.md\n"
        "`[not](code.md)`\n"
        "```\n[nor](fenced.md)\n```\n"
        "[anchor](#here)\n"
    )
    assert relative_links(text) == ["docs/A.md#part", "img.png", "../B.md"]


def test_readme_is_a_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it to {README_MAX_LINES} and move "
        "reference detail into docs/"
    )
