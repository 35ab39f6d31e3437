"""The SQL that commits a pending Batch to SQLite, run in SQLite's thread inside one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from operator import itemgetter

from crawler.errors import SkipReason
from crawler.store.batch import Batch
from crawler.store.records import (
    ROBOTS_COLUMNS,
    NewUrl,
    PageRecord,
    QueuedUrl,
    SitemapRecord,
    unique_new_urls,
    utc_now,
)

# Links, new URLs and URL states go to SQLite as JSON arrays read back with json_each,
# JSON_ROWS rows per statement, and executemany runs a batch's statements in one call: row by
# row, executemany releases and retakes the GIL around every row, and beside the busy event
# loop each retake waits. Chunks rather than one array per batch bound the peak memory. Page
# rows go in as multi-row VALUES instead (see PAGE_ROWS).
JSON_ROWS = 256

# Page rows go PAGE_ROWS to a statement, as one multi-row VALUES: executemany row by row
# retakes the GIL after every row, as above, and JSON would re-parse each page's text once per
# column. A short last chunk is padded with NULL rows that the WHERE drops, so one statement
# text (compiled once) serves every chunk.
PAGE_ROWS = 16

PAGE_COLUMNS = (
    "url", "final_url", "status", "content_type", "title", "depth", "fetched_at", "elapsed_ms",
    "http_version", "bytes", "headers", "redirects", "noindex", "text", "body", "run_id",
    "content_hash", "etag", "last_modified", "canonical", "seen_at", "gone",
)  # fmt: skip
_PAGE_UPDATE = ", ".join(f"{name} = excluded.{name}" for name in PAGE_COLUMNS)
_PAGE_WIDTH = 1 + len(PAGE_COLUMNS)  # url_id, then the columns
_PAGE_INSERT = (
    f"INSERT INTO pages (url_id, {', '.join(PAGE_COLUMNS)})"
    f" SELECT * FROM (VALUES {', '.join(['(' + ','.join('?' * _PAGE_WIDTH) + ')'] * PAGE_ROWS)})"
    " WHERE column1 IS NOT NULL"
    # An upsert, not INSERT OR REPLACE: REPLACE deletes without firing the delete trigger,
    # which would leave a stale entry in pages_fts.
    f" ON CONFLICT (url_id) DO UPDATE SET {_PAGE_UPDATE}"
)
_NO_PAGE = (None,) * _PAGE_WIDTH


class BatchCommit:
    """Commits batches inside the caller's transaction; only SQLite's thread calls it."""

    def __init__(self, *, nofollow_rows: bool = False) -> None:
        # The recrawl pass whose changes rows this writer keys (see crawler/recrawl.py), and
        # whether page_history keeps the bodies of replaced versions.
        self.pass_id: int | None = None
        self.keep_history = True
        # Whether urls may hold nofollow-only targets that a followed link must queue (see
        # _unlink_nofollow_targets); False spares that lookup to every flush of a crawl that
        # never met one.
        self.nofollow_rows = nofollow_rows

    def commit(self, db: sqlite3.Connection, batch: Batch, run_id: int | None) -> list[QueuedUrl]:
        """Write every row of batch; returns the newly queued URLs."""
        queued = self._insert_urls(db, batch.new_urls)
        if batch.listed_urls:
            # Inserted after the links' URLs, so their ids are higher and the list stays in id order.
            queued += self._insert_listed_urls(db, batch.listed_urls)
        if batch.archived:
            self._archive(db, batch.archived)
        if batch.pages:
            db.executemany(_PAGE_INSERT, _page_chunks(batch.pages, run_id))
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
                f" VALUES (?, ?, ?, ?, ?, ?, {int(run_id or 0)})",
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
        if batch.confirmed:
            db.executemany(
                "UPDATE pages SET (seen_at, etag, last_modified) = (json_extract(j.value, '$[0]'),"
                " coalesce(json_extract(j.value, '$[1]'), etag),"
                " coalesce(json_extract(j.value, '$[2]'), last_modified))"
                " FROM json_each(?) AS j WHERE pages.url_id = json_extract(j.value, '$[3]')",
                _json_chunks(batch.confirmed),
            )
        if batch.changes:
            db.executemany(
                "INSERT OR REPLACE INTO changes (run_id, url_id, change, status, fetched_at)"
                f" SELECT {int(self.pass_id or run_id or 0)}, {_items(4)} FROM json_each(?)",
                _json_chunks(batch.changes),
            )
        if batch.host_skips:
            db.executemany(
                "UPDATE urls SET state = 'skipped', reason = ?, updated_at = ? WHERE host = ? AND state = 'queued'",
                batch.host_skips,
            )
        if batch.pages:
            # Indexed in the same transaction: a page is searchable as soon as it is stored.
            # Twice the batch's pages, so a backlog (a database from before search) drains too.
            index_pending(db, 2 * len(batch.pages))
        if batch.sitemaps:
            _write_sitemaps(db, batch.sitemaps, run_id)
        if batch.robots:
            db.executemany(
                f"INSERT OR REPLACE INTO robots ({ROBOTS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch.robots
            )
        return queued

    def _archive(self, db: sqlite3.Connection, url_ids: list[int]) -> None:
        """Copy the stored version of pages about to be replaced to page_history, and drop their
        links, which the new version's set replaces (the same transaction stores that version)."""
        for (chunk,) in _json_chunks([(url_id,) for url_id in url_ids]):
            db.execute(
                "INSERT INTO page_history (url_id, fetched_at, status, content_hash, body, run_id)"
                " SELECT url_id, fetched_at, status, content_hash, CASE WHEN ?2 THEN body END, run_id FROM pages"
                " WHERE url_id IN (SELECT json_extract(value, '$[0]') FROM json_each(?1))",
                (chunk, int(self.keep_history)),
            )
            db.execute(
                "DELETE FROM links WHERE from_id IN (SELECT json_extract(value, '$[0]') FROM json_each(?))", (chunk,)
            )

    def _insert_urls(self, db: sqlite3.Connection, urls: list[NewUrl]) -> list[QueuedUrl]:
        """INSERT OR IGNORE lets SQLite decide what is new; RETURNING gives only the inserted rows."""
        if not urls:
            return []
        unique = unique_new_urls(urls)
        promoted = self._promote(db, unique)
        # One JSON parameter keeps the SQL text fixed (a VALUES list sized to each batch would
        # make every batch a new prepared statement, and sqlite3's statement cache grow) and
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
        return self._settle(db, rows, unique, promoted)

    def _insert_listed_urls(self, db: sqlite3.Connection, urls: list[NewUrl]) -> list[QueuedUrl]:
        """URLs listed by sitemaps or robots.txt: new ones with their kind, source and lastmod; known
        ones (a link found them first) only take a newer lastmod, which tells a recrawl they changed."""
        unique: dict[str, NewUrl] = {}
        for item in urls:
            unique.setdefault(item.url, item)
        promoted = self._promote(db, unique)
        rows: list[QueuedUrl] = []
        now = utc_now()
        for (chunk,) in _json_chunks(
            [
                (u.url, u.host, u.depth, u.parent_id, u.state, u.reason, u.kind, u.source, u.lastmod)
                for u in unique.values()
            ]
        ):
            returned = db.execute(
                "INSERT OR IGNORE INTO urls"
                " (url, host, depth, parent_id, state, reason, kind, source, lastmod, discovered_at)"
                f" SELECT {_items(9)}, ?2 FROM json_each(?1) ORDER BY key"
                " RETURNING id, url, host, depth, state, kind",
                (chunk, now),
            ).fetchall()
            rows.extend(QueuedUrl(r[0], r[1], r[2], r[3], r[5]) for r in returned if r[4] == "queued")
        # The newest lastmod per URL: an UPDATE … FROM with one URL twice would take either.
        newest: dict[str, str] = {}
        for u in urls:
            if u.lastmod is not None and u.lastmod > newest.get(u.url, ""):
                newest[u.url] = u.lastmod
        dated = list(newest.items())
        if dated:
            db.executemany(
                "UPDATE urls SET lastmod = j.lastmod"
                " FROM (SELECT json_extract(value, '$[0]') AS url, json_extract(value, '$[1]') AS lastmod"
                " FROM json_each(?)) AS j"
                " WHERE urls.url = j.url AND (urls.lastmod IS NULL OR urls.lastmod < j.lastmod)",
                _json_chunks(dated),
            )
        return self._settle(db, rows, unique, promoted)

    def _promote(self, db: sqlite3.Connection, unique: dict[str, NewUrl]) -> dict[str, int]:
        if not self.nofollow_rows:
            return {}
        return _unlink_nofollow_targets(db, [u.url for u in unique.values() if u.state == "queued"])

    def _settle(
        self, db: sqlite3.Connection, rows: list[QueuedUrl], unique: dict[str, NewUrl], promoted: dict[str, int]
    ) -> list[QueuedUrl]:
        """Links follow promoted targets, the nofollow flag learns of new rows; rows come back in id order."""
        if promoted:
            # Links stored before the promotion follow their target to its new id.
            db.executemany(
                "UPDATE links SET to_id = ? WHERE to_id = ?",
                [(row.id, promoted[row.url]) for row in rows if row.url in promoted],
            )
        if not self.nofollow_rows:
            self.nofollow_rows = any(u.reason == SkipReason.NOFOLLOW for u in unique.values())
        # RETURNING order is not guaranteed; the frontier relies on ascending ids per host.
        rows.sort(key=lambda r: r.id)
        return rows


