"""The frontier of one crawler among several on a shared database: it works only on hosts it leased."""

from __future__ import annotations

import asyncio
import random

from crawler.frontier import Frontier
from crawler.politeness import HostState, Lease, Politeness, Sleep
from crawler.store import Backend, HostLeasing, QueuedUrl

MIN_POLL = 0.1  # seconds: the first wait of a crawler that found no host to take
MAX_POLL = 5.0  # the longest wait between two looks while others hold the remaining work
BUDGET_CLAIM = 64  # pages of the fleet's max_pages claimed at a time


def poll_wait(backoff: float, due_in: float, jitter: float) -> float:
    """How long a crawler that found no host to take waits before looking again: its back-off
    (times a jitter in [0.5, 1]), but no longer than until the earliest host nobody holds is due,
    so a pause that ends or a host released with a wait is taken when it is due."""
    return max(MIN_POLL / 2, min(backoff * jitter, due_in))


class LeasedFrontier(Frontier):
    """A Frontier whose hosts are leases (crawler/store/pg/leases.py): a host comes into memory only
    when this process takes its lease, and leaves it (the lease released, with what is left of its
    delay) once idle, so no two processes ever send to one host.

    A process that finds no host to take while URLs are queued or in flight elsewhere polls with
    back-off, no longer than until the earliest free host is due; once none are left anywhere it
    finishes. A host's politeness travels with its lease (Politeness.export_state/import_state).

    `max_pages` counts across the fleet: pages are claimed from the database's budget row
    BUDGET_CLAIM at a time. A short grant ends this run's share only when no other run holds
    unfetched claims, since those come back when their run dies or idles.
    """

    def __init__(
        self,
        store: Backend,
        leases: HostLeasing,
        politeness: Politeness,
        *,
        sleep: Sleep = asyncio.sleep,
        **limits: int,
    ) -> None:
        super().__init__(store, politeness, **limits)
        # Hosts this process can keep busy (one request each at least): holding more would only
        # keep them from crawlers with free capacity.
        self._max_hosts = min(self._max_hosts, politeness.config.concurrency)
        self._leases = leases
        leases.state_of = politeness.export_state
        leases.restore = self._restore
        self._sleep = sleep
        self._poll = MIN_POLL
        self._budget_poll = MIN_POLL
        self._claims = 0  # claims started, so a heartbeat's view of the claim is not older than one
        self._lost: set[str] = set()  # hosts whose lease was lost while URLs of theirs were out
        self._to_release: set[str] = set()
        self._releasing = False
        self._renewer: asyncio.Task[None] | None = None
        self._start_fetched = 0
        self._allowance = 0  # pages of max_pages this run claimed
        self._budget_spent = False
        self._claiming = False
        # A scan found no URL queued or in flight anywhere, and this process flushed nothing since.
        self._none_left = False

    def _restore(self, host: str, state: HostState) -> None:
        self._pol.import_state(host, state)

    async def load(self, fetched: int) -> None:
        self._leases.fencing = True
        await self._leases.ensure_hosts()
        self._start_fetched = fetched
        if self.max_pages:
            await self._leases.open_budget(self.max_pages, fetched)
        self._renewer = asyncio.create_task(self._renew_loop(), name="lease-renewer")
        await super().load(fetched)

    async def settle(self) -> None:
        """At the end of the run: stop renewing and give back the pages claimed but not fetched."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        if self.max_pages:
            await self._leases.give_back(self._allowance - (self.fetched - self._start_fetched))
            self._allowance = self.fetched - self._start_fetched

    # ---- taking and letting go of hosts -----------------------------------------------------

    def _arrived(self, host: str) -> None:
        # Not ours: the host is leased by a scan, here or by whichever process gets it first.
        self._dormant = True
        self._dormant_gen += 1

    async def _scan(self) -> None:
        """Take up to the free host capacity in leases; with none to take, wait (backing off) or,
        when no URL is queued or in flight anywhere, end dormancy so the crawl can finish."""
        self._scanning = True
        try:
            generation = self._dormant_gen
            room = self._max_hosts - len(self._hosts)
            taken = await self._leases.take(room) if room > 0 and not self._closed else []
            for host in taken:
                if host not in self._hosts:
                    self._activate(host)
            if taken:
                self._poll = MIN_POLL
                return
            due_in = await self._leases.work_due_in()
            if due_in is None:
                if generation == self._dormant_gen:
                    self._dormant = False
                    self._none_left = True
                return
            if self.max_pages and not self._hosts and not self.leased:
                await self._give_back_unused()
            await self._sleep(poll_wait(self._poll, due_in, random.uniform(0.5, 1.0)))
            self._poll = min(MAX_POLL, self._poll * 2)
        finally:
            self._scanning = False
        # No wake here: the task's end wakes a worker once it has left _tasks (Frontier._task_done).

    def _start_scan(self) -> None:
        if self.limit_reached():
            self._dormant = False  # the fleet's max_pages is reached: no host is taken any more
            return
        super()._start_scan()

    def _evicted(self, host: str) -> None:
        self._lost.discard(host)
        self._to_release.add(host)
        if not self._releasing:
            self._releasing = True
            self._spawn(self._release())

    async def _release(self) -> None:
        try:
            while self._to_release:
                hosts, self._to_release = self._to_release, set()
                # A host that came back into memory meanwhile (leased again) is kept.
                await self._leases.release([h for h in hosts if h not in self._hosts])
        finally:
            self._releasing = False

    def _schedule(self, host: str) -> None:
        if host not in self._lost:
            super()._schedule(host)

    def add(self, rows: list[QueuedUrl]) -> None:
        lost = [row for row in rows if row.host in self._lost]
        if lost:
            self._dormant = True
            self._dormant_gen += 1
            rows = [row for row in rows if row.host not in self._lost]
        super().add(rows)

    def _drop_lost(self) -> None:
        """Forget hosts whose lease this run lost: their flushes write nothing, so lease no more of them."""
        for host in self._leases.take_lost():
            hq = self._hosts.get(host)
            if hq is None:
                continue
            self._lost.add(host)
            self._in_memory -= len(hq.queue)
            hq.queue.clear()
            self._set_overflow(hq, False)
            hq.in_heap = False
            self._evict_if_idle(host)

    def complete(self, lease: Lease, *, fetched: bool) -> None:
        super().complete(lease, fetched=fetched)
        if fetched and lease.previous is None:
            # Its writes are in this batch: the run's fetched count commits with them.
            self._store.batch.counted.append(lease.url_id)

    def take_completions(self) -> list[str]:
        if len(self._store.batch):  # the flush about to start may queue URLs, or leave some in flight
            self._none_left = False
        return super().take_completions()

    def committed(self, completions: list[str], rows: list[QueuedUrl]) -> None:
        if completions or rows:
            self._none_left = False
        super().committed(completions, rows)
        self._drop_lost()

    def _finished(self) -> bool:
        if not super()._finished():
            return False
        if self._none_left or self.limit_reached():
            return True
        # Nothing here, but another crawler may have queued what this one's flushes found known
        # (seeds, links): finish only once a scan after the last flush finds nothing anywhere.
        self._dormant = True
        return False

    async def _renew_loop(self) -> None:
        """Renew every held host and beat the heartbeat a few times per lease."""
        try:
            while not self._closed:
                await asyncio.sleep(self._leases.lease_seconds / 3)
                claims = self._claims
                await self._leases.renew()
                if self.max_pages and claims == self._claims and not self._claiming:
                    # Others gave back this run's claim while it looked dead: only what is left counts.
                    self._allowance = min(self._allowance, self._used() + self._leases.claim_left)
                self._drop_lost()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a database error ends the crawl, as a failed refill does
            self.error = exc
            self.close()

    # ---- the fleet's page budget ----------------------------------------------------------------

    def limit_reached(self) -> bool:
        return bool(self.max_pages) and self._budget_spent and self._claim_used()

    def _used(self) -> int:
        """Pages of this run's claim fetched or being fetched."""
        return self.fetched - self._start_fetched + self.leased - self._revisits_leased

    def _claim_used(self) -> bool:
        return self._used() >= self._allowance

    def _try_lease(self) -> Lease | None:
        if self.max_pages and not self.revisiting and self._claim_used() and not self._budget_spent:
            if not self._claiming and not self._closed:
                self._claiming = True
                self._spawn(self._claim())
            return None
        return super()._try_lease()

    async def _claim(self) -> None:
        self._claims += 1
        try:
            granted, elsewhere = await self._leases.claim(BUDGET_CLAIM)
            self._allowance += granted
            if granted:
                self._budget_poll = MIN_POLL
            if granted < BUDGET_CLAIM and not elsewhere:
                self._budget_spent = True
            elif not granted:
                # Other runs' unfetched claims are fetched or come back (a dead or idle run's): ask again.
                await self._sleep(self._budget_poll * random.uniform(0.5, 1.0))
                self._budget_poll = min(MAX_POLL, self._budget_poll * 2)
        finally:
            self._claiming = False

    async def _give_back_unused(self) -> None:
        """With no host to work on, this run's unused claim goes back for the runs that have some."""
        unused = self._allowance - self._used()
        if unused > 0:
            self._allowance -= unused
            await self._leases.give_back(unused)
