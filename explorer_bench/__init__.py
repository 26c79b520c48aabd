"""Benchmarks of the desktop explorer, kept outside the application package:
``python -m explorer_bench.gui`` (slider to pixels), ``python -m explorer_bench.images``
(drop to reconstruction, interpolation) and ``python -m explorer_bench.training`` (watching
a run from the training workspace)."""
