"""The README and docs/: links that resolve, and the command line's manual in docs/cli.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.audio_probe import ACCEPTED, EXTENSIONS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    targets = [t for t in _LINK.findall(page.read_text()) if "://" not in t]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to what does not exist: {missing}"


def test_the_cli_manual_covers_every_command_and_the_readme_links_it() -> None:
    manual = (ROOT / "docs/cli.md").read_text()
    headings = re.findall(r"^#+ `stemfleet (\w+)", manual, re.MULTILINE)
    assert {"up", "separate", "process", "jobs", "status", "download"} <= set(headings)
    assert "stemfleet cancel JOB" in manual and "## Errors and their fixes" in manual
    assert "(docs/cli.md)" in (ROOT / "README.md").read_text()


def test_the_docs_list_the_accepted_audio_formats_of_the_one_list() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"Accepted audio formats: {ACCEPTED}." in readme
    manual = " ".join((ROOT / "docs/cli.md").read_text().split())
    patterns = ", ".join(f"`*.{ext}`" for ext in EXTENSIONS)
    assert f"collects every accepted format by its extension: {patterns}." in manual
