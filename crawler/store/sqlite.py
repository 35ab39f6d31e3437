"""The SQLite crawl database: opening and configuring it, frontier reads, and committing batches."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from crawler.errors import SkipReason, StoreError
from crawler.store.batch import Batch
from crawler.store.errors import translate
from crawler.store.flush import BatchWriter, index_pending
from crawler.store.lock import lock_for_writing, unlock
from crawler.store.migrations import migrate
from crawler.store.records import URL_STATES, NewUrl, PageRecord, QueuedUrl, utc_now
from crawler.store.schema import SCHEMA_VERSION

_T = TypeVar("_T")


class Store:
    """One open crawl database. Writes go into a Batch and are committed by `flush`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, *, readonly: bool, lock: int | None = None) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._lock = lock
        self.batch = Batch()
        self.run_id: int | None = None
        self._writer = BatchWriter()

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> Store:
        """Open (and, unless readonly, create and migrate) the database at path."""
        path = Path(path)
        lock: int | None = None
        conn: aiosqlite.Connection | None = None
        try:
            if readonly:
                if not path.exists():
                    raise StoreError(f"no database at {path}")
                conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                lock = lock_for_writing(path)
                conn = await aiosqlite.connect(path, isolation_level=None)
            store = cls(conn, path, readonly=readonly, lock=lock)
            await store._configure()
        except BaseException as exc:
            if conn is not None:
                # aiosqlite's thread is not a daemon: left open, it keeps the process from exiting.
                with contextlib.suppress(sqlite3.Error, OSError):
                    await conn.close()
            unlock(lock)
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise translate(exc, path) from exc
            raise
        return store

    async def _configure(self) -> None:
        conn = self._conn
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA busy_timeout = 10000")
        version = (await (await conn.execute("PRAGMA user_version")).fetchone())[0]  # type: ignore[index]
        if self.readonly:
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was written by a newer crawler (schema {version})")
            return
        # Only takes effect on a new database: pages hold a body and a text each, and large
        # database pages write them in fewer WAL frames.
        await conn.execute("PRAGMA page_size = 16384")
        await conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process kill; only an OS crash may lose the last commits.
        await conn.execute("PRAGMA synchronous = NORMAL")
        # The page cache is the largest single block of the crawler's memory: this size weighs
        # writer speed against memory (bench/frontier_memory.py measures both).
        await conn.execute("PRAGMA cache_size = -8000")
        await conn.execute("PRAGMA temp_store = MEMORY")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer crawler (schema {version})")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            await self._in_transaction(partial(migrate, target=target))
        self._writer.nofollow_rows = bool(
            await self.scalar(
                "SELECT EXISTS (SELECT 1 FROM urls WHERE state = 'skipped' AND reason = ?)", (SkipReason.NOFOLLOW,)
            )
        )

    async def close(self) -> None:
        try:
            await self._conn.close()
        except (sqlite3.Error, OSError) as exc:
            raise translate(exc, self.path) from exc
        finally:
            unlock(self._lock)
            self._lock = None

    # ---- reads -------------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            cursor = await self._conn.execute(sql, params)
            return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0][0] if rows else None

    async def state_counts(self) -> dict[str, int]:
        rows = await self.fetchall("SELECT state, count(*) FROM urls GROUP BY state")
        counts = dict.fromkeys(URL_STATES, 0)
        counts.update({row[0]: row[1] for row in rows})
        return counts

    async def queued_for_host(self, host: str, after_id: int, limit: int) -> list[QueuedUrl]:
        rows = await self.fetchall(
            "SELECT id, url, depth FROM urls WHERE state = 'queued' AND host = ? AND id > ? ORDER BY id LIMIT ?",
            (host, after_id, limit),
        )
        # One host string shared by the whole window rather than one copy per row.
        return [QueuedUrl(row[0], row[1], host, row[2]) for row in rows]

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
        """Pages fetched (done or failed) from host, in this run and earlier ones."""
        sql = "SELECT count(*) FROM urls WHERE host = ? AND state IN ('done', 'failed')"
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

    async def pending_index(self) -> int:
        """Pages stored but not yet in the full-text index."""
        return int(await self.scalar("SELECT count(*) FROM search_pending"))

    async def get_meta(self, key: str) -> str | None:
        value = await self.scalar("SELECT value FROM meta WHERE key = ?", (key,))
        return str(value) if value is not None else None

    # ---- immediate writes (rare: start, stop, seeds) -----------------------------------

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            cursor = await self._conn.execute(sql, params)
            return cursor.rowcount
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

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

    async def _in_transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """work(db) inside one IMMEDIATE transaction, run whole in SQLite's thread.

        One call into that thread instead of one per statement, since each call's answer waits
        for the busy event loop. Committed if work
        returns, rolled back if it raises; sqlite errors leave as StoreError. The thread runs
        work to its end even if the caller is cancelled meanwhile (a commit is never cut short).
        """

        def run() -> _T:
            db = self._conn._conn  # aiosqlite's sqlite3 connection; only its thread may use it
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result

        try:
            # aiosqlite has no public call for "run this in the connection's thread"; _execute
            # is how its own methods do it (pinned in pyproject.toml).
            result: _T = await self._conn._execute(run)  # type: ignore[no-untyped-call]
            return result
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    async def set_states(self, changes: Sequence[tuple[str, str | None, int]]) -> None:
        """(state, reason, id) changes committed at once, outside the crawl's batches."""
        if not changes:
            return
        now = utc_now()
        rows = [(state, reason, now, url_id) for state, reason, url_id in changes]
        await self._in_transaction(
            lambda db: db.executemany("UPDATE urls SET state = ?, reason = ?, updated_at = ? WHERE id = ?", rows)
        )

    async def start_run(self, config_json: str) -> int:
        try:
            cursor = await self._conn.execute(
                "INSERT INTO runs (started_at, config) VALUES (?, ?)", (utc_now(), config_json)
            )
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc
        self.run_id = cursor.lastrowid
        assert self.run_id is not None
        return self.run_id

    async def finish_run(self, outcome: str, pages: int) -> None:
        await self._write(
            "UPDATE runs SET finished_at = ?, outcome = ?, pages = ? WHERE id = ?",
            (utc_now(), outcome, pages, self.run_id),
        )

    # ---- batched writes (see Batch) --------------------------------------------------------

    def add_urls(self, urls: Iterable[NewUrl]) -> None:
        self.batch.add_urls(urls)

    def add_page(self, page: PageRecord, links: Iterable[tuple[str, bool]]) -> None:
        self.batch.add_page(page, links)

    def add_error(self, url_id: int | None, url: str, kind: str, message: str, attempts: int) -> None:
        self.batch.add_error(url_id, url, kind, message, attempts)

    def set_state(self, url_id: int, state: str, reason: str | None = None) -> None:
        self.batch.set_state(url_id, state, reason)

    def skip_queued_of_host(self, host: str, reason: str) -> None:
        """Mark every still-queued URL of host as skipped (a per-host limit was reached)."""
        self.batch.skip_queued_of_host(host, reason)

    def add_robots(
        self, origin: str, status: int | None, crawl_delay: float | None, sitemaps: Sequence[str], note: str | None
    ) -> None:
        self.batch.add_robots(origin, status, crawl_delay, sitemaps, note)

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
        return await self._in_transaction(lambda db: self._writer.commit(db, batch, run_id))

    async def index_pending(self, limit: int) -> int:
        """Move up to `limit` pages from search_pending into pages_fts in one transaction; returns how many."""
        return await self._in_transaction(lambda db: index_pending(db, limit))