def index_pending(db: sqlite3.Connection, limit: int) -> int:
    """Move up to `limit` pages from search_pending into pages_fts (inside the caller's transaction)."""
    # Fixed SQL text (no IN-list sized per call): every distinct text is a prepared
    # statement that sqlite3 keeps cached, which grows memory. Both subqueries pick the
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


def _write_sitemaps(db: sqlite3.Connection, sitemaps: list[SitemapRecord], run_id: int | None) -> None:
    """Each sitemap's row (its parent from the urls row that listed it, unless robots.txt named it),
    and its urls row marked a sitemap: a seed that answered with one was leased as a page."""
    db.executemany(
        "INSERT OR REPLACE INTO sitemaps (url, url_id, parent, status, urls, fetched_at, error, run_id)"
        " VALUES (?1, ?2, coalesce(?3, (SELECT p.url FROM urls s JOIN urls p ON p.id = s.parent_id WHERE s.id = ?2)),"
        " ?4, ?5, ?6, ?7, ?8)",
        [(s.url, s.url_id, s.parent, s.status, s.urls, s.fetched_at, s.error, run_id) for s in sitemaps],
    )
    db.executemany(
        "UPDATE urls SET kind = 'sitemap' WHERE id = ? AND kind != 'sitemap'", [(s.url_id,) for s in sitemaps]
    )


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


