"""The SQLite crawl database: opening and configuring it, frontier reads, and committing batches."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from crawler.errors import SkipReason, StoreError
from crawler.store.backend import HostLeasing, is_postgres_url
from crawler.store.batch import Batch, BatchedWrites
from crawler.store.connection import SqliteConnection
from crawler.store.flush import BatchCommit, index_pending
from crawler.store.migrations import migrate
from crawler.store.records import ROBOTS_COLUMNS, URL_STATES, QueuedUrl, RobotsRecord, StoredVersion, utc_now
from crawler.store.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from crawler.store.backend import Backend


class Store(BatchedWrites):
    """One open SQLite crawl database. Writes go into a Batch and are committed by `flush`."""

    def __init__(self, conn: SqliteConnection, *, readonly: bool) -> None:
        self._conn = conn
        self.path = conn.path
        self.readonly = readonly
        self.batch = Batch()
        self.run_id: int | None = None
        self._commit = BatchCommit()
        self.pass_id: int | None = None  # the recrawl pass this run belongs to (see begin_pass)
        self.leases: HostLeasing | None = None  # one crawler per SQLite database: no host leases

    @property
    def location(self) -> str:
        return str(self.path)

    @overload
    @classmethod
    async def open(cls, target: Path, *, readonly: bool = False, lease_seconds: float = 60.0) -> Store: ...

    @overload
    @classmethod
    async def open(cls, target: str | Path, *, readonly: bool = False, lease_seconds: float = 60.0) -> Backend: ...

    @classmethod
    async def open(cls, target: str | Path, *, readonly: bool = False, lease_seconds: float = 60.0) -> Backend:
        """Open (and, unless readonly, create and migrate) the crawl database at target: a
        postgresql:// URL (crawler/store/pg/, which needs the postgres extra; its host leases
        last lease_seconds), else a SQLite file."""
        if is_postgres_url(target):
            if readonly:
                raise StoreError("PostgreSQL databases are not opened read-only yet")
            from crawler.store.pg.store import PgStore  # psycopg is imported only for a postgresql:// URL

            return await PgStore.open(str(target), lease_seconds=lease_seconds)
        path = Path(target)
        if readonly and not path.exists():
            raise StoreError(f"no database at {path}")
        store = cls(await SqliteConnection.open(path, readonly=readonly), readonly=readonly)
        try:
            await store._configure()
        except BaseException:
            # Whatever went wrong, the thread stops and the writer lock goes; the first error is the one reported.
            with contextlib.suppress(StoreError):
                await store.close()
            raise
        return store

    async def _configure(self) -> None:
        version = await self._conn.run(_read_version if self.readonly else _configure_connection)
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer crawler (schema {version})")
        if self.readonly:
            return
        for target in range(version + 1, SCHEMA_VERSION + 1):
            await self._conn.transaction(partial(migrate, target=target))
        self._commit.nofollow_rows = bool(
            await self.scalar(
                "SELECT EXISTS (SELECT 1 FROM urls WHERE state = 'skipped' AND reason = ?)", (SkipReason.NOFOLLOW,)
            )
        )

    async def close(self) -> None:
        """Close the database; its thread stops and the writer lock is released, also when closing fails."""
        await self._conn.close()

    # ---- reads -------------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self._conn.run(lambda db: db.execute(sql, params).fetchall())

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0][0] if rows else None

    async def state_counts(self) -> dict[str, int]:
        rows = await self.fetchall("SELECT state, count(*) FROM urls GROUP BY state")
        counts = dict.fromkeys(URL_STATES, 0)
        counts.update({row[0]: row[1] for row in rows})
        return counts

    async def queued_for_host(self, host: str, after_id: int, limit: int) -> list[QueuedUrl]:
        if self.pass_id is not None:
            return await self._queued_with_versions(host, after_id, limit)
        rows = await self._window(
            "id, url, depth, kind",
            "SELECT id, url, depth, kind FROM urls WHERE state = 'queued' AND host = ? AND id > ? ORDER BY id LIMIT ?",
            (host, after_id, limit),
        )
        # One host string shared by the whole window rather than one copy per row.
        return [QueuedUrl(row[0], row[1], host, row[2], row[3]) for row in rows]

    async def _queued_with_versions(self, host: str, after_id: int, limit: int) -> list[QueuedUrl]:
        """queued_for_host in a recrawl pass: a stored page comes with the version it holds."""
        rows = await self._window(
            "id, url, depth, kind, stored, status, content_hash, etag, last_modified",
            "SELECT u.id, u.url, u.depth, u.kind, p.url_id AS stored, p.status, p.content_hash, p.etag,"
            " p.last_modified FROM urls u LEFT JOIN pages p ON p.url_id = u.id"
            " WHERE u.state = 'queued' AND u.host = ? AND u.id > ? ORDER BY u.id LIMIT ?",
            (host, after_id, limit),
        )
        return [
            QueuedUrl(r[0], r[1], host, r[2], r[3], None if r[4] is None else StoredVersion(r[5], r[6], r[7], r[8]))
            for r in rows
        ]

    async def _window(self, columns: str, select: str, params: Sequence[Any]) -> list[list[Any]]:
        """The rows of a frontier window's select (whose result columns are `columns`) in id order,
        read as one JSON array: sqlite3 gives up and retakes the GIL at every row it steps
        through, each time waiting for the busy event loop, and one row of JSON is one step."""
        sql = f"SELECT json_group_array(json_array({columns})) FROM ({select})"
        text = await self._conn.run(lambda db: db.execute(sql, params).fetchone()[0])
        rows: list[list[Any]] = json.loads(text)
        rows.sort(key=itemgetter(0))  # the aggregate's order is SQLite's choice, not a promise
        return rows

    async def queued_hosts(self, after: str, limit: int) -> list[str]:
        """Up to `limit` hosts with queued rows whose names sort after `after`, in name order.

        A loose index scan: one index seek per host, so the cost follows the number of hosts
        returned, not the number of queued rows (SELECT DISTINCT would read every one).
        """
        rows = await self.fetchall(
            "WITH RECURSIVE h(host) AS ("
            " SELECT (SELECT host FROM urls WHERE state = 'queued' AND host > ? ORDER BY host LIMIT 1)"
            " UNION ALL"
            " SELECT (SELECT host FROM urls WHERE state = 'queued' AND host > h.host ORDER BY host LIMIT 1)"
            " FROM h WHERE h.host IS NOT NULL LIMIT ?"
            ") SELECT host FROM h WHERE host IS NOT NULL",
            (after, limit),
        )
        return [row[0] for row in rows]

    async def fetched_for_host(self, host: str) -> int:
        """Pages fetched (done or failed) from host, in this run and earlier ones; sitemaps are no pages."""
        # The urls count stays within the (state, host, id) index; the few sitemaps come off it.
        sql = (
            "SELECT (SELECT count(*) FROM urls WHERE host = ?1 AND state IN ('done', 'failed'))"
            " - (SELECT count(*) FROM sitemaps s JOIN urls u ON u.id = s.url_id"
            " WHERE u.host = ?1 AND u.state IN ('done', 'failed'))"
        )
        return int(await self.scalar(sql, (host,)))

    async def urls_in_state(
        self, state: str, reasons: Sequence[str] | None, after_id: int, limit: int
    ) -> list[tuple[int, str, int, str | None]]:
        """(id, url, depth, reason) of rows in `state` (with one of `reasons`), in id order, a chunk at a time."""
        # "+state" keeps SQLite off the state index, so each chunk is a rowid range scan, not a sort.
        sql = "SELECT id, url, depth, reason FROM urls WHERE +state = ? AND id > ?"
        params: list[Any] = [state, after_id]
        if reasons is not None:
            sql += f" AND reason IN ({','.join('?' * len(reasons))})"
            params += reasons
        rows = await self.fetchall(sql + " ORDER BY id LIMIT ?", (*params, limit))
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    async def sitemaps_settled(self) -> int:
        """Sitemap documents read or failed (urls rows done or failed that are no pages)."""
        sql = "SELECT count(*) FROM sitemaps s JOIN urls u ON u.id = s.url_id WHERE u.state IN ('done', 'failed')"
        return int(await self.scalar(sql))

    async def pending_index(self) -> int:
        """Pages stored but not yet in the full-text index."""
        return int(await self.scalar("SELECT count(*) FROM search_pending"))

    async def stored_robots(self, origin: str) -> RobotsRecord | None:
        """The last robots.txt fetch recorded for origin (a resumed crawl may reuse it); None if none rebuilds."""
        rows = await self.fetchall(
            f"SELECT {ROBOTS_COLUMNS} FROM robots WHERE origin = ? AND body IS NOT NULL", (origin,)
        )
        return RobotsRecord.from_row(rows[0]) if rows else None

    async def get_meta(self, key: str) -> str | None:
        value = await self.scalar("SELECT value FROM meta WHERE key = ?", (key,))
        return str(value) if value is not None else None

    # ---- immediate writes (rare: start, stop, seeds) -----------------------------------

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in autocommit; returns the rows it changed."""
        return await self._conn.run(lambda db: db.execute(sql, params).rowcount)

    async def set_meta(self, key: str, value: str) -> None:
        await self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def requeue_in_flight(self) -> int:
        """Put URLs that were in flight when the last run stopped back in the queue."""
        return await self._write(
            "UPDATE urls SET state = 'queued', updated_at = ? WHERE state = 'in_flight'", (utc_now(),)
        )

    async def mark_killed_runs(self) -> int:
        """Runs still marked running ended without a word (kill -9, power loss)."""
        return await self._write("UPDATE runs SET outcome = 'killed' WHERE outcome = 'running'")

    async def requeue_skipped(self, reason: str) -> int:
        """Queue again every URL skipped for `reason`."""
        return await self._write(
            "UPDATE urls SET state = 'queued', reason = NULL, updated_at = ? WHERE state = 'skipped' AND reason = ?",
            (utc_now(), reason),
        )

    async def set_states(self, changes: Sequence[tuple[str, str | None, int]]) -> None:
        """(state, reason, id) changes committed at once, outside the crawl's batches."""
        if not changes:
            return
        now = utc_now()
        rows = [(state, reason, now, url_id) for state, reason, url_id in changes]
        await self._conn.transaction(
            lambda db: db.executemany("UPDATE urls SET state = ?, reason = ?, updated_at = ? WHERE id = ?", rows)
        )

    async def start_run(self, config_json: str, kind: str = "crawl") -> int:
        sql = "INSERT INTO runs (started_at, config, kind) VALUES (?, ?, ?)"
        params = (utc_now(), config_json, kind)
        run_id = await self._conn.run(lambda db: db.execute(sql, params).lastrowid)
        assert run_id is not None
        self.run_id = run_id
        return run_id

    async def finish_run(self, outcome: str, pages: int) -> None:
        await self._write(
            "UPDATE runs SET finished_at = ?, outcome = ?, pages = ? WHERE id = ?",
            (utc_now(), outcome, pages, self.run_id),
        )

    # ---- recrawl passes (see crawler/recrawl.py) ---------------------------------------------

    async def open_pass(self) -> int | None:
        """The run id of the recrawl pass left unfinished, if any."""
        value = await self.get_meta("recrawl_pass")
        return int(value) if value is not None else None

    async def start_pass(self, pass_id: int, seen_before: str | None) -> int:
        """Queue every stored page seen before `seen_before` (None: every stored page), or whose
        sitemap lastmod is newer than its last fetch, and record the open pass, in one
        transaction; returns how many were queued."""

        def start(db: sqlite3.Connection) -> int:
            if seen_before is None:
                # The ids from the small content-hash index: testing a page's times would read
                # the end of each row, past its body.
                due = db.execute(
                    "UPDATE urls SET state = 'queued', reason = NULL, updated_at = ?"
                    " FROM (SELECT url_id FROM pages INDEXED BY pages_content_hash) AS p"
                    " WHERE urls.id = p.url_id AND state NOT IN ('queued', 'in_flight')",
                    (utc_now(),),
                ).rowcount
            else:
                due = db.execute(
                    "UPDATE urls SET state = 'queued', reason = NULL, updated_at = ?1 WHERE id IN ("
                    " SELECT p.url_id FROM pages p JOIN urls u ON u.id = p.url_id"
                    " WHERE coalesce(p.seen_at, p.fetched_at) < ?2"
                    " OR (u.lastmod IS NOT NULL AND u.lastmod > coalesce(p.seen_at, p.fetched_at)))"
                    " AND state NOT IN ('queued', 'in_flight')",
                    (utc_now(), seen_before),
                ).rowcount
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('recrawl_pass', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(pass_id),),
            )
            return int(due)

        return await self._conn.transaction(start)

    def begin_pass(self, pass_id: int, *, keep_history: bool) -> None:
        """From now on this run belongs to pass_id: queued stored pages come with their version, and
        changes rows are keyed by the pass."""
        self.pass_id = self._commit.pass_id = pass_id
        self._commit.keep_history = keep_history

    async def end_pass(self) -> None:
        await self._write("DELETE FROM meta WHERE key = 'recrawl_pass'")

    async def revisits_queued(self) -> int:
        """Stored pages waiting to be fetched again (counted once already, when first fetched)."""
        # The page ids from the small content-hash index, not each row of pages (see start_pass).
        sql = (
            "SELECT count(*) FROM urls u JOIN (SELECT url_id FROM pages INDEXED BY pages_content_hash) p"
            " ON p.url_id = u.id WHERE u.state IN ('queued', 'in_flight')"
        )
        return int(await self.scalar(sql))

    # ---- committing the batch (its rows are added through BatchedWrites) -----------------------

    async def flush(self) -> list[QueuedUrl]:
        """Commit the pending batch in one transaction; returns the newly queued URLs.

        Why a kill at any instant loses nothing and duplicates nothing:
        - a page row, its links, the URLs it revealed and its `done` state are in one batch
          (the engine adds them without an await in between), so they commit together or not
          at all; WAL with synchronous=NORMAL keeps every commit through a process kill;
        - a URL whose page did not commit is still `queued` or `in_flight` in SQLite, and the
          next run requeues it: only those, the ones in flight at the kill, are fetched again;
        - refetching cannot duplicate rows: pages are keyed by url_id (an upsert),
          links by (from_id, to_id), urls by url (INSERT OR IGNORE).
        """
        batch, self.batch = self.batch, Batch()
        if not len(batch):
            return []
        run_id = self.run_id
        return await self._conn.transaction(lambda db: self._commit.commit(db, batch, run_id))

    async def index_pending(self, limit: int) -> int:
        """Move up to `limit` pages from search_pending into pages_fts in one transaction; returns how many."""
        return await self._conn.transaction(lambda db: index_pending(db, limit))


def _read_version(db: sqlite3.Connection) -> int:
    db.execute("PRAGMA busy_timeout = 10000")
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _configure_connection(db: sqlite3.Connection) -> int:
    """Set a writer's pragmas; returns the schema version the database holds."""
    version = _read_version(db)
    # Only takes effect on a new database: pages hold a body and a text each, and large
    # database pages write them in fewer WAL frames.
    db.execute("PRAGMA page_size = 16384")
    db.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode survives a process kill; only an OS crash may lose the last commits.
    db.execute("PRAGMA synchronous = NORMAL")
    # The page cache is the largest single block of the crawler's memory: this size weighs
    # writer speed against memory (bench/frontier_memory.py measures both).
    db.execute("PRAGMA cache_size = -8000")
    db.execute("PRAGMA temp_store = MEMORY")
    return version
