"""The PostgreSQL crawl database: opening and migrating it, frontier reads, and committing batches."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from functools import partial
from typing import Any

from crawler.errors import SkipReason, StoreError
from crawler.store.batch import Batch, BatchedWrites
from crawler.store.pg.connection import Conn, PgConnection
from crawler.store.pg.flush import PgBatchCommit, index_pending
from crawler.store.pg.leases import HostLeases, fence
from crawler.store.pg.schema import MIGRATIONS, SCHEMA_VERSION, TEMP_TABLES
from crawler.store.records import ROBOTS_COLUMNS, URL_STATES, QueuedUrl, RobotsRecord, StoredVersion, utc_now

IDLE_INDEX = 200  # pages indexed by a flush that finds its batch empty (the writer is idle)
MIGRATION_LOCK = 0x6372776D  # the advisory lock migrations take turns on ('crwm')
LEASE_SECONDS = 60.0  # storage.lease_seconds's default
QUEUED_BY = 16  # flushes whose hosts with new URLs are remembered (a window read spans fewer)
FLUSH_ATTEMPTS = 5  # a flush that lost a deadlock to another crawler's is written again, this often at most
_RETRYABLE = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure


class PgStore(BatchedWrites):
    """One open PostgreSQL crawl database (the backend contract of crawler/store/backend.py)."""

    def __init__(self, conn: PgConnection, url: str) -> None:
        self._conn = conn
        self._url = url
        # A crawl's second connection, for the reads and takes that must not wait behind a flush
        # (opened by start_run): a host taken, its first window and its robots.txt row.
        self._side: PgConnection | None = None
        self._flushes = 0  # flushes started
        self._flushed = 0  # flushes ended (committed or failed)
        self._queued_by: dict[int, frozenset[str]] = {}  # the last flushes' hosts with new URLs, by number
        self.batch = Batch()
        self.run_id: int | None = None
        self.pass_id: int | None = None
        self._commit = PgBatchCommit()
        self._unindexed = True  # whether pages stored without a search vector may be left
        self.lease_seconds = LEASE_SECONDS  # how long a host lease and a run's heartbeat last
        # Host leases, once start_run made this run's row: several crawlers share the database.
        self.leases: HostLeases | None = None

    @property
    def location(self) -> str:
        return self._conn.location

    @classmethod
    async def open(cls, url: str, *, lease_seconds: float = LEASE_SECONDS) -> PgStore:
        """Connect, and create or migrate the schema."""
        store = cls(await PgConnection.open(url), url)
        store.lease_seconds = lease_seconds
        try:
            await store._configure()
        except BaseException:
            with contextlib.suppress(StoreError):
                await store.close()
            raise
        return store

    async def _configure(self) -> None:
        # Each migration commits with its version, so a schema read as current is whole: crawlers
        # joining a crawl do not queue for the lock (a throttled holder held up all the others).
        if await self._conn.run(_read_version) != SCHEMA_VERSION:
            await self._migrate()  # or, for a newer schema, say so
        await self._conn.run(lambda conn: conn.execute(TEMP_TABLES))
        self._commit.nofollow_rows = bool(
            await self.scalar(
                "SELECT EXISTS (SELECT 1 FROM urls WHERE state = 'skipped' AND reason = %s)", (SkipReason.NOFOLLOW,)
            )
        )

    async def _migrate(self) -> None:
        # Crawlers starting together take turns; the lock is taken before the version is read
        # again, outside any transaction, so that the read sees what the previous holder committed.
        await self._conn.run(lambda conn: conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,)))
        try:
            version = await self._conn.run(_read_version)
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.location} was written by a newer crawler (schema {version})")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                await self._conn.transaction(partial(_migrate, target=target))
        finally:
            await self._conn.run(lambda conn: conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,)))

    async def close(self) -> None:
        if self._side is not None:
            with contextlib.suppress(StoreError):
                await self._side.close()
        await self._conn.close()

    # ---- reads -------------------------------------------------------------------------

    async def fetchall(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = (), *, side: bool = False
    ) -> list[tuple[Any, ...]]:
        """The rows of a read; `side`: on the side connection when there is one, not behind a flush."""

        async def fetch(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return list(await cur.fetchall())

        return await (self._side if side and self._side is not None else self._conn).run(fetch)

    async def scalar(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0][0] if rows else None

    async def state_counts(self) -> dict[str, int]:
        rows = await self.fetchall("SELECT state, count(*) FROM urls GROUP BY state")
        counts = dict.fromkeys(URL_STATES, 0)
        counts.update({row[0]: int(row[1]) for row in rows})
        return counts

    async def queued_for_host(self, host: str, after_id: int, limit: int) -> list[QueuedUrl]:
        if self.pass_id is not None:
            rows = await self.fetchall(
                "SELECT u.id, u.url, u.depth, u.kind, p.url_id, p.status, p.content_hash, p.etag, p.last_modified"
                " FROM urls u LEFT JOIN pages p ON p.url_id = u.id"
                " WHERE u.state = 'queued' AND u.host = %s AND u.id > %s ORDER BY u.id LIMIT %s",
                (host, after_id, limit),
            )
            return [
                QueuedUrl(r[0], r[1], host, r[2], r[3], None if r[4] is None else StoredVersion(r[5], r[6], r[7], r[8]))
                for r in rows
            ]
        sql = (
            "SELECT id, url, depth, kind FROM urls WHERE state = 'queued' AND host = %s AND id > %s"
            " ORDER BY id LIMIT %s"
        )
        params = (host, after_id, limit)
        # Beside a flush that queues URLs of the host, a read may see another crawler's rows of the
        # host, with greater ids, and not this one's, which the frontier would then take for read
        # already (their ids are below the window's): such a read waits for the flush's commit.
        started = self._flushes
        beside = self._side is not None and not self._queues(host, self._flushed)
        rows = await self.fetchall(sql, params, side=beside)
        if beside and self._queues(host, started):  # such a flush started meanwhile
            rows = await self.fetchall(sql, params)
        return [QueuedUrl(row[0], row[1], host, row[2], row[3]) for row in rows]

    async def queued_hosts(self, after: str, limit: int) -> list[str]:
        """A loose index scan, one seek per host, as SQLite's (crawler/store/sqlite.py)."""
        rows = await self.fetchall(
            "WITH RECURSIVE h(host) AS ("
            " SELECT (SELECT host FROM urls WHERE state = 'queued' AND host > %s ORDER BY host LIMIT 1)"
            " UNION ALL"
            " SELECT (SELECT host FROM urls WHERE state = 'queued' AND host > h.host ORDER BY host LIMIT 1)"
            " FROM h WHERE h.host IS NOT NULL"
            ") SELECT host FROM h WHERE host IS NOT NULL LIMIT %s",
            (after, limit),
        )
        return [row[0] for row in rows]

    def _queues(self, host: str, since: int) -> bool:
        """Whether a flush started after the first `since` queues URLs of host (or may: one too old to tell)."""
        return any(host in self._queued_by.get(n, (host,)) for n in range(since + 1, self._flushes + 1))

    async def fetched_for_host(self, host: str) -> int:
        sql = (
            "SELECT (SELECT count(*) FROM urls WHERE host = %(h)s AND state IN ('done', 'failed'))"
            " - (SELECT count(*) FROM sitemaps s JOIN urls u ON u.id = s.url_id"
            " WHERE u.host = %(h)s AND u.state IN ('done', 'failed'))"
        )
        return int(await self.scalar(sql, {"h": host}))

    async def urls_in_state(
        self, state: str, reasons: Sequence[str] | None, after_id: int, limit: int
    ) -> list[tuple[int, str, int, str | None]]:
        sql = "SELECT id, url, depth, reason FROM urls WHERE state = %s AND id > %s"
        params: list[Any] = [state, after_id]
        if reasons is not None:
            sql += " AND reason = ANY(%s)"
            params.append(list(reasons))
        rows = await self.fetchall(sql + " ORDER BY id LIMIT %s", (*params, limit))
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    async def sitemaps_settled(self) -> int:
        sql = "SELECT count(*) FROM sitemaps s JOIN urls u ON u.id = s.url_id WHERE u.state IN ('done', 'failed')"
        return int(await self.scalar(sql))

    async def pending_index(self) -> int:
        return int(await self.scalar("SELECT count(*) FROM pages WHERE search IS NULL AND noindex = 0"))

    async def stored_robots(self, origin: str) -> RobotsRecord | None:
        """The fleet's last robots.txt fetch for origin, committed by whichever crawler made it."""
        rows = await self.fetchall(
            f"SELECT {ROBOTS_COLUMNS} FROM robots WHERE origin = %s AND body IS NOT NULL", (origin,), side=True
        )
        return RobotsRecord.from_row(rows[0]) if rows else None

    async def get_meta(self, key: str) -> str | None:
        value = await self.scalar("SELECT value FROM meta WHERE key = %s", (key,))
        return str(value) if value is not None else None

    # ---- immediate writes (rare: start, stop, seeds) -----------------------------------

    async def _write(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        async def write(conn: Conn) -> int:
            cur = await conn.execute(sql, params)
            return int(cur.rowcount)

        return await self._conn.run(write)

    async def set_meta(self, key: str, value: str) -> None:
        await self._write(
            "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def requeue_in_flight(self) -> int:
        """In-flight URLs of hosts nobody holds (a lease that expired counts as none): others'
        in-flight URLs are theirs, and come back when their leases expire (see leases.py)."""
        return await self._write(
            "UPDATE urls SET state = 'queued', updated_at = %s WHERE state = 'in_flight' AND NOT EXISTS"
            " (SELECT 1 FROM hosts h WHERE h.host = urls.host AND h.lease_owner IS NOT NULL AND h.lease_until > now())",
            (utc_now(),),
        )

    async def mark_killed_runs(self) -> int:
        """Runs left 'running' whose heartbeat stopped more than a lease ago; live ones keep beating."""
        return await self._write(
            "UPDATE runs SET outcome = 'killed' WHERE outcome = 'running'"
            " AND (heartbeat_at IS NULL OR heartbeat_at < now() - make_interval(secs => %s))",
            (self.lease_seconds,),
        )

    async def requeue_skipped(self, reason: str) -> int:
        return await self._write(
            "UPDATE urls SET state = 'queued', reason = NULL, updated_at = %s WHERE state = 'skipped' AND reason = %s",
            (utc_now(), reason),
        )

    async def set_states(self, changes: Sequence[tuple[str, str | None, int]]) -> None:
        if not changes:
            return
        now = utc_now()
        rows = [(state, reason, now, url_id) for state, reason, url_id in changes]

        async def update(conn: Conn) -> None:
            async with conn.cursor() as cur:
                await cur.executemany("UPDATE urls SET state = %s, reason = %s, updated_at = %s WHERE id = %s", rows)

        await self._conn.transaction(update)

    async def start_run(self, config_json: str, kind: str = "crawl") -> int:
        sql = (
            "INSERT INTO runs (started_at, config, kind, machine, pid, heartbeat_at, fetched)"
            " VALUES (%s, %s, %s, %s, %s, now(), 0) RETURNING id"
        )
        run_id = await self.scalar(sql, (utc_now(), config_json, kind, socket.gethostname(), os.getpid()))
        self.run_id = int(run_id)
        if self._side is None:
            self._side = await PgConnection.open(self._url)
        self.leases = HostLeases(self._conn, self.run_id, self.lease_seconds, side=self._side)
        return self.run_id

    async def finish_run(self, outcome: str, pages: int) -> None:
        """Record the run's end, let go of its hosts, and mark runs whose heartbeat stopped as killed."""
        if self.leases is not None:
            await self.leases.release_all()
        await self._write(
            "UPDATE runs SET finished_at = %s, outcome = %s, pages = %s, heartbeat_at = now() WHERE id = %s",
            (utc_now(), outcome, pages, self.run_id),
        )
        await self.mark_killed_runs()

    # ---- recrawl passes (see crawler/recrawl.py) ---------------------------------------------

    async def open_pass(self) -> int | None:
        value = await self.get_meta("recrawl_pass")
        return int(value) if value is not None else None

    async def start_pass(self, pass_id: int, seen_before: str | None) -> int:
        """Queue the due stored pages (None: every stored page) and record the open pass, in one
        transaction (as SQLite's)."""

        async def start(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE urls SET state = 'queued', reason = NULL, updated_at = %(now)s WHERE id IN ("
                " SELECT p.url_id FROM pages p JOIN urls u ON u.id = p.url_id"
                " WHERE %(before)s::text IS NULL OR coalesce(p.seen_at, p.fetched_at) < %(before)s"
                " OR (u.lastmod IS NOT NULL AND u.lastmod > coalesce(p.seen_at, p.fetched_at)))"
                " AND state NOT IN ('queued', 'in_flight')",
                {"now": utc_now(), "before": seen_before},
            )
            due = int(cur.rowcount)
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('recrawl_pass', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(pass_id),),
            )
            return due

        return await self._conn.transaction(start)

    def begin_pass(self, pass_id: int, *, keep_history: bool) -> None:
        self.pass_id = self._commit.pass_id = pass_id
        self._commit.keep_history = keep_history

    async def end_pass(self) -> None:
        await self._write("DELETE FROM meta WHERE key = 'recrawl_pass'")

    async def revisits_queued(self) -> int:
        sql = "SELECT count(*) FROM urls u JOIN pages p ON p.url_id = u.id WHERE u.state IN ('queued', 'in_flight')"
        return int(await self.scalar(sql))

    # ---- committing the batch (its rows are added through BatchedWrites) -----------------------

    async def flush(self) -> list[QueuedUrl]:
        """Commit the pending batch in one transaction; returns the newly queued URLs.

        The same guarantees as SQLite's (crawler/store/sqlite.py): a page, its links, what it
        revealed, its search vector and its done state commit together. Pages stored without a
        vector (by an older crawler) are indexed apart: a flush that finds the batch empty (the
        writer is idle) indexes a chunk of them, and the writer's index_backlog the rest.
        """
        batch, self.batch = self.batch, Batch()
        if not len(batch):
            if self._unindexed:
                self._unindexed = await self.index_pending(IDLE_INDEX) == IDLE_INDEX
            return []
        run_id = self.run_id
        leases = self.leases

        async def commit(conn: Conn) -> list[QueuedUrl]:
            # Fenced: nothing is written for a host whose lease this run no longer holds.
            fenced = batch if leases is None or not leases.fencing else await fence(conn, leases, batch)
            return await self._commit.commit(conn, fenced, run_id)

        self._flushes += 1
        self._queued_by[self._flushes] = frozenset(u.host for u in batch.new_urls) | {u.host for u in batch.listed_urls}
        self._queued_by.pop(self._flushes - QUEUED_BY, None)
        try:
            for attempt in range(1, FLUSH_ATTEMPTS + 1):
                try:
                    rows = await self._conn.transaction(commit)
                    break
                except StoreError as exc:
                    # Another crawler's flush won a deadlock (URLs and hosts go in one order, but rarer
                    # rows, e.g. robots and sitemaps, do not): the transaction was rolled back whole, so
                    # the same batch is written again.
                    if attempt == FLUSH_ATTEMPTS or getattr(exc.__cause__, "sqlstate", None) not in _RETRYABLE:
                        raise
        finally:
            self._flushed += 1
        return rows

    async def index_pending(self, limit: int) -> int:
        return await self._conn.transaction(lambda conn: index_pending(conn, limit))


async def _read_version(conn: Conn) -> int:
    cur = await conn.execute("SELECT to_regclass('meta') IS NOT NULL")
    row = await cur.fetchone()
    if not row[0]:
        return 0
    cur = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def _migrate(conn: Conn, target: int) -> None:
    """One migration step and its version row, in the caller's transaction: done and recorded, or neither."""
    await conn.execute(MIGRATIONS[target - 1])
    await conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(target),),
    )
