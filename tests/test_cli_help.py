"""Every option and argument of every command line has help, and the help reads as text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from cli_reference import parser_builders, walk  # noqa: E402

# Every parser and subparser, named by its command line (the reference's own walk).
PARSERS = [found for name, build in parser_builders() for found in walk(build(), name)]


@pytest.mark.parametrize("name, parser", PARSERS, ids=[n for n, _ in PARSERS])
def test_every_option_and_argument_has_help(name, parser):
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert not missing, f"{name}: no help for {missing}"


@pytest.mark.parametrize("name, parser", PARSERS, ids=[n for n, _ in PARSERS])
def test_help_shows_defaults_as_text_without_markup(name, parser):
    text = parser.format_help()
    assert "``" not in text and ":class:" not in text and ":func:" not in text, text
    assert "(default: None)" not in text and "(default: (" not in text, text
    assert "(default: [" not in text, text


def test_defaults_are_shown_once():
    from core.cli import build_parser

    train = next(p for n, p in PARSERS if n.endswith("realnvp train"))
    text = " ".join(train.format_help().split())
    assert "Adam learning rate (default: 0.001)" in text
    assert text.count("(default: auto)") == text.count("default: auto")
    assert "(default: runs/run; with --resume, the checkpoint's folder)" in text
    assert "``" not in build_parser().format_help()
