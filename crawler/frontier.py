"""Leasing the next URL fairly across hosts: per-host windows onto SQLite and a ready-time heap."""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from crawler.errors import SkipReason
from crawler.politeness import Lease, Politeness
from crawler.store import QueuedUrl, Store


class RecentUrls:
    """A bounded memory of URLs already handed to the store, so popular links (navigation on
    every page) skip scope checks and an INSERT OR IGNORE each time they reappear.

    Only an optimisation: SQLite's UNIQUE(url) stays the source of truth, and a URL that fell
    out of memory is simply offered to it again. Two generations give LRU-like eviction at
    the cost of two set lookups."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._capacity = capacity
        self._young: set[str] = set()
        self._old: set[str] = set()

    def first_sight(self, url: str) -> bool:
        """True the first time url is seen (as far as memory reaches), False after."""
        if url in self._young:
            return False
        seen = url in self._old
        if len(self._young) >= self._capacity:
            self._old, self._young = self._young, set()
        self._young.add(url)
        return not seen


@dataclass(slots=True)
class HostQueue:
    """The in-memory window of one host's queued URLs (Mercator's back queue)."""

    queue: deque[QueuedUrl] = field(default_factory=deque)
    high_id: int = 0  # highest id ever loaded; rows above it may wait in SQLite
    overflow: bool = False  # SQLite holds queued rows above high_id
    refilling: bool = False
    skipped_while_refilling: bool = False
    heap_seq: int = -1  # the live heap entry of this host; older entries are stale
    in_heap: bool = False
    leased: int = 0
    fetched: int = 0


class Frontier:
    """Hands out URLs whose host is ready now; SQLite holds the truth, memory a bounded window.

    A host sits in the heap keyed by the time it may next start a request, so a free worker
    always takes a URL of a ready host and never sleeps on a busy one (no head-of-line blocking).
    """

    def __init__(
        self,
        store: Store,
        politeness: Politeness,
        *,
        max_pages: int = 0,
        max_pages_per_host: int = 0,
        window: int = 1000,
        max_in_memory: int = 200_000,
    ) -> None:
        self._store = store
        self._pol = politeness
        self._clock = politeness.clock
        self.max_pages = max_pages
        self.max_pages_per_host = max_pages_per_host
        self._window = window
        self._max_in_memory = max_in_memory
        self._hosts: dict[str, HostQueue] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._in_memory = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._refills: set[asyncio.Task[None]] = set()
        self._closed = False
        self.fetched = 0  # pages fetched (done or failed), this run and earlier ones
        self.leased = 0  # URLs handed out and not yet completed
        self.awaiting_commit = 0  # completed URLs whose writes are not yet committed
        self.on_starving: Callable[[], None] = lambda: None
        self.error: BaseException | None = None  # a failed refill read, re-raised by the engine
        politeness.on_change = self._host_changed

    # ---- filling ---------------------------------------------------------------------------

    async def load(self, fetched: int) -> None:
        """Resume: count what was fetched before and load a window of every queued host."""
        self.fetched = fetched
        for host, count in (await self._store.fetched_per_host()).items():
            self._host(host).fetched = count
        for host in await self._store.queued_hosts():
            hq = self._host(host)
            hq.overflow = True
            await self._refill(host)

    def add(self, rows: list[QueuedUrl]) -> None:
        """Newly committed queued rows, in ascending id order."""
        for row in rows:
            hq = self._host(row.host)
            if hq.overflow or len(hq.queue) >= self._window or self._in_memory >= self._max_in_memory:
                hq.overflow = True
                if hq.refilling:
                    hq.skipped_while_refilling = True
            else:
                hq.queue.append(row)
                hq.high_id = row.id
                self._in_memory += 1
            self._schedule(row.host)
        if rows:
            self._wake(len(rows))

    def _host(self, host: str) -> HostQueue:
        hq = self._hosts.get(host)
        if hq is None:
            hq = self._hosts[host] = HostQueue()
        return hq

    async def _refill(self, host: str) -> None:
        """Load the next window of host's queued rows; callers set `refilling` before awaiting this."""
        hq = self._host(host)
        hq.refilling = True
        try:
            rows = await self._store.queued_for_host(host, hq.high_id, self._window)
        finally:
            hq.refilling = False
        for row in rows:
            hq.queue.append(row)
            hq.high_id = row.id
        self._in_memory += len(rows)
        hq.overflow = len(rows) == self._window or hq.skipped_while_refilling
        self._schedule(host)
        self._wake(1)

    def _start_refill(self, host: str) -> None:
        hq = self._hosts[host]
        if hq.refilling:
            return
        # Flag it now, not when the task first runs: other leases may look before then.
        hq.refilling = True
        hq.skipped_while_refilling = False
        task = asyncio.create_task(self._refill(host))
        self._refills.add(task)
        task.add_done_callback(self._refill_done)

    def _refill_done(self, task: asyncio.Task[None]) -> None:
        self._refills.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A failed read must not strand waiters; close so the engine sees the error.
            self.error = task.exception()
            self.close()
        else:
            self._wake(1)

    # ---- the heap ------------------------------------------------------------------------------

    def _schedule(self, host: str) -> None:
        hq = self._hosts[host]
        if hq.in_heap or not (hq.queue or hq.overflow):
            return
        slot = self._pol.slot(host)
        if not slot.leasable:
            return
        self._seq += 1
        hq.heap_seq = self._seq
        hq.in_heap = True
        heapq.heappush(self._heap, (slot.ready_at, self._seq, host))

    def _host_changed(self, host: str) -> None:
        hq = self._hosts.get(host)
        if hq is None:
            return
        if hq.in_heap:
            # Re-key: the stale entry is skipped when it reaches the top.
            hq.in_heap = False
        self._schedule(host)
        self._wake(1)

    def limit_reached(self) -> bool:
        return bool(self.max_pages) and self.fetched + self.leased >= self.max_pages

    def _try_lease(self) -> Lease | None:
        heap = self._heap
        now = self._clock()
        while heap:
            key, seq, host = heap[0]
            hq = self._hosts[host]
            if seq != hq.heap_seq or not hq.in_heap:
                heapq.heappop(heap)
                continue
            slot = self._pol.slot(host)
            if not slot.leasable or not hq.queue:
                heapq.heappop(heap)
                hq.in_heap = False
                if slot.leasable and hq.overflow:
                    self._start_refill(host)
                continue
            if slot.ready_at > key:
                self._seq += 1
                hq.heap_seq = self._seq
                heapq.heapreplace(heap, (slot.ready_at, self._seq, host))
                continue
            if key > now or self.limit_reached():
                return None
            if self.max_pages_per_host and hq.fetched + hq.leased >= self.max_pages_per_host:
                self._drop_host(host)
                continue
            heapq.heappop(heap)
            hq.in_heap = False
            item = hq.queue.popleft()
            self._in_memory -= 1
            reservation = self._pol.try_reserve(host, now)
            assert reservation is not None, "a ready host with capacity must accept a reservation"
            hq.leased += 1
            self.leased += 1
            self._schedule(host)
            self._store.set_state(item.id, "in_flight")
            return Lease(item.id, item.url, host, item.depth, reservation)
        return None

    def _drop_host(self, host: str) -> None:
        """The host reached max_pages_per_host: what is still queued is skipped."""
        hq = self._hosts[host]
        for item in hq.queue:
            self._store.set_state(item.id, "skipped", SkipReason.HOST_LIMIT)
        self._in_memory -= len(hq.queue)
        hq.queue.clear()
        if hq.overflow:
            hq.overflow = False
            self._store.skip_queued_of_host(host, SkipReason.HOST_LIMIT)
        heapq.heappop(self._heap)
        hq.in_heap = False

    # ---- leasing ---------------------------------------------------------------------------

    def _finished(self) -> bool:
        if self.leased or self.awaiting_commit or self._refills:
            return False
        if self.limit_reached():
            return True
        return not any(hq.queue or hq.overflow for hq in self._hosts.values())

    async def next(self) -> Lease | None:
        """The next URL to fetch, waiting as needed; None once the crawl is over."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                return None
            lease = self._try_lease()
            if lease is not None:
                if self._waiters and self._heap:
                    self._wake(1)  # more may be ready: pass the baton
                return lease
            if self._finished():
                self.close()
                return None
            if self.awaiting_commit:
                self.on_starving()
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            self._arm_timer(loop)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()

    def _arm_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._heap or self.limit_reached():
            return
        at = self._heap[0][0]
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_later(max(0.0, at - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._wake(1)

    def _wake(self, n: int) -> None:
        while n and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def complete(self, lease: Lease, *, fetched: bool) -> None:
        """The worker is done with lease; its writes are in the store's batch."""
        hq = self._hosts[lease.host]
        hq.leased -= 1
        self.leased -= 1
        if fetched:
            hq.fetched += 1
            self.fetched += 1
        self.awaiting_commit += 1
        self._wake(1)

    def requeue(self, lease: Lease) -> None:
        """Put a leased URL back at the front of its host's queue (e.g. robots.txt unreachable)."""
        hq = self._hosts[lease.host]
        hq.queue.appendleft(QueuedUrl(lease.url_id, lease.url, lease.host, lease.depth))
        self._in_memory += 1
        self._store.set_state(lease.url_id, "queued")
        hq.leased -= 1
        self.leased -= 1
        self.awaiting_commit += 1
        self._schedule(lease.host)

    def committed(self, completions: int, rows: list[QueuedUrl]) -> None:
        """The writer committed a batch holding `completions` completed leases and `rows` new URLs."""
        self.add(rows)
        self.awaiting_commit -= completions
        self._wake(len(self._waiters) if self._finished() else 1)

    def close(self) -> None:
        """Stop handing out work; every waiter gets None."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._refills):
            task.cancel()
        self._wake(len(self._waiters))

    @property
    def closed(self) -> bool:
        return self._closed

    def queued_in_memory(self) -> int:
        return self._in_memory
