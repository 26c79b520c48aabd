"""TensorBoard event files beside a run's events: ``OUT/tensorboard/``.

Every run (here, over SSH, under Slurm) writes its events to ``OUT/events.jsonl``; where the
optional ``tensorboard`` package is installed (``pip install realnvp-explorer[tensorboard]``)
the trainer also hands each event to a :class:`TensorBoardLog`, so that ``tensorboard
--logdir`` on the run's machine shows the run in the tool people already use:

=========================  =================================================
``train/loss``              a ``step`` event's loss, bits/dim
``train/learning_rate``     a ``step`` event's ``lr``
``train/images_per_s``      a ``step`` event's throughput
``test/bits_per_dim``       an ``eval`` event's ``test_bpd``
``samples`` (image)         a ``samples`` event's grid (temperatures 0.7 | 1.0)
=========================  =================================================

each at the event's own step. A resumed or requeued run appends to the same folder: its
``start`` event's step opens the writer with ``purge_step`` one past it, so the steps that
an earlier segment logged after its last checkpoint (and this one does again) are dropped by
TensorBoard's reader instead of shown twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.runs.folder import TENSORBOARD_DIR

# event -> (field, tag) of the scalars it carries
SCALARS = {
    "step": (("loss", "train/loss"), ("lr", "train/learning_rate"),
             ("images_per_s", "train/images_per_s")),
    "eval": (("test_bpd", "test/bits_per_dim"),),
}  # fmt: skip
_ENDS = ("done", "error", "requeue")  # the last event of a trainer process


class TensorBoardLog:
    """Writes the events it is given (:meth:`__call__`, an
    :meth:`core.runs.events.EventSink.listen` listener) as TensorBoard summaries under
    ``OUT/tensorboard/``. A summary that cannot be written (a full disk) ends the log,
    never the run."""

    def __init__(self, out: str | Path, writer_class: Any) -> None:
        self.folder = Path(out) / TENSORBOARD_DIR
        self._writer_class = writer_class
        self._writer: Any = None
        self.failed = False

    def __call__(self, event: dict[str, Any]) -> None:
        if self.failed:
            return
        try:
            self._write(event)
        except (OSError, ValueError):
            self.failed = True
            self.close()

    def _write(self, event: dict[str, Any]) -> None:
        kind, step = event.get("event"), event.get("step")
        if kind == "start":
            self.close()  # a second start in one process: a fresh writer, as a resume gets
            first = int(step or 0)
            # A resumed run goes on after its checkpoint's step: whatever an earlier
            # segment logged past it is purged.
            purge = {"purge_step": first + 1} if first > 0 else {}
            self._writer = self._writer_class(log_dir=str(self.folder), **purge)
            return
        if self._writer is None or not isinstance(step, int):
            return
        for field, tag in SCALARS.get(str(kind), ()):
            value = event.get(field)
            if isinstance(value, int | float):
                self._writer.add_scalar(tag, float(value), step, walltime=event.get("time"))
        if kind == "samples" and event.get("path"):
            self._writer.add_image(
                "samples", _read_png(Path(event["path"])), step, dataformats="HWC",
                walltime=event.get("time"),
            )  # fmt: skip
        if kind in _ENDS:
            self.close()
        else:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()


def _read_png(path: Path) -> Any:
    """The sample grid as the trainer saved it, ``(H, W, C)`` uint8 (grey as 3 channels)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def tensorboard_log(out: str | Path) -> TensorBoardLog | None:
    """The run's TensorBoard log, or ``None`` where the ``tensorboard`` package is not
    installed (then nothing is written and nothing said)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return TensorBoardLog(out, SummaryWriter)
