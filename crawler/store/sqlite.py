"""SQLite persistence through aiosqlite: schema, migrations, batched writes, frontier rows."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from crawler.errors import SkipReason, StoreError
from crawler.urls import host_key

_T = TypeVar("_T")

# Each entry migrates the schema from version i to i + 1, in its own transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        outcome     TEXT NOT NULL DEFAULT 'running',
        pages       INTEGER NOT NULL DEFAULT 0,
        config      TEXT NOT NULL
    );
    CREATE TABLE urls (
        id            INTEGER PRIMARY KEY,
        url           TEXT NOT NULL UNIQUE,
        host          TEXT NOT NULL,
        depth         INTEGER NOT NULL,
        state         TEXT NOT NULL,
        reason        TEXT,
        parent_id     INTEGER,
        discovered_at TEXT NOT NULL,
        updated_at    TEXT
    );
    CREATE INDEX urls_state_host ON urls (state, host, id);
    CREATE TABLE pages (
        url_id       INTEGER PRIMARY KEY,
        url          TEXT NOT NULL,
        final_url    TEXT NOT NULL,
        status       INTEGER NOT NULL,
        content_type TEXT,
        title        TEXT,
        depth        INTEGER NOT NULL,
        fetched_at   TEXT NOT NULL,
        elapsed_ms   REAL NOT NULL,
        http_version TEXT,
        bytes        INTEGER NOT NULL,
        headers      TEXT NOT NULL,
        redirects    TEXT NOT NULL,
        noindex      INTEGER NOT NULL DEFAULT 0,
        text         TEXT,
        body         BLOB,
        run_id       INTEGER
    );
    CREATE TABLE links (
        from_id  INTEGER NOT NULL,
        to_url   TEXT NOT NULL,
        nofollow INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (from_id, to_url)
    ) WITHOUT ROWID;
    CREATE INDEX links_to ON links (to_url);
    CREATE TABLE errors (
        id       INTEGER PRIMARY KEY,
        url_id   INTEGER,
        url      TEXT NOT NULL,
        kind     TEXT NOT NULL,
        message  TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        at       TEXT NOT NULL,
        run_id   INTEGER
    );
    CREATE INDEX errors_kind ON errors (kind);
    CREATE TABLE robots (
        origin      TEXT PRIMARY KEY,
        status      INTEGER,
        fetched_at  TEXT NOT NULL,
        crawl_delay REAL,
        sitemaps    TEXT NOT NULL,
        note        TEXT
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: full-text search over title and visible text, and two views for generic SQLite tools.
    # pages_fts is an external-content FTS5 table: it holds only the index, the text stays in
    # pages. A trigger queues each stored page in search_pending, and the flush that stored it
    # indexes the queue (Store._index_pending) in the same transaction; pages written by other
    # tools, or before this migration, wait there until a crawl's flushes or its end drain them.
    # The index holds exactly the rows of searchable_pages (noindex = 0, not pending), which
    # FTS5's integrity-check verifies: INSERT INTO pages_fts (pages_fts, rank) VALUES ('integrity-check', 1).
    """
    CREATE TABLE search_pending (
        url_id INTEGER PRIMARY KEY
    );
    CREATE VIEW searchable_pages AS
        SELECT url_id, title, text FROM pages
        WHERE noindex = 0 AND url_id NOT IN (SELECT url_id FROM search_pending);
    CREATE VIRTUAL TABLE pages_fts USING fts5(
        title, text,
        content = 'searchable_pages', content_rowid = 'url_id',
        tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO search_pending (url_id) SELECT url_id FROM pages WHERE noindex = 0;
    CREATE TRIGGER pages_search_insert AFTER INSERT ON pages WHEN new.noindex = 0 BEGIN
        INSERT OR IGNORE INTO search_pending (url_id) VALUES (new.url_id);
    END;
    CREATE TRIGGER pages_search_delete AFTER DELETE ON pages BEGIN
        INSERT INTO pages_fts (pages_fts, rowid, title, text)
            SELECT 'delete', old.url_id, old.title, old.text
            WHERE old.noindex = 0 AND old.url_id NOT IN (SELECT url_id FROM search_pending);
        DELETE FROM search_pending WHERE url_id = old.url_id;
    END;
    CREATE TRIGGER pages_search_update AFTER UPDATE OF url_id, title, text, noindex ON pages BEGIN
        INSERT INTO pages_fts (pages_fts, rowid, title, text)
            SELECT 'delete', old.url_id, old.title, old.text
            WHERE old.noindex = 0 AND old.url_id NOT IN (SELECT url_id FROM search_pending);
        DELETE FROM search_pending WHERE url_id = old.url_id;
        INSERT INTO search_pending (url_id) SELECT new.url_id WHERE new.noindex = 0;
    END;
    CREATE VIEW link_urls AS
        SELECT f.url AS from_url, l.to_url, l.nofollow, t.state AS to_state, p.status AS to_status
        FROM links l
        JOIN urls f ON f.id = l.from_id
        LEFT JOIN urls t ON t.url = l.to_url
        LEFT JOIN pages p ON p.url_id = t.id;
    CREATE VIEW page_overview AS
        SELECT p.url_id, p.url, p.final_url, u.host, p.status, p.content_type, p.title, p.depth,
               p.fetched_at, p.elapsed_ms, p.http_version, p.bytes, p.noindex, p.run_id
        FROM pages p JOIN urls u ON u.id = p.url_id;
    """,
    # 3: links name their target by urls.id, not by URL text. Rows are ~6x smaller, and so is
    # the links_to index, which was the writer's largest single cost (random inserts of URL
    # keys). Every link target now has a urls row: targets only ever linked with nofollow,
    # which schema 2 kept only as link text, become 'skipped' rows with reason 'nofollow'
    # (host from crawler_host_key, a function the store registers while migrating).
    """
    INSERT OR IGNORE INTO urls (url, host, depth, parent_id, state, reason, discovered_at)
        SELECT l.to_url, crawler_host_key(l.to_url), coalesce(min(f.depth), 0) + 1, min(l.from_id),
               'skipped', 'nofollow', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        FROM links l LEFT JOIN urls f ON f.id = l.from_id
        WHERE NOT EXISTS (SELECT 1 FROM urls t WHERE t.url = l.to_url)
        GROUP BY l.to_url ORDER BY min(l.from_id), l.to_url;
    DROP VIEW link_urls;
    CREATE TABLE links_by_id (
        from_id  INTEGER NOT NULL,
        to_id    INTEGER NOT NULL,
        nofollow INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (from_id, to_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO links_by_id (from_id, to_id, nofollow)
        SELECT l.from_id, t.id, l.nofollow FROM links l JOIN urls t ON t.url = l.to_url ORDER BY l.from_id, t.id;
    DROP TABLE links;
    ALTER TABLE links_by_id RENAME TO links;
    CREATE INDEX links_to ON links (to_id);
    CREATE VIEW link_urls AS
        SELECT f.url AS from_url, t.url AS to_url, l.nofollow, t.state AS to_state, p.status AS to_status
        FROM links l
        JOIN urls f ON f.id = l.from_id
        JOIN urls t ON t.id = l.to_id
        LEFT JOIN pages p ON p.url_id = t.id;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
URL_STATES = ("queued", "in_flight", "done", "failed", "skipped")

_PAGE_COLUMNS = (
    "url", "final_url", "status", "content_type", "title", "depth", "fetched_at", "elapsed_ms",
    "http_version", "bytes", "headers", "redirects", "noindex", "text", "body", "run_id",
)  # fmt: skip
_PAGE_UPDATE = ", ".join(f"{name} = excluded.{name}" for name in _PAGE_COLUMNS)


_second: list[tuple[int, str]] = [(-1, "")]  # the last whole second formatted, reused within it


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds, the format of every stored time."""
    # Every page stores a time: formatting the seconds once per second costs a tenth of datetime's way.
    now = time.time()
    whole = int(now)
    second, text = _second[0]
    if whole != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    return f"{text}.{int((now - whole) * 1000):03d}Z"


@dataclass(frozen=True, slots=True)
class NewUrl:
    """A URL to add to the frontier; state is 'queued' or 'skipped' (with a reason)."""

    url: str
    host: str
    depth: int
    parent_id: int | None = None
    state: str = "queued"
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedUrl:
    """A frontier row that is waiting to be fetched."""

    id: int
    url: str
    host: str
    depth: int


@dataclass(slots=True)
class PageRecord:
    """Everything stored about one fetched page."""

    url_id: int
    url: str
    final_url: str
    status: int
    content_type: str | None
    title: str | None
    depth: int
    fetched_at: str
    elapsed_ms: float
    http_version: str | None
    size: int  # stored in the column `bytes`
    headers: list[tuple[str, str]]
    redirects: list[dict[str, Any]]
    noindex: bool
    text: str | None
    body: bytes | None


@dataclass(slots=True)
class Batch:
    """Writes gathered between two flushes; a flush commits all of them in one transaction."""

    new_urls: list[NewUrl] = field(default_factory=list)
    pages: list[PageRecord] = field(default_factory=list)
    links: list[tuple[int, str, int]] = field(default_factory=list)
    errors: list[tuple[int | None, str, str, str, int, str]] = field(default_factory=list)
    states: list[tuple[str, str | None, str, int]] = field(default_factory=list)
    robots: list[tuple[str, int | None, str, float | None, str, str | None]] = field(default_factory=list)
    host_skips: list[tuple[str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.host_skips)
            + len(self.new_urls)
            + len(self.pages)
            + len(self.links)
            + len(self.errors)
            + len(self.states)
            + len(self.robots)
        )


def _translate(exc: BaseException, path: Path) -> StoreError:
    """The one place sqlite errors become StoreError, with a message a user can act on."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None  # extended codes keep the primary in the low byte
    os_errno = exc.errno if isinstance(exc, OSError) else None
    if primary == sqlite3.SQLITE_NOTADB or "file is not a database" in text or "file is encrypted" in text:
        return StoreError(f"{path} is not a SQLite database (choose another storage.path or move the file)")
    if primary == sqlite3.SQLITE_READONLY or os_errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreError(
            f"{path} is read-only ({text}); the file and its folder must be writable,"
            " since SQLite keeps -wal and -shm files next to it"
        )
    if primary == sqlite3.SQLITE_FULL or os_errno in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text:
        return StoreError(
            f"the disk holding {path} is full; free space and resume the crawl (what was stored is intact)"
        )
    if primary == sqlite3.SQLITE_CANTOPEN or "unable to open" in text:
        return StoreError(f"cannot open {path}: {text}")
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return StoreError(f"{path} is locked by another process: {text}")
    return StoreError(f"database error on {path}: {text}")


def _lock_for_writing(path: Path) -> int | None:
    """One writer per database: two crawlers on one frontier would lease the same URLs.

    An flock on a side file (never on the database itself: closing another descriptor of
    the database would drop SQLite's own locks); the kernel releases it when the process
    dies, so a killed crawl never leaves a stale lock behind.
    """
    if fcntl is None:  # pragma: no cover - not on Windows
        return None
    fd = os.open(f"{path}-lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreError(f"{path} is in use by another crawler (pid {holder}); wait for it or stop it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold the database's writer lock for a moment (e.g. to move it aside); StoreError if a crawl has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock_for_writing(path)
    try:
        yield
    finally:
        _unlock(fd)


class Store:
    """One open crawl database. Writes go into a Batch and are committed by `flush`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, *, readonly: bool, lock: int | None = None) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._lock = lock
        self.batch = Batch()
        self.run_id: int | None = None
        # Whether urls may hold nofollow-only targets that a followed link must queue (see
        # _unlink_nofollow_targets); False spares that lookup to every flush of a crawl that
        # never met one.
        self._nofollow_rows = False

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
                lock = _lock_for_writing(path)
                conn = await aiosqlite.connect(path, isolation_level=None)
            store = cls(conn, path, readonly=readonly, lock=lock)
            await store._configure()
        except BaseException as exc:
            if conn is not None:
                # aiosqlite's thread is not a daemon: left open, it keeps the process from exiting.
                with contextlib.suppress(sqlite3.Error, OSError):
                    await conn.close()
            _unlock(lock)
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise _translate(exc, path) from exc
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
        # Only takes effect on a new database. Pages hold ~30 KB of body and text each; 16 KB
        # database pages write them in fewer WAL frames (two write calls each) than 4 KB ones:
        # ~20 % less system CPU and a faster crawl on the bench site (interleaved runs).
        await conn.execute("PRAGMA page_size = 16384")
        await conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process kill; only an OS crash may lose the last commits.
        await conn.execute("PRAGMA synchronous = NORMAL")
        # 8 MB of page cache: the largest single block of the crawler's memory. 32 MB made
        # writes ~3% faster than 16 MB for ~19 MB more RSS (bench/frontier_memory.py); 4 MB
        # cost ~8% more writer CPU on the bench site.
        await conn.execute("PRAGMA cache_size = -8000")
        await conn.execute("PRAGMA temp_store = MEMORY")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer crawler (schema {version})")
        if version < SCHEMA_VERSION:
            await conn.create_function("crawler_host_key", 1, _host_key_or_blank, deterministic=True)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            await self._in_transaction(partial(_migrate, target=target))
        self._nofollow_rows = bool(
            await self.scalar(
                "SELECT EXISTS (SELECT 1 FROM urls WHERE state = 'skipped' AND reason = ?)", (SkipReason.NOFOLLOW,)
            )
        )

    async def close(self) -> None:
        try:
            await self._conn.close()
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, self.path) from exc
        finally:
            _unlock(self._lock)
            self._lock = None

    # ---- reads -------------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            cursor = await self._conn.execute(sql, params)
            return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

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
            raise _translate(exc, self.path) from exc

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

        One call into that thread instead of one per statement: each call's answer waits for
        the event loop, and a batch of statements waited ~8 times per flush. Committed if work
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
            raise _translate(exc, self.path) from exc

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
            raise _translate(exc, self.path) from exc
        self.run_id = cursor.lastrowid
        assert self.run_id is not None
        return self.run_id

    async def finish_run(self, outcome: str, pages: int) -> None:
        await self._write(
            "UPDATE runs SET finished_at = ?, outcome = ?, pages = ? WHERE id = ?",
            (utc_now(), outcome, pages, self.run_id),
        )

    # ---- batched writes ------------------------------------------------------------------

    def add_urls(self, urls: Iterable[NewUrl]) -> None:
        self.batch.new_urls.extend(urls)

    def add_page(self, page: PageRecord, links: Iterable[tuple[str, bool]]) -> None:
        self.batch.pages.append(page)
        self.batch.links.extend((page.url_id, url, int(nofollow)) for url, nofollow in links)
        self.batch.states.append(("done", None, page.fetched_at, page.url_id))

    def add_error(self, url_id: int | None, url: str, kind: str, message: str, attempts: int) -> None:
        now = utc_now()
        self.batch.errors.append((url_id, url, kind, message, attempts, now))
        if url_id is not None:
            self.batch.states.append(("failed", None, now, url_id))

    def set_state(self, url_id: int, state: str, reason: str | None = None) -> None:
        self.batch.states.append((state, reason, utc_now(), url_id))

    def skip_queued_of_host(self, host: str, reason: str) -> None:
        """Mark every still-queued URL of host as skipped (a per-host limit was reached)."""
        self.batch.host_skips.append((reason, utc_now(), host))

    def add_robots(
        self, origin: str, status: int | None, crawl_delay: float | None, sitemaps: Sequence[str], note: str | None
    ) -> None:
        self.batch.robots.append((origin, status, utc_now(), crawl_delay, json.dumps(list(sitemaps)), note))

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
        return await self._in_transaction(lambda db: self._commit(db, batch))

    def _commit(self, db: sqlite3.Connection, batch: Batch) -> list[QueuedUrl]:
        """flush's statements, in SQLite's thread inside its transaction."""
        queued = self._insert_urls(db, batch.new_urls)
        if batch.pages:
            db.executemany(_PAGE_INSERT, _page_chunks(batch.pages, self.run_id))
        if batch.links:
            # Every target has a urls row by now (this batch's new URLs went in above, or an
            # earlier batch's did), so the join finds each one's id. In target order, the
            # lookups walk the urls index leaf after leaf instead of all over it.
            db.executemany(
                "INSERT OR IGNORE INTO links (from_id, to_id, nofollow)"
                " SELECT json_extract(j.value, '$[0]'), t.id, json_extract(j.value, '$[2]')"
                " FROM json_each(?) AS j JOIN urls t ON t.url = json_extract(j.value, '$[1]')",
                _json_chunks(sorted(batch.links, key=itemgetter(1))),
            )
        if batch.errors:
            db.executemany(
                "INSERT INTO errors (url_id, url, kind, message, attempts, at, run_id)"
                f" VALUES (?, ?, ?, ?, ?, ?, {int(self.run_id or 0)})",
                batch.errors,
            )
        if batch.states:
            # The last change of each URL wins, as it would applied in order: UPDATE FROM
            # picks an arbitrary one of several matching rows, so each id comes once.
            latest = {change[3]: change for change in batch.states}
            db.executemany(
                f"UPDATE urls SET (state, reason, updated_at) = ({_items(3, 'j.')}) FROM json_each(?) AS j"
                " WHERE urls.id = json_extract(j.value, '$[3]')",
                _json_chunks(list(latest.values())),
            )
        if batch.host_skips:
            db.executemany(
                "UPDATE urls SET state = 'skipped', reason = ?, updated_at = ? WHERE host = ? AND state = 'queued'",
                batch.host_skips,
            )
        if batch.pages:
            # Indexed in the same transaction: a page is searchable as soon as it is stored.
            # Twice the batch's pages, so a backlog (a database from before search) drains too.
            _index_pending(db, 2 * len(batch.pages))
        if batch.robots:
            db.executemany(
                "INSERT OR REPLACE INTO robots (origin, status, fetched_at, crawl_delay, sitemaps, note)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                batch.robots,
            )
        return queued

    async def index_pending(self, limit: int) -> int:
        """Move up to `limit` pages from search_pending into pages_fts in one transaction; returns how many."""
        return await self._in_transaction(lambda db: _index_pending(db, limit))

    def _insert_urls(self, db: sqlite3.Connection, urls: list[NewUrl]) -> list[QueuedUrl]:
        """INSERT OR IGNORE lets SQLite decide what is new; RETURNING gives only the inserted rows."""
        if not urls:
            return []
        # Dedupe inside the batch first: the same link often appears on many pages of one batch.
        # A followed link outranks a nofollow one to the same URL.
        unique: dict[str, NewUrl] = {}
        for item in urls:
            kept = unique.setdefault(item.url, item)
            if kept.reason == SkipReason.NOFOLLOW and item.state == "queued":
                unique[item.url] = item
        promoted = (
            _unlink_nofollow_targets(db, [u.url for u in unique.values() if u.state == "queued"])
            if self._nofollow_rows
            else {}
        )
        # One JSON parameter keeps the SQL text fixed (a VALUES list sized to each batch made
        # every batch a new prepared statement, and sqlite3's statement cache grew RSS) and
        # makes the batch one statement (see JSON_ROWS).
        rows: list[QueuedUrl] = []
        now = utc_now()
        for (chunk,) in _json_chunks(
            [(u.url, u.host, u.depth, u.parent_id, u.state, u.reason) for u in unique.values()]
        ):
            # RETURNING rules out executemany: one statement per chunk (most batches are one).
            returned = db.execute(
                "INSERT OR IGNORE INTO urls (url, host, depth, parent_id, state, reason, discovered_at)"
                f" SELECT {_items(6)}, ?2 FROM json_each(?1) ORDER BY key RETURNING id, url, host, depth, state",
                (chunk, now),
            ).fetchall()
            rows.extend(QueuedUrl(r[0], r[1], r[2], r[3]) for r in returned if r[4] == "queued")
        if promoted:
            # Links stored before the promotion follow their target to its new id.
            db.executemany(
                "UPDATE links SET to_id = ? WHERE to_id = ?",
                [(row.id, promoted[row.url]) for row in rows if row.url in promoted],
            )
        if not self._nofollow_rows:
            self._nofollow_rows = any(u.reason == SkipReason.NOFOLLOW for u in unique.values())
        # RETURNING order is not guaranteed; the frontier relies on ascending ids per host.
        rows.sort(key=lambda r: r.id)
        return rows


def _index_pending(db: sqlite3.Connection, limit: int) -> int:
    """Move up to `limit` pages from search_pending into pages_fts (inside the caller's transaction)."""
    # Fixed SQL text (no IN-list sized per call): every distinct text is a prepared
    # statement that sqlite3 keeps cached, which grew RSS. Both subqueries pick the
    # same rows: nothing else writes inside the caller's IMMEDIATE transaction.
    db.execute(
        "INSERT INTO pages_fts (rowid, title, text) SELECT p.url_id, p.title, p.text FROM pages p"
        " WHERE p.url_id IN (SELECT url_id FROM search_pending ORDER BY url_id LIMIT ?) AND p.noindex = 0",
        (limit,),
    )
    cursor = db.execute(
        "DELETE FROM search_pending WHERE url_id IN (SELECT url_id FROM search_pending ORDER BY url_id LIMIT ?)",
        (limit,),
    )
    return cursor.rowcount


def _unlink_nofollow_targets(db: sqlite3.Connection, queued: list[str]) -> dict[str, int]:
    """Delete the nofollow-only rows of URLs now queued by a followed link; {url: old id}.

    The insert that follows gives each a fresh id, above every id the frontier has read, so
    it joins its host's queue like any new URL (the frontier reads ids in ascending order
    and never looks below what it has read).
    """
    promoted: dict[str, int] = {}
    for (chunk,) in _json_chunks([(url,) for url in queued]):
        returned = db.execute(
            "DELETE FROM urls WHERE url IN (SELECT json_extract(value, '$[0]') FROM json_each(?))"
            " AND state = 'skipped' AND reason = ? RETURNING id, url",
            (chunk, SkipReason.NOFOLLOW),
        ).fetchall()
        promoted.update((url, url_id) for url_id, url in returned)
    return promoted


# Links, new URLs and URL states go to SQLite as JSON arrays read back with json_each,
# JSON_ROWS rows per statement; executemany runs a batch's statements in one call. Row by row,
# executemany releases and retakes the GIL around every row, and beside the busy event loop
# each retake waits: 95,000 link rows in batches of 2,375 took 3.1 s of writer wall against
# 1.1 s as JSON statements (same CPU, measured beside a busy thread). One JSON array per batch
# instead of chunks added ~15 MB of peak RSS. Page rows go in as multi-row VALUES instead
# (see PAGE_ROWS).
JSON_ROWS = 256


# Page rows go PAGE_ROWS to a statement, as one multi-row VALUES: executemany row by row
# retakes the GIL after every row, as above, and JSON would re-parse each page's text once per
# column. A short last chunk is padded with NULL rows that the WHERE drops, so one statement
# text (compiled once) serves every chunk. In a bench crawl the page inserts took 1.6-1.7 s of
# writer wall instead of 3.0-3.9 s.
PAGE_ROWS = 16
_PAGE_WIDTH = 1 + len(_PAGE_COLUMNS)  # url_id, then the columns
_PAGE_INSERT = (
    f"INSERT INTO pages (url_id, {', '.join(_PAGE_COLUMNS)})"
    f" SELECT * FROM (VALUES {', '.join(['(' + ','.join('?' * _PAGE_WIDTH) + ')'] * PAGE_ROWS)})"
    " WHERE column1 IS NOT NULL"
    # An upsert, not INSERT OR REPLACE: REPLACE deletes without firing the delete trigger,
    # which would leave a stale entry in pages_fts.
    f" ON CONFLICT (url_id) DO UPDATE SET {_PAGE_UPDATE}"
)
_NO_PAGE = (None,) * _PAGE_WIDTH


def _page_chunks(pages: Sequence[PageRecord], run_id: int | None) -> Iterator[tuple[object, ...]]:
    """executemany parameters for _PAGE_INSERT: PAGE_ROWS pages each, the last one padded."""
    for start in range(0, len(pages), PAGE_ROWS):
        chunk = pages[start : start + PAGE_ROWS]
        params: list[object] = []
        for p in chunk:
            # In _PAGE_COLUMNS order.
            params += (
                p.url_id, p.url, p.final_url, p.status, p.content_type, p.title, p.depth, p.fetched_at,
                p.elapsed_ms, p.http_version, p.size, json.dumps(p.headers), json.dumps(p.redirects),
                int(p.noindex), p.text, p.body, run_id,
            )  # fmt: skip
        params += _NO_PAGE * (PAGE_ROWS - len(chunk))
        yield tuple(params)


def _migrate(db: sqlite3.Connection, target: int) -> None:
    """Migrate the schema to version `target` from the one before it (inside the caller's transaction)."""
    for statement in _split_sql(MIGRATIONS[target - 1]):
        db.execute(statement)
    db.execute(f"PRAGMA user_version = {target}")


def _host_key_or_blank(url: str) -> str:
    """host_key for SQL (the schema 3 migration); '' for a URL it cannot parse, never an error."""
    try:
        return host_key(url)
    except ValueError:
        return ""


def _items(count: int, table: str = "") -> str:
    """The first `count` items of json_each's array rows as SQL columns (json_extract: SQLite 3.35 has no ->>)."""
    return ", ".join(f"json_extract({table}value, '$[{i}]')" for i in range(count))


def _json_chunks(rows: Sequence[tuple[object, ...]]) -> Iterator[tuple[str]]:
    """executemany parameters: one JSON array of up to JSON_ROWS rows each, made as SQLite asks."""
    for start in range(0, len(rows), JSON_ROWS):
        yield (json.dumps(rows[start : start + JSON_ROWS], ensure_ascii=False, check_circular=False),)


def _split_sql(script: str) -> list[str]:
    """Statements of a migration; a trigger body's inner semicolons do not end its statement."""
    statements: list[str] = []
    current = ""
    for part in script.split(";"):
        current += part + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \n;"):
        statements.append(current.strip())
    return statements
