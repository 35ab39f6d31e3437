"""The pending batch: rows gathered between two flushes, committed together or not at all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from crawler.store.records import NewUrl, PageRecord, RobotsRecord, SitemapRecord, utc_now


@dataclass(slots=True)
class Batch:
    """Writes gathered between two flushes; a flush commits all of them in one transaction."""

    new_urls: list[NewUrl] = field(default_factory=list)
    pages: list[PageRecord] = field(default_factory=list)
    links: list[tuple[int, str, int]] = field(default_factory=list)  # (from_id, to_url, nofollow)
    errors: list[tuple[int | None, str, str, str, int, str]] = field(default_factory=list)
    states: list[tuple[str, str | None, str, int]] = field(default_factory=list)  # (state, reason, at, id)
    robots: list[tuple[Any, ...]] = field(default_factory=list)  # RobotsRecord.row()s
    host_skips: list[tuple[str, str, str]] = field(default_factory=list)  # (reason, at, host)
    # URLs a sitemap (or robots.txt) lists, apart: they carry kind, source and lastmod, which
    # links never do, so the links' insert stays as lean as it was.
    listed_urls: list[NewUrl] = field(default_factory=list)
    sitemaps: list[SitemapRecord] = field(default_factory=list)
    # Recrawl passes only (empty in a first crawl, so its flushes skip them):
    archived: list[int] = field(default_factory=list)  # url_ids whose stored version goes to page_history
    confirmed: list[tuple[str, str | None, str | None, int]] = field(default_factory=list)  # (seen_at, etag, lm, id)
    changes: list[tuple[int, str, int | None, str]] = field(default_factory=list)  # (url_id, change, status, at)
    # Not rows: url_ids whose fetch counts against max_pages, so a shared database learns with the
    # same commit how many of a run's claimed pages are spent (crawler/store/pg/leases.py).
    counted: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.host_skips)
            + len(self.new_urls)
            + len(self.pages)
            + len(self.links)
            + len(self.errors)
            + len(self.states)
            + len(self.robots)
            + len(self.listed_urls)
            + len(self.sitemaps)
            + len(self.archived)
            + len(self.confirmed)
            + len(self.changes)
        )

    def add_urls(self, urls: Iterable[NewUrl]) -> None:
        self.new_urls.extend(urls)

    def add_listed_urls(self, urls: Iterable[NewUrl]) -> None:
        self.listed_urls.extend(urls)

    def add_sitemap(self, sitemap: SitemapRecord) -> None:
        self.sitemaps.append(sitemap)

    def add_page(self, page: PageRecord, links: Iterable[tuple[str, bool]]) -> None:
        """A page, its outgoing links and its `done` state, so that they commit together."""
        self.pages.append(page)
        self.links.extend((page.url_id, url, int(nofollow)) for url, nofollow in links)
        self.states.append(("done", None, page.fetched_at, page.url_id))

    def replace_page(self, page: PageRecord, links: Iterable[tuple[str, bool]], change: str) -> None:
        """A new version of a stored page: the old one goes to history and its links are replaced."""
        self.archived.append(page.url_id)
        self.add_page(page, links)
        self.changes.append((page.url_id, change, page.status, page.fetched_at))

    def add_change(self, url_id: int, change: str, status: int | None, at: str) -> None:
        self.changes.append((url_id, change, status, at))

    def confirm_page(self, url_id: int, status: int, etag: str | None, last_modified: str | None) -> None:
        """A stored page found unchanged (304, or the same content): it was seen now, nothing else moves."""
        now = utc_now()
        self.confirmed.append((now, etag, last_modified, url_id))
        self.states.append(("done", None, now, url_id))
        self.changes.append((url_id, "unchanged", status, now))

    def add_error(self, url_id: int | None, url: str, kind: str, message: str, attempts: int) -> None:
        now = utc_now()
        self.errors.append((url_id, url, kind, message, attempts, now))
        if url_id is not None:
            self.states.append(("failed", None, now, url_id))

    def set_state(self, url_id: int, state: str, reason: str | None = None) -> None:
        self.states.append((state, reason, utc_now(), url_id))

    def skip_queued_of_host(self, host: str, reason: str) -> None:
        self.host_skips.append((reason, utc_now(), host))

    def add_robots(self, record: RobotsRecord) -> None:
        self.robots.append(record.row())


class BatchedWrites:
    """The batched writes of every backend: rows go into `batch` until the backend's flush commits them."""

    batch: Batch

    def add_urls(self, urls: Iterable[NewUrl]) -> None:
        self.batch.add_urls(urls)

    def add_page(self, page: PageRecord, links: Iterable[tuple[str, bool]]) -> None:
        self.batch.add_page(page, links)

    def add_listed_urls(self, urls: Iterable[NewUrl]) -> None:
        """URLs a sitemap or robots.txt lists; a known one takes a newer lastmod, and keeps the rest."""
        self.batch.add_listed_urls(urls)

    def add_sitemap(self, sitemap: SitemapRecord) -> None:
        """A sitemap's row in `sitemaps`; its urls row becomes kind 'sitemap' (a seed may turn out one)."""
        self.batch.add_sitemap(sitemap)

    def replace_page(self, page: PageRecord, links: Iterable[tuple[str, bool]], change: str) -> None:
        """A recrawl pass stores a new version of a page ('changed' or 'gone'); the old one goes to history."""
        self.batch.replace_page(page, links, change)

    def confirm_page(self, url_id: int, status: int, etag: str | None, last_modified: str | None) -> None:
        """A recrawl pass found a stored page unchanged."""
        self.batch.confirm_page(url_id, status, etag, last_modified)

    def add_change(self, url_id: int, change: str, status: int | None, at: str) -> None:
        self.batch.add_change(url_id, change, status, at)

    def add_error(self, url_id: int | None, url: str, kind: str, message: str, attempts: int) -> None:
        self.batch.add_error(url_id, url, kind, message, attempts)

    def set_state(self, url_id: int, state: str, reason: str | None = None) -> None:
        self.batch.set_state(url_id, state, reason)

    def skip_queued_of_host(self, host: str, reason: str) -> None:
        """Mark every still-queued URL of host as skipped (a per-host limit was reached)."""
        self.batch.skip_queued_of_host(host, reason)

    def add_robots(self, record: RobotsRecord) -> None:
        """One robots.txt fetch; the origin's row takes its place."""
        self.batch.add_robots(record)
