"""The training workspace: the form, the trainer's process and its event stream, and the
monitor of curves and previews."""
