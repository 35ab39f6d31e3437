"""One URL's path, top to bottom: robots verdict, fetch (redirects), parse, record."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

from crawler.config import Config
from crawler.errors import ErrorKind, FetchError, ParseError, SkipReason
from crawler.http.fetcher import Fetcher, FetchResult
from crawler.http.redirects import RedirectDecision, follow_redirects
from crawler.parse import ParsedPage, is_html, robots_directives
from crawler.parsepool import ParseJob, ParsePool
from crawler.politeness import HostGate, Lease
from crawler.recent import RecentUrls
from crawler.recrawl import GONE_STATUSES, conditional
from crawler.robots.policy import RobotsAccess, RobotsPolicy
from crawler.robots.rules import product_token
from crawler.sitemaps.reader import SitemapReader
from crawler.store import SITEMAP, Backend, HostLeasing, NewUrl, PageRecord, body_hash, utc_now
from crawler.urls import Scope, host_key

fetch_log = logging.getLogger("crawler.fetch")


class UrlResult(Enum):
    """What became of a leased URL; the worker tells the frontier accordingly."""

    STORED = "stored"  # a page row was recorded
    FAILED = "failed"  # an error row was recorded: fetch, parse or robots.txt given up
    SKIPPED = "skipped"  # disallowed by robots.txt; nothing fetched
    HELD = "held"  # robots.txt unavailable: the URL goes back to its host's queue
    SITEMAP = "sitemap"  # a sitemap, read or failed: no page, so it does not count against max_pages


@dataclass(slots=True)
class Tally:
    """This run's counters, read for progress and the summary."""

    fetched: int = 0  # URLs fetched, or failed trying (stored pages and failures)
    pages: int = 0  # page rows stored
    errors: int = 0
    skipped: int = 0
    sitemaps: int = 0  # sitemaps fetched, or failed trying (also counted in `fetched`)
    status_counts: dict[str, int] = field(default_factory=dict)  # "2xx" → pages
    changes: dict[str, int] = field(default_factory=dict)  # a recrawl pass's "changed" → pages


