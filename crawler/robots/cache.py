"""The per-origin robots.txt cache: one fetch per origin at a time, rules kept for their lifetime."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from crawler.robots.rules import RobotsResponse, RobotsRules

# GET a robots.txt URL, following its redirects, under the calling worker's gate.
RobotsFetch = Callable[[str], Awaitable[RobotsResponse]]
# An origin's robots.txt answer recorded earlier (by a resumed crawl's earlier run, or by another
# crawler on a shared database) and its age in seconds; None when none was recorded.
RobotsLookup = Callable[[str], Awaitable[tuple[RobotsResponse, float] | None]]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    rules: RobotsRules
    expires: float


class RobotsCache:
    """robots.txt rules per origin, fetched by one caller at a time and kept for a while.

    2xx and 4xx outcomes are kept `ttl` seconds, unavailable ones only
    `retry_interval` seconds, so the next `rules_for` after that asks again.

    The first caller for an origin fetches robots.txt in its own task, with the
    fetch function it passed (so the request runs under that caller's politeness
    gate, and is cancelled with it);
    callers arriving meanwhile wait for its answer.  If the fetching caller is
    cancelled, one of the waiting callers fetches instead.

    With a `lookup`, a missing origin is first looked up there: an answer recorded less than
    its lifetime ago is kept for the rest of that lifetime and nothing is fetched.
    """

    def __init__(
        self,
        user_agent: str,
        *,
        ttl: float = 86400.0,
        retry_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        lookup: RobotsLookup | None = None,
    ) -> None:
        self._user_agent = user_agent
        self._lookup = lookup
        self._ttl = ttl  # RFC 9309 §2.4: at most 24 h; the config enforces it
        self._retry_interval = retry_interval
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # origin → resolved with the rules, or with None if the fetching caller gave up
        self._inflight: dict[str, asyncio.Future[RobotsRules | None]] = {}

    async def rules_for(self, origin: str, fetch: RobotsFetch) -> RobotsRules:
        """The rules for `scheme://host[:port]`, fetching robots.txt with `fetch` if needed.

        Each caller brings its own fetch (bound to its politeness gate): a caller that takes
        over from a cancelled one fetches under its own gate.
        """
        origin = origin.rstrip("/")
        while True:
            rules = self.cached(origin)
            if rules is not None:
                return rules
            pending = self._inflight.get(origin)
            if pending is None:
                return await self._load(origin, fetch)
            # shield: a waiter being cancelled must not cancel the fetcher's future.
            rules = await asyncio.shield(pending)
            if rules is not None:
                return rules

    def cached(self, origin: str) -> RobotsRules | None:
        """The stored rules for an origin while still valid; never fetches."""
        entry = self._entries.get(origin.rstrip("/"))
        if entry is None or self._clock() >= entry.expires:
            return None
        return entry.rules

    async def wait(self, origin: str) -> None:
        """Wait until no caller is fetching the origin's robots.txt (it may have failed)."""
        pending = self._inflight.get(origin.rstrip("/"))
        if pending is not None:
            await asyncio.shield(pending)

    def fetching(self, origin: str) -> bool:
        """Whether a caller is fetching the origin's robots.txt right now."""
        return origin.rstrip("/") in self._inflight

    def retry_at(self, origin: str) -> float | None:
        """When (on `clock`) an origin with unavailable rules may be retried."""
        entry = self._entries.get(origin.rstrip("/"))
        if entry is None or not entry.rules.unavailable:
            return None
        return entry.expires

    async def _load(self, origin: str, fetch: RobotsFetch) -> RobotsRules:
        done: asyncio.Future[RobotsRules | None] = asyncio.get_running_loop().create_future()
        self._inflight[origin] = done
        rules: RobotsRules | None = None
        try:
            rules = await self._recorded(origin)
            if rules is not None:
                return rules
            try:
                resp = await fetch(origin + "/robots.txt")
            except Exception as exc:
                resp = RobotsResponse(None, error=str(exc) or type(exc).__name__)
            # An answer read from a record (robots.txt redirected to another origin's) lives as long as that record.
            fetched_at = self._clock() - resp.age
            rules = RobotsRules.from_response(resp, self._user_agent, fetched_at=fetched_at)
            lifetime = self._retry_interval if rules.unavailable else self._ttl
            self._entries[origin] = _Entry(rules, fetched_at + lifetime)
            return rules
        finally:
            del self._inflight[origin]
            done.set_result(rules)  # None (cancelled): a waiter takes over

    async def _recorded(self, origin: str) -> RobotsRules | None:
        """The rules of a recorded answer still within its lifetime, entered for what is left of it."""
        if self._lookup is None:
            return None
        try:
            found = await self._lookup(origin)
        except Exception as exc:  # a lookup saves a fetch; failing one only costs that fetch
            log.warning("%s/robots.txt: looking up its recorded answer failed (%s); fetching it", origin, exc)
            return None
        if found is None:
            return None
        resp, age = found
        now = self._clock()
        rules = RobotsRules.from_response(resp, self._user_agent, fetched_at=now - age)
        left = (self._retry_interval if rules.unavailable else self._ttl) - age
        if left <= 0:
            return None
        self._entries[origin] = _Entry(rules, now + left)
        return rules
