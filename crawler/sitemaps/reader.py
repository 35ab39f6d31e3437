"""The crawl's sitemap side: queueing the sitemaps robots.txt names, and turning a fetched sitemap into urls rows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from crawler.errors import ErrorKind, FetchError
from crawler.http.fetcher import FetchResult
from crawler.politeness import HostGate, Lease
from crawler.sitemaps.parse import MAX_BYTES, MAX_URLS, SitemapError, looks_like_sitemap, read_sitemap
from crawler.store import PAGE, SITEMAP, NewUrl, SitemapRecord, utc_now
from crawler.urls import Scope, host_key, normalize_url

log = logging.getLogger(__name__)

# Levels of sitemaps: one named by robots.txt (or a seed) is level 0, the children of an
# index one level more. The protocol forbids an index listing indexes; a few levels are
# tolerated, and an index whose children would reach this level is an error.
MAX_LEVELS = 3
# Sitemaps read at once: each may hold up to MAX_BYTES in memory while it is fetched and read.
READS_AT_ONCE = 2
LISTED_DEPTH = 1  # the depth of every URL a sitemap lists


class SitemapLog(Protocol):
    """Where sitemaps and what they list are recorded (the store)."""

    def add_listed_urls(self, urls: Iterable[NewUrl]) -> None: ...
    def add_sitemap(self, sitemap: SitemapRecord) -> None: ...
    def set_state(self, url_id: int, state: str, reason: str | None = None) -> None: ...


class SitemapReader:
    """Queues sitemaps (kind 'sitemap' urls rows, leased like pages) and reads them when fetched.

    A sitemap's urls row keeps its level in `depth` (0 for those robots.txt names); the URLs it
    lists are queued at depth 1 with source 'sitemap' and their lastmod, or skipped with the
    scope's reason. robots.txt is obeyed when they are leased, like any URL.
    """

    def __init__(
        self,
        store: SitemapLog,
        scope: Scope,
        *,
        max_urls: int = MAX_URLS,
        max_bytes: int = MAX_BYTES,
        max_levels: int = MAX_LEVELS,
    ) -> None:
        self._store = store
        self._scope = scope
        self.max_urls = max_urls
        self.max_bytes = max_bytes
        self.max_levels = max_levels
        self._named_by: dict[str, str] = {}  # sitemap URL → the robots.txt that named it
        self._reads = asyncio.Semaphore(READS_AT_ONCE)

    def named_by_robots(self, site: str, urls: Sequence[str]) -> None:
        """The Sitemap: lines of site's robots.txt: each in scope is queued (once; the urls table dedupes)."""
        robots_url = f"{site}/robots.txt"
        new = []
        for raw in urls:
            url = normalize_url(raw)
            if url is None:
                continue
            self._named_by.setdefault(url, robots_url)
            reason = self._scope.skip_reason(url, 0)
            state = "skipped" if reason else "queued"
            new.append(NewUrl(url, host_key(url, normalized=True), 0, None, state, reason, SITEMAP, "robots"))
        self._store.add_listed_urls(new)

    @asynccontextmanager
    async def turn(self, gate: HostGate) -> AsyncIterator[None]:
        """Around a sitemap's fetch and read, bounding the sitemaps in memory at once.

        A worker that must wait lets go of its host first: the reader holding a turn may be
        redirected to that very host.
        """
        if self._reads.locked():
            gate.let_go()
        async with self._reads:
            yield

    @staticmethod
    def is_sitemap(result: FetchResult) -> bool:
        """A page's response that is really a sitemap (a seed pointing at one)."""
        return 200 <= result.status < 300 and looks_like_sitemap(result.body, result.content_type)

    async def read(self, lease: Lease, result: FetchResult) -> FetchError | None:
        """Record what a fetched sitemap lists and its sitemaps row; the error to record when it is unreadable."""
        status = result.status
        stopped = result.stopped_redirect
        if stopped is not None:
            # The target is a sitemap too, read under its own lease (held: once its robots.txt answers).
            state = "queued" if stopped.held else "skipped"
            target = stopped.target
            self._store.add_listed_urls(
                [NewUrl(target, host_key(target), lease.depth, lease.url_id, state, stopped.reason, SITEMAP, "sitemap")]
            )
            why = f"not followed: {stopped.reason}"
            if stopped.held:
                why = "queued for its host's holder" if stopped.handed_over else "held for its robots.txt"
            self._record(lease, status, 0, f"redirect to {target} {why}")
            self._store.set_state(lease.url_id, "done")
            return None
        if not 200 <= status < 300:
            return self._failed(lease, status, FetchError(ErrorKind.HTTP_STATUS, f"HTTP {status}"))
        try:
            # In a thread: a large sitemap takes a while to read, and the event loop has requests to serve.
            sitemap = await asyncio.to_thread(
                read_sitemap, result.body, max_urls=self.max_urls, max_bytes=self.max_bytes
            )
        except SitemapError as exc:
            return self._failed(lease, status, FetchError(ErrorKind.SITEMAP, exc.message))
        level = lease.depth
        if sitemap.is_index and level + 1 >= self.max_levels:
            error = FetchError(
                ErrorKind.SITEMAP,
                f"sitemap index nested {level + 1} levels deep (at most {self.max_levels}):"
                f" its {len(sitemap.entries):,} sitemaps are not read",
            )
            return self._failed(lease, status, error)
        if sitemap.is_index:
            kind, depth = SITEMAP, level + 1
        else:
            kind, depth = PAGE, LISTED_DEPTH
        new = []
        scope = self._scope
        for entry in sitemap.entries:
            url = normalize_url(entry.loc)
            if url is None:
                continue
            reason = scope.skip_reason(url, 0 if sitemap.is_index else depth)
            state = "skipped" if reason else "queued"
            host = host_key(url, normalized=True)
            new.append(NewUrl(url, host, depth, lease.url_id, state, reason, kind, "sitemap", entry.lastmod))
        # One batch, no await in between: the listed URLs, the sitemap's row and its done state commit together.
        self._store.add_listed_urls(new)
        self._record(lease, status, len(sitemap.entries), None)
        self._store.set_state(lease.url_id, "done")
        log.info("sitemap %s: %s, %d URLs", lease.url, sitemap.kind, len(sitemap.entries))
        return None

    def fetch_failed(self, lease: Lease, exc: FetchError) -> FetchError:
        """A sitemap's fetch failed: its sitemaps row, and the error to record (over the size limit: kind sitemap)."""
        if exc.kind is ErrorKind.TOO_LARGE:
            exc = FetchError(
                ErrorKind.SITEMAP,
                f"larger than the protocol's {self.max_bytes:,} bytes uncompressed: {exc.message}",
                attempts=exc.attempts,
                status=exc.status,
            )
        return self._failed(lease, exc.status, exc)

    def _failed(self, lease: Lease, status: int | None, error: FetchError) -> FetchError:
        log.info("sitemap %s not read: %s", lease.url, error.message)
        self._record(lease, status, 0, error.message)
        return error

    def _record(self, lease: Lease, status: int | None, urls: int, error: str | None) -> None:
        parent = self._named_by.get(lease.url)
        self._store.add_sitemap(SitemapRecord(lease.url, lease.url_id, parent, status, urls, utc_now(), error))
