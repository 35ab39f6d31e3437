"""The read-side contract, `Results`: the questions every backend answers, with the SQL both dialects share."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import fields
from datetime import datetime
from typing import Any, Literal

from crawler.errors import ErrorKind, UsageError
from crawler.filters import PageFilter
from crawler.recrawl import CHANGES
from crawler.rows import ChangeRow, ErrorRow, LinkRow, Page, PassCounts, Run, SearchHit, SqlResult, Stats, StoredPage
from crawler.urls import normalize_url

Direction = Literal["in", "out", "both"]

PAGE_SELECT = ", ".join("p." + f.name for f in fields(Page))
# A search's words: "a quoted phrase" (its closing quote optional) or a run of non-blanks.
PHRASE_OR_WORD = re.compile(r'"([^"]*)"?|(\S+)')


class Results(ABC):
    """Typed answers from one crawl database. Lists are ordered by URL, so they are stable.

    The SQL here is written once for both backends: `?` placeholders, and text ordered as
    SQLite's BINARY collation orders it (`_collate` makes PostgreSQL do the same). Counts by
    key are sorted here rather than in SQL, for the same reason.
    """

    dialect = "sqlite"
    _collate = ""  # appended to text sort keys
    _recrawl_schema = True  # the database has content hashes, runs.kind and the changes table
    _page_select = PAGE_SELECT

    @property
    @abstractmethod
    def location(self) -> str:
        """The database as messages name it: a file path, or a URL without its password."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what each backend supplies -----------------------------------------------------

    @abstractmethod
    def _rows(self, sql: str, params: Any = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of one reading statement with `?` placeholders; errors become StoreError."""

    def _stream(self, sql: str, params: Any = ()) -> Iterator[tuple[Any, ...]]:
        """As _rows, for listings that may be long (a backend may fetch them in pieces)."""
        return self._rows(sql, params)

    @abstractmethod
    def _has_table(self, name: str) -> bool: ...

    @abstractmethod
    def _media_type(self, column: str) -> str:
        """SQL for the lowercased media type of a Content-Type column ("text/html")."""

    @abstractmethod
    def _user_agent(self, config: str) -> str:
        """SQL for the User-Agent a run's JSON config names."""

    @abstractmethod
    def search(self, query: str, *, limit: int | None = 20, syntax: bool = False) -> list[SearchHit]:
        """Full-text search over titles and visible text, best match first, the title weighted x10.

        Words must all appear; "quoted words" must appear as a phrase; word* matches a prefix.
        With syntax=True the query is in the backend's own syntax (FTS5, or a PostgreSQL tsquery).
        """

    @abstractmethod
    def unindexed(self) -> int:
        """Pages stored but not yet searchable (the index catches up when a crawl is slow or ends)."""

    @abstractmethod
    def sql(self, statement: str, *, limit: int | None = None) -> SqlResult:
        """Run one reading statement; anything that writes is refused with UsageError."""

    # ---- listings ----------------------------------------------------------------------

    def pages(self, *, limit: int | None = None, **filters: Any) -> list[Page]:
        """Pages matching the filters of PageFilter (status="4xx", host=..., since="2h", ...)."""
        return list(self.iter_pages(PageFilter.build(**filters), limit=limit))

    def iter_pages(self, where: PageFilter | None = None, *, limit: int | None = None) -> Iterator[Page]:
        clause, params = (where or PageFilter()).sql(self.dialect)
        sql = f"SELECT {self._page_select} FROM pages p {clause} ORDER BY p.url{self._collate}"
        for row in self._stream(sql + limit_sql(limit), params):
            yield Page(*row)

    def iter_stored_pages(self, where: PageFilter | None = None, *, limit: int | None = None) -> Iterator[StoredPage]:
        clause, params = (where or PageFilter()).sql(self.dialect)
        sql = (
            f"SELECT {self._page_select}, p.noindex, p.redirects, p.headers,"
            f" p.text, p.body, {self._user_agent('r.config')}"
            f" FROM pages p LEFT JOIN runs r ON r.id = p.run_id {clause} ORDER BY p.url{self._collate}"
        )
        for row in self._stream(sql + limit_sql(limit), params):
            *page, noindex, redirects, headers, text, body, agent = row
            pairs = [(str(name), str(value)) for name, value in json.loads(headers)]
            values = [*page, bool(noindex), json.loads(redirects), pairs, text, body and bytes(body), agent]
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
        sql = f"SELECT url, kind, message, attempts, at FROM errors {where} ORDER BY url{self._collate}, id"
        return [ErrorRow(*row) for row in self._rows(sql + limit_sql(limit), params)]

    def links(self, url: str, *, direction: Direction = "both", limit: int | None = None) -> list[LinkRow]:
        """Links out of the page at url (asked or final URL) and links into url."""
        if direction not in ("in", "out", "both"):
            raise UsageError(f"direction must be in, out or both, not {direction!r}")
        url = normalize_url(url) or url
        if not self._known(url):
            raise UsageError(f"{url} is not in {self.location}: no page, queued URL or link has that address")
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
            f" FROM ({' UNION ALL '.join(branches)}) AS l"
            f" ORDER BY direction DESC, (CASE direction WHEN 'out' THEN to_url ELSE from_url END){self._collate}"
        )
        rows = self._rows(sql + limit_sql(limit), params)
        return [LinkRow(d, f, t, bool(n), s, st) for d, f, t, n, s, st in rows]

    def changes(
        self, *, run: int | None = None, change: str | None = None, limit: int | None = None
    ) -> list[ChangeRow]:
        """One row per URL a recrawl pass fetched (the latest pass unless `run` names one), by URL."""
        if change is not None and change not in CHANGES:
            raise UsageError(f"unknown change {change!r}; the changes are: {', '.join(CHANGES)}")
        if run is None:
            run = self.latest_pass()
            if run is None:
                raise UsageError(f"{self.location} holds no recrawl pass; `crawler recrawl` starts one")
        sql = (
            "SELECT u.url, c.change, c.status, c.fetched_at, c.run_id FROM changes c JOIN urls u ON u.id = c.url_id"
            " WHERE c.run_id = ?" + (" AND c.change = ?" if change is not None else "")
        )
        params: list[Any] = [run] if change is None else [run, change]
        sql += f" ORDER BY u.url{self._collate}" + limit_sql(limit)
        return [ChangeRow(*row) for row in self._rows(sql, params)]

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

    # ---- stats ---------------------------------------------------------------------------

    def stats(self) -> Stats:
        pairs = self._counts
        groups = urls = 0
        passes: list[PassCounts] = []
        if self._recrawl_schema:
            groups, urls = next(
                self._rows(
                    "SELECT count(*), coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM pages"
                    " WHERE content_hash IS NOT NULL AND bytes > 0 AND status BETWEEN 200 AND 299 AND gone = 0"
                    " GROUP BY content_hash HAVING count(*) > 1) AS d"
                )
            )
            counts = ", ".join(f"count(*) FILTER (WHERE change = '{change}')" for change in CHANGES)
            passes = [
                PassCounts(*row)
                for row in self._rows(f"SELECT run_id, {counts} FROM changes GROUP BY run_id ORDER BY run_id")
            ]
        pages, size = next(self._rows("SELECT count(*), coalesce(sum(bytes), 0) FROM pages"))
        return Stats(
            urls_by_state=pairs("SELECT state, count(*) FROM urls GROUP BY state", by_key=True),
            pages_by_status_class=pairs(
                "SELECT (status / 100) || 'xx', count(*) FROM pages GROUP BY status / 100", by_key=True
            ),
            pages_by_host=pairs("SELECT u.host, count(*) FROM pages p JOIN urls u ON u.id = p.url_id GROUP BY u.host"),
            content_types=pairs(
                f"SELECT coalesce({self._media_type('content_type')}, '(none)'), count(*) FROM pages GROUP BY 1"
            ),
            errors_by_kind=pairs("SELECT kind, count(*) FROM errors GROUP BY kind"),
            skipped_by_reason=pairs("SELECT reason, count(*) FROM urls WHERE state = 'skipped' GROUP BY reason"),
            depths=pairs("SELECT depth, count(*) FROM pages GROUP BY depth", by_key=True),
            pages=int(pages),
            bytes=int(size),
            unindexed=self.unindexed(),
            runs=self.runs(),
            sitemaps=self._sitemap_counts(),
            duplicate_groups=int(groups),
            duplicate_urls=int(urls),
            passes=passes,
        )

    def runs(self) -> list[Run]:
        """Every run, oldest first; seconds from its start to its end (0 while it runs)."""
        kind = "kind" if self._recrawl_schema else "'crawl'"
        rows = self._rows(f"SELECT id, started_at, finished_at, outcome, pages, {kind} FROM runs ORDER BY id")
        return [Run(i, s, f, o, p, run_seconds(s, f), k) for i, s, f, o, p, k in rows]

    def _sitemap_counts(self) -> dict[str, int]:
        """Sitemaps read and failed, the URLs they list, and the URLs a sitemap found first (schema 4 on)."""
        if not self._has_table("sitemaps"):
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
        return {"read": read, "failed": failed, "urls listed": int(listed), "urls from sitemaps": found}

    # ---- plumbing ------------------------------------------------------------------------

    def _scalar(self, sql: str, params: Any = ()) -> Any:
        return next(self._rows(sql, params))[0]

    def _counts(self, sql: str, *, by_key: bool = False) -> dict[Any, int]:
        """Counts by key: most first, then by key; or by key alone. None sorts first, as in SQL."""
        rows: Iterable[tuple[Any, ...]] = self._rows(sql)
        if by_key:
            ordered = sorted(rows, key=lambda row: (row[0] is not None, row[0]))
        else:
            ordered = sorted(rows, key=lambda row: (-row[1], row[0] is not None, row[0]))
        return {key: int(count) for key, count in ordered}


def limit_sql(limit: int | None) -> str:
    return f" LIMIT {int(limit)}" if limit else ""


def run_seconds(started_at: str, finished_at: str | None) -> float:
    """A run's length from its stored times; 0 while it has no end."""
    if finished_at is None:
        return 0.0
    return (datetime.fromisoformat(finished_at) - datetime.fromisoformat(started_at)).total_seconds()
