"""Progress bars on the terminal, drawn by tqdm with one look for every command: the
training steps, a task between them (the class statistics), an image completion and a
fetched file.

``label [#########.....................] 12/64 [00:03<00:08]``, on stderr unless told
otherwise. A bar starts at its first report and is drawn on every report (``mininterval``:
the reports of a slow job are already far apart; a byte count passes a shorter one), and
is ended by its total or by :meth:`tqdm.tqdm.close`, which leaves its last state on its
own line.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

COUNT = "{desc}[{bar:30}] {n_fmt}/{total_fmt}{postfix} [{elapsed}<{remaining}]"
BYTES = "{desc}[{bar:30}] {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}]"


def bar(
    label: str,
    total: int,
    *,
    stream: TextIO | None = None,
    initial: int = 0,
    in_bytes: bool = False,
    mininterval: float = 0.0,
    postfix: str = "",
) -> tqdm:
    """A bar of ``total`` units (counts, or bytes shown in kB/MB/GB), ``label`` before it and
    ``postfix`` after its count."""
    return tqdm(
        total=max(total, 1),
        initial=initial,
        desc=f"{label} " if label else "",
        file=stream or sys.stderr,
        bar_format=BYTES if in_bytes else COUNT,
        ascii=".#",
        position=0,  # always the current line: no cursor moves between bars
        leave=True,
        mininterval=mininterval,
        miniters=1,
        dynamic_ncols=False,
        unit="B" if in_bytes else "it",
        unit_scale=in_bytes,
        unit_divisor=1000,
        postfix=postfix or None,
    )


class Bars:
    """``bars(name, done, total)``: a callback that draws one bar per name, started by its
    first report and ended when ``done`` reaches ``total``."""

    def __init__(self, *, in_bytes: bool = False, stream: TextIO | None = None):
        self._open: dict[str, tqdm] = {}
        self._in_bytes = in_bytes
        self._stream = stream

    def __call__(self, name: str, done: int, total: int) -> None:
        shown = self._open.get(name)
        if shown is None:
            mininterval = 0.1 if self._in_bytes else 0.0
            shown = bar(
                name,
                total,
                stream=self._stream,
                initial=done,
                in_bytes=self._in_bytes,
                mininterval=mininterval,
            )
            self._open[name] = shown
        shown.total = max(total, 1)
        shown.update(done - shown.n)
        if done >= total:
            self._open.pop(name).close()


def progress_bar(label: str):
    """``progress(done, total)`` drawing a bar labelled ``label`` on stderr."""
    bars = Bars()
    return lambda done, total: bars(label, done, total)
