"""The crawl database: the names the rest of the crawler imports from `crawler.store`."""

from __future__ import annotations

from crawler.store.sqlite import (
    JSON_ROWS,
    MIGRATIONS,
    PAGE_ROWS,
    SCHEMA_VERSION,
    URL_STATES,
    Batch,
    NewUrl,
    PageRecord,
    QueuedUrl,
    Store,
    utc_now,
    writer_lock,
)

__all__ = [
    "JSON_ROWS",
    "MIGRATIONS",
    "PAGE_ROWS",
    "SCHEMA_VERSION",
    "URL_STATES",
    "Batch",
    "NewUrl",
    "PageRecord",
    "QueuedUrl",
    "Store",
    "utc_now",
    "writer_lock",
]
