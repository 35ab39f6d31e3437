"""The crawl's robots.txt policy: a verdict per URL, misses counted, hosts held, and giving up."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from crawler.config import PolitenessConfig
from crawler.errors import ErrorKind, FetchError
from crawler.http.fetcher import Fetcher, Gate
from crawler.http.redirects import follow_redirects
from crawler.politeness import Politeness
from crawler.robots.cache import RobotsCache, RobotsFetch
from crawler.robots.hops import RobotsHops, recorded_answer
from crawler.robots.rules import MAX_ROBOTS_BYTES, RobotsResponse, RobotsRules
from crawler.store import HostLeasing
from crawler.store.records import RobotsRecord
from crawler.urls import host_key, origin

log = logging.getLogger(__name__)

ROBOTS_MAX_REDIRECTS = 5  # RFC 9309 §2.3.1.2


class RobotsGate(Gate, Protocol):
    """A worker's politeness gate: a turn per request, and letting go of its host while it waits."""

    def let_go(self) -> None: ...


class RobotsLog(Protocol):
    """Where each robots.txt fetch is recorded, and read back before fetching again (the store)."""

    def add_robots(self, record: RobotsRecord) -> None: ...

    async def stored_robots(self, origin: str) -> RobotsRecord | None: ...


@dataclass(slots=True)
class _Attempt:
    """What one robots.txt fetch got, for its record."""

    made: bool = False
    response: RobotsResponse | None = None
    error_kind: ErrorKind | None = None
    fetched_at: str = ""  # the record's time when the answer is another origin's record (see RobotsHops)


class RobotsAccess(Enum):
    ALLOWED = "allowed"
    DISALLOWED = "disallowed"
    HOLD = "hold"  # robots.txt is unavailable for now: ask again later
    GIVEN_UP = "given_up"  # robots.txt was unreachable robots_max_attempts times in a row this run


@dataclass(frozen=True, slots=True)
class RobotsVerdict:
    access: RobotsAccess
    failure: FetchError | None = None  # GIVEN_UP: the error to record for the URL


_ALLOWED = RobotsVerdict(RobotsAccess.ALLOWED)
_DISALLOWED = RobotsVerdict(RobotsAccess.DISALLOWED)
_HOLD = RobotsVerdict(RobotsAccess.HOLD)


