"""Wires config, store, frontier, politeness, robots, fetcher, parser and writer into a running crawl."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import httpx

from crawler.config import Config
from crawler.errors import ErrorKind, FetchError, ParseError, SkipReason
from crawler.frontier import Frontier, RecentUrls
from crawler.http.fetcher import Fetcher, FetchResult
from crawler.http.redirects import RedirectDecision, follow_redirects
from crawler.parse import ParsedPage, is_html, robots_directives
from crawler.parsepool import ParseJob, ParsePool
from crawler.politeness import HostGate, Lease, Politeness
from crawler.resume import ResumeInfo, prepare
from crawler.robots import MAX_ROBOTS_BYTES, RobotsCache, RobotsResponse, RobotsRules, product_token
from crawler.store import NewUrl, PageRecord, Store, utc_now
from crawler.urls import Scope, host_key, normalize_url, origin
from crawler.writer import BatchWriter

log = logging.getLogger(__name__)
fetch_log = logging.getLogger("crawler.fetch")

PARSE_SLACK = 4  # workers beyond `concurrency` per parser process, to fetch while pages are parsed


class Outcome(StrEnum):
    FINISHED = "finished"  # nothing left to fetch
    LIMIT = "limit"  # max_pages reached; raising it lets a resume continue
    INTERRUPTED = "interrupted"  # stopped by a signal; resumable


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for the live display."""

    fetched: int  # pages fetched this run
    errors: int
    skipped: int
    queued: int
    in_flight: int
    elapsed: float

    @property
    def pages_per_second(self) -> float:
        return self.fetched / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class CrawlSummary:
    outcome: Outcome
    db_path: str
    fetched: int  # pages fetched this run (stored pages and failures)
    pages: int  # page rows stored this run
    errors: int
    skipped: int
    queued_left: int
    elapsed: float
    resumed: ResumeInfo | None = None
    status_counts: dict[str, int] = field(default_factory=dict)

    @property
    def pages_per_second(self) -> float:
        return self.fetched / self.elapsed if self.elapsed > 0 else 0.0


# The gate of the worker whose request needs robots.txt; the robots fetch runs under it,
# in that worker's task (RobotsCache calls the fetch function from the caller's task).
_current_gate: contextvars.ContextVar[HostGate] = contextvars.ContextVar("current_gate")

class _Result(StrEnum):
    FETCHED = "fetched"
    SKIPPED = "skipped"
    REQUEUED = "requeued"


