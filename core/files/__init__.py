"""Files: the one image loader and grid writer, atomic writes, checkpoints and the bundled
resources."""
