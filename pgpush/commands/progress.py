"""Progress of a backup, restore or verify: a rich bar on a terminal, ``INFO`` lines otherwise.

A bar is only useful to a person watching; under cron or a test harness
the same numbers go to the log (and the console when ``log-level-console``
is ``info``) at most every few seconds, so a log shows how fast a backup
ran without being flooded.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pgpush.config import format_size
from pgpush.log import LOG

LINE_INTERVAL = 10.0


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Count files and bytes done; ``advance`` after each file, ``close`` at the end."""

    def __init__(self, what: str, total_files: int, total_bytes: int, console_level: str = "warn"):
        self.what = what
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar: Any = None  # a rich Progress once started; rich is imported only then
        self._task: Any = None
        self._use_bar = console_level != "off" and sys.stderr.isatty()

    def _start_bar(self) -> None:
        """Started on the first advance: the bar runs a thread, which must not exist when workers fork."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[files]}"),
            DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False)
        self._bar.start()
        self._task = self._bar.add_task(self.what, total=max(self.total_bytes, 1), files=self._files_text())

    def _files_text(self) -> str:
        return f"{self.files}/{self.total_files} files"

    def advance(self, nbytes: int, files: int = 1) -> None:
        self.files += files
        self.bytes += nbytes
        if self._use_bar:
            if self._bar is None:
                self._start_bar()
            self._bar.update(self._task, completed=self.bytes, files=self._files_text())
            return
        now = time.monotonic()
        if now - self._last_line >= LINE_INTERVAL:
            self._last_line = now
            LOG.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-6)
        rate = self.bytes / elapsed
        pct = 100 * self.bytes // self.total_bytes if self.total_bytes else 100
        eta = _eta((self.total_bytes - self.bytes) / rate) if rate > 0 and self.bytes < self.total_bytes else "0s"
        return (f"{self.what}: {self._files_text()}, {format_size(self.bytes)}/{format_size(self.total_bytes)} "
                f"({pct}%), {format_size(int(rate))}/s, ETA {eta}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        LOG.info(self.line())
