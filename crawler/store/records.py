"""The rows a crawl stores and reads back, independent of the database that holds them."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crawler.errors import SkipReason

URL_STATES = ("queued", "in_flight", "done", "failed", "skipped")
PAGE = "page"  # urls.kind of a page, and of a URL listed by a sitemap
SITEMAP = "sitemap"  # urls.kind of a sitemap document: read for the URLs it lists, never stored as a page

_second: list[tuple[int, str]] = [(-1, "")]  # the last whole second formatted, reused within it


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds, the format of every stored time."""
    # Every page stores a time, so the seconds are formatted once per second rather than once per call.
    now = time.time()
    whole = int(now)
    second, text = _second[0]
    if whole != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    return f"{text}.{int((now - whole) * 1000):03d}Z"


def seconds_since(stamp: str) -> float:
    """Seconds from a stored time (utc_now's format) to now on this machine's clock; never negative."""
    then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return max(0.0, time.time() - then.timestamp())


def body_hash(body: bytes) -> str:
    """The content hash of a page body (hex SHA-256), which tells an unchanged page and exact duplicates."""
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class NewUrl:
    """A URL to add to the frontier; state is 'queued' or 'skipped' (with a reason)."""

    url: str
    host: str
    depth: int
    parent_id: int | None = None
    state: str = "queued"
    reason: str | None = None
    kind: str = PAGE
    source: str | None = None  # None: a seed or a link; 'sitemap' or 'robots': who listed it first
    lastmod: str | None = None  # the sitemap's <lastmod>, ISO-8601 UTC


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """What a recrawl pass knows of a page it fetches again: its validators and what it held."""

    status: int
    content_hash: str | None
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True, slots=True)
class QueuedUrl:
    """A frontier row that is waiting to be fetched."""

    id: int
    url: str
    host: str
    depth: int
    kind: str = PAGE
    previous: StoredVersion | None = None  # set for a stored page that a recrawl pass fetches again


@dataclass(frozen=True, slots=True)
class SitemapRecord:
    """One sitemap read, or not: a row of `sitemaps`."""

    url: str
    url_id: int
    parent: str | None  # the robots.txt that named it; None to take the urls row's parent
    status: int | None  # the HTTP status, None when the fetch failed
    urls: int  # URLs the file lists
    fetched_at: str
    error: str | None


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
    content_hash: str | None = None  # body_hash of the decoded body, stored or not
    etag: str | None = None
    last_modified: str | None = None
    canonical: str | None = None  # <link rel=canonical>, absolute
    gone: bool = False  # a recrawl pass got 404 or 410 for a page it had stored


def unique_new_urls(urls: list[NewUrl]) -> dict[str, NewUrl]:
    """A batch's new URLs, one per URL: the same link often appears on many pages of one batch,
    and a followed link outranks a nofollow one to the same URL."""
    unique: dict[str, NewUrl] = {}
    for item in urls:
        kept = unique.setdefault(item.url, item)
        if kept.reason == SkipReason.NOFOLLOW and item.state == "queued":
            unique[item.url] = item
    return unique


@dataclass(frozen=True, slots=True)
class RobotsRecord:
    """One origin's robots.txt fetch, as the `robots` table keeps it: enough to rebuild its rules.

    `body` is what was read (b"" for a non-2xx answer or none); `error_kind` and `error` say why a
    fetch failed, `misses` how many fetches in a row found robots.txt unreachable (0 once one
    answers). Another crawler, or a resumed one, rebuilds the rules from these rather than fetching.
    """

    origin: str
    status: int | None
    crawl_delay: float | None
    sitemaps: tuple[str, ...]
    note: str | None
    body: bytes = b""
    error: str | None = None
    error_kind: str | None = None
    misses: int = 0
    fetched_at: str = ""  # utc_now() when recorded; set by the batch

    def row(self) -> tuple[Any, ...]:
        """The robots row's values in ROBOTS_COLUMNS order."""
        return (
            self.origin,
            self.status,
            self.fetched_at or utc_now(),
            self.crawl_delay,
            json.dumps(list(self.sitemaps)),
            self.note,
            self.body,
            self.error,
            self.error_kind,
            self.misses,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RobotsRecord:
        origin, status, fetched_at, crawl_delay, sitemaps, note, body, error, error_kind, misses = row
        return cls(
            origin,
            status,
            crawl_delay,
            tuple(json.loads(sitemaps)),
            note,
            bytes(body),
            error,
            error_kind,
            misses,
            fetched_at,
        )


# The robots columns in RobotsRecord.row's order; a row whose body is NULL predates them and rebuilds nothing.
ROBOTS_COLUMNS = "origin, status, fetched_at, crawl_delay, sitemaps, note, body, error, error_kind, misses"
