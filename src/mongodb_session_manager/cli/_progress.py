"""A small progress writer on stderr, for the commands that walk many sessions.

One line, rewritten in place (``\\r``) at most ten times a second: what is being done, how far
(``37/120`` and a bar when the total is known), and the item in hand. It draws only when asked to
(``enabled``), which the command line decides: on a terminal unless ``--json`` or ``--no-progress``,
anywhere with ``--progress``. Without it every call is a no-op, so commands report progress
unconditionally.
"""

from __future__ import annotations

import time
from typing import TextIO

from ._render import printable

__all__ = ["Progress"]

_WIDTH = 24
_INTERVAL = 0.1
_ITEM_CHARS = 40


class Progress:
    """Progress of one command over items (sessions, messages).

    Args:
        label: What is being done ("export", "verify").
        total: How many items there will be, when known.
        stream: Where to draw (stderr).
        enabled: Draw at all.
        unit: What an item is, in the plural ("sessions").
    """

    def __init__(self, label: str, total: int | None, stream: TextIO, enabled: bool, unit: str = "sessions") -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.unit = unit
        self.done = 0
        self._item = ""
        self._drawn_at = 0.0
        self._width = 0
        self._finished = False
        self._started = time.monotonic()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def advance(self, count: int = 1, item: str | None = None) -> None:
        """Count ``count`` more items done; ``item`` names the one in hand."""
        self.done += count
        if item is not None:
            self._item = item
        if self.enabled and not self._finished and time.monotonic() - self._drawn_at >= _INTERVAL:
            self._draw()

    def line(self) -> str:
        """The progress line as it stands."""
        seconds = time.monotonic() - self._started
        if self.total:
            share = min(1.0, self.done / self.total)
            filled = int(share * _WIDTH)
            bar = "#" * filled + "-" * (_WIDTH - filled)
            text = f"{self.label} [{bar}] {self.done}/{self.total} {self.unit} {share:4.0%} {seconds:.1f} s"
        else:
            text = f"{self.label} {self.done} {self.unit} {seconds:.1f} s"
        if self._item:
            item = printable(self._item)
            text += f"  {item if len(item) <= _ITEM_CHARS else item[: _ITEM_CHARS - 3] + '...'}"
        return text

    def _draw(self) -> None:
        text = self.line()
        padding = " " * max(0, self._width - len(text))
        self.stream.write(f"\r{text}{padding}")
        self.stream.flush()
        self._width = len(text)
        self._drawn_at = time.monotonic()

    def finish(self) -> None:
        """Draw the final state and end the line (once)."""
        if not self.enabled or self._finished:
            return
        self._finished = True
        self._item = ""
        self._draw()
        self.stream.write("\n")
        self.stream.flush()
