"""Wires config, store, frontier, politeness, robots, fetcher, parser and writer into a running crawl."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import httpx

from crawler import recrawl
from crawler.config import Config
from crawler.errors import NothingToResume
from crawler.frontier import Frontier
from crawler.http.fetcher import Fetcher
from crawler.leased_frontier import LeasedFrontier
from crawler.parsepool import ParsePool
from crawler.pipeline import Pipeline, UrlResult
from crawler.politeness import HostGate, Politeness
from crawler.recrawl import RecrawlRequest
from crawler.resume import ResumeInfo, prepare
from crawler.robots.policy import RobotsPolicy
from crawler.sitemaps.reader import SitemapReader
from crawler.store import Backend, NewUrl, Store
from crawler.urls import Scope, host_key, normalize_url
from crawler.writer import BatchWriter

log = logging.getLogger(__name__)

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
    recrawl_pass: int | None = None  # the recrawl pass this run belonged to
    changes: dict[str, int] = field(default_factory=dict)  # this run's pages of that pass, by change

    @property
    def pages_per_second(self) -> float:
        return self.fetched / self.elapsed if self.elapsed > 0 else 0.0


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
        recrawl: RecrawlRequest | None = None,
    ) -> None:
        """transport and parser replace the real ones (tests); the crawl starts and closes the parser.

        recrawl starts a new recrawl pass over the stored crawl; without it, a run continues
        the pass left unfinished, if there is one (see crawler/recrawl.py).
        """
        self.config = config
        self._recrawl = recrawl
        self._transport = transport
        self.parser = parser if parser is not None else ParsePool(config.crawl.parse_workers)
        self._on_progress = on_progress
        self._say = on_message or (lambda text: None)
        self._progress_interval = progress_interval
        self._stop_grace = stop_grace
        self._scope = Scope.from_config(config.crawl)
        self._stop_requested = asyncio.Event()
        self._queued_at_start = 0

    def request_stop(self) -> None:
        """Stop taking new work; in-flight requests get `stop_grace` seconds to finish."""
        self._stop_requested.set()

    # ---- the run -------------------------------------------------------------------------

    async def run(self, *, require_resume: bool = False) -> CrawlSummary:
        store = await Store.open(self.config.storage.target, lease_seconds=self.config.storage.lease_seconds)
        try:
            return await self._run(store, require_resume=require_resume)
        finally:
            await store.close()

    async def _run(self, store: Backend, *, require_resume: bool) -> CrawlSummary:
        cfg = self.config
        started = time.monotonic()
        if self._recrawl is not None and await store.get_meta("scope") is None:
            raise NothingToResume(f"{store.location} holds no crawl: nothing to recrawl (run `crawler crawl` first)")
        stored = await prepare(store, cfg, self._scope, require_resume=require_resume, say=self._say)
        resumed = stored.resumed
        continued = await recrawl.open_pass(store)
        kind = "crawl" if continued is None and self._recrawl is None else "recrawl"
        run_id = await store.start_run(json.dumps(_config_json(cfg), default=str), kind)
        pass_state = await recrawl.begin(
            store, run_id, continued, self._recrawl, keep_history=cfg.storage.keep_history, say=self._say
        )
        fetched, queued = stored.fetched, stored.queued
        if pass_state is not None:
            # Stored pages queued again were counted as fetched when first fetched.
            fetched += pass_state.revisits - pass_state.due
            queued += pass_state.due

        self.store = store
        self.politeness = Politeness(cfg.politeness)
        limits = {"max_pages": cfg.crawl.max_pages, "max_pages_per_host": cfg.crawl.max_pages_per_host}
        self.frontier: Frontier
        if store.leases is not None:
            # A shared database: this process works on the hosts it leases (crawler/leased_frontier.py).
            self.frontier = LeasedFrontier(
                store,
                store.leases,
                self.politeness,
                max_hold=cfg.storage.max_hold_seconds,
                max_pages=cfg.crawl.max_pages,
                max_pages_per_host=cfg.crawl.max_pages_per_host,
            )
        else:
            self.frontier = Frontier(store, self.politeness, **limits)
        self.frontier.revisiting = pass_state is not None
        self.writer = BatchWriter(store, self.frontier)
        self.frontier.on_starving = self.writer.want_flush
        await self.frontier.load(fetched=fetched)
        self._queued_at_start = queued
        self._add_seeds()
        self.fetcher = Fetcher(
            cfg.http,
            cfg.politeness.user_agent,
            concurrency=cfg.politeness.concurrency,
            transport=self._transport,
            feedback=self.politeness,
            max_retry_after=cfg.politeness.max_retry_after,
        )
        sitemaps = SitemapReader(store, self._scope) if cfg.crawl.sitemaps else None
        robots = None
        if cfg.politeness.obey_robots:
            on_sitemaps = sitemaps.named_by_robots if sitemaps is not None else None
            robots = RobotsPolicy(
                cfg.politeness, self.fetcher, self.politeness, store, on_sitemaps=on_sitemaps, leases=store.leases
            )
        self.pipeline = Pipeline(
            cfg,
            store=store,
            fetcher=self.fetcher,
            parser=self.parser,
            robots=robots,
            scope=self._scope,
            sitemaps=sitemaps,
        )
        await self.writer.flush()
        if resumed is not None and not self._queued():
            self._say(f"nothing left to fetch in {store.location} ({resumed.done:,} done); --fresh starts over")

        if pass_state is None:
            # A first crawl parses from its first page on; a recrawl pass starts the parsers
            # with its first changed page, if it has one.
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
        if isinstance(self.frontier, LeasedFrontier):
            await self.frontier.settle()

        if self._stop_requested.is_set():
            outcome = Outcome.INTERRUPTED
        elif self.frontier.limit_reached():
            outcome = Outcome.LIMIT
        else:
            outcome = Outcome.FINISHED
        tally = self.pipeline.tally
        await store.finish_run(outcome, tally.pages)
        if pass_state is not None and outcome is not Outcome.INTERRUPTED:
            await recrawl.end(store)
        elapsed = time.monotonic() - started
        if outcome is not Outcome.INTERRUPTED:
            await self.writer.index_backlog(self._say)
        counts = await store.state_counts()
        if self._on_progress is not None:
            self._on_progress(self._snapshot(started))
        return CrawlSummary(
            outcome=outcome,
            db_path=str(store.location),
            fetched=tally.fetched,
            pages=tally.pages,
            errors=tally.errors,
            skipped=tally.skipped,
            queued_left=counts["queued"],
            elapsed=elapsed,
            resumed=resumed,
            status_counts=dict(sorted(tally.status_counts.items())),
            recrawl_pass=None if pass_state is None else pass_state.pass_id,
            changes={change: tally.changes.get(change, 0) for change in recrawl.CHANGES} if pass_state else {},
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
            # Unless processing returns, the lease counts as fetched, as a failure does.
            result = UrlResult.FAILED
            try:
                result = await self.pipeline.process(lease, gate)
            except asyncio.CancelledError:
                # Interrupted mid-request: leave the URL in flight; resume puts it back in the queue.
                raise
            except Exception as exc:  # a bug must cost one URL, never the crawl
                log.exception("unexpected error on %s", lease.url)
                self.pipeline.fail_internal(lease, exc)
            finally:
                gate.release()
                if result is UrlResult.HELD:
                    self.frontier.requeue(lease)
                else:
                    # Skipped URLs and sitemaps are no pages: max_pages does not count them.
                    counts = result is not UrlResult.SKIPPED and result is not UrlResult.SITEMAP
                    self.frontier.complete(lease, fetched=counts)
                self.writer.rows_added()

    # ---- progress ------------------------------------------------------------------------

    def _queued(self) -> int:
        """URLs queued this run and not yet taken (fetched or skipped)."""
        tally = self.pipeline.tally
        return max(self._queued_at_start + self.writer.urls_queued - tally.fetched - tally.skipped, 0)

    async def _reporter(self, started: float) -> None:
        if self._on_progress is None:
            return
        while True:
            await asyncio.sleep(self._progress_interval)
            self._on_progress(self._snapshot(started))

    def _snapshot(self, started: float) -> Progress:
        tally = self.pipeline.tally
        return Progress(
            fetched=tally.fetched,
            errors=tally.errors,
            skipped=tally.skipped,
            queued=self._queued(),
            in_flight=self.frontier.leased,
            elapsed=time.monotonic() - started,
        )


def _config_json(config: Config) -> dict[str, object]:
    data = asdict(config)
    data["storage"]["path"] = str(data["storage"]["path"])
    return data
