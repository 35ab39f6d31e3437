"""The SQL that commits a pending Batch to PostgreSQL: COPY into temporary tables, then one statement per table."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from crawler.errors import SkipReason
from crawler.store.batch import Batch
from crawler.store.flush import PAGE_COLUMNS
from crawler.store.pg.connection import Conn
from crawler.store.pg.tsvector import page_vector
from crawler.store.records import (
    ROBOTS_COLUMNS,
    NewUrl,
    PageRecord,
    QueuedUrl,
    SitemapRecord,
    unique_new_urls,
    utc_now,
)

# PostgreSQL text cannot hold NUL; a page may. Stored as U+FFFD, as an undecodable byte is.
_NUL = str.maketrans({"\x00": "\ufffd"})

# New URLs take their ids in discovery order (so a host's queue is read in that order) but are
# inserted in URL order: flushes of several crawlers that find the same URLs then wait on each
# other's uncommitted rows in one order only, and never deadlock.
_NUMBERED = "SELECT nextval('urls_id_seq') AS id, o.* FROM (SELECT * FROM {} ORDER BY ord) o"
_IN_URL_ORDER = 'ORDER BY url COLLATE "C"'
# Known URLs are left out before ON CONFLICT probes them: a known row another crawler's open flush
# has just updated (its state) would make the probe wait for that flush to end.
_UNKNOWN = "NOT EXISTS (SELECT 1 FROM urls k WHERE k.url = n.url)"
_PAGE_UPDATE = ", ".join(f"{name} = excluded.{name}" for name in PAGE_COLUMNS)
_PAGE_LIST = ", ".join(PAGE_COLUMNS)
_PAGE_TYPES = [
    "int8", "text", "text", "int4", "text", "text", "int4", "text", "float8", "text", "int8", "text", "text",
    "int4", "text", "bytea", "int8", "text", "text", "text", "text", "text", "int4", "tsvector",
]  # fmt: skip


def _text(text: str | None) -> str | None:
    return text if text is None or "\x00" not in text else text.translate(_NUL)


async def _copy(cur: Any, table: str, columns: str, types: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    async with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(list(types))
        for row in rows:
            await copy.write_row(row)


class PgBatchCommit:
    """Commits batches inside the caller's transaction, as crawler/store/flush.py's BatchCommit does for SQLite."""

    def __init__(self, *, nofollow_rows: bool = False) -> None:
        self.pass_id: int | None = None
        self.keep_history = True
        self.nofollow_rows = nofollow_rows

    async def commit(self, conn: Conn, batch: Batch, run_id: int | None) -> list[QueuedUrl]:
        """Write every row of batch; returns the newly queued URLs, in id order."""
        now = utc_now()
        async with conn.cursor() as cur:
            # The rows this crawler sends go first, into temporary tables: sending takes the client's
            # time, and no row another crawler may wait for is locked yet. The statements after
            # them run on the server alone, from the first row lock to the commit.
            await self._stage(cur, batch, run_id)
            queued = await self._insert_urls(cur, batch.new_urls, now)
            if batch.listed_urls:
                queued += await self._insert_listed_urls(cur, batch.listed_urls, now)
                queued.sort(key=lambda r: r.id)
            if queued:
                # Every host with queued URLs has its hosts row, the unit leases take (leases.py);
                # new ones only, in name order. An existing row is left unprobed: its holder's
                # flush may have it renewed and uncommitted, and ON CONFLICT would wait for that
                # flush while it waits for this one's URLs.
                await cur.execute(
                    "INSERT INTO hosts (host) SELECT t.h FROM unnest(%s::text[]) AS t(h)"
                    ' WHERE NOT EXISTS (SELECT 1 FROM hosts WHERE host = t.h) ORDER BY t.h COLLATE "C"'
                    " ON CONFLICT DO NOTHING",
                    (sorted({row.host for row in queued}),),
                )
            if batch.archived:
                await cur.execute(
                    "INSERT INTO page_history (url_id, fetched_at, status, content_hash, body, run_id)"
                    " SELECT url_id, fetched_at, status, content_hash, CASE WHEN %s THEN body END, run_id"
                    " FROM pages WHERE url_id = ANY(%s) ORDER BY url_id",
                    (self.keep_history, batch.archived),
                )
                await cur.execute("DELETE FROM links WHERE from_id = ANY(%s)", (batch.archived,))
            if batch.pages:
                await cur.execute(
                    f"INSERT INTO pages (url_id, {_PAGE_LIST}, search) SELECT url_id, {_PAGE_LIST}, search"
                    f" FROM new_pages ON CONFLICT (url_id) DO UPDATE SET {_PAGE_UPDATE}, search = excluded.search"
                )
            if batch.links:
                await cur.execute(
                    "INSERT INTO links (from_id, to_id, nofollow)"
                    " SELECT l.from_id, t.id, l.nofollow FROM new_links l JOIN urls t ON t.url = l.to_url"
                    " ON CONFLICT DO NOTHING"
                )
            if batch.states:
                await cur.execute(
                    "UPDATE urls SET state = s.state, reason = s.reason, updated_at = s.at"
                    " FROM new_states s WHERE urls.id = s.id"
                )
            if batch.confirmed:
                await cur.execute(
                    "UPDATE pages SET seen_at = c.seen_at, etag = coalesce(c.etag, pages.etag),"
                    " last_modified = coalesce(c.last_modified, pages.last_modified)"
                    " FROM new_confirmed c WHERE pages.url_id = c.id"
                )
            if batch.changes:
                await cur.execute(
                    "INSERT INTO changes (run_id, url_id, change, status, fetched_at)"
                    " SELECT %s, url_id, change, status, fetched_at FROM new_changes"
                    " ON CONFLICT (run_id, url_id) DO UPDATE SET change = excluded.change,"
                    " status = excluded.status, fetched_at = excluded.fetched_at",
                    (int(self.pass_id or run_id or 0),),
                )
            if batch.host_skips:
                await cur.executemany(
                    "UPDATE urls SET state = 'skipped', reason = %s, updated_at = %s"
                    " WHERE host = %s AND state = 'queued'",
                    batch.host_skips,
                )
            if batch.sitemaps:
                await _write_sitemaps(cur, batch.sitemaps, run_id)
            if batch.robots:
                latest_robots = {r[0]: r for r in batch.robots}
                await cur.executemany(
                    f"INSERT INTO robots ({ROBOTS_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (origin) DO UPDATE SET status = excluded.status,"
                    " fetched_at = excluded.fetched_at, crawl_delay = excluded.crawl_delay,"
                    " sitemaps = excluded.sitemaps, note = excluded.note, body = excluded.body,"
                    " error = excluded.error, error_kind = excluded.error_kind, misses = excluded.misses",
                    list(latest_robots.values()),
                )
        return queued

    async def _stage(self, cur: Any, batch: Batch, run_id: int | None) -> None:
        """COPY the batch's pages, links, states, confirmations and changes into the temporary tables,
        and its errors into theirs."""
        if batch.pages:
            # The last version of a page wins, as SQLite's upsert applied in order would have it.
            pages = {p.url_id: p for p in batch.pages}.values()
            # Each page comes with its search vector, made here (crawler/store/pg/tsvector.py).
            await _copy(cur, "new_pages", f"url_id, {_PAGE_LIST}, search", _PAGE_TYPES, _page_rows(pages, run_id))
        if batch.links:
            await _copy(cur, "new_links", "from_id, to_url, nofollow", ("int8", "text", "int4"), batch.links)
        if batch.states:
            latest = {change[3]: change for change in batch.states}
            await _copy(
                cur,
                "new_states",
                "id, state, reason, at",
                ("int8", "text", "text", "text"),
                ((s[3], s[0], s[1], s[2]) for s in latest.values()),
            )
        if batch.confirmed:
            latest_seen = {c[3]: c for c in batch.confirmed}
            await _copy(
                cur,
                "new_confirmed",
                "id, seen_at, etag, last_modified",
                ("int8", "text", "text", "text"),
                ((c[3], c[0], c[1], c[2]) for c in latest_seen.values()),
            )
        if batch.changes:
            latest_change = {c[0]: c for c in batch.changes}
            await _copy(
                cur,
                "new_changes",
                "url_id, change, status, fetched_at",
                ("int8", "text", "int4", "text"),
                latest_change.values(),
            )
        if batch.errors:
            run = int(run_id or 0)
            await _copy(
                cur,
                "errors",
                "url_id, url, kind, message, attempts, at, run_id",
                ("int8", "text", "text", "text", "int4", "text", "int8"),
                ((e[0], e[1], e[2], _text(e[3]), e[4], e[5], run) for e in batch.errors),
            )

    async def _insert_urls(self, cur: Any, urls: list[NewUrl], now: str) -> list[QueuedUrl]:
        """ON CONFLICT DO NOTHING lets PostgreSQL decide what is new; RETURNING gives only the inserted rows."""
        if not urls:
            return []
        unique = unique_new_urls(urls)
        promoted = await self._promote(cur, unique)
        await _copy(
            cur,
            "new_urls",
            "ord, url, host, depth, parent_id, state, reason",
            ("int4", "text", "text", "int4", "int8", "text", "text"),
            ((i, u.url, u.host, u.depth, u.parent_id, u.state, u.reason) for i, u in enumerate(unique.values())),
        )
        await cur.execute(
            "INSERT INTO urls (id, url, host, depth, parent_id, state, reason, discovered_at)"
            f" SELECT id, url, host, depth, parent_id, state, reason, %s FROM ({_NUMBERED.format('new_urls')}) n"
            f" WHERE {_UNKNOWN} {_IN_URL_ORDER} ON CONFLICT (url) DO NOTHING RETURNING id, url, host, depth, state",
            (now,),
        )
        rows = [QueuedUrl(r[0], r[1], r[2], r[3]) for r in await cur.fetchall() if r[4] == "queued"]
        return await self._settle(cur, rows, unique, promoted)

    async def _insert_listed_urls(self, cur: Any, urls: list[NewUrl], now: str) -> list[QueuedUrl]:
        """URLs listed by sitemaps or robots.txt: new ones with their kind, source and lastmod; known
        ones only take a newer lastmod (the newest any listing gives)."""
        unique: dict[str, NewUrl] = {}
        newest: dict[str, str] = {}
        for item in urls:
            unique.setdefault(item.url, item)
            if item.lastmod is not None and item.lastmod > newest.get(item.url, ""):
                newest[item.url] = item.lastmod
        promoted = await self._promote(cur, unique)
        await _copy(
            cur,
            "new_listed",
            "ord, url, host, depth, parent_id, state, reason, kind, source, lastmod, newest",
            ("int4", "text", "text", "int4", "int8", "text", "text", "text", "text", "text", "text"),
            (
                (
                    i,
                    u.url,
                    u.host,
                    u.depth,
                    u.parent_id,
                    u.state,
                    u.reason,
                    u.kind,
                    u.source,
                    u.lastmod,
                    newest.get(u.url),
                )
                for i, u in enumerate(unique.values())
            ),
        )
        await cur.execute(
            "INSERT INTO urls (id, url, host, depth, parent_id, state, reason, kind, source, lastmod, discovered_at)"
            " SELECT id, url, host, depth, parent_id, state, reason, kind, source, lastmod, %s"
            f" FROM ({_NUMBERED.format('new_listed')}) n WHERE {_UNKNOWN} {_IN_URL_ORDER}"
            " ON CONFLICT (url) DO NOTHING RETURNING id, url, host, depth, state, kind",
            (now,),
        )
        rows = [QueuedUrl(r[0], r[1], r[2], r[3], r[5]) for r in await cur.fetchall() if r[4] == "queued"]
        if newest:
            await cur.execute(
                "UPDATE urls SET lastmod = n.newest FROM new_listed n WHERE urls.url = n.url"
                " AND n.newest IS NOT NULL AND (urls.lastmod IS NULL OR urls.lastmod < n.newest)"
            )
        return await self._settle(cur, rows, unique, promoted)

    async def _promote(self, cur: Any, unique: dict[str, NewUrl]) -> dict[str, int]:
        """Delete the nofollow-only rows of URLs now queued by a followed link; {url: old id}.

        The insert that follows gives each a fresh id, above every id the frontier has read
        (see crawler/store/flush.py, where SQLite does the same).
        """
        if not self.nofollow_rows:
            return {}
        queued = [u.url for u in unique.values() if u.state == "queued"]
        await cur.execute(
            "DELETE FROM urls WHERE id IN (SELECT id FROM urls WHERE url = ANY(%s) AND state = 'skipped'"
            f" AND reason = %s {_IN_URL_ORDER} FOR UPDATE) RETURNING id, url",
            (queued, SkipReason.NOFOLLOW),
        )
        return {url: url_id for url_id, url in await cur.fetchall()}

    async def _settle(
        self, cur: Any, rows: list[QueuedUrl], unique: dict[str, NewUrl], promoted: dict[str, int]
    ) -> list[QueuedUrl]:
        moves = [(row.id, promoted[row.url]) for row in rows if row.url in promoted]
        if moves:
            await cur.executemany("UPDATE links SET to_id = %s WHERE to_id = %s", moves)
        if not self.nofollow_rows:
            self.nofollow_rows = any(u.reason == SkipReason.NOFOLLOW for u in unique.values())
        rows.sort(key=lambda r: r.id)
        return rows


async def index_pending(conn: Conn, limit: int) -> int:
    """Fill pages.search for up to `limit` pages stored without it (inside the caller's transaction);
    the vectors are made here, as a flush makes them."""
    cur = await conn.execute(
        "SELECT url_id, title, text FROM pages WHERE search IS NULL AND noindex = 0"
        " ORDER BY url_id LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,),
    )
    rows = await cur.fetchall()
    if rows:
        async with conn.cursor() as cur:
            await _copy(
                cur, "new_search", "url_id, search", ("int8", "tsvector"),
                ((url_id, page_vector(title, text)) for url_id, title, text in rows),
            )  # fmt: skip
            await cur.execute("UPDATE pages p SET search = s.search FROM new_search s WHERE p.url_id = s.url_id")
    return len(rows)


async def _write_sitemaps(cur: Any, sitemaps: list[SitemapRecord], run_id: int | None) -> None:
    latest = {s.url: s for s in sitemaps}
    await cur.executemany(
        "INSERT INTO sitemaps (url, url_id, parent, status, urls, fetched_at, error, run_id)"
        " VALUES (%(url)s, %(url_id)s, coalesce(%(parent)s,"
        " (SELECT p.url FROM urls s JOIN urls p ON p.id = s.parent_id WHERE s.id = %(url_id)s)),"
        " %(status)s, %(urls)s, %(fetched_at)s, %(error)s, %(run_id)s)"
        " ON CONFLICT (url) DO UPDATE SET url_id = excluded.url_id, parent = excluded.parent,"
        " status = excluded.status, urls = excluded.urls, fetched_at = excluded.fetched_at,"
        " error = excluded.error, run_id = excluded.run_id",
        [
            dict(
                url=s.url,
                url_id=s.url_id,
                parent=s.parent,
                status=s.status,
                urls=s.urls,
                fetched_at=s.fetched_at,
                error=_text(s.error),
                run_id=run_id,
            )
            for s in latest.values()
        ],
    )
    await cur.execute(
        "UPDATE urls SET kind = 'sitemap' WHERE id = ANY(%s) AND kind <> 'sitemap'", ([s.url_id for s in sitemaps],)
    )


def _page_rows(pages: Iterable[PageRecord], run_id: int | None) -> Iterable[tuple[Any, ...]]:
    for p in pages:
        yield (
            p.url_id, p.url, p.final_url, p.status, p.content_type, _text(p.title), p.depth, p.fetched_at,
            p.elapsed_ms, p.http_version, p.size, json.dumps(p.headers), json.dumps(p.redirects),
            int(p.noindex), _text(p.text), p.body, run_id,
            p.content_hash, p.etag, p.last_modified, p.canonical, p.fetched_at, int(p.gone),
            None if p.noindex else page_vector(p.title, p.text),
        )  # fmt: skip
