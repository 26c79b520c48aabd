"""The checkpoint format version, torch-free: a program that only compares versions (the
remote launcher checking a host before a run starts) reads it without loading torch."""

CHECKPOINT_FORMAT = 1  # written into every checkpoint; read back by core.files.checkpoint
