"""The driver's progress bar: samples done / total, images/s and ETA, readable in `ray job logs`."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class _Lines:
    """A stream for tqdm that turns each carriage-return redraw into its own log line, since job
    logs (files, `ray job logs`) keep lines, not terminal redraws."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, initial: int, stream: TextIO | None = None) -> tqdm:
    """A bar starting at `initial` samples (shards committed by earlier runs count as made).

    `stream` None is sys.stderr as it is at the call, not at import: a process that runs the job
    more than once (tests, notebooks) may have replaced and closed an earlier stderr."""
    stream = sys.stderr if stream is None else stream
    interactive = stream.isatty()
    return tqdm(
        total=total,
        initial=initial,
        unit="img",
        desc="samples",
        file=stream if interactive else _Lines(stream),
        mininterval=0.5 if interactive else 10.0,
        dynamic_ncols=interactive,
        ascii=not interactive,
        smoothing=0.1,
    )
