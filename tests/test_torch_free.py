"""The torch-free parts load no torch, proven in a fresh interpreter.

The layering test reads the sources; this one imports them. A fresh subprocess imports each
group and reports which heavy packages ended up in ``sys.modules``: one stray import
anywhere in the chain (an eager ``core/__init__``, a helper module that imports torch at its
top) shows here even when every file looks clean on its own.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The parts of core that views use as plain data and files (no torch needed).
CORE_TORCH_FREE = [
    "core",
    "core.files",
    "core.files.atomic",
    "core.files.format_version",
    "core.files.images",
    "core.files.resources",
    "core.flow",
    "core.flow.collector",
    "core.stats",
    "core.stats.class_stats",
    "core.stats.heatmap",
    "core.stats.judge",
    "core.stats.typicality",
    "core.training",
    "core.runs",
    "core.training.datasets",
    "core.runs.disk",
    "core.runs.events",
    "core.runs.folder",
    "core.training.schedule",
    "core.runs.slurm",
    "core.runs.cluster",
    "core.config",
    "core.training.threads",
    "core.training.timing",
    "core.training.bars",
    # The remote-run API the GUI calls, and the agent (its check alone loads torch).
    "core.runs.host",
    "core.runs.agent",
    "core.runs.transport",
]


def _submodules(package: str) -> list[str]:
    folder = ROOT.joinpath(*package.split("."))
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(folder)])]


def _loaded_after_import(modules: list[str]) -> dict[str, bool]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({\n"
        "    'torch': 'torch' in sys.modules,\n"
        "    'qt': any(m.split('.')[0] in ('PySide6', 'pyqtgraph', 'superqt', 'shiboken6')\n"
        "              for m in sys.modules),\n"
        "}))\n"
    )
    out = fresh_python(code)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter in the project's root, the project first on its path."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_torch_free_core_loads_neither_torch_nor_qt():
    loaded = _loaded_after_import(CORE_TORCH_FREE)
    assert loaded == {"torch": False, "qt": False}


def test_explorer_models_load_neither_torch_nor_qt():
    loaded = _loaded_after_import(_submodules("explorer.state"))
    assert loaded == {"torch": False, "qt": False}


@pytest.mark.parametrize("package", ["explorer.widgets", "explorer.training"])
def test_widgets_and_training_workspace_load_no_torch(package: str):
    """The shared widgets and the training page are Qt, but they never need torch: the
    trainer runs in its own process."""
    loaded = _loaded_after_import(_submodules(package))
    assert loaded["torch"] is False
    assert loaded["qt"] is True  # the check would be empty if nothing was imported


def test_public_api_resolves_lazily():
    """Every name ``core`` exports resolves, and ``__all__`` lists exactly those names."""
    import core

    assert set(core.__all__) == set(core._EXPORTS)
    for name in core.__all__:
        assert getattr(core, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = core.nope
