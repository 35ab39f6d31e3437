"""The crawl database: the names the rest of the crawler imports from `crawler.store`."""

from __future__ import annotations

from crawler.store.backend import Backend, HostLeasing, is_postgres_url
from crawler.store.batch import Batch
from crawler.store.flush import JSON_ROWS, PAGE_ROWS
from crawler.store.lock import lock_holder, writer_lock
from crawler.store.records import (
    PAGE,
    SITEMAP,
    URL_STATES,
    NewUrl,
    PageRecord,
    QueuedUrl,
    RobotsRecord,
    SitemapRecord,
    StoredVersion,
    body_hash,
    utc_now,
)
from crawler.store.schema import MIGRATIONS, SCHEMA_VERSION
from crawler.store.sqlite import Store

__all__ = [
    "JSON_ROWS",
    "MIGRATIONS",
    "PAGE",
    "PAGE_ROWS",
    "SCHEMA_VERSION",
    "SITEMAP",
    "URL_STATES",
    "Backend",
    "Batch",
    "HostLeasing",
    "NewUrl",
    "PageRecord",
    "QueuedUrl",
    "RobotsRecord",
    "SitemapRecord",
    "Store",
    "StoredVersion",
    "body_hash",
    "is_postgres_url",
    "lock_holder",
    "utc_now",
    "writer_lock",
]
