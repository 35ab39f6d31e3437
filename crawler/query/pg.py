"""The read side over PostgreSQL: tsvector search with ts_rank_cd and ts_headline, and `sql` in a READ ONLY transaction.

Its rows are the SQLite side's: the shared SQL of base.py, text ordered byte-wise (COLLATE "C",
as SQLite's BINARY) whatever the database's locale. psycopg errors become StoreError (the
database cannot be read) or UsageError (the question cannot be answered as asked) here.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import os
import socket
from collections.abc import Iterator
from typing import Any

from crawler.errors import StoreError, UsageError
from crawler.query.base import PHRASE_OR_WORD, Results, limit_sql
from crawler.rows import SearchHit, SqlResult
from crawler.store.pg.connection import CONNECT_TIMEOUT, shown, translate
from crawler.store.pg.schema import SCHEMA_VERSION
from crawler.store.pg.tsvector import query_terms

try:
    import psycopg
except ImportError:  # pragma: no cover - the postgres extra is not installed
    psycopg = None  # type: ignore[assignment]

STREAM_ROWS = 200  # rows a long listing (an export) fetches at a time
SNIPPET_TEXT = 250_000  # characters of text a snippet is looked for in, as many as are indexed
# ts_headline's options for a snippet like FTS5's snippet(…, '[', ']', '…', 12).
HEADLINE = 'StartSel="[", StopSel="]", MaxWords=12, MinWords=5, ShortWord=0, MaxFragments=1, FragmentDelimiter="…"'
_QUERY_ERRORS = ("22", "42")  # SQLSTATE classes of a statement that cannot run as written: data, syntax/access


class PgResults(Results):
    """Answers from a PostgreSQL crawl database, over one connection whose transactions only read."""

    dialect = "postgresql"
    _collate = ' COLLATE "C"'

    def __init__(self, conn: Any, location: str) -> None:
        self._conn = conn
        self._location = location

    @classmethod
    def open(cls, url: str) -> PgResults:
        """Connect (libpq: PGPASSWORD, ~/.pgpass and URL parameters apply); StoreError if it cannot."""
        return cls(connect_readonly(url, "query"), shown(url))

    @property
    def location(self) -> str:
        return self._location

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()

    # ---- dialect -------------------------------------------------------------------------

    def _has_table(self, name: str) -> bool:
        return bool(self._scalar("SELECT to_regclass(?) IS NOT NULL", [name]))

    def _media_type(self, column: str) -> str:
        return f"lower(trim(split_part({column}, ';', 1)))"

    def _user_agent(self, config: str) -> str:
        return f"(({config})::jsonb -> 'politeness' ->> 'user_agent')"

    # ---- search --------------------------------------------------------------------------

    def search(self, query: str, *, limit: int | None = 20, syntax: bool = False) -> list[SearchHit]:
        """ts_rank_cd over pages.search, whose title weight A counts 1.0 against the text's 0.1;
        syntax=True takes a tsquery (& | ! <-> :*) for to_tsquery, whose words PostgreSQL's parser splits."""
        if syntax:
            expression, params = "to_tsquery('simple', ?)", [query.strip()]
        else:
            expression, params = tsquery(query)
        if not params or not params[0]:
            raise UsageError("the search is empty: give one or more words")
        # The snippet is made for the page shown only: ts_headline reparses the whole text.
        sql = (
            f"WITH q AS (SELECT {expression} AS q),"
            " hits AS (SELECT p.url_id, p.url, p.title, ts_rank_cd(p.search, q.q) AS score"
            f" FROM pages p, q WHERE p.search @@ q.q ORDER BY score DESC, p.url{self._collate}{limit_sql(limit)})"
            f" SELECT h.url, h.title, h.score, ts_headline('simple', left(coalesce(p.text, ''), {SNIPPET_TEXT}),"
            f" q.q, '{HEADLINE}')"
            f" FROM hits h JOIN pages p ON p.url_id = h.url_id, q ORDER BY h.score DESC, h.url{self._collate}"
        )
        try:
            rows = self._fetch(sql, params)
        except _SyntaxError as exc:
            raise UsageError(f"invalid search {query!r}: {exc.__cause__}") from exc
        return [SearchHit(url, title, round(float(score), 4), snippet) for url, title, score, snippet in rows]

    def unindexed(self) -> int:
        return int(self._scalar("SELECT count(*) FROM pages WHERE search IS NULL AND noindex = 0"))

    # ---- SQL -----------------------------------------------------------------------------

    def sql(self, statement: str, *, limit: int | None = None) -> SqlResult:
        """One statement in a READ ONLY transaction, rolled back after; the server refuses any write."""
        statement = statement.strip()
        if not statement.rstrip(";").strip():
            raise UsageError("the SQL statement is empty")
        try:
            with self._conn.transaction(force_rollback=True):
                self._conn.execute("SET TRANSACTION READ ONLY")
                # Prepared: the extended protocol takes one statement only, so no `; COMMIT; …` follows it.
                cursor = self._conn.execute(statement.encode(), prepare=True)
                columns = [d.name for d in cursor.description or ()]
                rows = cursor.fetchmany(limit) if limit else cursor.fetchall()
        except psycopg.Error as exc:
            raise self._sql_error(exc) from exc
        return SqlResult(columns, [tuple(_plain(value) for value in row) for row in rows])

    def _sql_error(self, exc: Exception) -> CrawlerErrorType:
        text = " ".join(str(exc).split())
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate == "25006":  # read_only_sql_transaction
            return UsageError(f"refused: `query sql` only reads (SELECT, WITH, SHOW, EXPLAIN); {text}")
        if sqlstate.startswith(_QUERY_ERRORS) or sqlstate in ("0A000", "25001"):
            return UsageError(f"invalid SQL: {text}")
        return translate(exc, self.location)

    # ---- plumbing ------------------------------------------------------------------------

    def _execute(self, sql: str) -> None:
        try:
            self._conn.execute(sql)
        except psycopg.Error as exc:
            raise translate(exc, self.location) from exc

    def _fetch(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._conn.execute(_placeholders(sql), params or None).fetchall())
        except psycopg.Error as exc:
            if (getattr(exc, "sqlstate", None) or "").startswith(_QUERY_ERRORS):
                raise _SyntaxError() from exc
            raise translate(exc, self.location) from exc

    def _rows(self, sql: str, params: Any = ()) -> Iterator[tuple[Any, ...]]:
        try:
            rows = self._fetch(sql, params)
        except _SyntaxError as exc:
            raise translate(exc.__cause__ or exc, self.location) from exc
        return iter(rows)

    def _stream(self, sql: str, params: Any = ()) -> Iterator[tuple[Any, ...]]:
        """Rows through a server-side cursor, STREAM_ROWS at a time, so an export holds few pages in memory."""
        try:
            with self._conn.transaction(), self._conn.cursor(name="crawler_listing") as cursor:
                cursor.itersize = STREAM_ROWS
                cursor.execute(_placeholders(sql), params or None)
                # A plain loop, not `yield from`: see SqliteResults._rows.
                for row in cursor:  # noqa: UP028
                    yield row
        except psycopg.Error as exc:
            if not self._conn.closed:
                raise translate(exc, self.location) from exc