def _page_chunks(pages: Sequence[PageRecord], run_id: int | None) -> Iterator[tuple[object, ...]]:
    """executemany parameters for _PAGE_INSERT: PAGE_ROWS pages each, the last one padded."""
    for start in range(0, len(pages), PAGE_ROWS):
        chunk = pages[start : start + PAGE_ROWS]
        params: list[object] = []
        for p in chunk:
            # In PAGE_COLUMNS order.
            params += (
                p.url_id, p.url, p.final_url, p.status, p.content_type, p.title, p.depth, p.fetched_at,
                p.elapsed_ms, p.http_version, p.size, json.dumps(p.headers), json.dumps(p.redirects),
                int(p.noindex), p.text, p.body, run_id,
                p.content_hash, p.etag, p.last_modified, p.canonical, p.fetched_at, int(p.gone),
            )  # fmt: skip
        params += _NO_PAGE * (PAGE_ROWS - len(chunk))
        yield tuple(params)


def _items(count: int, table: str = "") -> str:
    """The first `count` items of json_each's array rows as SQL columns (json_extract: SQLite 3.35 has no ->>)."""
    return ", ".join(f"json_extract({table}value, '$[{i}]')" for i in range(count))


def _json_chunks(rows: Sequence[tuple[object, ...]]) -> Iterator[tuple[str]]:
    """executemany parameters: one JSON array of up to JSON_ROWS rows each, made as SQLite asks."""
    for start in range(0, len(rows), JSON_ROWS):
        yield (json.dumps(rows[start : start + JSON_ROWS], ensure_ascii=False, check_circular=False),)
