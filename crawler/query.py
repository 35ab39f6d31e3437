"""Read-side of a crawl database: typed rows for stats, filters, search and read-only SQL (the Python API).

    with crawler.open_results("data/crawl.db") as results:
        broken = results.pages(status="4xx")
        hits = results.search("privacy policy")

Every connection is read-only (`mode=ro`), so queries run beside a live crawl: in WAL mode
readers and the writer never wait for each other. sqlite errors become UsageError (the
question cannot be answered as asked) or StoreError (the file cannot be read) here.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from crawler.errors import ErrorKind, StoreError, UsageError
from crawler.filters import PageFilter
from crawler.recrawl import CHANGES
from crawler.rows import ChangeRow, ErrorRow, LinkRow, Page, PassCounts, Run, SearchHit, SqlResult, Stats, StoredPage
from crawler.store import SCHEMA_VERSION
from crawler.urls import normalize_url

__all__ = [
    "ChangeRow", "ErrorRow", "LinkRow", "Page", "PassCounts", "Results", "Run", "SearchHit", "SqlResult", "Stats",
    "StoredPage",
    "connect_readonly", "fts_query", "open_results",
]  # fmt: skip

Direction = Literal["in", "out", "both"]


def open_results(path: str | Path) -> Results:
    """Open a crawl database read-only; use as a context manager, or call close()."""
    return Results(connect_readonly(path), Path(path))


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """Open a crawl database read-only; WAL lets this run beside a live crawl."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no database at {path} (run a crawl first, or pass --db / -c)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA query_only = ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("SELECT count(*) FROM urls").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a crawl database: {exc}") from exc
    if version > SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"{path} was written by a newer crawler (schema {version}); upgrade to read it")
    return conn


_PAGE_SELECT = ", ".join("p." + f.name for f in fields(Page))
# A database no crawl has opened since schema 4 has no canonical column: it reads as NULL.
_PAGE_SELECT_3 = _PAGE_SELECT.replace("p.canonical", "NULL")
_RECRAWL_SCHEMA = 4  # the schema that added content hashes, runs.kind and the changes table
_PHRASE_OR_WORD = re.compile(r'"([^"]*)"?|(\S+)')
# Only reading statements may be prepared by `sql`; the authorizer names anything else.
_SQL_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_ACTIONS = (
    "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER",
    "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE", "DROP_INDEX", "DROP_TABLE",
    "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW",
    "INSERT", "PRAGMA", "READ", "SELECT", "TRANSACTION", "UPDATE", "ATTACH", "DETACH", "ALTER_TABLE",
    "REINDEX", "ANALYZE", "CREATE_VTABLE", "DROP_VTABLE", "FUNCTION", "SAVEPOINT", "RECURSIVE",
)  # fmt: skip
# PRAGMAs that take an argument yet only read; any other PRAGMA with a value is refused.
_READ_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "foreign_key_check", "integrity_check", "quick_check",
})  # fmt: skip
_ACTION_NAMES = {
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ").lower()
    for name in _ACTIONS
    if hasattr(sqlite3, f"SQLITE_{name}")
}


