"""Per-host slots: concurrency, delay, Crawl-delay, Retry-After pauses and adaptive delay.

Two rules hold for every host:port, whatever mix of leases, robots.txt fetches, retries
and redirects is going on:

* at most `per_host_concurrency` requests are in flight: a unit of capacity is taken when
  the frontier leases a URL (or when a redirect arrives from another host) and held until
  the worker lets go of the host;
* consecutive request starts are at least the host's current delay apart: every request
  takes a *turn* (`wait_turn`), which waits until `last_start + delay` and any pause are
  over, then moves `last_start` to now.  The delay is read when the turn is taken, not when
  the previous one was, so a delay that grows in between (Crawl-delay learnt from
  robots.txt, a 429 back-off, a slow answer) already applies to the next start.  It is
  the largest of `delay`, the capped Crawl-delay, the adaptive delay and the 429 back-off.

A start is when the request is *sent*, not when its turn was taken: a request that must open
a connection first (or whose event loop is busy) is written later than its turn, and a
request taking the next turn on an open connection would reach the server right after it,
or before.  So a turn stays *unsent* until the transport reports the request written (the
`on_sent` request extension, see HostGate.request); `last_start` then moves to the send
time, and while a host has a turn unsent no other turn or lease of it starts.  A request
that fails or ends before it is written ends its turn too, when the gate is left.

A request may be written twice: on a new connection when its kept-alive one turned out
dropped, or over rawhead's connection to read a Location pyreqwest cannot hand over.  The
server sees both writes, and other requests may have taken turns since the first, so the
second takes a turn of its own: the transport awaits the `before_resend` extension
(HostGate.before_resend, which waits like any request and takes a new unsent turn) before
writing again, and the `on_sent` after the write ends that turn.

The frontier reserves a turn at lease time (Mercator's ready-time heap), so no other lease
of that host is handed out before the worker has used it.  The reservation is a
placeholder, not a licence: the worker's first request starts on it only if it is still
the host's latest turn and the delay, as it is by then, has passed since the turn before;
otherwise the turn is given back and the request waits like any other.  A reservation
that sat unused while others took turns, or while robots.txt raised the delay, therefore
cannot put two starts closer than the delay, and a lease that never makes a request
(robots.txt said no) gives its turn back unused.

With a transport that does not report sends, a turn counts as sent when it is taken, and
a server sees the starts shifted by the client's send lag, which grows on a loaded machine.

The adaptive delay follows Scrapy's AutoThrottle rule (see `Politeness.observe`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from crawler.config import PolitenessConfig
from crawler.urls import host_key

if TYPE_CHECKING:
    from crawler.store import StoredVersion

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MIN_BACKOFF = 0.5  # seconds: the first 429 back-off when the host's delay is smaller

# A request's URL is keyed when it takes its turn and again when its response is observed:
# the second time (and a retry's) is a lookup. Enough entries for every request in flight.
_host_of = lru_cache(maxsize=1024)(host_key)


@dataclass(slots=True)
class HostSlot:
    """Politeness state of one host:port, the unit every limit applies to."""

    host: str
    concurrency: int
    base_delay: float
    crawl_delay: float = 0.0
    adaptive_delay: float = 0.0
    backoff_delay: float = 0.0  # grows with repeated 429s, shrinks on success
    in_flight: int = 0  # units of capacity held (leases, and redirects into this host)
    last_start: float = float("-inf")  # monotonic time of the latest turn taken or reserved, or of its send
    turns: int = 0  # counts turns, so a reservation knows whether it is still the latest
    unsent: int = 0  # turns taken whose request is not written yet: no other turn starts meanwhile
    # Someone found the host held by an unsent turn: the send must wake them and re-key the host.
    turned_away: bool = False
    paused_until: float = float("-inf")  # monotonic time a Retry-After or robots.txt hold ends
    fetching_robots: bool = False  # no new leases while robots.txt is being fetched
    waiters: list[asyncio.Future[None]] = field(default_factory=list)  # waiting for capacity
    sent_waiters: list[asyncio.Future[None]] = field(default_factory=list)  # waiting for the unsent turn

    @property
    def delay(self) -> float:
        return max(self.base_delay, self.crawl_delay, self.adaptive_delay, self.backoff_delay)

    @property
    def next_start(self) -> float:
        return self.last_start + self.delay

    @property
    def due(self) -> float:
        """When the next turn may start by the delay and any pause, leaving an unsent turn aside."""
        return max(self.next_start, self.paused_until)

    @property
    def ready_at(self) -> float:
        """When the next turn may start: never while a turn is unsent (the send re-keys the host)."""
        if self.unsent:
            self.turned_away = True
            return float("inf")
        return max(self.next_start, self.paused_until)

    @property
    def leasable(self) -> bool:
        """Whether the frontier may hand out a URL of this host once it is ready."""
        return self.in_flight < self.concurrency and not self.fetching_robots


@dataclass(frozen=True, slots=True)
class HostState:
    """What the next holder of a shared host needs of its politeness (crawler/leased_frontier.py)."""

    wait: float  # seconds from now until the host's next request may start (its gap, or a pause)
    crawl_delay: float = 0.0
    adaptive_delay: float = 0.0
    backoff_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Reservation:
    """A turn the frontier took for a lease; `turn` identifies it, `previous` is what it replaced."""

    turn: int
    previous: float


class Politeness:
    """Owns every HostSlot; the frontier asks it which hosts are ready, workers hold gates."""

    def __init__(
        self, config: PolitenessConfig, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.config = config
        self.clock = clock
        self._sleep = sleep
        self.slots: dict[str, HostSlot] = {}
        self.semaphore = asyncio.Semaphore(config.concurrency)
        self.held = 0  # units of host capacity held across all hosts
        # Called whenever a host may have become ready earlier or gained capacity.
        self.on_change: Callable[[str], None] = lambda host: None

    @property
    def saturated(self) -> bool:
        """Whether the held host capacity already covers `concurrency`: no new lease could start a request now."""
        return self.held >= self.config.concurrency

    def slot(self, host: str) -> HostSlot:
        slot = self.slots.get(host)
        if slot is None:
            slot = self.slots[host] = HostSlot(host, self.config.per_host_concurrency, self.config.delay)
        return slot

    # ---- handing a host to another process ----------------------------------------------

    def export_state(self, host: str) -> HostState:
        """The host's politeness as the next holder continues from it."""
        slot = self.slot(host)
        wait = max(0.0, slot.due - self.clock())
        return HostState(wait, slot.crawl_delay, slot.adaptive_delay, slot.backoff_delay)

    def import_state(self, host: str, state: HostState) -> None:
        """Continue from what the host's previous holder handed over: its delays replace what this
        process last knew of the host (they are newer), and a wait still ahead becomes a pause."""
        slot = self.slot(host)
        slot.crawl_delay = min(state.crawl_delay, self.config.max_crawl_delay)
        slot.adaptive_delay = min(state.adaptive_delay, self.config.max_delay)
        slot.backoff_delay = min(state.backoff_delay, self.config.max_delay)
        if state.wait > 0:
            slot.paused_until = max(slot.paused_until, self.clock() + state.wait)
        self.on_change(host)

    # ---- capacity ------------------------------------------------------------------------

    def try_reserve(self, host: str, now: float) -> Reservation | None:
        """Take a unit of the host's capacity and reserve its next turn, if both are free now."""
        slot = self.slot(host)
        if not slot.leasable or slot.ready_at > now:
            return None
        slot.in_flight += 1
        self.held += 1
        reservation = Reservation(slot.turns + 1, slot.last_start)
        slot.turns += 1
        slot.last_start = now
        return reservation

    def start_reserved(self, host: str, reservation: Reservation) -> bool:
        """Start a request on a reserved turn if it is still the latest and still due.

        Otherwise the turn is given back (when it is the latest) and False says: wait_turn.
        """
        slot = self.slot(host)
        if slot.turns != reservation.turn:
            return False
        now = self.clock()
        if slot.unsent or now < max(reservation.previous + slot.delay, slot.paused_until):
            slot.turns -= 1
            slot.last_start = reservation.previous
            return False
        slot.last_start = now
        slot.unsent += 1
        return True

    def give_back(self, host: str, reservation: Reservation) -> None:
        """Undo a reserved turn that was not used, unless a later turn was taken since."""
        slot = self.slot(host)
        if slot.turns == reservation.turn:
            slot.turns -= 1
            slot.last_start = reservation.previous
            self.on_change(host)

    async def acquire(self, host: str) -> None:
        """Wait for a unit of the host's capacity (used when a redirect changes host)."""
        slot = self.slot(host)
        while slot.in_flight >= slot.concurrency:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            slot.waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_one(slot)  # we were woken but will not take it: pass it on
                raise
            finally:
                if fut in slot.waiters:
                    slot.waiters.remove(fut)
        slot.in_flight += 1
        self.held += 1

    def release(self, host: str) -> None:
        slot = self.slot(host)
        slot.in_flight -= 1
        self.held -= 1
        assert slot.in_flight >= 0, f"released {host} more often than acquired"
        self._wake_one(slot)
        self.on_change(host)

    @staticmethod
    def _wake_one(slot: HostSlot) -> None:
        for fut in slot.waiters:
            if not fut.done():
                fut.set_result(None)
                return

    @contextmanager
    def fetching_robots(self, host: str) -> Iterator[None]:
        """While robots.txt of host is fetched, the frontier leases none of its URLs.

        So no worker sits on a lease waiting for it; and one that must wait (a redirect hop
        into the host) lets go of its capacity first.  Nobody ever waits for robots.txt
        with a host's capacity in hand, so a fetch that itself waits for capacity
        (robots.txt redirected to a busy host) cannot deadlock.
        """
        slot = self.slot(host)
        slot.fetching_robots = True
        try:
            yield
        finally:
            slot.fetching_robots = False
            self.on_change(host)

    # ---- turns ---------------------------------------------------------------------------

    async def wait_turn(self, host: str) -> None:
        """Wait until a request to host may start, then take that start time (the turn is unsent
        until `sent`).

        The ready time is recomputed after every sleep: the delay may have grown, a pause
        may have begun, or another request may have taken the turn meanwhile.
        """
        slot = self.slot(host)
        while True:
            if slot.unsent:
                await self._until_sent(slot)
                continue
            now = self.clock()
            wait = slot.due - now
            if wait <= 0:
                slot.turns += 1
                slot.last_start = now
                slot.unsent += 1
                return
            await self._sleep(wait)

    async def _until_sent(self, slot: HostSlot) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.sent_waiters.append(fut)
        slot.turned_away = True
        try:
            await fut
        finally:
            slot.sent_waiters.remove(fut)

    def sent(self, host: str, *, ends_turn: bool = True) -> None:
        """The request on host's unsent turn is written (or ended unwritten): its start is now.

        ends_turn=False: the same request written once more without a turn of its own (a transport
        that does not await `before_resend`), which only moves the start.
        """
        slot = self.slots[host]
        now = self.clock()
        if now > slot.last_start:
            slot.last_start = now
        if not ends_turn:
            return
        slot.unsent -= 1
        assert slot.unsent >= 0, f"{host}: a turn sent twice"
        if slot.unsent == 0 and slot.turned_away:
            slot.turned_away = False
            for fut in slot.sent_waiters:  # all of them: each checks the host again
                if not fut.done():
                    fut.set_result(None)
            self.on_change(host)

    # ---- feedback from robots.txt and responses --------------------------------------------

    def set_crawl_delay(self, host: str, crawl_delay: float | None) -> None:
        """Apply robots.txt's Crawl-delay, capped at max_crawl_delay (logged once per value)."""
        slot = self.slot(host)
        value = crawl_delay or 0.0
        cap = self.config.max_crawl_delay
        if value > cap:
            if slot.crawl_delay != cap:
                log.warning("%s: robots.txt Crawl-delay %gs capped at max_crawl_delay %gs", host, value, cap)
            value = cap
        if value != slot.crawl_delay:
            slot.crawl_delay = value
            self.on_change(host)

    def pause(self, host: str, seconds: float) -> None:
        """Hold every request to host for `seconds` (Retry-After, unreachable robots.txt)."""
        slot = self.slot(host)
        slot.paused_until = max(slot.paused_until, self.clock() + seconds)
        self.on_change(host)

    def throttled(self, host: str) -> float:
        """A 429: double the host's delay (at least MIN_BACKOFF, at most max_delay); returns it."""
        slot = self.slot(host)
        slot.backoff_delay = min(max(2 * slot.delay, MIN_BACKOFF), self.config.max_delay)
        return slot.backoff_delay

    # The fetcher's Feedback protocol: it speaks in URLs, slots are per host.
    def observe_url(self, url: str, status: int | None, latency: float) -> None:
        self.observe(_host_of(url), status, latency)

    def retry_after(self, url: str, seconds: float | None, status: int) -> None:
        """429/503: pause the host for Retry-After; a 429 also doubles the host's delay.

        Without Retry-After, a 429 pauses the host for its new, doubled delay, so repeated
        429s back off exponentially (up to max_delay) and a success halves it again.
        """
        host = host_key(url)
        backoff = self.throttled(host) if status == 429 else 0.0
        pause = seconds if seconds is not None else backoff
        if pause > 0:
            self.pause(host, pause)

    def observe(self, host: str, status: int | None, latency: float) -> None:
        """Feed one response's latency (None status: no response) into the host's delay.

        The rule is Scrapy AutoThrottle's: target = latency / target concurrency, and
        new = max(target, (old + target) / 2).  It rises to a slow answer at once and
        relaxes by halving the gap per response, so one fast reply after many slow ones
        does not undo the back-off; a response that is not 2xx (errors, timeouts, and
        redirects, which are cheap) may raise the delay but never lowers it.  The target
        concurrency is `per_host_concurrency`: the delay aims at the server working on
        that many of our requests at once on average, and no more.  Heritrix's rule
        (5 × the last fetch time, 3–30 s) was not chosen: it jumps on a single slow
        answer and its floor would override a `delay` below 3 s.  The result is clamped
        between `delay` and `max_delay`.
        """
        slot = self.slot(host)
        ok = status is not None and 200 <= status < 300
        if ok and slot.backoff_delay:
            slot.backoff_delay = slot.backoff_delay / 2 if slot.backoff_delay > MIN_BACKOFF / 2 else 0.0
        if not self.config.adaptive:
            return
        target = latency / self.config.per_host_concurrency
        new = max(target, (slot.adaptive_delay + target) / 2)
        if not ok:
            new = max(new, slot.adaptive_delay)
        slot.adaptive_delay = min(max(new, self.config.delay), self.config.max_delay)


