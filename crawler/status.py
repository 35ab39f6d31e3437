"""A crawl at a glance: who works on it, the hosts each holds, the URL counts and the rate (read-only).

    with crawler.status.open_status("data/crawl.db") as source:
        snapshot = source.snapshot()      # a frozen CrawlStatus; call again for a fresh one

`open_status` picks the backend from its target; each backend fills the same `CrawlStatus`
through read-only queries and never takes the writer lock, so it runs beside a live crawl.

SQLite (one writer at a time): the processes are the `runs` rows still `running`. The newest
has the pid the writer lock file names (`store.lock_holder`), and is alive while that pid is;
an older `running` row, or one whose pid is gone, was killed and shows `alive=False` until the
next run marks it `killed`. Its hosts are the hosts of the `in_flight` URLs (no lease exists).

PostgreSQL (`status_pg.py`) fills the same fields. Today (one crawler per database) the newest
`running` run's machine and pid come from the session holding the crawler's advisory lock
(`crawler HOST:PID`), alive while that session is; its hosts are those of the `in_flight` URLs.
With host leases (several processes) it reads, when the schema has them: one `Process` per
`runs` row without `finished_at`, with its `machine`, `pid` and `heartbeat_at`, `alive` saying
whether the heartbeat is recent; its `hosts` are the `hosts` rows whose `lease_owner` is that
run, each with its `lease_until` and the count of its URLs in flight. The counts, the errors
and the rates are the same queries on the same columns.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from crawler.errors import StoreError
from crawler.query import connect_readonly
from crawler.rows import Run
from crawler.store import is_postgres_url, lock_holder

__all__ = [
    "RECENT_SECONDS", "CrawlStatus", "HeldHost", "Process", "StatusSource", "open_status", "parse_stamp", "pid_exists",
    "stamp",
]  # fmt: skip

RECENT_SECONDS = 10.0  # the window of the recent rate


@dataclass(frozen=True, slots=True)
class HeldHost:
    """A host a process holds, and how many of its URLs it has in flight."""

    host: str
    in_flight: int
    lease_until: str | None = None  # when the host lease ends (PostgreSQL); SQLite has no lease


@dataclass(frozen=True, slots=True)
class Process:
    """One process working on the crawl: a run not yet finished."""

    run: int  # runs.id
    kind: str  # crawl or recrawl
    started_at: str
    pages: int  # pages it stored so far
    pages_per_second: float  # its overall rate since it started
    pid: int | None  # None when nothing names it
    alive: bool | None  # False: its process is gone (killed); None: cannot tell
    machine: str | None = None  # the host it runs on (PostgreSQL); SQLite: this machine
    heartbeat_at: str | None = None  # its last sign of life (PostgreSQL)
    hosts: tuple[HeldHost, ...] = ()

    @property
    def state(self) -> str:
        return {True: "running", False: "gone", None: "unknown"}[self.alive]


@dataclass(frozen=True, slots=True)
class CrawlStatus:
    """A snapshot of a crawl, taken at `at` (UTC)."""

    database: str  # the path (or a URL without its password)
    backend: str  # sqlite (or postgresql)
    at: str
    processes: tuple[Process, ...]
    fetched: int  # URLs done
    queued: int
    in_flight: int
    failed: int
    skipped: int
    errors: int  # rows of `errors`
    recent_seconds: float
    recent_pages: int  # pages stored in the last `recent_seconds`
    recent_pages_per_second: float
    last_run: Run | None  # the newest run, whatever its outcome


class StatusSource(Protocol):
    """What a backend offers `crawler status`: snapshots of one crawl, as often as asked."""

    def snapshot(self) -> CrawlStatus: ...

    def close(self) -> None: ...

    def __enter__(self) -> StatusSource: ...

    def __exit__(self, *exc: object) -> None: ...


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return False
    return True


def status_of(
    database: str,
    backend: str,
    now: datetime,
    processes: list[Process],
    states: dict[str, int],
    *,
    errors: int,
    recent_seconds: float,
    recent: int,
    last_run: Run | None,
) -> CrawlStatus:
    """A snapshot from what either backend reads: processes, URL counts by state, errors, the recent pages."""
    return CrawlStatus(
        database=database,
        backend=backend,
        at=stamp(now),
        processes=tuple(processes),
        fetched=states.get("done", 0),
        queued=states.get("queued", 0),
        in_flight=states.get("in_flight", 0),
        failed=states.get("failed", 0),
        skipped=states.get("skipped", 0),
        errors=errors,
        recent_seconds=recent_seconds,
        recent_pages=recent,
        recent_pages_per_second=recent / recent_seconds if recent_seconds > 0 else 0.0,
        last_run=last_run,
    )


def open_status(
    target: str | Path,
    *,
    recent_seconds: float = RECENT_SECONDS,
    clock: Callable[[], datetime] | None = None,
    is_alive: Callable[[int], bool] = pid_exists,
) -> StatusSource:
    """Open a crawl database for status snapshots; UsageError if it is missing, StoreError if unreadable.

    clock gives the current UTC time (the recent rate's window ends there); is_alive tells
    whether a pid still runs.
    """
    if isinstance(target, str) and is_postgres_url(target):
        from crawler.status_pg import PgStatus

        return PgStatus(target, recent_seconds=recent_seconds, clock=clock or _utc_now)
    return SqliteStatus(Path(target), recent_seconds=recent_seconds, clock=clock or _utc_now, is_alive=is_alive)


class SqliteStatus:
    """Status snapshots of a SQLite crawl database, over one read-only connection."""

    backend = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        recent_seconds: float,
        clock: Callable[[], datetime],
        is_alive: Callable[[int], bool],
    ) -> None:
        self.path = path
        self._conn = connect_readonly(path)
        self._conn.isolation_level = None  # explicit BEGIN: one snapshot, one read transaction
        self._recent = recent_seconds
        self._clock = clock
        self._is_alive = is_alive

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SqliteStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> CrawlStatus:
        now = self._clock()
        try:
            self._conn.execute("BEGIN")
            try:
                return self._read(now)
            finally:
                self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    def _read(self, now: datetime) -> CrawlStatus:
        conn = self._conn
        states = dict(conn.execute("SELECT state, count(*) FROM urls GROUP BY state").fetchall())
        errors = conn.execute("SELECT count(*) FROM errors").fetchone()[0]
        has_kind = any(row[1] == "kind" for row in conn.execute("PRAGMA table_info(runs)"))
        kind = "kind" if has_kind else "'crawl'"
        running = conn.execute(
            f"SELECT id, {kind}, started_at FROM runs WHERE outcome = 'running' ORDER BY id DESC"
        ).fetchall()
        # Pages stored since a time: fetched_at comes before the bodies in a row, so counting by it
        # reads no overflow pages; and with one writer at a time, a page stored after the running
        # run started is that run's.
        since = stamp(now - timedelta(seconds=self._recent))
        first = running[-1][2] if running else since
        recent, since_run = conn.execute(
            "SELECT count(*) FILTER (WHERE fetched_at >= ?), count(*) FILTER (WHERE fetched_at >= ?) FROM pages",
            (since, first),
        ).fetchone()
        hosts = tuple(
            HeldHost(host, n)
            for host, n in conn.execute(
                "SELECT host, count(*) FROM urls WHERE state = 'in_flight' GROUP BY host ORDER BY 2 DESC, 1"
            )
        )
        processes = []
        holder = lock_holder(self.path)
        for i, (run_id, run_kind, started_at) in enumerate(running):
            newest = i == 0
            if newest:
                pid, pages = holder, since_run
                alive = None if pid is None else self._is_alive(pid)
            else:  # a newer run started after it, so its process is gone
                pid, alive = None, False
                pages = conn.execute("SELECT count(*) FROM pages WHERE run_id = ?", (run_id,)).fetchone()[0]
            seconds = (now - parse_stamp(started_at)).total_seconds()
            processes.append(
                Process(
                    run=run_id,
                    kind=run_kind,
                    started_at=started_at,
                    pages=pages,
                    pages_per_second=pages / seconds if seconds > 0 else 0.0,
                    pid=pid,
                    alive=alive,
                    hosts=hosts if newest else (),
                )
            )
        last = conn.execute(
            "SELECT id, started_at, finished_at, outcome, pages,"
            " (julianday(coalesce(finished_at, started_at)) - julianday(started_at)) * 86400.0,"
            f" {kind} FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return status_of(
            str(self.path),
            self.backend,
            now,
            processes,
            states,
            errors=errors,
            recent_seconds=self._recent,
            recent=recent,
            last_run=Run(*last) if last is not None else None,
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    """A time in the stored format (ISO-8601 UTC, milliseconds, Z), so stored times compare as text."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_stamp(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
