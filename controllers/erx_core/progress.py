"""Progress lines for long work: elapsed time, then what is happening."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = sys.stderr):
        self._t0 = time.monotonic()
        self._stream = stream

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def __call__(self, message: str) -> None:
        if self._stream is not None:
            print(f"[{self.elapsed:6.1f}s] {message}", file=self._stream, flush=True)


SILENT = Progress(stream=None)
