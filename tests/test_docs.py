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


# -- every command the docs give parses with the real parsers ------------------------------

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What only the authors' machine has: a CPU-lock wrapper, their folders, a peer checkout.
AUTHORS_ONLY = ("/work/", "cpujob", "CPUJOB", "follow_cpu.py")
# Quoted sentences that start with a program's name, not commands.
NOT_COMMANDS = {"realnvp-explorer V on H writes checkpoint format N, this program reads format M"}
# A placeholder's example value where the option takes a number.
NUMBERS = {"N": "2", "T": "0.7", "S": "0"}
MENTION_GAPS = ("the following arguments are required", "expected one argument")


def _doc_commands(page: Path) -> list[tuple[str, bool]]:
    """``(command, complete)`` for each command line of a page's shell blocks (complete)
    and each inline code span naming one (a mention: it may leave out required
    arguments). Continuation lines are joined, comments, ``$`` prompts and ``VAR=value``
    prefixes dropped."""
    text = page.read_text()
    found = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang in ("", "bash", "sh", "console"):
            for line in body.replace("\\\n", " ").splitlines():
                found.append((re.sub(r"\s+#.*$", "", line.strip()), True))
    prose = re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " ")
    found += [(span, False) for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for line, complete in found:
        words = line.removeprefix("$ ").split()
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words.pop(0)
        if words and " ".join(words) not in NOT_COMMANDS:
            commands.append((" ".join(words), complete))
    return commands


def _parser_and_words(command: str):
    """The parser the command runs and the words it parses, or ``None`` for a command of
    another program (``python -m pytest``, ``pip``)."""
    from core.cli import build_parser

    words = command.split()
    if words[0] == "torchrun" and "-m" in words:
        words = words[words.index("-m") + 1 :]
        return (build_parser(), words[1:]) if words[:1] == ["core"] else None
    if words[0] in ("realnvp", "realnvp-explorer"):
        module = "core" if words[0] == "realnvp" else "explorer"
        rest = words[1:]
    elif words[0] in ("python", "python3") and words[1:2] == ["-m"] and len(words) > 2:
        module, rest = words[2], words[3:]
    else:
        return None
    builders = {name.split()[-1]: build for name, build in cli_reference.parser_builders()}
    builders.update({"core": build_parser, "explorer": builders["realnvp-explorer"]})
    return (builders[module](), rest) if module in builders else None


def _as_arguments(words: list[str]) -> list[str]:
    """A doc's command as the words a user types: ``[--json]`` an optional part (given),
    ``a|b`` or ``[X | --preset NAME]`` a choice (the first), ``...`` more (left out),
    ``| head`` or ``>> FILE`` the shell's (cut off), ``N`` a number's placeholder."""
    text = " ".join(words)
    while re.search(r"\[[^\[\]]*\]", text):
        text = re.sub(r"\[([^\[\]]*)\]", lambda m: re.split(r"\s*\|\s*", m[1])[0], text)
    text = re.split(r"\s(?:\||>>|>|2>>|2>)\s", f" {text} ")[0]
    out = []
    for word in text.split():
        if word in ("...", "…"):
            continue
        word = word.split("|")[0] if not word.startswith("'") else word.strip("'")
        out.append(NUMBERS.get(word, word))
    return out


def _parse_error(parser, args: list[str]) -> str | None:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            return err.getvalue().strip() or f"exit {exc.code}"
    return None


def test_every_command_in_the_docs_parses():
    checked, failures = 0, []
    for page in PAGES:
        for command, complete in _doc_commands(page):
            found = _parser_and_words(command)
            if found is None:
                continue
            parser, words = found
            error = _parse_error(parser, _as_arguments(words))
            checked += 1
            # A mention in the prose (`realnvp export --data-dir`) may leave out what is
            # required and an option's value; nothing else is forgiven: an option, a choice
            # or a number it gives must be one the parser takes.
            if error and (complete or not any(w in error for w in MENTION_GAPS)):
                failures.append(f"{page.name}: {command}\n    {error}")
    assert checked > 100, checked
    assert not failures, "\n".join(failures)


def test_the_parse_check_catches_a_stale_option():
    from core.cli import build_parser

    assert _parse_error(build_parser(), _as_arguments(["train", "--epochz", "2"])) is not None
    assert _parse_error(build_parser(), _as_arguments(["eval", "CKPT", "[--limit", "N]"])) is None


def test_no_page_names_what_only_the_authors_machine_has():
    for page in [*PAGES, ROOT / "Makefile"]:
        text = page.read_text()
        named = [word for word in AUTHORS_ONLY if word in text]
        assert not named, f"{page.name} names {named}"
    for page in PAGES:
        for command, _ in _doc_commands(page):
            if _parser_and_words(command) is not None:
                assert "shared/data" not in command, f"{page.name}: {command}"
