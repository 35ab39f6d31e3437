"""The read side over SQLite: a read-only connection, FTS5 search, and `sql` under an authorizer.

Every connection is read-only (`mode=ro`), so queries run beside a live crawl: in WAL mode
readers and the writer never wait for each other. sqlite errors become UsageError (the
question cannot be answered as asked) or StoreError (the file cannot be read) here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crawler.errors import StoreError, UsageError
from crawler.query.base import PAGE_SELECT, PHRASE_OR_WORD, Results, limit_sql
from crawler.rows import SearchHit, SqlResult
from crawler.store import SCHEMA_VERSION


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


# A database no crawl has opened since schema 4 has no canonical column: it reads as NULL.
_PAGE_SELECT_3 = PAGE_SELECT.replace("p.canonical", "NULL")
_RECRAWL_SCHEMA = 4  # the schema that added content hashes, runs.kind and the changes table
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


class SqliteResults(Results):
    """Answers from a SQLite crawl database, over one read-only connection."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._recrawl_schema = self._scalar("PRAGMA user_version") >= _RECRAWL_SCHEMA
        self._page_select = PAGE_SELECT if self._recrawl_schema else _PAGE_SELECT_3

    @property
    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._conn.close()

    def _has_table(self, name: str) -> bool:
        return bool(self._scalar("SELECT count(*) FROM sqlite_master WHERE name = ?", [name]))

    def _media_type(self, column: str) -> str:
        return f"lower(trim(substr({column}, 1, instr({column} || ';', ';') - 1)))"

    def _user_agent(self, config: str) -> str:
        return f"json_extract({config}, '$.politeness.user_agent')"

    # ---- search --------------------------------------------------------------------------

    def search(self, query: str, *, limit: int | None = 20, syntax: bool = False) -> list[SearchHit]:
        """FTS5's bm25 with the title weighted x10; syntax=True takes an FTS5 expression (OR, NOT,
        NEAR(...), title:word)."""
        match = query.strip() if syntax else fts_query(query)
        if not match:
            raise UsageError("the search is empty: give one or more words")
        if not self._has_table("search_pending"):
            raise UsageError(
                f"{self.path} has no full-text index (schema {self._scalar('PRAGMA user_version')});"
                " any crawl or resume with this crawler adds it"
            )
        sql = (
            "SELECT p.url, p.title, -bm25(pages_fts, 10.0, 1.0), snippet(pages_fts, 1, '[', ']', '…', 12)"
            " FROM pages_fts JOIN pages p ON p.url_id = pages_fts.rowid"
            " WHERE pages_fts MATCH ? ORDER BY bm25(pages_fts, 10.0, 1.0), p.url" + limit_sql(limit)
        )
        try:
            rows = self._conn.execute(sql, [match]).fetchall()
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc) or "syntax" in str(exc):
                raise UsageError(f"invalid search {query!r}: {exc}") from exc
            raise StoreError(f"cannot read {self.location}: {exc}") from exc
        return [SearchHit(url, title, round(score, 4), snippet) for url, title, score, snippet in rows]

    def unindexed(self) -> int:
        return int(self._scalar("SELECT count(*) FROM search_pending")) if self._has_table("search_pending") else 0

    # ---- SQL -----------------------------------------------------------------------------

    def sql(self, statement: str, *, limit: int | None = None) -> SqlResult:
        """Run one reading statement (SELECT, WITH, read-only PRAGMA); an authorizer refuses anything else."""
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

    # ---- plumbing ------------------------------------------------------------------------

    def _rows(self, sql: str, params: Any = ()) -> Iterator[tuple[Any, ...]]:
        # A plain loop, not `yield from`: closing a half-read generator must not close the cursor
        # of a connection that may already be closed.
        try:
            for row in self._conn.execute(sql, params):  # noqa: UP028
                yield row
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.location}: {exc}") from exc


def fts_query(text: str) -> str:
    """Plain words → an FTS5 query: every word required, "quoted words" kept as a phrase, word* a prefix."""
    terms = []
    for phrase, word in PHRASE_OR_WORD.findall(text):
        star = "*" if not phrase and len(word) > 1 and word.endswith("*") else ""
        body = phrase or word.removesuffix(star)
        if body.strip():
            terms.append('"' + body.replace('"', '""') + '"' + star)
    return " ".join(terms)
