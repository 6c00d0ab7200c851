"""One progress line per file: `song.wav  running  [#####.....]  48%`.

On a terminal the lines are redrawn in place (cut to the terminal's width, so a long error does
not wrap and break the redraw; the full text comes in the summary after). Otherwise (a pipe, a
log, CI) each change of state prints one plain line, and the model's progress at most every 25%.
Thread-safe: each file's follower updates its own line from its own thread.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

BAR_WIDTH = 24
REDRAW_INTERVAL = 0.1
PLAIN_STEP = 0.25


_ATTEMPT_STAGES = ("running", "downloading", "done")


def _same_attempt(before: str, after: str) -> bool:
    """A new attempt starts from queued: from running on, the bar belongs to one attempt."""
    return before in _ATTEMPT_STAGES and after in _ATTEMPT_STAGES


@dataclass
class _Line:
    name: str
    state: str = "waiting"
    fraction: float | None = None
    note: str = ""
    plain_printed: tuple[str, int] | None = None


class ProgressBoard:
    def __init__(self, names: list[str], *, stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._lines = {name: _Line(name) for name in names}
        self._width = max((len(n) for n in names), default=0)
        self._lock = threading.Lock()
        self._drawn = 0
        self._drawn_at = 0.0
        self._closed = False

    def update(self, name: str, state: str, fraction: float | None = None, note: str = "") -> None:
        with self._lock:
            line = self._lines[name]
            changed_state = (state, note) != (line.state, line.note)
            if _same_attempt(line.state, state) and line.fraction is not None:
                # within one attempt the bar only moves forward (a late, older row changes nothing)
                fraction = max(line.fraction, fraction or 0.0)
            line.state, line.fraction, line.note = state, fraction, note
            if self._closed:
                return
            if self.tty:
                now = time.monotonic()
                if changed_state or now - self._drawn_at >= REDRAW_INTERVAL:
                    self._redraw()
                    self._drawn_at = now
            else:
                self._print_plain(line)

    def fraction(self, name: str) -> float | None:
        with self._lock:
            return self._lines[name].fraction

    def close(self) -> None:
        with self._lock:
            if self.tty and not self._closed:
                self._redraw()
            self._closed = True

    def _render(self, line: _Line) -> str:
        text = f"{line.name:<{self._width}}  {line.state:<11}"
        if line.fraction is not None:
            filled = round(max(0.0, min(1.0, line.fraction)) * BAR_WIDTH)
            text += f" [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {line.fraction:4.0%}"
        if line.note:
            text += f"  {line.note}"
        return text

    def _redraw(self) -> None:
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # back to the first line of the board
        width = max(20, shutil.get_terminal_size().columns - 1)
        for line in self._lines.values():
            out.append("\x1b[2K" + self._render(line)[:width] + "\n")
        self.stream.write("".join(out))
        self.stream.flush()
        self._drawn = len(self._lines)

    def _print_plain(self, line: _Line) -> None:
        # Only the model's progress is worth a line per step; other states print once.
        fraction = line.fraction if line.state == "running" else None
        step = -1 if fraction is None else int(fraction / PLAIN_STEP + 1e-9)
        note = "" if line.state == "downloading" else line.note  # its percent: not a line each
        key = (f"{line.state}|{note}", step)
        if key == line.plain_printed:
            return
        line.plain_printed = key
        text = f"{line.name}: {line.state}"
        if fraction is not None:
            text += f" {fraction:.0%}"
        if note:
            text += f"  {note}"
        self.stream.write(text + "\n")
        self.stream.flush()
