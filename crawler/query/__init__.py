"""Read-side of a crawl database: typed rows for stats, filters, search and read-only SQL (the Python API).

    with crawler.open_results("data/crawl.db") as results:
        broken = results.pages(status="4xx")
        hits = results.search("privacy policy")

`open_results` takes a SQLite path or a postgresql:// URL; both answer the `Results` contract
(`base.py`) with the same rows. psycopg is imported only for a URL.
"""

from __future__ import annotations

from pathlib import Path

from crawler.query.base import Direction, Results
from crawler.query.sqlite import SqliteResults, connect_readonly, fts_query
from crawler.rows import ChangeRow, ErrorRow, LinkRow, Page, PassCounts, Run, SearchHit, SqlResult, Stats, StoredPage
from crawler.store.backend import is_postgres_url

__all__ = [
    "ChangeRow", "Direction", "ErrorRow", "LinkRow", "Page", "PassCounts", "Results", "Run", "SearchHit",
    "SqlResult", "SqliteResults", "Stats", "StoredPage",
    "connect_readonly", "fts_query", "open_results",
]  # fmt: skip


def open_results(target: str | Path) -> Results:
    """Open a crawl database read-only (a SQLite path or a postgresql:// URL); use as a context manager."""
    if is_postgres_url(target):
        from crawler.query.pg import PgResults

        return PgResults.open(str(target))
    return SqliteResults(connect_readonly(target), Path(target))
