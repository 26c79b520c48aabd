"""The render engine: the one part of the explorer that imports torch."""
