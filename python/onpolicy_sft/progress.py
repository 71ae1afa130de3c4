"""Progress that survives logs: a tqdm bar on a terminal, plain lines everywhere else.

Under nohup, Slurm or a pipe, a bar is either nothing (``disable_tqdm``) or a
stream of carriage returns. There, :class:`LineProgress` prints one line every
``every`` units or ``interval`` seconds -- done/total, rate, ETA and the
caller's postfix (``onpolicy_sft.training.callbacks.ProgressLinesCallback``
does the same for a Trainer's optimizer steps).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["LineProgress", "format_eta", "is_terminal", "progress"]


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def format_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or unknown
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _line(
    desc: str, done: int, total: int | None, unit: str, elapsed: float, initial: int = 0
) -> str:
    rate = (done - initial) / elapsed if elapsed > 0 else 0.0
    if total:
        eta = (total - done) / rate if rate > 0 else float("nan")
        head = f"{desc}: {done}/{total} {unit}s ({100 * done / total:.0f}%)"
        return f"{head}, {rate:.3g} {unit}s/s, ETA {format_eta(eta)}"
    return f"{desc}: {done} {unit}s, {rate:.3g} {unit}s/s"


class LineProgress:
    """The tqdm methods the package uses (update, set_postfix_str, close), as log lines."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        every: int | None = None,
        interval: float = 30.0,
        stream: TextIO | None = None,
        disable: bool = False,
        initial: int = 0,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.initial = initial  # already done before this run (a resumed one)
        # about twenty lines over a run, at least one per `interval` seconds
        self.every = every or max(1, (total or 100) // 20)
        self.interval = interval
        self.stream = stream or sys.stderr
        self.disable = disable
        self.n = self.last_n = initial
        self.postfix = ""
        self.start = self.last_time = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n - self.last_n >= self.every or now - self.last_time >= self.interval:
            self._emit(now)

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.n != self.last_n or self.n == self.initial:
            self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        self.last_n, self.last_time = self.n, now
        if self.disable:
            return
        text = _line(self.desc, self.n, self.total, self.unit, now - self.start, self.initial)
        print(text + (f", {self.postfix}" if self.postfix else ""), file=self.stream, flush=True)


def progress(
    total: int | None, desc: str, unit: str = "it", *, disable: bool = False, **kw: Any
) -> Any:
    """A tqdm bar when stderr is a terminal, else a :class:`LineProgress`."""
    if is_terminal(sys.stderr):
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr)
    return LineProgress(total, desc, unit, disable=disable, **kw)