@dataclass(slots=True)
class Lease:
    """A frontier URL handed to a worker, with the host capacity and turn reserved for it."""

    url_id: int
    url: str
    host: str
    depth: int
    reservation: Reservation | None = None
    kind: str = "page"  # urls.kind: 'page', or 'sitemap' for a document read for the URLs it lists
    previous: StoredVersion | None = None  # the stored version a recrawl pass compares against


class HostGate:
    """One worker's hold on a host for one lease; every HTTP request of the lease passes it.

    It holds one unit of capacity of exactly one host at a time.  A request to another
    host (a redirect, or robots.txt redirected elsewhere) lets go of the old host first,
    then waits for capacity on the new one, so no host ever has more than its concurrency.
    """

    def __init__(self, politeness: Politeness, lease: Lease) -> None:
        self._politeness = politeness
        self.host = lease.host
        self._held = True  # the lease's unit of capacity on self.host
        self._reservation = lease.reservation
        self._turn_host: str | None = None  # the host of the request under way, while it is
        self._unsent = False  # whether that request's turn still waits for its send

    @asynccontextmanager
    async def request(self, url: str) -> AsyncIterator[HostGate]:
        """Around one HTTP request: host capacity, the global semaphore, then the host's turn.

        Yields the gate, whose `sent` and `before_resend` the transport calls through the `on_sent`
        and `before_resend` request extensions; a request that ends unsent ends its turn on leaving.
        """
        pol = self._politeness
        host = _host_of(url)
        if host != self.host or not self._held:
            self._give_back()
            if self._held:
                pol.release(self.host)
                self._held = False
            self.host = host
            await pol.acquire(host)  # if cancelled here, nothing is held
            self._held = True
        reservation, self._reservation = self._reservation, None
        # The semaphore first: a turn taken before waiting for it would not be the start.
        async with pol.semaphore:
            if reservation is None or not pol.start_reserved(host, reservation):
                await pol.wait_turn(host)
            self._turn_host = host
            self._unsent = True
            try:
                yield self
            finally:
                if self._unsent:
                    self._unsent = False
                    pol.sent(host)
                self._turn_host = None

    def sent(self) -> None:
        """The request under way is written: its turn ends (a write reported twice only moves the start)."""
        host = self._turn_host
        if host is None:  # reported after the request ended: its turn is over already
            return
        ends_turn, self._unsent = self._unsent, False
        self._politeness.sent(host, ends_turn=ends_turn)

    async def before_resend(self) -> None:
        """The request under way is about to be written once more: wait for, and take, a new turn of
        its host, so the second write is as far from any other request as a new request would be."""
        host = self._turn_host
        if host is None or self._unsent:  # over, or its first write never reported: that turn still holds
            return
        await self._politeness.wait_turn(host)
        self._unsent = True

    def _give_back(self) -> None:
        reservation, self._reservation = self._reservation, None
        if reservation is not None:
            self._politeness.give_back(self.host, reservation)

    def let_go(self) -> None:
        """Give back an unused reserved turn and the host's capacity; the next request takes them anew."""
        self._give_back()
        if self._held:
            self._held = False
            self._politeness.release(self.host)

    def release(self) -> None:
        """At the end of the lease."""
        self.let_go()