def connect_readonly(url: str, command: str) -> Any:
    """A psycopg connection (autocommit) to a crawl database whose transactions only read.

    UsageError if the database holds no crawl, StoreError if it cannot be reached or is newer.
    """
    location = shown(url)
    if psycopg is None:
        raise StoreError(f"reading {location} needs psycopg: pip install -e '.[postgres]'")
    options: dict[str, Any] = {
        "autocommit": True,
        "application_name": f"crawler {command} {socket.gethostname()}:{os.getpid()}",
    }
    if "connect_timeout" not in url:
        options["connect_timeout"] = CONNECT_TIMEOUT
    try:
        conn = psycopg.connect(url, **options)
    except psycopg.Error as exc:
        raise translate(exc, location, connecting=True) from exc
    try:
        # Every transaction of this session only reads, whatever `sql` is given.
        conn.execute("SET default_transaction_read_only = on")
        found = conn.execute("SELECT to_regclass('meta') IS NOT NULL AND to_regclass('urls') IS NOT NULL").fetchone()
        if found is None or not found[0]:
            raise UsageError(f"{location} holds no crawl (run a crawl into it first)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"{location} was written by a newer crawler (schema {version}); upgrade to read it")
    except psycopg.Error as exc:
        conn.close()
        raise translate(exc, location) from exc
    except BaseException:
        conn.close()
        raise
    return conn


class _SyntaxError(Exception):
    """A statement PostgreSQL would not run as written (the psycopg error is its cause)."""


CrawlerErrorType = StoreError | UsageError


def tsquery(text: str) -> tuple[str, list[str]]:
    """Plain words → a tsquery expression and its parameters, as fts_query reads them for FTS5: every
    word required, "quoted words" a phrase, word* a prefix. Words are split as the crawler split
    the pages (crawler/store/pg/tsvector.py), so the query's lexemes are the index's."""
    phrases: list[tuple[str, bool]] = []
    for phrase, word in PHRASE_OR_WORD.findall(text):
        star = not phrase and len(word) > 1 and word.endswith("*")
        phrases.append((phrase or word.removesuffix("*" if star else ""), star))
    terms = query_terms(phrases)
    return ("?::tsquery", [terms]) if terms else ("", [])


def _placeholders(sql: str) -> str:
    """base.py's `?` placeholders as psycopg's; the shared SQL has no other `?` and no `%`."""
    return sql.replace("?", "%s")


def _plain(value: Any) -> Any:
    """A PostgreSQL value as the formats write SQLite's: numbers, text, bytes, JSON values."""
    if isinstance(value, decimal.Decimal):
        # sum() of integers is a whole numeric, as SQLite's integer; avg() has places, as SQLite's real.
        return int(value) if int(value.as_tuple().exponent) >= 0 else float(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, memoryview):
        return bytes(value)
    if value is None or isinstance(value, str | int | float | bytes | bool | list | dict):
        return value
    return str(value)
