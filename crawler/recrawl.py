"""Recrawl passes: which stored pages are due again, the conditional request, and a pass's life across runs.

A pass is a run of kind 'recrawl'. Starting one queues every due page again and records the
pass's run id in `meta` (key `recrawl_pass`) in the same transaction. Until a run of it ends
without being interrupted, every run over the database (`crawler resume`, `crawler recrawl`,
`crawler crawl`) continues that pass: its changes rows keep the pass's run id, so the change
report stays whole across Ctrl-C and kill -9.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crawler.errors import UsageError
from crawler.store import Backend, StoredVersion

GONE_STATUSES = frozenset({404, 410})
CHANGES = ("new", "changed", "unchanged", "gone")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """An age like 90s, 30m, 12h or 7d, in seconds; UsageError (exit 2) for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--older-than {text!r} is not a duration like 90s, 30m, 12h or 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def conditional(previous: StoredVersion) -> list[tuple[str, str]]:
    """The request headers that let the server answer 304 for the version we hold."""
    headers = []
    if previous.etag:
        headers.append(("If-None-Match", previous.etag))
    if previous.last_modified:
        headers.append(("If-Modified-Since", previous.last_modified))
    return headers


@dataclass(frozen=True, slots=True)
class RecrawlRequest:
    """What `crawler recrawl` asks for: a new pass over pages seen longer ago than older_than."""

    older_than: float | None = None  # seconds; None: every stored page


@dataclass(frozen=True, slots=True)
class PassState:
    """The pass a run belongs to, once the run has started."""

    pass_id: int
    started: bool  # this run started the pass (False: it continues one)
    due: int  # pages queued again when it started (0 when continued)
    revisits: int  # stored pages waiting to be fetched again


async def open_pass(store: Backend) -> int | None:
    """The pass left unfinished in this database, which the next run continues."""
    return await store.open_pass()


async def begin(
    store: Backend,
    run_id: int,
    continued: int | None,
    request: RecrawlRequest | None,
    *,
    keep_history: bool,
    say: Callable[[str], None],
) -> PassState | None:
    """Continue the open pass, or start one as run_id when asked; None when the run is a plain crawl."""
    if continued is not None:
        if request is not None and request.older_than is not None:
            say(f"continuing the unfinished recrawl pass {continued}; --older-than applies to the next pass")
        else:
            say(f"continuing the unfinished recrawl pass {continued}")
        store.begin_pass(continued, keep_history=keep_history)
        return PassState(continued, False, 0, await store.revisits_queued())
    if request is None:
        return None
    cutoff = None
    if request.older_than is not None:
        since = datetime.now(UTC) - timedelta(seconds=request.older_than)
        cutoff = since.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    due = await store.start_pass(run_id, cutoff)
    store.begin_pass(run_id, keep_history=keep_history)
    say(f"recrawl pass {run_id}: {due:,} stored pages due")
    return PassState(run_id, True, due, await store.revisits_queued())


async def end(store: Backend) -> None:
    """The pass is complete: the next run is a crawl again, or starts a new pass."""
    await store.end_pass()
