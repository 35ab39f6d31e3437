"""Per-host slots: concurrency, delay, Crawl-delay, Retry-After pauses and adaptive delay."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from crawler.config import PolitenessConfig
from crawler.urls import host_key

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(slots=True)
class HostSlot:
    """Politeness state of one host:port, the unit every limit applies to."""

    host: str
    concurrency: int
    base_delay: float
    crawl_delay: float = 0.0
    adaptive_delay: float = 0.0
    backoff_delay: float = 0.0  # grows with repeated 429s, shrinks on success
    in_flight: int = 0
    next_start: float = 0.0  # earliest monotonic time the next request may start
    paused_until: float = 0.0  # Retry-After or an unreachable robots.txt
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def delay(self) -> float:
        return max(self.base_delay, self.crawl_delay, self.adaptive_delay, self.backoff_delay)

    @property
    def ready_at(self) -> float:
        return max(self.next_start, self.paused_until)

    @property
    def has_capacity(self) -> bool:
        return self.in_flight < self.concurrency


class Politeness:
    """Owns every HostSlot; the frontier asks it which hosts are ready, workers hold gates."""

    def __init__(self, config: PolitenessConfig, *, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.slots: dict[str, HostSlot] = {}
        self.semaphore = asyncio.Semaphore(config.concurrency)
        # Called whenever a host may have become ready earlier or gained capacity.
        self.on_change: Callable[[str], None] = lambda host: None

    def slot(self, host: str) -> HostSlot:
        slot = self.slots.get(host)
        if slot is None:
            slot = self.slots[host] = HostSlot(host, self.config.per_host_concurrency, self.config.delay)
        return slot

    # ---- capacity and start times -------------------------------------------------------

    def try_reserve(self, host: str, now: float) -> bool:
        """Take a unit of the host's capacity and its next start time, if both are free now."""
        slot = self.slot(host)
        if slot.in_flight >= slot.concurrency or slot.ready_at > now:
            return False
        slot.in_flight += 1
        slot.next_start = now + slot.delay
        return True

    async def acquire(self, host: str) -> None:
        """Wait for a unit of the host's capacity (used when a redirect changes host)."""
        slot = self.slot(host)
        while slot.in_flight >= slot.concurrency:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            slot.waiters.append(fut)
            try:
                await fut
            finally:
                if fut in slot.waiters:
                    slot.waiters.remove(fut)
        slot.in_flight += 1

    def release(self, host: str) -> None:
        slot = self.slot(host)
        slot.in_flight -= 1
        assert slot.in_flight >= 0, f"released {host} more often than acquired"
        for fut in slot.waiters:
            if not fut.done():
                fut.set_result(None)
                break
        self.on_change(host)

    async def wait_turn(self, host: str) -> None:
        """Wait until a request to host may start, then take that start time."""
        slot = self.slot(host)
        while True:
            now = self.clock()
            wait = slot.ready_at - now
            if wait <= 0:
                slot.next_start = now + slot.delay
                return
            await asyncio.sleep(wait)

    def unreserve(self, host: str, previous_next_start: float, reserved_next_start: float) -> None:
        """Give back a start time that was reserved but not used (e.g. robots said no)."""
        slot = self.slot(host)
        if slot.next_start == reserved_next_start:
            slot.next_start = previous_next_start
            self.on_change(host)

    # ---- feedback from responses ---------------------------------------------------------

    def set_crawl_delay(self, host: str, crawl_delay: float | None) -> None:
        slot = self.slot(host)
        value = crawl_delay or 0.0
        if value > self.config.max_crawl_delay:
            log.warning("%s: Crawl-delay %gs capped at max_crawl_delay %gs", host, value, self.config.max_crawl_delay)
            value = self.config.max_crawl_delay
        before = slot.delay
        slot.crawl_delay = value
        # A longer delay counts from the last start, so push out the start already reserved.
        if slot.delay > before:
            slot.next_start += slot.delay - before

    def pause(self, host: str, seconds: float) -> None:
        """Hold every request to host for `seconds` (Retry-After, unreachable robots.txt)."""
        slot = self.slot(host)
        slot.paused_until = max(slot.paused_until, self.clock() + seconds)
        self.on_change(host)

    def throttled(self, host: str) -> float:
        """A 429 or 503: double the host's back-off delay (at least the base delay, at most max_delay)."""
        slot = self.slot(host)
        floor = max(self.config.delay, 0.5)
        slot.backoff_delay = min(max(slot.backoff_delay * 2, floor), self.config.max_delay)
        return slot.backoff_delay

    # The fetcher's Feedback protocol: it speaks in URLs, slots are per host.
    def observe_url(self, url: str, status: int | None, latency: float) -> None:
        self.observe(host_key(url), status, latency)

    def retry_after(self, url: str, seconds: float | None, status: int) -> None:
        """429/503: pause the host for Retry-After, or for an exponential back-off on repeated 429s."""
        host = host_key(url)
        backoff = self.throttled(host) if status == 429 else 0.0
        pause = seconds if seconds is not None else backoff
        if pause > 0:
            self.pause(host, pause)

    def observe(self, host: str, status: int | None, latency: float) -> None:
        """AutoThrottle: move the delay toward latency / per-host concurrency; errors never lower it."""
        slot = self.slot(host)
        if status is not None and status < 400 and slot.backoff_delay:
            slot.backoff_delay = slot.backoff_delay / 2 if slot.backoff_delay > 0.05 else 0.0
        if not self.config.adaptive:
            return
        target = latency / self.config.per_host_concurrency
        new = max(target, (slot.adaptive_delay + target) / 2)
        if status is None or status >= 400:
            new = max(new, slot.adaptive_delay)
        slot.adaptive_delay = min(max(new, self.config.delay), self.config.max_delay)


@dataclass(slots=True)
class Lease:
    """A frontier URL handed to a worker, with the host capacity and start time reserved for it."""

    url_id: int
    url: str
    host: str
    depth: int
    previous_next_start: float = 0.0
    reserved_next_start: float = 0.0


class HostGate:
    """One worker's hold on a host: the first request uses the lease's reserved start,
    later ones (robots → page, retries, redirects) wait their turn like everybody else."""

    def __init__(self, politeness: Politeness, lease: Lease) -> None:
        self._politeness = politeness
        self._lease = lease
        self.host = lease.host
        self._ticket = True
        self._released = False

    @asynccontextmanager
    async def request(self, url: str) -> AsyncIterator[None]:
        """Around one HTTP request: host turn, then the global semaphore."""
        pol = self._politeness
        host = host_key(url)
        if host != self.host:
            pol.release(self.host)
            self.host = host
            self._ticket = False
            await pol.acquire(host)
        if self._ticket:
            self._ticket = False
        else:
            await pol.wait_turn(host)
        async with pol.semaphore:
            yield

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._ticket:
            lease = self._lease
            self._politeness.unreserve(lease.host, lease.previous_next_start, lease.reserved_next_start)
        self._politeness.release(self.host)