class Pipeline:
    """Takes one leased URL through robots.txt, the fetch, the parser and into the store's batch."""

    def __init__(
        self,
        config: Config,
        *,
        store: Backend,
        fetcher: Fetcher,
        parser: ParsePool,
        robots: RobotsPolicy | None,
        scope: Scope,
        sitemaps: SitemapReader | None = None,
    ) -> None:
        """robots is None when the crawl does not obey robots.txt, sitemaps when it reads no sitemaps."""
        self._config = config
        self._store = store
        self._fetcher = fetcher
        self._parser = parser
        self._robots = robots
        self._scope = scope
        self._sitemaps = sitemaps
        self._token = product_token(config.politeness.user_agent)
        self._recent = RecentUrls()
        self._recent_unfollowed = RecentUrls(capacity=5_000)
        self.tally = Tally()

    async def process(self, lease: Lease, gate: HostGate) -> UrlResult:
        url = lease.url
        if self._robots is not None:
            verdict = await self._robots.verdict(url, gate)
            if verdict.access is RobotsAccess.GIVEN_UP:
                assert verdict.failure is not None
                failure = verdict.failure
                self.tally.fetched += 1
                if lease.kind == SITEMAP and self._sitemaps is not None:
                    self.tally.sitemaps += 1
                    failure = self._sitemaps.fetch_failed(lease, failure)
                    self._fail(lease, failure.kind, failure.message, failure.attempts)
                    return UrlResult.SITEMAP
                self._fail(lease, failure.kind, failure.message, failure.attempts)
                return UrlResult.FAILED
            if verdict.access is RobotsAccess.HOLD:
                self._robots.hold_host(lease.host, url)
                return UrlResult.HELD
            if verdict.access is RobotsAccess.DISALLOWED:
                self._store.set_state(lease.url_id, "skipped", SkipReason.ROBOTS)
                self.tally.skipped += 1
                return UrlResult.SKIPPED

        self.tally.fetched += 1
        if lease.kind == SITEMAP and self._sitemaps is not None:
            return await self._read_sitemap(lease, gate, self._sitemaps)
        redirects = _LeaseRedirects(self._scope, self._robots, lease.depth, gate, self._store.leases)
        previous = lease.previous
        try:
            result = await follow_redirects(
                self._fetcher, url, gate, policy=redirects, headers=None if previous is None else conditional(previous)
            )
        except FetchError as exc:
            fetch_log.info("GET %s failed: %s", url, exc)
            self._fail(lease, exc.kind, exc.message, exc.attempts)
            return UrlResult.FAILED
        if previous is not None and result.status == 304:  # no body to hash
            return self._unchanged(lease, result)
        content_hash = body_hash(result.body)
        if previous is not None and result.status == previous.status and content_hash == previous.content_hash:
            return self._unchanged(lease, result)

        if lease.depth == 0 and self._sitemaps is not None and self._sitemaps.is_sitemap(result):
            # A seed that answers with a sitemap is read as one (it was fetched under the page's body limit).
            gate.let_go()
            self.tally.sitemaps += 1
            return self._sitemap_outcome(lease, await self._sitemaps.read(lease, result))

        parsed = None
        if 200 <= result.status < 300 and is_html(result.content_type):
            # No more requests for this lease: the host's capacity goes to the next URL while
            # this page is parsed (another worker takes it; there are more workers than slots).
            gate.let_go()
            job = ParseJob(
                result.body, result.content_type, result.final_url, self._config.crawl.max_links_per_page, self._token
            )
            try:
                parsed = await self._parser.parse(job)
            except ParseError as exc:
                self._fail(lease, ErrorKind.PARSE, exc.message, result.attempts)
                return UrlResult.FAILED

        self._record(lease, result, parsed, content_hash)
        return UrlResult.STORED

    def _unchanged(self, lease: Lease, result: FetchResult) -> UrlResult:
        """A recrawl found the stored version again (a 304, or the same status and content)."""
        etag, last_modified = _validators(result.headers)
        self._store.confirm_page(lease.url_id, result.status, etag, last_modified)
        self._count(result.status, "unchanged")
        fetch_log.info("GET %s %d unchanged", lease.url, result.status)
        return UrlResult.STORED

    async def _read_sitemap(self, lease: Lease, gate: HostGate, sitemaps: SitemapReader) -> UrlResult:
        """A sitemap's lease: the same fetch as a page's, up to the protocol's size, then read rather than parsed."""
        self.tally.sitemaps += 1
        # Its urls row's depth is its nesting level, not link hops: redirects are judged as from a seed.
        redirects = _LeaseRedirects(self._scope, self._robots, 0, gate, self._store.leases)
        async with sitemaps.turn(gate):
            try:
                result = await follow_redirects(
                    self._fetcher, lease.url, gate, policy=redirects, max_body=sitemaps.max_bytes
                )
            except FetchError as exc:
                fetch_log.info("GET %s failed: %s", lease.url, exc)
                return self._sitemap_outcome(lease, sitemaps.fetch_failed(lease, exc))
            fetch_log.info("GET %s %d %.0fms (sitemap)", lease.url, result.status, result.elapsed * 1000)
            gate.let_go()
            return self._sitemap_outcome(lease, await sitemaps.read(lease, result))

    def _sitemap_outcome(self, lease: Lease, error: FetchError | None) -> UrlResult:
        if error is not None:
            self._fail(lease, error.kind, error.message, error.attempts)
        return UrlResult.SITEMAP

    def fail_internal(self, lease: Lease, exc: BaseException) -> None:
        """A bug hit this URL: record it as an error row, so it costs one URL, never the crawl."""
        self._fail(lease, ErrorKind.OTHER, f"internal error: {exc!r}", 1)

    def _fail(self, lease: Lease, kind: ErrorKind, message: str, attempts: int) -> None:
        self._store.add_error(lease.url_id, lease.url, kind, message, attempts)
        self.tally.errors += 1

    def _record(self, lease: Lease, result: FetchResult, parsed: ParsedPage | None, content_hash: str) -> None:
        """Store the page (parsed when it is HTML) and queue what it links to."""
        cfg = self._config
        noindex, nofollow = robots_directives(result.header_values("x-robots-tag"), self._token)
        title: str | None = None
        text: str | None = None
        canonical: str | None = None
        links: tuple[tuple[str, bool], ...] = ()
        if parsed is not None:
            title, text, canonical = parsed.title, parsed.text, parsed.canonical
            noindex = noindex or parsed.noindex
            nofollow = nofollow or parsed.nofollow
            # Links are (url, nofollow) pairs already; a page-wide nofollow marks them all.
            links = tuple((url, True) for url, _ in parsed.links) if nofollow else parsed.links
        keep_body = cfg.storage.store_bodies and not noindex
        etag, last_modified = _validators(result.headers)
        gone = lease.previous is not None and result.status in GONE_STATUSES
        page = PageRecord(
            url_id=lease.url_id,
            url=lease.url,
            final_url=result.final_url,
            status=result.status,
            content_type=result.content_type,
            title=title,
            depth=lease.depth,
            fetched_at=utc_now(),
            elapsed_ms=round(result.elapsed * 1000, 3),
            http_version=result.http_version,
            size=len(result.body),
            headers=result.headers,
            redirects=result.redirects,
            noindex=noindex,
            text=None if noindex else text,
            body=result.body if keep_body else None,
            content_hash=content_hash,
            etag=etag,
            last_modified=last_modified,
            canonical=canonical,
            gone=gone,
        )
        if lease.previous is not None:
            change = "gone" if gone else "changed"
            self._store.replace_page(page, links, change)
        else:
            self._store.add_page(page, links)
            change = None
            if self._store.pass_id is not None:
                change = "new"
                self._store.add_change(lease.url_id, change, result.status, page.fetched_at)
        self._count(result.status, change)
        fetch_log.info("GET %s %d %.0fms", lease.url, result.status, result.elapsed * 1000)
        # Same batch as add_page above, with no await in between: page, links, discoveries and
        # the done state commit together or not at all (see Store.flush).
        self._store.add_urls(self._discovered(lease, result, links))

    def _count(self, status: int, change: str | None) -> None:
        tally = self.tally
        tally.pages += 1
        status_class = f"{status // 100}xx"
        tally.status_counts[status_class] = tally.status_counts.get(status_class, 0) + 1
        if change is not None:
            tally.changes[change] = tally.changes.get(change, 0) + 1

    def _discovered(self, lease: Lease, result: FetchResult, links: tuple[tuple[str, bool], ...]) -> list[NewUrl]:
        """The urls rows a page's links and its stopped redirect add, each queued or skipped with its reason."""
        depth = lease.depth + 1
        follow_all = self._config.politeness.follow_nofollow
        scope = self._scope
        first_sight = self._recent.first_sight
        new = [
            NewUrl(url, host_key(url, normalized=True), depth, lease.url_id, "skipped" if reason else "queued", reason)
            for url, link_nofollow in links
            if (follow_all or not link_nofollow) and first_sight(url)
            for reason in (scope.skip_reason(url, depth),)
        ]
        if not follow_all:
            # Every link needs a urls row for its target (links store its id). A nofollow target
            # has its own memory: seen here first, it must still be queued by a followed link later.
            first_unfollowed = self._recent_unfollowed.first_sight
            new += [
                NewUrl(url, host_key(url, normalized=True), depth, lease.url_id, "skipped", reason)
                for url, link_nofollow in links
                if link_nofollow and first_unfollowed(url)
                for reason in (scope.skip_reason(url, depth) or SkipReason.NOFOLLOW,)
            ]
        stopped = result.stopped_redirect
        if stopped is not None:
            target = stopped.target
            if stopped.held:  # queued: fetched once its host's robots.txt answers, or by its host's holder
                new.append(NewUrl(target, host_key(target), lease.depth, lease.url_id, "queued", None))
            else:
                new.append(NewUrl(target, host_key(target), lease.depth, lease.url_id, "skipped", stopped.reason))
        return new


