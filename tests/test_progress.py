"""The live display: rich on a terminal, plain lines elsewhere, nothing when quiet."""

from __future__ import annotations

import io

from crawler.engine import Progress
from crawler.progress import ProgressDisplay

SNAPSHOT = Progress(fetched=1234, errors=2, skipped=3, queued=40, in_flight=5, elapsed=2.0)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_live_display_which_leaves_no_trace() -> None:
    out = Terminal()
    with ProgressDisplay(out) as display:
        assert display._live is not None  # rich, loaded for the terminal
        display(SNAPSHOT)
    display.message("done")
    assert out.getvalue().endswith("done\n")


def test_elsewhere_a_plain_line_at_most_every_interval_and_nothing_when_quiet() -> None:
    out = io.StringIO()
    with ProgressDisplay(out, every=3600) as display:
        assert display._live is None
        display(SNAPSHOT)
        display(SNAPSHOT)  # within the interval: not repeated
    assert out.getvalue() == "1,234 fetched · 40 queued · 5 in flight · 2 errors · 3 skipped · 617.0 pages/s · 2s\n"
    quiet = io.StringIO()
    with ProgressDisplay(quiet, quiet=True) as display:
        display(SNAPSHOT)
        display.message("hidden")
    assert quiet.getvalue() == ""
