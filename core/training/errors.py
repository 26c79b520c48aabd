"""The errors that end a training run, each with its exit status on the command line."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot go on; the message is meant for the user. ``exit_status`` is the
    command line's (3: diverged)."""

    exit_status = 3


class SaveFailedError(TrainingError):
    """A checkpoint or sample grid that could not be written (a full disk, a read-only or
    removed folder); the previous checkpoint is intact and the message says where."""

    exit_status = 4
