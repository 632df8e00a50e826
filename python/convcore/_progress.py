"""A small progress display for the command-line tools (private).

On a terminal it redraws one line in place (``\\r``), at most ten times a
second; elsewhere (a pipe, a log file, CI) it prints an ordinary line at most
once every ``interval`` seconds, so logs stay readable.  No third-party
dependency.
"""

from __future__ import annotations

import shutil
import sys
import time


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


class Progress:
    """Progress of ``total`` units of work (batches, bytes...).

    Args:
        total: amount of work; 0 when unknown (then no bar and no ETA).
        desc: text shown first on the line.
        stream: where to write (default ``sys.stderr``).
        mode: ``'auto'`` (bar on a terminal, lines otherwise), ``'bar'``,
            ``'lines'`` or ``'none'``.
        interval: seconds between two plain lines.
        unit: ``'bytes'`` formats amounts as sizes.
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        stream=None,
        mode: str = "auto",
        interval: float = 10.0,
        unit: str = "",
    ):
        self.total = int(total)
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"mode: expected 'auto', 'bar', 'lines' or 'none', got {mode!r}")
        self.mode = mode
        self.interval = interval
        self.unit = unit
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_line = self.start
        self._width = 0
        self._closed = False

    def update(self, n: int = 1, **fields) -> None:
        """Add ``n`` units of work; ``fields`` are shown as ``key value``
        (floats with 4 digits, strings as given)."""
        self.done += n
        if self.mode == "none":
            return
        now = time.perf_counter()
        if self.mode == "bar":
            if now - self._last_draw >= 0.1 or self.done >= self.total > 0:
                self._last_draw = now
                self._draw(self._text(now, fields, bar=True))
        elif now - self._last_line >= self.interval and self.done < self.total:
            self._last_line = now
            self.stream.write(self._text(now, fields, bar=False) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Clear the bar's line (the caller prints its own summary)."""
        if self._closed:
            return
        self._closed = True
        if self.mode == "bar" and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _amount(self, n: float) -> str:
        return _fmt_bytes(n) if self.unit == "bytes" else f"{int(n)}"

    def _text(self, now: float, fields: dict, bar: bool) -> str:
        elapsed = max(now - self.start, 1e-9)
        parts = [self.desc] if self.desc else []
        if self.total > 0:
            frac = min(self.done / self.total, 1.0)
            if bar:
                filled = int(frac * 20)
                parts.append("[" + "#" * filled + "-" * (20 - filled) + "]")
            parts.append(
                f"{self._amount(self.done)}/{self._amount(self.total)} ({100 * frac:3.0f}%)"
            )
        else:
            parts.append(self._amount(self.done))
        for key, value in fields.items():
            parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
        rate = self.done / elapsed
        if self.unit == "bytes":
            parts.append(f"{_fmt_bytes(rate)}/s")
        if self.total > 0 and self.done < self.total and rate > 0:
            parts.append(f"ETA {_fmt_time((self.total - self.done) / rate)}")
        return "  ".join(parts)

    def _draw(self, text: str) -> None:
        # A line longer than the terminal would wrap and break the redraw.
        text = text[: max(20, shutil.get_terminal_size().columns - 1)]
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
