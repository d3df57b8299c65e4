"""Progress for long simulations, backtests and sweeps: a bar drawn on stderr when it is a
terminal; otherwise (CI, nohup, systemd) a plain log line every ``log_every`` seconds
when asked for one, else silence (pipes stay clean)."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from loguru import logger

__all__ = ["Progress"]

_BLOCKS = " ▏▎▍▌▋▊▉█"


class Progress:
    """A progress bar as a context manager::

        with Progress(total=3600, desc="sim", unit="s") as bar:
            bar.update(1)

    ``total`` may be None when the end is unknown (a count and a rate are shown). The bar
    redraws at most every ``min_interval`` seconds, so ``update`` costs a comparison on
    most calls and can sit in a hot loop.

    Without a terminal (or with ``bar=False``) and with ``log_every``, the same state and
    ``status()`` (e.g. ``"412 fills"``) are logged (INFO) every ``log_every`` seconds and
    once at the end. ``QUOTEFORGE_PROGRESS=0`` silences both.
    """

    def __init__(
        self,
        total: float | None,
        desc: str = "",
        unit: str = "it",
        *,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
        bar: bool = True,
        log_every: float | None = None,
        status: Callable[[], str] | None = None,
    ) -> None:
        if total is not None and (not math.isfinite(total) or total < 0):
            raise ValueError(f"Progress total must be a finite number >= 0 or None, got {total!r}")
        if min_interval < 0:
            raise ValueError(f"Progress min_interval must be >= 0, got {min_interval!r}")
        if log_every is not None and not (math.isfinite(log_every) and log_every > 0):
            raise ValueError(f"Progress log_every must be seconds > 0 or None, got {log_every!r}")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n: float = 0
        self.stream = stream if stream is not None else sys.stderr
        # QUOTEFORGE_PROGRESS=0 silences bars (e.g. in sweep workers sharing a terminal).
        shown = os.environ.get("QUOTEFORGE_PROGRESS") != "0"
        self.enabled = bar and shown and _is_tty(self.stream)
        #: Seconds between progress log lines; None when the bar is drawn or nothing is.
        self.log_every = log_every if shown and not self.enabled else None
        self.status = status
        self.min_interval = min_interval
        self._start = time.monotonic()
        self._next_draw = 0.0
        self._next_log = math.inf
        self._width = 0
        self._closed = False

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.enabled:
            self._draw(self._start)
        if self.log_every is not None:
            self._next_log = self._start + self.log_every
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Advance by ``n`` units."""
        self.n += n
        if self.enabled and time.monotonic() >= self._next_draw:
            self._draw(time.monotonic())
        elif self.log_every is not None and time.monotonic() >= self._next_log:
            self._log(time.monotonic())

    def close(self) -> None:
        """Draw the final state and end the line; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
        elif self.log_every is not None:
            self._log(time.monotonic())

    def line(self, now: float | None = None) -> str:
        """The log line: the bar's text without the bar, then ``status()``."""
        text = self.render(sys.maxsize, now, bar=False)
        extra = self.status() if self.status is not None else ""
        return f"{text}, {extra}" if extra else text

    def render(self, width: int, now: float | None = None, *, bar: bool = True) -> str:
        """The bar as one line of at most ``width`` characters."""
        elapsed = max((now if now is not None else time.monotonic()) - self._start, 0.0)
        rate = self.n / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        count = f"{_num(self.n)}"
        if self.total is None:
            return f"{head}{count} {self.unit} [{_clock(elapsed)}, {_num(rate)} {self.unit}/s]"[
                :width
            ]
        frac = min(self.n / self.total, 1.0) if self.total else 1.0
        left = (self.total - self.n) / rate if rate > 0 and self.n < self.total else 0.0
        tail = (
            f" {count}/{_num(self.total)} {self.unit} "
            f"[{_clock(elapsed)}<{_clock(left)}, {_num(rate)} {self.unit}/s]"
        )
        head += f"{frac * 100:3.0f}%|"
        room = width - len(head) - len(tail) - 1
        if room < 4 or not bar:
            return (head.rstrip("|") + tail)[:width]
        return f"{head}{_bar(frac, room)}|{tail}"

    def _log(self, now: float) -> None:
        assert self.log_every is not None
        self._next_log = now + self.log_every
        logger.bind(component="progress").info("{}", self.line(now))

    def _draw(self, now: float) -> None:
        self._next_draw = now + self.min_interval
        line = self.render(_columns(self.stream) - 1, now)
        # Pad over the previous, possibly longer, line instead of clearing it, so the
        # bar does not flicker.
        pad = max(self._width - len(line), 0)
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80
    # 0 means the terminal never said (a fresh pty, some CI consoles).
    return max(columns, 20) if columns else 80


def _bar(frac: float, width: int) -> str:
    eighths = round(frac * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (_BLOCKS[part] if part and full < width else "")
    return bar.ljust(width)


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.1f}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
