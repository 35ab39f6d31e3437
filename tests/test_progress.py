"""The live display: rich on a terminal, plain lines elsewhere, nothing when quiet."""

from __future__ import annotations

import io

import pytest

from crawler.engine import Progress
from crawler.progress import ProgressDisplay

SNAPSHOT = Progress(fetched=1234, errors=2, skipped=3, queued=40, in_flight=5, elapsed=2.0)
LINE = "1,234 fetched · 40 queued · 5 in flight · 2 errors · 3 skipped · 617.0 pages/s · 2s\n"


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
    assert out.getvalue() == LINE
    quiet = io.StringIO()
    with ProgressDisplay(quiet, quiet=True) as display:
        display(SNAPSHOT)
        display.message("hidden")
    assert quiet.getvalue() == ""


class Clock:
    """A monotonic clock set by hand, started near zero as on a machine booted seconds ago."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("boot", [0.0, 5.0])
def test_the_first_plain_line_is_printed_at_once_even_right_after_boot(boot: float) -> None:
    clock = Clock(boot)
    out = io.StringIO()
    display = ProgressDisplay(out, every=10.0, clock=clock)
    display(SNAPSHOT)  # the first snapshot: shown at once, whatever the clock reads
    clock.now += 9.5
    display(SNAPSHOT)  # within the interval: not repeated
    clock.now += 0.5
    display(SNAPSHOT)  # the interval is over: the next line
    clock.now += 1.0
    display(SNAPSHOT)
    assert out.getvalue() == 2 * LINE