class Results:
    """Typed answers from one crawl database. Lists are ordered by URL, so they are stable."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._recrawl_schema = self._scalar("PRAGMA user_version") >= _RECRAWL_SCHEMA
        self._page_select = _PAGE_SELECT if self._recrawl_schema else _PAGE_SELECT_3

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- listings ----------------------------------------------------------------------

    def pages(self, *, limit: int | None = None, **filters: Any) -> list[Page]:
        """Pages matching the filters of PageFilter (status="4xx", host=..., since="2h", ...)."""
        return list(self.iter_pages(PageFilter.build(**filters), limit=limit))

    def iter_pages(self, where: PageFilter | None = None, *, limit: int | None = None) -> Iterator[Page]:
        clause, params = (where or PageFilter()).sql()
        sql = f"SELECT {self._page_select} FROM pages p {clause} ORDER BY p.url"
        for row in self._rows(sql + _limit(limit), params):
            yield Page(*row)

    def iter_stored_pages(self, where: PageFilter | None = None, *, limit: int | None = None) -> Iterator[StoredPage]:
        clause, params = (where or PageFilter()).sql()
        sql = (
            f"SELECT {self._page_select}, p.noindex, p.redirects, p.headers,"
            " p.text, p.body, json_extract(r.config, '$.politeness.user_agent')"
            f" FROM pages p LEFT JOIN runs r ON r.id = p.run_id {clause} ORDER BY p.url"
        )
        for row in self._rows(sql + _limit(limit), params):
            *page, noindex, redirects, headers, text, body, agent = row
            pairs = [(str(name), str(value)) for name, value in json.loads(headers)]
            values = [*page, bool(noindex), json.loads(redirects), pairs, text, body, agent]
            yield StoredPage(*values)

    def errors(self, *, kind: str | None = None, limit: int | None = None) -> list[ErrorRow]:
        """Fetch failures, optionally of one ErrorKind ("timeout", "http_status", ...)."""
        params: list[Any] = []
        where = ""
        if kind is not None:
            if kind not in ErrorKind.__members__.values():
                kinds = ", ".join(k.value for k in ErrorKind)
                raise UsageError(f"unknown error kind {kind!r}; the kinds are: {kinds}")
            where, params = "WHERE kind = ?", [kind]
        sql = f"SELECT url, kind, message, attempts, at FROM errors {where} ORDER BY url, id" + _limit(limit)
        return [ErrorRow(*row) for row in self._rows(sql, params)]

    def links(self, url: str, *, direction: Direction = "both", limit: int | None = None) -> list[LinkRow]:
        """Links out of the page at url (asked or final URL) and links into url."""
        if direction not in ("in", "out", "both"):
            raise UsageError(f"direction must be in, out or both, not {direction!r}")
        url = normalize_url(url) or url
        if not self._known(url):
            raise UsageError(f"{url} is not in {self.path}: no page, queued URL or link has that address")
        # Through the link_urls view, whose columns every schema since 2 has: schema 3 keys links
        # by URL id, schema 2 (a database no crawl has opened since) by URL text.
        branches: list[str] = []
        params: list[Any] = []
        if direction in ("out", "both"):
            # Links of a redirected page hang off the asked URL, so its final URL finds them too.
            branches.append(
                "SELECT 'out' AS direction, * FROM link_urls"
                " WHERE from_url IN (SELECT ? UNION SELECT url FROM pages WHERE final_url = ?)"
            )
            params += [url, url]
        if direction in ("in", "both"):
            branches.append("SELECT 'in' AS direction, * FROM link_urls WHERE to_url = ?")
            params.append(url)
        sql = (
            "SELECT direction, from_url, to_url, nofollow, to_state, to_status"
            f" FROM ({' UNION ALL '.join(branches)})"
            " ORDER BY direction DESC, CASE direction WHEN 'out' THEN to_url ELSE from_url END" + _limit(limit)
        )
        return [LinkRow(d, f, t, bool(n), s, st) for d, f, t, n, s, st in self._rows(sql, params)]

    def changes(
        self, *, run: int | None = None, change: str | None = None, limit: int | None = None
    ) -> list[ChangeRow]:
        """One row per URL a recrawl pass fetched (the latest pass unless `run` names one), by URL."""
        if change is not None and change not in CHANGES:
            raise UsageError(f"unknown change {change!r}; the changes are: {', '.join(CHANGES)}")
        if run is None:
            run = self.latest_pass()
            if run is None:
                raise UsageError(f"{self.path} holds no recrawl pass; `crawler recrawl` starts one")
        sql = (
            "SELECT u.url, c.change, c.status, c.fetched_at, c.run_id FROM changes c JOIN urls u ON u.id = c.url_id"
            " WHERE c.run_id = ?" + (" AND c.change = ?" if change is not None else "") + " ORDER BY u.url"
        )
        params: list[Any] = [run] if change is None else [run, change]
        return [ChangeRow(*row) for row in self._rows(sql + _limit(limit), params)]

    def latest_pass(self) -> int | None:
        """The recrawl pass still open, else the last one that recorded a change; None without one."""
        if not self._recrawl_schema:
            return None
        value = self._scalar(
            "SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'recrawl_pass'),"
            " (SELECT max(run_id) FROM changes))"
        )
        return None if value is None else int(value)

    def _known(self, url: str) -> bool:
        return bool(
            self._scalar(
                "SELECT EXISTS (SELECT 1 FROM urls WHERE url = ?) OR EXISTS (SELECT 1 FROM link_urls WHERE to_url = ?)"
                " OR EXISTS (SELECT 1 FROM pages WHERE final_url = ?)",
                [url, url, url],
            )
        )

    # ---- search --------------------------------------------------------------------------

    def search(self, query: str, *, limit: int | None = 20, syntax: bool = False) -> list[SearchHit]:
        """Full-text search over titles and visible text, best match first (bm25, title weighted x10).

        Words must all appear; "quoted words" must appear as a phrase; word* matches a prefix.
        With syntax=True the query is an FTS5 expression (OR, NOT, NEAR(...), title:word).
        """
        match = query.strip() if syntax else fts_query(query)
        if not match:
            raise UsageError("the search is empty: give one or more words")
        if not self._has_search():
            raise UsageError(
                f"{self.path} has no full-text index (schema {self._scalar('PRAGMA user_version')});"
                " any crawl or resume with this crawler adds it"
            )
        sql = (
            "SELECT p.url, p.title, -bm25(pages_fts, 10.0, 1.0), snippet(pages_fts, 1, '[', ']', '…', 12)"
            " FROM pages_fts JOIN pages p ON p.url_id = pages_fts.rowid"
            " WHERE pages_fts MATCH ? ORDER BY bm25(pages_fts, 10.0, 1.0), p.url" + _limit(limit)
        )
        try:
            rows = self._conn.execute(sql, [match]).fetchall()
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc) or "syntax" in str(exc):
                raise UsageError(f"invalid search {query!r}: {exc}") from exc
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        return [SearchHit(url, title, round(score, 4), snippet) for url, title, score, snippet in rows]

    def unindexed(self) -> int:
        """Pages stored but not yet searchable (the index catches up when a crawl is slow or ends)."""
        return int(self._scalar("SELECT count(*) FROM search_pending")) if self._has_search() else 0

    def _has_search(self) -> bool:
        return bool(self._scalar("SELECT count(*) FROM sqlite_master WHERE name = 'search_pending'"))

    # ---- SQL -----------------------------------------------------------------------------

    def sql(self, statement: str, *, limit: int | None = None) -> SqlResult:
        """Run one reading statement (SELECT, WITH, read-only PRAGMA); anything that writes is refused."""
        statement = statement.strip()
        if not statement.rstrip(";").strip():
            raise UsageError("the SQL statement is empty")
        refused: list[str] = []

        def authorize(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
            if action in _SQL_ALLOWED or (action == sqlite3.SQLITE_PRAGMA and (arg2 is None or arg1 in _READ_PRAGMAS)):
                return sqlite3.SQLITE_OK
            refused.append(" ".join(filter(None, [_ACTION_NAMES.get(action, f"action {action}"), arg1])))
            return sqlite3.SQLITE_DENY

        self._connect_virtual_tables()
        self._conn.set_authorizer(authorize)
        try:
            cursor = self._conn.execute(statement)
            columns = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchmany(limit) if limit else cursor.fetchall()
            cursor.close()
        except sqlite3.Error as exc:
            if refused or "readonly" in str(exc):
                what = refused[0] if refused else "a write"
                raise UsageError(
                    f"refused: `query sql` only reads (SELECT, WITH, read-only PRAGMA); this statement needs: {what}"
                ) from exc
            raise UsageError(f"invalid SQL: {exc}") from exc
        finally:
            self._conn.set_authorizer(None)
        return SqlResult(columns, [tuple(row) for row in rows])

    def _connect_virtual_tables(self) -> None:
        """Connecting FTS5 runs internal statements the SQL authorizer would refuse; do it beforehand."""
        for (name,) in list(self._rows("SELECT name FROM sqlite_master WHERE sql LIKE 'CREATE VIRTUAL TABLE%'")):
            self._scalar(f'SELECT count(*) FROM (SELECT 1 FROM "{name}" LIMIT 0)')

    # ---- stats ---------------------------------------------------------------------------

    def stats(self) -> Stats:
        pairs = self._pairs
        kind = "kind" if self._recrawl_schema else "'crawl'"
        runs = [
            Run(*row)
            for row in self._rows(
                "SELECT id, started_at, finished_at, outcome, pages,"
                f" (julianday(coalesce(finished_at, started_at)) - julianday(started_at)) * 86400.0, {kind}"
                " FROM runs ORDER BY id"
            )
        ]
        groups = urls = 0
        passes: list[PassCounts] = []
        if self._recrawl_schema:
            groups, urls = next(
                self._rows(
                    "SELECT count(*), coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM pages"
                    " WHERE content_hash IS NOT NULL AND bytes > 0 AND status BETWEEN 200 AND 299 AND gone = 0"
                    " GROUP BY content_hash HAVING count(*) > 1)"
                )
            )
            counts = ", ".join(f"sum(change = '{change}')" for change in CHANGES)
            passes = [
                PassCounts(*row)
                for row in self._rows(f"SELECT run_id, {counts} FROM changes GROUP BY run_id ORDER BY run_id")
            ]
        pages, size = next(self._rows("SELECT count(*), coalesce(sum(bytes), 0) FROM pages"))
        return Stats(
            urls_by_state=pairs("SELECT state, count(*) FROM urls GROUP BY state ORDER BY state"),
            pages_by_status_class=pairs(
                "SELECT (status / 100) || 'xx', count(*) FROM pages GROUP BY status / 100 ORDER BY 1"
            ),
            pages_by_host=pairs(
                "SELECT u.host, count(*) FROM pages p JOIN urls u ON u.id = p.url_id GROUP BY u.host ORDER BY 2 DESC, 1"
            ),
            content_types=pairs(
                "SELECT coalesce(lower(trim(substr(content_type, 1, instr(content_type || ';', ';') - 1))), '(none)'),"
                " count(*) FROM pages GROUP BY 1 ORDER BY 2 DESC, 1"
            ),
            errors_by_kind=pairs("SELECT kind, count(*) FROM errors GROUP BY kind ORDER BY 2 DESC, 1"),
            skipped_by_reason=pairs(
                "SELECT reason, count(*) FROM urls WHERE state = 'skipped' GROUP BY reason ORDER BY 2 DESC, 1"
            ),
            depths=pairs("SELECT depth, count(*) FROM pages GROUP BY depth ORDER BY depth"),
            pages=pages,
            bytes=size,
            unindexed=self.unindexed(),
            runs=runs,
            sitemaps=self._sitemap_counts(),
            duplicate_groups=groups,
            duplicate_urls=urls,
            passes=passes,
        )

    def _sitemap_counts(self) -> dict[str, int]:
        """Sitemaps read and failed, the URLs they list, and the URLs a sitemap found first (schema 4 on)."""
        if not self._scalar("SELECT count(*) FROM sqlite_master WHERE name = 'sitemaps'"):
            return {}
        read, failed, listed = next(
            self._rows(
                "SELECT count(*) FILTER (WHERE error IS NULL), count(*) FILTER (WHERE error IS NOT NULL),"
                " coalesce(sum(urls), 0) FROM sitemaps"
            )
        )
        if not read + failed:
            return {}
        found = self._scalar("SELECT count(*) FROM urls WHERE source = 'sitemap' AND kind = 'page'")
        return {"read": read, "failed": failed, "urls listed": listed, "urls from sitemaps": found}

    # ---- plumbing ------------------------------------------------------------------------

    def _rows(self, sql: str, params: Any = ()) -> Iterator[tuple[Any, ...]]:
        # A plain loop, not `yield from`: closing a half-read generator must not close the cursor
        # of a connection that may already be closed.
        try:
            for row in self._conn.execute(sql, params):  # noqa: UP028
                yield row
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    def _scalar(self, sql: str, params: Any = ()) -> Any:
        return next(self._rows(sql, params))[0]

    def _pairs(self, sql: str) -> dict[Any, int]:
        return {key: count for key, count in self._rows(sql)}


def fts_query(text: str) -> str:
    """Plain words → an FTS5 query: every word required, "quoted words" kept as a phrase, word* a prefix."""
    terms = []
    for phrase, word in _PHRASE_OR_WORD.findall(text):
        star = "*" if not phrase and len(word) > 1 and word.endswith("*") else ""
        body = phrase or word.removesuffix(star)
        if body.strip():
            terms.append('"' + body.replace('"', '""') + '"' + star)
    return " ".join(terms)


def _limit(limit: int | None) -> str:
    return f" LIMIT {int(limit)}" if limit else ""