class RobotsPolicy:
    """Whether the crawl may fetch a URL, going by its origin's robots.txt (RFC 9309).

    robots.txt is fetched through the fetcher under the asking worker's gate, which every
    call passes explicitly; each fetch is recorded in the store once, with what rebuilds its
    rules. Before fetching, the store's record is looked up: one still within robots_ttl (or,
    unreachable, within robots_retry_interval) is used instead, so a resumed crawl, and every
    crawler sharing a database, fetch an origin's robots.txt once per lifetime. The record also
    carries the unreachable fetches in a row, so robots_max_attempts counts across them.
    """

    def __init__(
        self,
        config: PolitenessConfig,
        fetcher: Fetcher,
        politeness: Politeness,
        store: RobotsLog,
        *,
        on_sitemaps: Callable[[str, Sequence[str]], None] | None = None,
        leases: HostLeasing | None = None,
    ) -> None:
        """on_sitemaps(origin, urls) hears the Sitemap: lines of each robots.txt fetched, and once per run
        those of one rebuilt from its record (the sitemap reader). leases: the hosts this crawler holds
        on a shared database, whose robots.txt redirects into other hosts RobotsHops decides; None
        when it has every host (SQLite), and follows every redirect."""
        self._config = config
        self._on_sitemaps = on_sitemaps
        self._fetcher = fetcher
        self._politeness = politeness
        self._store = store
        # One clock for both: a hold compares the cache's retry time with the host's pause.
        self.cache = RobotsCache(
            config.user_agent,
            ttl=config.robots_ttl,
            retry_interval=config.robots_retry_interval,
            clock=politeness.clock,
            lookup=self._recorded,
        )
        self._misses: dict[str, int] = {}  # origin → unreachable robots.txt fetches in a row
        self._errors: dict[str, FetchError] = {}  # origin → why its robots.txt fetch last failed
        self._announced: set[str] = set()  # origins whose Sitemap: lines on_sitemaps heard this run
        self._hops = RobotsHops(config, leases, store) if leases is not None else None

    def borrows(self, host: str) -> bool:
        """Whether this crawler holds host's lease only for robots.txt fetches (see RobotsHops)."""
        return self._hops is not None and self._hops.borrows(host)

    async def verdict(self, url: str, gate: RobotsGate) -> RobotsVerdict:
        """The verdict for a normalised URL (a lease's, or a redirect target), fetching robots.txt if need be."""
        site = origin(url, normalized=True)
        if self._given_up(site):
            return self._give_up(site)
        rules = await self._rules_for(url, site, gate)
        if rules.unavailable:
            if self._given_up(site):  # that fetch was the last try
                return self._give_up(site)
            return _HOLD
        return _ALLOWED if rules.allowed(url) else _DISALLOWED

    def hold_host(self, host: str, url: str) -> None:
        """robots.txt is unreachable: no request to the host until it may be retried."""
        site = origin(url)
        now = self._politeness.clock()
        retry_at = self.cache.retry_at(site)
        wait = (retry_at - now) if retry_at is not None else self._config.robots_retry_interval
        wait = max(wait, 0.0)
        if self._politeness.slot(host).paused_until < now + wait:
            rules = self.cache.cached(site)
            why = rules.describe() if rules is not None else "unavailable"
            log.warning("%s/robots.txt: %s; its URLs wait, asking again in %.3gs", site, why, wait)
        self._politeness.pause(host, wait)

    def _given_up(self, site: str) -> bool:
        return self._misses.get(site, 0) >= self._config.robots_max_attempts

    def _give_up(self, site: str) -> RobotsVerdict:
        """RFC 9309 says stay out while robots.txt is unreachable; after the last try, say why."""
        exc = self._errors.get(site)
        detail = exc.message if exc is not None else "no usable answer"
        failure = FetchError(
            exc.kind if exc is not None else ErrorKind.OTHER,
            f"not fetched: {site}/robots.txt was unreachable {self._misses[site]} times: {detail}",
            attempts=exc.attempts if exc is not None else 0,
        )
        return RobotsVerdict(RobotsAccess.GIVEN_UP, failure)

    async def _rules_for(self, url: str, site: str, gate: RobotsGate) -> RobotsRules:
        """The robots.txt rules for url's origin `site`, fetched under gate if need be.

        When another worker is fetching them (a redirect hop into a host whose robots.txt
        is on its way), the gate first lets go of its host: nobody waits for robots.txt
        while holding a host's capacity (see Politeness.fetching_robots).
        """
        host = host_key(url, normalized=True)
        while (rules := self.cache.cached(site)) is None:
            if self.cache.fetching(site):
                gate.let_go()
                await self.cache.wait(site)
                continue
            attempt = _Attempt()
            with self._politeness.fetching_robots(host):
                rules = await self.cache.rules_for(site, self._fetch_under(gate, attempt))
            if attempt.made:
                self._fetched(site, rules, attempt)
            if self._on_sitemaps is not None and rules.sitemaps and (attempt.made or site not in self._announced):
                # Rules rebuilt from a record name their sitemaps here too: the reader learns
                # which robots.txt named each (the urls rows already exist, so nothing is added twice).
                self._announced.add(site)
                self._on_sitemaps(site, rules.sitemaps)
            break
        self._politeness.set_crawl_delay(host, rules.crawl_delay)
        return rules

    def _fetched(self, site: str, rules: RobotsRules, attempt: _Attempt) -> None:
        """Count and record one fetch (only the fetching worker calls this, so once per fetch)."""
        if rules.unavailable:
            self._misses[site] = self._misses.get(site, 0) + 1
        else:
            self._misses.pop(site, None)
            self._errors.pop(site, None)
        resp = attempt.response
        ok = resp is not None and resp.status is not None and 200 <= resp.status < 300
        self._store.add_robots(
            RobotsRecord(
                site,
                rules.status,
                rules.crawl_delay,
                rules.sitemaps,
                rules.describe(),
                body=resp.body if resp is not None and ok else b"",
                error=resp.error if resp is not None else rules.error,
                error_kind=attempt.error_kind.value if attempt.error_kind is not None else None,
                misses=self._misses.get(site, 0),
                fetched_at=attempt.fetched_at,
            )
        )

    async def _recorded(self, site: str) -> tuple[RobotsResponse, float] | None:
        """The store's record of site's robots.txt as the answer it was, with its age (RobotsCache's lookup);
        its unreachable fetches in a row count on here."""
        record = await self._store.stored_robots(site)
        if record is None:
            return None
        if record.misses:
            self._misses[site] = max(self._misses.get(site, 0), record.misses)
            kind = _error_kind(record.error_kind)
            if site not in self._errors or kind is not None:
                self._errors[site] = FetchError(kind or ErrorKind.OTHER, record.error or "no usable answer")
        else:
            self._misses.pop(site, None)
            self._errors.pop(site, None)
        resp = recorded_answer(record)
        return resp, resp.age

    def _fetch_under(self, gate: RobotsGate, attempt: _Attempt) -> RobotsFetch:
        """A robots.txt fetch that takes its turns at gate, and notes what it got in attempt."""

        async def fetch(robots_url: str) -> RobotsResponse:
            attempt.made = True
            shared = self._hops
            hops = shared.policy() if shared is not None else None
            try:
                # RFC 9309 §2.3.1.2 and §2.5: follow 5 redirects, read (at least) 500 KiB.
                result = await follow_redirects(
                    self._fetcher,
                    robots_url,
                    gate,
                    policy=hops,
                    max_redirects=ROBOTS_MAX_REDIRECTS,
                    truncate_at=MAX_ROBOTS_BYTES + 1,
                )
            except FetchError as exc:
                # A copy without the traceback, whose frames would outlive the fetch.
                self._errors[origin(robots_url)] = FetchError(exc.kind, exc.message, attempts=exc.attempts)
                too_many = exc.kind is ErrorKind.TOO_MANY_REDIRECTS
                attempt.error_kind = exc.kind
                attempt.response = RobotsResponse(exc.status, b"", exc.message, too_many_redirects=too_many)
            else:
                stopped = result.stopped_redirect
                if stopped is None:
                    attempt.response = RobotsResponse(result.status, result.body, None)
                elif hops is not None and hops.record is not None:
                    # The target's record is the answer, as it would be fetched: it stands for this origin's too.
                    attempt.response = recorded_answer(hops.record)
                    attempt.error_kind = _error_kind(hops.record.error_kind)
                    attempt.fetched_at = hops.record.fetched_at
                else:
                    message = f"redirected to {stopped.target}, whose host another crawler holds"
                    self._errors[origin(robots_url)] = FetchError(ErrorKind.OTHER, message, attempts=result.attempts)
                    attempt.response = RobotsResponse(result.status, b"", message)
            finally:
                if shared is not None and hops is not None:
                    await shared.end(hops)
            return attempt.response

        return fetch


def _error_kind(value: str | None) -> ErrorKind | None:
    try:
        return ErrorKind(value) if value is not None else None
    except ValueError:  # a kind this version does not know
        return None
