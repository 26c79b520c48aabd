"""Benchmarks of the desktop explorer, kept outside the application package:
``python -m explorer_bench`` (``realnvp bench``'s report with the explorer's figures beside
it), ``python -m explorer_bench.gui`` (slider to pixels), ``python -m explorer_bench.images``
(drop to reconstruction, interpolation) and ``python -m explorer_bench.training`` (watching
a run from the training workspace)."""

from __future__ import annotations

import argparse


def bench_parser(module: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``python -m explorer_bench.MODULE``: its description, the defaults
    written in by ``realnvp``'s formatter, and the model every benchmark takes first."""
    from core.cli import HelpFormatter

    parser = argparse.ArgumentParser(
        prog=f"python -m explorer_bench.{module}",
        description=description,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", nargs="?", help="model (default: the bundled model)")
    return parser
