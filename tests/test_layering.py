"""The folders are the layers. The import rules are import-linter contracts in
``pyproject.toml`` (``[tool.importlinter]``): ``core`` free of Qt and the explorer, torch
only in the explorer's engine, Qt-free view state, widgets and state below the pages, panels
that never know the window, the benchmarks outside the application, no import circles in
the explorer, ``core``'s concepts below its entry points and the flow below the training.
This test runs them; the two rules that are about files, not imports, are checked here."""

from __future__ import annotations

from pathlib import Path

from tests.test_torch_free import fresh_python

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources(package: str) -> list[str]:
    return [module_name(p) for p in sorted((ROOT / package).rglob("*.py"))]


def test_the_import_contracts_hold():
    """``lint-imports`` over the project (its Python API, in a fresh interpreter, so this
    process's imports and caches play no part)."""
    code = (
        "import sys\n"
        "from importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(no_cache=True, no_logo=True))\n"
    )
    out = fresh_python(code, timeout=300)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    contracts = (ROOT / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    assert f"Contracts: {contracts} kept, 0 broken." in out.stdout, out.stdout


CORE_ENTRY_POINTS = {"core", "core.__main__", "core.cli", "core.bench"}
# core.config: the configs of a model and a run, plain data that every concept reads.
CORE_CONCEPTS = (
    "core.config",
    "core.flow",
    "core.runs",
    "core.training",
    "core.stats",
    "core.files",
)


def test_core_is_folders_by_concept():
    """Beside the entry points (the package, ``python -m core``, the CLI and the benchmarks)
    every module of ``core`` sits in the folder of its concept."""
    flat = {
        m for m in sources("core") if m not in CORE_ENTRY_POINTS and not m.startswith(CORE_CONCEPTS)
    }
    assert not flat, f"modules outside core's concept folders: {sorted(flat)}"


def test_benchmarks_live_outside_the_application_package():
    assert not [m for m in sources("explorer") if "bench" in m.rsplit(".", 1)[-1]]
