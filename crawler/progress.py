"""Showing a crawl to a person: a live line on a terminal, periodic lines elsewhere, a summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from crawler.engine import CrawlSummary, Progress

if TYPE_CHECKING:  # rich is slow to import: loaded only for the live display on a terminal
    from rich.live import Live


def _line(p: Progress) -> str:
    return (
        f"{p.fetched:,} fetched · {p.queued:,} queued · {p.in_flight} in flight · "
        f"{p.errors:,} errors · {p.skipped:,} skipped · {p.pages_per_second:,.1f} pages/s · {p.elapsed:,.0f}s"
    )


class ProgressDisplay:
    """Live on a TTY, a plain line every `every` seconds otherwise; `quiet` shows nothing."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.every = every
        self._clock = clock
        self._last_plain: float | None = None  # monotonic time of the last plain line; None before the first
        self._live: Live | None = None
        if not quiet and self.stream.isatty():
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text("starting…"), console=Console(file=self.stream), transient=True)

    def __enter__(self) -> ProgressDisplay:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def __call__(self, progress: Progress) -> None:
        if self.quiet:
            return
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(_line(progress)))
            return
        now = self._clock()
        if self._last_plain is None or now - self._last_plain >= self.every:
            self._last_plain = now
            print(_line(progress), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)


def format_summary(summary: CrawlSummary) -> str:
    statuses = ", ".join(f"{k}: {v:,}" for k, v in summary.status_counts.items()) or "none"
    lines = [
        f"crawl {summary.outcome}: {summary.fetched:,} fetched in {summary.elapsed:,.1f}s "
        f"({summary.pages_per_second:,.1f} pages/s)",
        f"  pages stored: {summary.pages:,} ({statuses})",
        f"  errors: {summary.errors:,} · skipped: {summary.skipped:,} (robots, at fetch time) · "
        f"still queued: {summary.queued_left:,}",
        f"  database: {summary.db_path}",
    ]
    if summary.recrawl_pass is not None:
        counts = ", ".join(f"{k}: {v:,}" for k, v in summary.changes.items())
        lines.insert(2, f"  recrawl pass {summary.recrawl_pass}: {counts}")
    return "\n".join(lines)
