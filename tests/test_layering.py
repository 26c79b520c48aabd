"""The folders are the layers, and the layering is checked here, by reading the source
(nothing is imported): Qt-free state, torch only in the engine, no import circles, ``core``
free of Qt and split by concept, and benchmarks outside the application package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QT = ("PySide6", "pyqtgraph", "superqt", "shiboken6")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:`` (never run, so no circle)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imports(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``runtime_only``:
    leaving out those under ``if TYPE_CHECKING:``)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from explorer.state import state`` imports the submodule too.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


EXPLORER = sources("explorer")
WINDOW_AND_APP = ("explorer.main_window", "explorer.app")


@pytest.mark.parametrize("module", [m for m in EXPLORER if m.startswith("explorer.state")])
def test_state_imports_neither_qt_nor_torch(module: str):
    bad = {m for m in imports(EXPLORER[module]) if top(m) in (*QT, "torch")}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", [m for m in EXPLORER if not m.startswith("explorer.engine")])
def test_only_the_engine_imports_torch(module: str):
    bad = {m for m in imports(EXPLORER[module]) if top(m) == "torch"}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", list(sources("core")))
def test_core_never_imports_qt(module: str):
    bad = {m for m in imports(sources("core")[module]) if top(m) in (*QT, "explorer")}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_widgets_and_state_do_not_reach_up():
    """Shared widgets and the state serve the pages; they never import a page, the window or
    the app."""
    upper = ("explorer.panels", "explorer.training", "explorer.main_window", "explorer.app")
    for module, path in EXPLORER.items():
        if module.startswith(("explorer.widgets", "explorer.state")):
            bad = {m for m in imports(path) if m.startswith(upper)}
            assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", [m for m in EXPLORER if m.startswith("explorer.panels")])
def test_panels_do_not_know_the_window(module: str):
    """A panel gets what it uses (engine, state, task runner, file choosers) and speaks
    back through signals: it never imports the window or the app, not even for a type
    hint under ``TYPE_CHECKING`` (which is how a panel starts reaching into the window)."""
    bad = {m for m in imports(EXPLORER[module]) if m.startswith(WINDOW_AND_APP)}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_benchmarks_live_outside_the_application_package():
    assert not [m for m in EXPLORER if "bench" in m.rsplit(".", 1)[-1]]
    for module, path in sources("explorer").items():
        bad = {m for m in imports(path) if top(m) == "explorer_bench"}
        assert not bad, f"{module} imports {sorted(bad)}"


def test_no_import_circles():
    graph: dict[str, set[str]] = {}
    for module, path in EXPLORER.items():
        runtime = imports(path, runtime_only=True)
        graph[module] = {m for m in runtime if m in EXPLORER and m != module}
    # A package's __init__ is imported with every submodule; count that edge too.
    for module in EXPLORER:
        parent = module.rsplit(".", 1)[0]
        if parent != module and parent in EXPLORER and parent != "explorer":
            graph[module].add(parent)

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


CORE = sources("core")
CORE_ENTRY_POINTS = {"core", "core.__main__", "core.cli", "core.bench"}
# core.config: the configs of a model and a run, plain data that every concept reads.
CORE_CONCEPTS = (
    "core.config",
    "core.flow",
    "core.training",
    "core.runs",
    "core.stats",
    "core.files",
)


def test_core_is_folders_by_concept():
    """Beside the entry points (the package, ``python -m core``, the CLI and the benchmarks)
    every module of ``core`` sits in the folder of its concept."""
    flat = {m for m in CORE if m not in CORE_ENTRY_POINTS and not m.startswith(CORE_CONCEPTS)}
    assert not flat, f"modules outside core's concept folders: {sorted(flat)}"


@pytest.mark.parametrize("module", [m for m in CORE if m.startswith(CORE_CONCEPTS)])
def test_core_concepts_never_import_the_entry_points(module: str):
    """The flow, the training, the statistics and the files are libraries: the CLI and the
    benchmarks use them, never the other way round."""
    bad = {m for m in imports(CORE[module]) if m in CORE_ENTRY_POINTS - {"core"}}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", [m for m in CORE if m.startswith("core.flow")])
def test_the_flow_knows_nothing_of_training(module: str):
    bad = {m for m in imports(CORE[module]) if m.startswith("core.training")}
    assert not bad, f"{module} imports {sorted(bad)}"
