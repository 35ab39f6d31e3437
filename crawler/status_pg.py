"""`crawler status` over PostgreSQL: the same CrawlStatus as SQLite's, read in one READ ONLY snapshot.

Every crawler process is a `runs` row with its machine, pid and a heartbeat it renews with its
leases: a running run whose heartbeat is older than HEARTBEAT_SECONDS is gone. The hosts a
process holds are the `hosts` rows it leases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from crawler.query.base import run_seconds
from crawler.query.pg import connect_readonly
from crawler.rows import Run
from crawler.status import CrawlStatus, HeldHost, Process, parse_stamp, stamp, status_of
from crawler.store.pg.connection import shown, translate

try:
    import psycopg
except ImportError:  # pragma: no cover - the postgres extra is not installed
    psycopg = None  # type: ignore[assignment]

HEARTBEAT_SECONDS = 60.0  # a run whose heartbeat is older is gone (storage.lease_seconds' default)


class PgStatus:
    """Status snapshots of a PostgreSQL crawl database, over one read-only connection."""

    backend = "postgresql"

    def __init__(self, url: str, *, recent_seconds: float, clock: Callable[[], datetime]) -> None:
        self.location = shown(url)
        self._conn = connect_readonly(url, "status")
        self._recent = recent_seconds
        self._clock = clock

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

    def __enter__(self) -> PgStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> CrawlStatus:
        now = self._clock()
        try:
            with self._conn.transaction():
                self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return self._read(now)
        except psycopg.Error as exc:
            raise translate(exc, self.location) from exc

    def _all(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, params).fetchall())

    def _one(self, sql: str, params: Any = None) -> Any:
        return self._all(sql, params)[0][0]

    def _read(self, now: datetime) -> CrawlStatus:
        states = dict(self._all("SELECT state, count(*) FROM urls GROUP BY state"))
        errors = self._one("SELECT count(*) FROM errors")
        columns = {
            name
            for (name,) in self._all(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = 'runs'"
            )
        }
        extra = ", ".join(name if name in columns else "NULL" for name in ("machine", "pid", "heartbeat_at"))
        running = self._all(
            f"SELECT id, kind, started_at, {extra} FROM runs WHERE outcome = 'running' ORDER BY id DESC"
        )
        since = stamp(now - timedelta(seconds=self._recent))
        recent = self._one("SELECT count(*) FROM pages WHERE fetched_at >= %s", (since,))
        leases = self._one("SELECT to_regclass('hosts') IS NOT NULL") and "lease_owner" in self._columns("hosts")
        processes = []
        for i, (run_id, kind, started_at, machine, pid, heartbeat) in enumerate(running):
            newest = i == 0
            if heartbeat is not None:
                seen = heartbeat if isinstance(heartbeat, datetime) else parse_stamp(str(heartbeat))
                alive: bool | None = (now - seen).total_seconds() < HEARTBEAT_SECONDS
                heartbeat = stamp(seen)
            else:  # a run that never beat: it died at its start
                alive = False
            pages = self._one("SELECT count(*) FROM pages WHERE run_id = %s", (run_id,))
            seconds = (now - parse_stamp(started_at)).total_seconds()
            processes.append(
                Process(
                    run=run_id,
                    kind=kind,
                    started_at=started_at,
                    pages=pages,
                    pages_per_second=pages / seconds if seconds > 0 else 0.0,
                    pid=pid,
                    alive=alive,
                    machine=machine,
                    heartbeat_at=heartbeat,
                    hosts=self._held(run_id) if leases else (self._in_flight() if newest else ()),
                )
            )
        last = self._all("SELECT id, started_at, finished_at, outcome, pages, kind FROM runs ORDER BY id DESC LIMIT 1")
        last_run = None
        if last:
            run_id, started_at, finished_at, outcome, pages, kind = last[0]
            last_run = Run(run_id, started_at, finished_at, outcome, pages, run_seconds(started_at, finished_at), kind)
        return status_of(
            self.location,
            self.backend,
            now,
            processes,
            states,
            errors=errors,
            recent_seconds=self._recent,
            recent=recent,
            last_run=last_run,
        )

    def _columns(self, table: str) -> set[str]:
        rows = self._all(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = %s",
            (table,),
        )
        return {name for (name,) in rows}

    def _in_flight(self) -> tuple[HeldHost, ...]:
        rows = self._all("SELECT host, count(*) FROM urls WHERE state = 'in_flight' GROUP BY host")
        return tuple(HeldHost(host, n) for host, n in sorted(rows, key=lambda row: (-row[1], row[0])))

    def _held(self, run_id: int) -> tuple[HeldHost, ...]:
        rows = self._all(
            "SELECT h.host, h.lease_until,"
            " (SELECT count(*) FROM urls u WHERE u.host = h.host AND u.state = 'in_flight')"
            " FROM hosts h WHERE h.lease_owner = %s",
            (run_id,),
        )
        held = [(host, n, until) for host, until, n in rows]
        return tuple(
            HeldHost(host, n, None if until is None else stamp(until) if isinstance(until, datetime) else str(until))
            for host, n, until in sorted(held, key=lambda row: (-row[1], row[0]))
        )
