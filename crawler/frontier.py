"""Leasing the next URL fairly across hosts: per-host windows onto SQLite and a ready-time heap."""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from crawler.errors import SkipReason
from crawler.politeness import Lease, Politeness
from crawler.store import Backend, QueuedUrl

REFILL_TASKS = 4  # window reads in flight at once; more would only queue on the one connection
MIN_WINDOW = 8  # rows a refill reads even when the memory budget is spent, so no host starves
SCAN_CHUNK = 256  # host names read per query when waking dormant hosts


@dataclass(slots=True)
class HostQueue:
    """The in-memory window of one host's queued URLs (Mercator's back queue)."""

    queue: deque[QueuedUrl] = field(default_factory=deque)
    high_id: int = 0  # highest id ever loaded; rows above it may wait in SQLite
    overflow: bool = False  # SQLite may hold queued rows above high_id
    refilling: bool = False
    skipped_while_refilling: bool = False
    counted: bool = False  # `fetched` includes earlier runs (read on the first refill)
    heap_seq: int = -1  # the live heap entry of this host; older entries are stale
    in_heap: bool = False
    leased: int = 0
    unsettled: int = 0  # completed leases whose writes are not committed yet
    fetched: int = 0


class Frontier:
    """Hands out URLs whose host is ready now; SQLite holds the truth, memory a bounded window.

    A host sits in the heap keyed by the time it may next start a request, so a free worker
    always takes a URL of a ready host and never sleeps on a busy one (no head-of-line blocking).

    Memory does not grow with the frontier: at most `max_hosts` hosts are in memory (the
    others are "dormant", their rows only in SQLite, and are woken round-robin by host name
    as hosts drain), and the windows together hold at most
    `max_in_memory + max_hosts * MIN_WINDOW` rows.  Nothing here scans all URLs or all hosts.
    """

    def __init__(
        self,
        store: Backend,
        politeness: Politeness,
        *,
        max_pages: int = 0,
        max_pages_per_host: int = 0,
        window: int = 1000,
        max_in_memory: int = 50_000,
        max_hosts: int = 5_000,
    ) -> None:
        self._store = store
        self._pol = politeness
        self._clock = politeness.clock
        self.max_pages = max_pages
        self.max_pages_per_host = max_pages_per_host
        self._window = window
        self._max_in_memory = max_in_memory
        self._max_hosts = max_hosts
        self._hosts: dict[str, HostQueue] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._in_memory = 0
        self._overflowing = 0  # hosts whose `overflow` is set
        self._dormant = False  # SQLite may hold queued rows of hosts not in memory
        self._dormant_gen = 0  # bumped whenever a host is left dormant
        self._scan_cursor = ""  # the host name the last wake-up scan stopped at
        self._scanning = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._refills_running = 0
        self._refills_wanted: deque[str] = deque()
        self._completions: list[str] = []  # hosts of completed leases since the last flush began
        self._closed = False
        self.fetched = 0  # pages fetched (done or failed), this run and earlier ones
        self.leased = 0  # URLs handed out and not yet completed
        self._revisits_leased = 0  # of which stored pages a recrawl pass fetches again
        # In a recrawl pass, stored pages are fetched again whatever max_pages and
        # max_pages_per_host say; only new URLs count against them.
        self.revisiting = False
        self.awaiting_commit = 0  # completed URLs whose writes are not yet committed
        self.on_starving: Callable[[], None] = lambda: None
        self.error: BaseException | None = None  # a failed refill read, re-raised by the engine
        politeness.on_change = self._host_changed

    # ---- filling ---------------------------------------------------------------------------

    async def load(self, fetched: int) -> None:
        """Resume: start from the stored count of fetched pages and wake hosts with queued rows.

        Windows are read lazily, a few hosts at a time, as leases reach each host.
        """
        self.fetched = fetched
        self._dormant = True
        await self._scan()

    def add(self, rows: list[QueuedUrl]) -> None:
        """Newly committed queued rows, in ascending id order."""
        for row in rows:
            hq = self._hosts.get(row.host)
            if hq is None:
                self._arrived(row.host)
                continue
            if row.id <= hq.high_id:
                # A refill read it already: aiosqlite shares one connection, so a refill that
                # runs between the writer's BEGIN and COMMIT sees the rows being committed.
                continue
            if hq.overflow or len(hq.queue) >= self._window or self._in_memory >= self._max_in_memory:
                self._set_overflow(hq, True)
                if hq.refilling:
                    hq.skipped_while_refilling = True
            else:
                hq.queue.append(row)
                hq.high_id = row.id
                self._in_memory += 1
            self._schedule(row.host)
        if rows:
            self._wake(len(rows))

    def _arrived(self, host: str) -> None:
        """A committed row of a host not in memory: bring the host in, or leave it dormant when memory is full."""
        if len(self._hosts) < self._max_hosts:
            self._activate(host)  # its first refill reads this row back from SQLite
        else:
            self._dormant = True
            self._dormant_gen += 1

    def _activate(self, host: str) -> HostQueue:
        """Bring a host into memory with an empty window; its first lease attempt reads one."""
        hq = self._hosts[host] = HostQueue()
        self._set_overflow(hq, True)
        self._schedule(host)
        return hq

    def _set_overflow(self, hq: HostQueue, value: bool) -> None:
        if hq.overflow != value:
            hq.overflow = value
            self._overflowing += 1 if value else -1

    def _evict_if_idle(self, host: str) -> bool:
        """Forget a host with nothing queued, leased or uncommitted; SQLite has all of it.

        Uncommitted completions keep a host in memory: a window read before their commit
        would see those URLs as still queued and hand them out again.
        """
        hq = self._hosts.get(host)
        if hq is None or hq.queue or hq.overflow or hq.refilling or hq.leased or hq.unsettled:
            return False
        del self._hosts[host]  # its heap entries turn stale
        self._evicted(host)
        self._start_scan()
        return True

    def _evicted(self, host: str) -> None:
        """A host left memory (a hook: the leased frontier lets go of the host's lease)."""

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A failed read must not strand waiters; close so the engine sees the error.
            self.error = task.exception()
            self.close()
        else:
            self._wake(1)

    def _start_refill(self, host: str) -> None:
        hq = self._hosts[host]
        if hq.refilling:
            return
        # Flag it now, not when the read runs: other leases may look before then.
        hq.refilling = True
        hq.skipped_while_refilling = False
        if self._refills_running < REFILL_TASKS:
            self._refills_running += 1
            self._spawn(self._refill(host))
        else:
            self._refills_wanted.append(host)

    async def _refill(self, host: str) -> None:
        """Read the next window of host's queued rows, then the next host waiting for one."""
        try:
            while not self._closed:
                await self._read_window(host)
                if not self._refills_wanted:
                    break
                host = self._refills_wanted.popleft()
        finally:
            self._refills_running -= 1

    async def _read_window(self, host: str) -> None:
        hq = self._hosts[host]  # a refilling host is never evicted
        try:
            if self.max_pages_per_host and not hq.counted:
                hq.fetched += await self._store.fetched_for_host(host)
                hq.counted = True
            # The window shrinks as the memory budget fills up, down to MIN_WINDOW; a read
            # ahead tops up what is left of it.
            size = max(MIN_WINDOW, min(self._window - len(hq.queue), self._max_in_memory - self._in_memory))
            rows = await self._store.queued_for_host(host, hq.high_id, size)
        finally:
            hq.refilling = False
        for row in rows:
            hq.queue.append(row)
            hq.high_id = row.id
        self._in_memory += len(rows)
        self._set_overflow(hq, len(rows) == size or hq.skipped_while_refilling)
        if not self._evict_if_idle(host):
            self._schedule(host)
        self._wake(1)

    # ---- waking dormant hosts ------------------------------------------------------------------

    def _start_scan(self) -> None:
        if self._dormant and not self._scanning and not self._closed and len(self._hosts) < self._max_hosts:
            self._scanning = True
            self._spawn(self._scan())

    async def _scan(self) -> None:
        """Bring hosts that have queued rows in SQLite but none in memory, walking host names
        round-robin from where the last scan stopped; one full turn finding none ends dormancy."""
        self._scanning = True
        try:
            generation = self._dormant_gen
            start = self._scan_cursor
            wrapped = False
            while len(self._hosts) < self._max_hosts and not self._closed:
                hosts = await self._store.queued_hosts(self._scan_cursor, SCAN_CHUNK)
                if wrapped:
                    hosts = [h for h in hosts if h <= start]
                if not hosts:
                    if wrapped or not start:
                        self._scan_cursor = ""
                        if generation == self._dormant_gen:
                            self._dormant = False
                        break
                    wrapped, self._scan_cursor = True, ""
                    continue
                for host in hosts:
                    # Checked before each host, not after: add() may have brought hosts in
                    # while the query ran.
                    if len(self._hosts) >= self._max_hosts:
                        break
                    self._scan_cursor = host
                    if host not in self._hosts:
                        self._activate(host)
        finally:
            self._scanning = False
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
        return bool(self.max_pages) and self.fetched + self.leased - self._revisits_leased >= self.max_pages

    def _over_limits(self, hq: HostQueue) -> bool:
        over_host = bool(self.max_pages_per_host) and hq.fetched + hq.leased >= self.max_pages_per_host
        return over_host or self.limit_reached()

    def _try_lease(self) -> Lease | None:
        heap = self._heap
        now = self._clock()
        while heap:
            key, seq, host = heap[0]
            hq = self._hosts.get(host)
            if hq is None or seq != hq.heap_seq or not hq.in_heap:
                heapq.heappop(heap)
                continue
            slot = self._pol.slot(host)
            if not slot.leasable or not hq.queue:
                heapq.heappop(heap)
                hq.in_heap = False
                if not hq.queue and slot.leasable:
                    if hq.overflow:
                        self._start_refill(host)
                    else:
                        self._evict_if_idle(host)
                continue
            if slot.ready_at > key:
                self._seq += 1
                hq.heap_seq = self._seq
                heapq.heapreplace(heap, (slot.ready_at, self._seq, host))
                continue
            if key > now:
                return None
            if self.revisiting:
                if hq.queue[0].previous is None and self._over_limits(hq):
                    # A pass fetches every stored page again whatever the limits (each was
                    # counted once already); a new URL beyond them stays queued in SQLite.
                    hq.queue.popleft()
                    self._in_memory -= 1
                    continue
            elif self.limit_reached():
                return None
            elif self.max_pages_per_host and hq.fetched + hq.leased >= self.max_pages_per_host:
                self._drop_host(host)
                continue
            heapq.heappop(heap)
            hq.in_heap = False
            item = hq.queue.popleft()
            self._in_memory -= 1
            if hq.overflow and len(hq.queue) <= self._window // 2 and self._in_memory < self._max_in_memory:
                # Read ahead, while the memory budget has room: the host's workers need not wait
                # for the read once the window is empty.
                self._start_refill(host)
            reservation = self._pol.try_reserve(host, now)
            assert reservation is not None, "a ready host with capacity must accept a reservation"
            hq.leased += 1
            self.leased += 1
            if item.previous is not None:
                self._revisits_leased += 1
            self._schedule(host)
            self._store.set_state(item.id, "in_flight")
            return Lease(item.id, item.url, host, item.depth, reservation, item.kind, item.previous)
        return None

    def _drop_host(self, host: str) -> None:
        """The host reached max_pages_per_host: what is still queued is skipped."""
        hq = self._hosts[host]
        for item in hq.queue:
            self._store.set_state(item.id, "skipped", SkipReason.HOST_LIMIT)
        self._in_memory -= len(hq.queue)
        hq.queue.clear()
        if hq.overflow:
            self._set_overflow(hq, False)
            self._store.skip_queued_of_host(host, SkipReason.HOST_LIMIT)
        heapq.heappop(self._heap)
        hq.in_heap = False
        self._evict_if_idle(host)

    # ---- leasing ---------------------------------------------------------------------------

    def _finished(self) -> bool:
        # Counters, not a walk over the hosts: this runs whenever a worker finds nothing to do.
        if self.leased or self.awaiting_commit or self._tasks or self._refills_wanted:
            return False
        if self.limit_reached() and not self.revisiting:
            return True
        return not (self._in_memory or self._overflowing or self._dormant)

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
            if self.awaiting_commit and self._commit_may_help():
                self.on_starving()
            self._start_scan()
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            self._arm_timer(loop)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()

    def _commit_may_help(self) -> bool:
        """Whether committing now could give an idle worker a URL sooner: not with every request slot
        taken, and committing at each idle look would make tiny batches."""
        return not self._pol.saturated

    def commit_can_wait(self, waited: float) -> bool:
        """Whether the writer, `waited` seconds after its last commit, may let the batch grow rather
        than commit at its interval (a hook: on a shared database each commit has a fixed cost)."""
        return False

    def _arm_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._heap or (self.limit_reached() and not self.revisiting):
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
        if lease.previous is not None:
            self._revisits_leased -= 1
            # Counted in `fetched` when first fetched; the host's count, read from SQLite,
            # left it out while it was queued again.
            hq.fetched += fetched
        elif fetched:
            hq.fetched += 1
            self.fetched += 1
        self._settle_later(lease.host, hq)
        self._wake(1)

    def requeue(self, lease: Lease) -> None:
        """Put a leased URL back at the front of its host's queue (e.g. robots.txt unreachable)."""
        hq = self._hosts[lease.host]
        hq.queue.appendleft(QueuedUrl(lease.url_id, lease.url, lease.host, lease.depth, lease.kind, lease.previous))
        self._in_memory += 1
        self._store.set_state(lease.url_id, "queued")
        hq.leased -= 1
        self.leased -= 1
        if lease.previous is not None:
            self._revisits_leased -= 1
        self._settle_later(lease.host, hq)
        self._schedule(lease.host)

    def _settle_later(self, host: str, hq: HostQueue) -> None:
        hq.unsettled += 1
        self.awaiting_commit += 1
        self._completions.append(host)

    def take_completions(self) -> list[str]:
        """The completions whose writes the flush about to start will commit (call right before it)."""
        taken, self._completions = self._completions, []
        return taken

    def committed(self, completions: list[str], rows: list[QueuedUrl]) -> None:
        """The writer committed a batch holding `completions` (from take_completions) and `rows` new URLs."""
        self.add(rows)
        self.awaiting_commit -= len(completions)
        for host in completions:
            self._hosts[host].unsettled -= 1
            self._evict_if_idle(host)
        self._wake(len(self._waiters) if self._finished() else 1)

    def close(self) -> None:
        """Stop handing out work; every waiter gets None."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        self._refills_wanted.clear()
        self._wake(len(self._waiters))

    def queued_in_memory(self) -> int:
        return self._in_memory

    def hosts_in_memory(self) -> int:
        return len(self._hosts)