def _validators(headers: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """The response's ETag and Last-Modified, as sent."""
    etag = last_modified = None
    for name, value in headers:
        if name == "etag":
            etag = value
        elif name == "last-modified":
            last_modified = value
    return etag, last_modified


class _LeaseRedirects:
    """The redirect policy of one lease's fetch: scope first, then (among several crawlers) whether the
    target's host is this crawler's, then the target's robots.txt."""

    def __init__(
        self, scope: Scope, robots: RobotsPolicy | None, depth: int, gate: HostGate, leases: HostLeasing | None
    ) -> None:
        """leases: the hosts this crawler holds on a shared database; None when it has every host (SQLite)."""
        self._scope = scope
        self._robots = robots
        self._depth = depth
        self._gate = gate
        self._leases = leases

    async def decide(self, target: str) -> RedirectDecision:
        reason = self._scope.skip_reason(target, self._depth)
        if reason is not None:
            return RedirectDecision.skip(reason)
        if self._leases is not None:
            host = host_key(target)
            # Before robots.txt too: fetching the target's would also be a request to a host not ours.
            # A host held only for robots.txt fetches is not ours either: it is released when they end.
            if host not in self._leases.held or (self._robots is not None and self._robots.borrows(host)):
                return RedirectDecision.hand_over()
        if self._robots is not None:
            verdict = await self._robots.verdict(target, self._gate)
            if verdict.access in (RobotsAccess.HOLD, RobotsAccess.GIVEN_UP):
                # Queued; a given-up target then fails with the robots.txt error like its host's other URLs.
                return RedirectDecision.hold()
            if verdict.access is RobotsAccess.DISALLOWED:
                return RedirectDecision.skip(SkipReason.ROBOTS)
        return RedirectDecision.follow()
