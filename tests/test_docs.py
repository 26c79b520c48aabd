"""The documentation cannot drift: the command-line reference is regenerated from the
parsers and compared, and the README stays a page a newcomer reads to the end."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import cli_reference  # noqa: E402


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == cli_reference.render(), (
        "docs/cli.md is out of date: run python tools/cli_reference.py"
    )


def test_cli_reference_covers_every_subcommand():
    text = cli_reference.render()
    from core.cli import build_parser

    for name, _ in cli_reference.walk(build_parser(), "realnvp"):
        assert f"## `{name}`" in text


def test_readme_is_short_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    first_block = readme.split("```")[1]
    assert "make run" in first_block and "make test" in first_block


def test_relative_links_in_readme_and_docs_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