class Crawl:
    """One crawl run over one database. `await Crawl(config).run()` returns its summary."""

    def __init__(
        self,
        config: Config,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_message: Callable[[str], None] | None = None,
        progress_interval: float = 0.5,
        stop_grace: float = 5.0,
        parser: ParsePool | None = None,
    ) -> None:
        """transport and parser replace the real ones (tests); the crawl starts and closes the parser."""
        self.config = config
        self._transport = transport
        self.parser = parser if parser is not None else ParsePool(config.crawl.parse_workers)
        self._on_progress = on_progress
        self._say = on_message or (lambda text: None)
        self._progress_interval = progress_interval
        self._stop_grace = stop_grace
        self._scope = Scope.from_config(config.crawl)
        self._token = product_token(config.politeness.user_agent)
        self._stop_requested = asyncio.Event()
        self._fetched = self._pages = self._errors = self._skipped = 0
        self._queued_at_start = 0
        self._recent = RecentUrls()
        self._recent_unfollowed = RecentUrls(capacity=5_000)
        self._robots_misses: dict[str, int] = {}  # origin → unreachable robots.txt fetches in a row
        self._robots_errors: dict[str, FetchError] = {}  # origin → why its robots.txt fetch last failed
        self.status_counts: dict[str, int] = {}

    def request_stop(self) -> None:
        """Stop taking new work; in-flight requests get `stop_grace` seconds to finish."""
        self._stop_requested.set()

    # ---- the run -------------------------------------------------------------------------

    async def run(self, *, require_resume: bool = False) -> CrawlSummary:
        cfg = self.config
        store = await Store.open(cfg.storage.path)
        try:
            return await self._run(store, require_resume=require_resume)
        finally:
            await store.close()

    async def _run(self, store: Store, *, require_resume: bool) -> CrawlSummary:
        cfg = self.config
        started = time.monotonic()
        stored = await prepare(store, cfg, self._scope, require_resume=require_resume, say=self._say)
        resumed = stored.resumed
        await store.start_run(json.dumps(_config_json(cfg), default=str))

        self.store = store
        self.politeness = Politeness(cfg.politeness)
        self.frontier = Frontier(
            store,
            self.politeness,
            max_pages=cfg.crawl.max_pages,
            max_pages_per_host=cfg.crawl.max_pages_per_host,
        )
        self.writer = BatchWriter(store, self.frontier)
        self.frontier.on_starving = self.writer.want_flush
        await self.frontier.load(fetched=stored.fetched)
        self._queued_at_start = stored.queued
        self._add_seeds()
        self.fetcher = Fetcher(
            cfg.http,
            cfg.politeness.user_agent,
            concurrency=cfg.politeness.concurrency,
            transport=self._transport,
            feedback=self.politeness,
            max_retry_after=cfg.politeness.max_retry_after,
        )
        self.robots = RobotsCache(
            self._fetch_robots,
            cfg.politeness.user_agent,
            ttl=cfg.politeness.robots_ttl,
            retry_interval=cfg.politeness.robots_retry_interval,
        )
        await self.writer.flush()
        if resumed is not None and not self._queued():
            self._say(f"nothing left to fetch in {store.path} ({resumed.done:,} done); --fresh starts over")

        await self.parser.start()
        writer = asyncio.create_task(self.writer.run(), name="writer")
        reporter = asyncio.create_task(self._reporter(started), name="progress")
        # Workers waiting for their page's parse hold no request slot, so extra workers keep
        # `concurrency` requests in flight meanwhile (the semaphore still caps them).
        n_workers = cfg.politeness.concurrency + PARSE_SLACK * self.parser.workers
        workers = [asyncio.create_task(self._worker(), name=f"worker-{i}") for i in range(n_workers)]
        stopper = asyncio.create_task(self._stop_when_asked(workers), name="stopper")
        try:
            await asyncio.wait(workers)
        finally:
            for task in (*workers, stopper, reporter):
                task.cancel()
            await asyncio.gather(*workers, stopper, reporter, return_exceptions=True)
            await self.parser.close()
            self.writer.stop()
            await asyncio.gather(writer, return_exceptions=True)
            await self.fetcher.aclose()
        for task in (writer, *workers):
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if self.frontier.error is not None:
            raise self.frontier.error
        await self.writer.flush()

        if self._stop_requested.is_set():
            outcome = Outcome.INTERRUPTED
        elif self.frontier.limit_reached():
            outcome = Outcome.LIMIT
        else:
            outcome = Outcome.FINISHED
        await store.finish_run(outcome, self._pages)
        elapsed = time.monotonic() - started
        if outcome is not Outcome.INTERRUPTED:
            await self.writer.index_backlog(self._say)
        counts = await store.state_counts()
        if self._on_progress is not None:
            self._on_progress(self._snapshot(started))
        return CrawlSummary(
            outcome=outcome,
            db_path=str(store.path),
            fetched=self._fetched,
            pages=self._pages,
            errors=self._errors,
            skipped=self._skipped,
            queued_left=counts["queued"],
            elapsed=elapsed,
            resumed=resumed,
            status_counts=dict(sorted(self.status_counts.items())),
        )

    def _add_seeds(self) -> None:
        for seed in self.config.crawl.seeds:
            url = normalize_url(seed)
            assert url is not None, "config validation guarantees seeds are valid"
            reason = self._scope.skip_reason(url, 0)
            self.store.add_urls([NewUrl(url, host_key(url), 0, None, "skipped" if reason else "queued", reason)])

    async def _stop_when_asked(self, workers: list[asyncio.Task[None]]) -> None:
        await self._stop_requested.wait()
        self.frontier.close()
        _, pending = await asyncio.wait(workers, timeout=self._stop_grace)
        for task in pending:
            task.cancel()

    # ---- workers -------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            await self.writer.wait_for_room()
            lease = await self.frontier.next()
            if lease is None:
                return
            gate = HostGate(self.politeness, lease)
            result = _Result.FETCHED
            try:
                result = await self._process(lease, gate)
            except asyncio.CancelledError:
                # Interrupted mid-request: leave the URL in flight; resume puts it back in the queue.
                raise
            except Exception as exc:  # a bug must cost one URL, never the crawl
                log.exception("unexpected error on %s", lease.url)
                self.store.add_error(lease.url_id, lease.url, ErrorKind.OTHER, f"internal error: {exc!r}", 1)
                self._errors += 1
            finally:
                gate.release()
                if result is _Result.REQUEUED:
                    self.frontier.requeue(lease)
                else:
                    self.frontier.complete(lease, fetched=result is _Result.FETCHED)
                self.writer.rows_added()

    async def _process(self, lease: Lease, gate: HostGate) -> _Result:
        url = lease.url
        if self.config.politeness.obey_robots:
            site = origin(url, normalized=True)  # a lease's URL is stored normalised
            if self._robots_given_up(site):
                self._fail_unreachable_robots(lease, site)
                return _Result.FETCHED
            rules = await self._rules_for(url, gate)
            if rules.unavailable:
                if self._robots_given_up(site):  # that fetch was the last try
                    self._fail_unreachable_robots(lease, site)
                    return _Result.FETCHED
                self._hold_host(lease.host, url)
                return _Result.REQUEUED
            if not rules.allowed(url):
                self.store.set_state(lease.url_id, "skipped", SkipReason.ROBOTS)
                self._skipped += 1
                return _Result.SKIPPED
        self._fetched += 1
        try:
            result = await follow_redirects(self.fetcher, url, gate, policy=_LeaseRedirects(self, lease, gate))
        except FetchError as exc:
            fetch_log.info("GET %s failed: %s", url, exc)
            self.store.add_error(lease.url_id, url, exc.kind, exc.message, exc.attempts)
            self._errors += 1
            return _Result.FETCHED
        parsed = None
        if 200 <= result.status < 300 and is_html(result.content_type):
            # No more requests for this lease: the host's capacity goes to the next URL while
            # this page is parsed (another worker takes it; there are more workers than slots).
            gate.let_go()
            job = ParseJob(
                result.body, result.content_type, result.final_url, self.config.crawl.max_links_per_page, self._token
            )
            try:
                parsed = await self.parser.parse(job)
            except ParseError as exc:
                self.store.add_error(lease.url_id, url, ErrorKind.PARSE, exc.message, result.attempts)
                self._errors += 1
                return _Result.FETCHED
        self._record(lease, result, parsed)
        return _Result.FETCHED

    def _robots_given_up(self, site: str) -> bool:
        """robots.txt of site was unreachable robots_max_attempts times in a row this run."""
        return self._robots_misses.get(site, 0) >= self.config.politeness.robots_max_attempts

    def _fail_unreachable_robots(self, lease: Lease, site: str) -> None:
        """RFC 9309 says stay out while robots.txt is unreachable; after the last try, record why."""
        exc = self._robots_errors.get(site)
        tries = self._robots_misses[site]
        detail = exc.message if exc is not None else "no usable answer"
        self._fetched += 1
        self.store.add_error(
            lease.url_id,
            lease.url,
            exc.kind if exc is not None else ErrorKind.OTHER,
            f"not fetched: {site}/robots.txt was unreachable {tries} times: {detail}",
            exc.attempts if exc is not None else 0,
        )
        self._errors += 1

    def _hold_host(self, host: str, url: str) -> None:
        """robots.txt is unreachable: no request to the host until it may be retried."""
        site = origin(url)
        retry_at = self.robots.retry_at(site)
        wait = (retry_at - time.monotonic()) if retry_at is not None else self.config.politeness.robots_retry_interval
        wait = max(wait, 0.0)
        if self.politeness.slot(host).paused_until < time.monotonic() + wait:
            rules = self.robots.cached(site)
            why = rules.describe() if rules is not None else "unavailable"
            log.warning("%s/robots.txt: %s; its URLs wait, asking again in %.3gs", site, why, wait)
        self.politeness.pause(host, wait)

    async def _rules_for(self, url: str, gate: HostGate) -> RobotsRules:
        """The robots.txt rules for url's origin, fetched under gate if need be.

        When another worker is fetching them (a redirect hop into a host whose robots.txt
        is on its way), the gate first lets go of its host: nobody waits for robots.txt
        while holding a host's capacity (see Politeness.fetching_robots).
        """
        site = origin(url, normalized=True)  # a lease's URL or a redirect target (join_url's)
        host = host_key(url, normalized=True)
        while (rules := self.robots.cached(site)) is None:
            if self.robots.fetching(site):
                gate.let_go()
                await self.robots.wait(site)
                continue
            token = _current_gate.set(gate)
            try:
                with self.politeness.fetching_robots(host):
                    rules = await self.robots.rules_for(site)
            finally:
                _current_gate.reset(token)
            # Only the fetching worker gets here, so each fetch is recorded and counted once.
            self.store.add_robots(site, rules.status, rules.crawl_delay, rules.sitemaps, rules.describe())
            if rules.unavailable:
                self._robots_misses[site] = self._robots_misses.get(site, 0) + 1
            else:
                self._robots_misses.pop(site, None)
                self._robots_errors.pop(site, None)
            break
        self.politeness.set_crawl_delay(host, rules.crawl_delay)
        return rules

    async def _fetch_robots(self, robots_url: str) -> RobotsResponse:
        gate = _current_gate.get()
        try:
            # RFC 9309 §2.3.1.2 and §2.5: follow 5 redirects, read (at least) 500 KiB.
            result = await follow_redirects(
                self.fetcher, robots_url, gate, max_redirects=5, truncate_at=MAX_ROBOTS_BYTES + 1
            )
        except FetchError as exc:
            # A copy without the traceback, whose frames would outlive the fetch.
            self._robots_errors[origin(robots_url)] = FetchError(exc.kind, exc.message, attempts=exc.attempts)
            too_many = exc.kind is ErrorKind.TOO_MANY_REDIRECTS
            return RobotsResponse(exc.status, b"", exc.message, too_many_redirects=too_many)
        if result.stopped_redirect is not None:  # pragma: no cover - robots fetch has no check
            return RobotsResponse(None, b"", "redirect not followed")
        return RobotsResponse(result.status, result.body, None)

    async def _redirect_decision(self, target: str, lease: Lease, gate: HostGate) -> RedirectDecision:
        """Whether to follow a redirect; its target host's robots.txt is fetched first if need be."""
        reason = self._scope.skip_reason(target, lease.depth)
        if reason is not None:
            return RedirectDecision.skip(reason)
        if self.config.politeness.obey_robots:
            if self._robots_given_up(origin(target)):
                return RedirectDecision.hold()  # queued, to fail with the robots.txt error like its host's other URLs
            rules = await self._rules_for(target, gate)
            if rules.unavailable:
                return RedirectDecision.hold()
            if not rules.allowed(target):
                return RedirectDecision.skip(SkipReason.ROBOTS)
        return RedirectDecision.follow()

    # ---- recording -----------------------------------------------------------------------

    def _record(self, lease: Lease, result: FetchResult, parsed: ParsedPage | None) -> None:
        """Store the page (parsed when it is HTML) and queue what it links to."""
        cfg = self.config
        content_type = result.content_type
        noindex, nofollow = robots_directives(result.header_values("x-robots-tag"), self._token)
        title: str | None = None
        text: str | None = None
        links: tuple[tuple[str, bool], ...] = ()
        if parsed is not None:
            title, text = parsed.title, parsed.text
            noindex = noindex or parsed.noindex
            nofollow = nofollow or parsed.nofollow
            # Links are (url, nofollow) pairs already; a page-wide nofollow marks them all.
            links = tuple((url, True) for url, _ in parsed.links) if nofollow else parsed.links
        keep_body = cfg.storage.store_bodies and not noindex
        self.store.add_page(
            PageRecord(
                url_id=lease.url_id,
                url=lease.url,
                final_url=result.final_url,
                status=result.status,
                content_type=content_type,
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
            ),
            links,
        )
        self._pages += 1
        status_class = f"{result.status // 100}xx"
        self.status_counts[status_class] = self.status_counts.get(status_class, 0) + 1
        fetch_log.info("GET %s %d %.0fms", lease.url, result.status, result.elapsed * 1000)

        depth = lease.depth + 1
        follow_all = cfg.politeness.follow_nofollow
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
            if stopped.held:
                new.append(NewUrl(target, host_key(target), lease.depth, lease.url_id, "queued", None))
            else:
                new.append(NewUrl(target, host_key(target), lease.depth, lease.url_id, "skipped", stopped.reason))
        # Same batch as add_page above, with no await in between: page, links, discoveries and
        # the done state commit together or not at all (see Store.flush).
        self.store.add_urls(new)

    # ---- progress ------------------------------------------------------------------------

    def _queued(self) -> int:
        """URLs queued this run and not yet taken (fetched or skipped)."""
        return max(self._queued_at_start + self.writer.urls_queued - self._fetched - self._skipped, 0)

    async def _reporter(self, started: float) -> None:
        if self._on_progress is None:
            return
        while True:
            await asyncio.sleep(self._progress_interval)
            self._on_progress(self._snapshot(started))

    def _snapshot(self, started: float) -> Progress:
        return Progress(
            fetched=self._fetched,
            errors=self._errors,
            skipped=self._skipped,
            queued=self._queued(),
            in_flight=self.frontier.leased,
            elapsed=time.monotonic() - started,
        )


class _LeaseRedirects:
    """The redirect policy of one lease's fetch."""

    def __init__(self, crawl: Crawl, lease: Lease, gate: HostGate) -> None:
        self._crawl, self._lease, self._gate = crawl, lease, gate

    async def decide(self, target: str) -> RedirectDecision:
        return await self._crawl._redirect_decision(target, self._lease, self._gate)


def _config_json(config: Config) -> dict[str, object]:
    data = asdict(config)
    data["storage"]["path"] = str(data["storage"]["path"])
    return data
