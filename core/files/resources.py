"""The files shipped with the package: the bundled model and its model card.

They live in the top-level ``resources/`` folder of the source tree, which is installed as
the package ``realnvp_resources`` (``pyproject.toml``: ``package-dir``), so
``importlib.resources`` finds them in a wheel or an sdist's install; code run from a
source checkout (an editable install, or ``PYTHONPATH=.`` without installing) uses the
checkout's own folder. Every command that takes a checkpoint reads the word ``bundled`` as
the bundled model, through :func:`resolve_checkpoint`; the explorer uses the same function.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

BUNDLED = "bundled"  # the word a user types for the bundled model
PACKAGE = "realnvp_resources"
MODEL_FILE = "default_model.pt"
CARD_FILE = "MODEL_CARD.md"


class BundledModelMissing(FileNotFoundError):
    """The bundled model is not installed here; the message says where it was looked for."""


def resources_dir() -> Path:
    """The folder holding the shipped files (it may lack some of them).

    Code run from a source checkout (editable install, or ``PYTHONPATH``) takes the
    checkout's own ``resources/``, so code and model always come from the same tree; an
    installed package takes its ``realnvp_resources``.
    """
    source = Path(__file__).resolve().parents[2]
    if (source / "pyproject.toml").is_file() and (source / "resources").is_dir():
        return source / "resources"
    try:
        return Path(os.fspath(importlib.resources.files(PACKAGE)))
    except (ModuleNotFoundError, TypeError):  # not installed; TypeError: not on a file system
        return source / "resources"


def bundled_model_path() -> Path:
    """Where the bundled model is (or would be): check ``is_file()`` before use."""
    return resources_dir() / MODEL_FILE


def model_card_path() -> Path:
    return resources_dir() / CARD_FILE


def resolve_checkpoint(name: str | os.PathLike) -> Path:
    """A checkpoint argument as a path: ``bundled`` is the bundled model (raising
    :class:`BundledModelMissing` when it is not installed); anything else is a path, so a
    file that happens to be called ``bundled`` is reached as ``./bundled``."""
    if isinstance(name, str) and name == BUNDLED:
        path = bundled_model_path()
        if not path.is_file():
            raise BundledModelMissing(
                f"the bundled model is not installed here (looked for {path}); "
                "reinstall the package or give a checkpoint file"
            )
        return path
    return Path(name)
