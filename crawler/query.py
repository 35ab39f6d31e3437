"""Read-side of a crawl database: stats and listings for the CLI and the Python API."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawler.errors import StoreError, UsageError


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """Open a crawl database read-only; WAL lets this run beside a live crawl."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no database at {path} (run a crawl first, or pass --db / -c)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("SELECT count(*) FROM urls").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a crawl database: {exc}") from exc
    return conn


@dataclass(frozen=True, slots=True)
class Stats:
    """What a crawl database holds, in numbers."""

    urls_by_state: dict[str, int]
    pages_by_status_class: dict[str, int]
    pages_by_host: dict[str, int]
    content_types: dict[str, int]
    errors_by_kind: dict[str, int]
    skipped_by_reason: dict[str, int]
    depths: dict[int, int]
    pages: int
    bytes: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return self.urls_by_state.get("queued", 0) + self.urls_by_state.get("in_flight", 0)


def _pairs(conn: sqlite3.Connection, sql: str) -> dict[Any, int]:
    return {row[0]: row[1] for row in conn.execute(sql)}


def stats(conn: sqlite3.Connection) -> Stats:
    states = _pairs(conn, "SELECT state, count(*) FROM urls GROUP BY state ORDER BY state")
    runs = [
        dict(row)
        for row in conn.execute(
            "SELECT id, started_at, finished_at, outcome, pages,"
            " (julianday(coalesce(finished_at, started_at)) - julianday(started_at)) * 86400.0 AS seconds"
            " FROM runs ORDER BY id"
        )
    ]
    pages, size = conn.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM pages").fetchone()
    return Stats(
        urls_by_state=states,
        pages_by_status_class=_pairs(
            conn, "SELECT (status / 100) || 'xx', count(*) FROM pages GROUP BY status / 100 ORDER BY 1"
        ),
        pages_by_host=_pairs(
            conn,
            "SELECT u.host, count(*) FROM pages p JOIN urls u ON u.id = p.url_id GROUP BY u.host ORDER BY 2 DESC",
        ),
        content_types=_pairs(
            conn,
            "SELECT coalesce(lower(trim(substr(content_type, 1, instr(content_type || ';', ';') - 1))), '(none)'),"
            " count(*) FROM pages GROUP BY 1 ORDER BY 2 DESC",
        ),
        errors_by_kind=_pairs(conn, "SELECT kind, count(*) FROM errors GROUP BY kind ORDER BY 2 DESC"),
        skipped_by_reason=_pairs(
            conn, "SELECT reason, count(*) FROM urls WHERE state = 'skipped' GROUP BY reason ORDER BY 2 DESC"
        ),
        depths=_pairs(conn, "SELECT depth, count(*) FROM pages GROUP BY depth ORDER BY depth"),
        pages=pages,
        bytes=size,
        runs=runs,
    )
