"""The frontier of one crawler among several on a shared database: it works only on hosts it leased."""

from __future__ import annotations

import asyncio
import heapq
import random

from crawler.frontier import Frontier
from crawler.politeness import HostState, Lease, Politeness, Sleep
from crawler.store import Backend, HostLeasing, QueuedUrl

MIN_POLL = 0.1  # seconds: the first wait of a crawler that found no host to take
MAX_POLL = 0.25  # the longest wait between two looks while others hold the remaining work
BUDGET_CLAIM = 64  # pages of the fleet's max_pages claimed at a time
TICK = 0.1  # seconds between two looks at how late the event loop runs
LAG_WEIGHT = 0.2  # weight of the newest lag in its moving average (about a second of ticks)
BUSY_LAG = 0.01  # seconds: a moving-average lag above this says the process is short of CPU
SHED_EVERY = 1.0  # seconds between two lettings-go for other runs (beyond the share, for the hungry), after a take
MAX_HOLD = 60.0  # seconds a host is held before it is let go (storage.max_hold_seconds' default)
PASS_OVER = 2.0  # seconds a host let go is not taken back by its last holder: others may take it first
# Each commit costs the same fixed work (the fence, renewals, one statement per table), so a
# process fetching slowly commits a batch of about this many completions rather than every interval.
COMMIT_BATCH = 32
MAX_COMMIT_WAIT = 1.0  # seconds the batch may wait for COMMIT_BATCH; also how late its links may come


def poll_wait(backoff: float, due_in: float, jitter: float) -> float:
    """How long a crawler that found no host to take waits before looking again: its back-off
    (times a jitter in [0.5, 1]), but no longer than until the earliest host nobody holds is due,
    so a pause that ends or a host released with a wait is taken when it is due."""
    return max(MIN_POLL / 2, min(backoff * jitter, due_in))


class LeasedFrontier(Frontier):
    """A Frontier whose hosts are leases (crawler/store/pg/leases.py): a host comes into memory only
    when this process takes its lease, and leaves it (the lease released, with what is left of its
    delay) once idle, so no two processes ever send to one host.

    Hosts are spread by fair share: the hosts with work (held by running runs, or free) per
    running run, rounded up (HostLeases.fair_share), at most `concurrency`. A process below its
    share takes hosts whatever its CPU, several at a time, so every host of a crawl starts early
    and the fleet's hosts end at about the same time; one holding two or more hosts than the
    run holding fewest, with no host free, lets go of those beyond its share (at least one; one
    batch per SHED_EVERY), so a process that started first or ran fastest at the start does not
    keep more than its share, nor a late one less. Beyond its share a process takes a host by
    demand, one at a time: only when a worker finds no held host able to start a request (each
    is at its per-host capacity or waiting for its delay) while the process has free capacity
    and CPU to spare (its event loop keeps time). A host held longer than
    `max_hold` is let go too, so a big host changes hands while others wait. A host is let go
    at a convenient point: no new URL of it is handed out, and its lease is released (with its
    politeness) once its URLs in flight are done and committed.

    A process that finds no host to take while URLs are queued or in flight elsewhere polls with
    back-off, no longer than until the earliest free host is due; once none are left anywhere it
    finishes. Polling with no host of its own to work on while others hold every host with work,
    it records that it is hungry; a holder of several hosts with URLs queued learns it at its next
    renewal or commit and lets go of one, which the hungry process takes: at the end of a crawl,
    the last hosts are each fetched by a process of their own, not on a share of one's CPU.
    A host's politeness travels with its lease (Politeness.export_state/import_state).

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
        max_hold: float = MAX_HOLD,
        pace_every: float = TICK,
        **limits: int,
    ) -> None:
        super().__init__(store, politeness, **limits)
        self._max_hold = max_hold
        self._pace_every = pace_every  # 0: no ticks of its own, the caller calls pace()
        self._leases = leases
        leases.state_of = politeness.export_state
        leases.restore = self._restore
        self._sleep = sleep
        self._poll = MIN_POLL
        self._budget_poll = MIN_POLL
        self._claims = 0  # claims started, so a heartbeat's view of the claim is not older than one
        # Hosts being let go: their lease was lost, or is given up once their URLs out are done.
        self._leaving: set[str] = set()
        self._to_release: set[str] = set()
        self._releasing = False
        self._renewer: asyncio.Task[None] | None = None
        self._pacer: asyncio.Task[None] | None = None
        self._taken_at: dict[str, float] = {}  # held host -> when this process took it
        self._let_go_at: dict[str, float] = {}  # host let go -> when, for PASS_OVER
        self._lag = 0.0  # moving average of the event loop's lateness, seconds
        self._last_change = float("-inf")  # when a host was last taken, or let go for another run
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
        await self._leases.renew()  # the fleet and the free hosts, for the first share
        self._renewer = asyncio.create_task(self._renew_loop(), name="lease-renewer")
        if self._pace_every > 0:
            self._pacer = asyncio.create_task(self._pace_loop(), name="lease-pacer")
        await super().load(fetched)

    async def settle(self) -> None:
        """At the end of the run: stop renewing and give back the pages claimed but not fetched."""
        for task in (self._renewer, self._pacer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.max_pages:
            await self._leases.give_back(self._allowance - (self.fetched - self._start_fetched))
            self._allowance = self.fetched - self._start_fetched

    # ---- taking and letting go of hosts -----------------------------------------------------

    def _arrived(self, host: str) -> None:
        # Not ours: the host is leased by a scan, here or by whichever process gets it first.
        self._dormant = True
        self._dormant_gen += 1

    async def _scan(self) -> None:
        """Take one more host (the demand was checked by _start_scan); with none to take, wait
        (backing off) or, when no URL is queued or in flight anywhere, end dormancy so the crawl
        can finish."""
        self._scanning = True
        try:
            generation = self._dormant_gen
            started = self._clock()
            self._let_go_at = {h: at for h, at in self._let_go_at.items() if started - at < PASS_OVER}
            taken = await self._leases.take(max(1, self._room()), self._let_go_at) if not self._closed else []
            now = self._clock()
            for host in taken:
                if host not in self._hosts:
                    self._activate(host)
                    self._taken_at[host] = now
            if taken:
                self._poll = MIN_POLL
                self._last_change = now
                return
            due_in = await self._leases.work_due_in(idle=not self._hosts_with_work())
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
        if self.wants_host():
            super()._start_scan()

    def _holding(self) -> int:
        """Hosts held and not being let go."""
        return len(self._hosts) - len(self._leaving)

    def _share(self) -> int:
        return min(self._leases.fair_share(), self._pol.config.concurrency)

    def _room(self) -> int:
        """Hosts this process may take whatever its CPU: what it lacks of its share while hosts are free."""
        return self._share() - self._holding() if self._leases.free_hosts else 0

    def wants_host(self) -> bool:
        """Whether another host would be used: none is held, this process is below its fair share
        while hosts are free, or every held one is at its capacity or waiting for its delay while
        this process has request slots and CPU to spare. A host whose first window is still being
        read counts as coming, not as missing."""
        if not self._hosts or self._room() > 0:
            return True
        if self._pol.saturated or self._lag > BUSY_LAG / 2 or self._refills_running or self._refills_wanted:
            return False
        heap = self._heap
        while heap:  # stale entries first, as _try_lease skips them
            hq = self._hosts.get(heap[0][2])
            if hq is not None and hq.in_heap and hq.heap_seq == heap[0][1]:
                return heap[0][0] > self._clock()
            heapq.heappop(heap)
        return True

    def _commit_may_help(self) -> bool:
        # Only a held host with nothing queued waits for a commit (the links of its pages); the
        # others wait for their delay, and a process holding few hosts is seldom saturated.
        if not super()._commit_may_help():
            return False
        return any(
            not hq.queue and not hq.overflow and hq.unsettled and host not in self._leaving
            for host, hq in self._hosts.items()
        )

    def commit_can_wait(self, waited: float) -> bool:
        if waited >= MAX_COMMIT_WAIT or self.awaiting_commit >= COMMIT_BATCH:
            return False
        # A host being let go with nothing out is released only once its completions commit.
        return not any(
            hq.unsettled and not hq.leased for host in self._leaving if (hq := self._hosts.get(host)) is not None
        )

    # ---- letting go of hosts ------------------------------------------------------------------

    def _let_go(self, host: str) -> None:
        """Hand out no more URLs of a held host, and release its lease once those out are done."""
        hq = self._hosts.get(host)
        if hq is None or host in self._leaving:
            return
        self._leaving.add(host)
        self._let_go_at[host] = self._clock()
        self._evict_if_idle(host)

    def _evict_if_idle(self, host: str) -> bool:
        hq = self._hosts.get(host)
        if hq is not None and host in self._leaving and not hq.refilling:
            # Its window is only a copy of rows queued in the database, there for its next holder.
            self._in_memory -= len(hq.queue)
            hq.queue.clear()
            self._set_overflow(hq, False)
            hq.in_heap = False
        slot = self._pol.slots.get(host)
        if slot is not None and (slot.in_flight or slot.unsent):
            # A request no lease of it counts (a redirect into it, robots.txt's) is still out: the
            # lease goes when that ends (_host_changed), or the next holder could send alongside.
            return False
        return super()._evict_if_idle(host)

    def _host_changed(self, host: str) -> None:
        if host in self._leaving and self._evict_if_idle(host):
            return
        super()._host_changed(host)

    def _evicted(self, host: str) -> None:
        self._leaving.discard(host)
        self._taken_at.pop(host, None)
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
        if host not in self._leaving:
            super()._schedule(host)

    def add(self, rows: list[QueuedUrl]) -> None:
        leaving = [row for row in rows if row.host in self._leaving]
        if leaving:
            # Rows of a host being let go stay in the database for whoever takes it next.
            self._dormant = True
            self._dormant_gen += 1
            rows = [row for row in rows if row.host not in self._leaving]
        super().add(rows)

    def _drop_lost(self) -> None:
        """Forget hosts whose lease this run lost: their flushes write nothing, so lease no more of them."""
        for host in self._leases.take_lost():
            self._let_go(host)

    def pace(self, lag: float) -> None:
        """One tick: fold in the loop's lateness; let go of hosts for runs holding fewer, of one
        when another run is hungry, and of hosts held longer than max_hold."""
        self._lag += LAG_WEIGHT * (lag - self._lag)
        now = self._clock()
        expired = [host for host, taken_at in self._taken_at.items() if now - taken_at >= self._max_hold]
        for host in expired:
            if host not in self._leaving:
                self._let_go(host)
        # Evening out first: what it lets go also feeds the hungry.
        if now - self._last_change >= SHED_EVERY and not self._even_out(now) and self._leases.hungry:
            self._feed_the_hungry(now)
        if self._waiters:
            self._start_scan()  # idle workers, and the CPU to spare may have come back

    def _even_out(self, now: float) -> bool:
        """When no host is free and this process holds two or more hosts than the run holding
        fewest, let go of those beyond its fair share, at least one, the hosts with the fewest URLs
        queued first (a window still being read counts as none): the runs below their share take
        them. A host pauses while it changes hands, so the ones that would lose most by it stay,
        and a host that just arrived behind the others is not the next one sent on. Runs within
        one host of each other keep theirs, so hosts running out unevenly at the end of a crawl
        do not send the others back and forth."""
        leases = self._leases
        holding = self._holding()
        if leases.free_hosts or not leases.other_runs or holding - leases.others_least < 2:
            return False
        held = [(hq.overflow, len(hq.queue), host) for host, hq in self._hosts.items() if host not in self._leaving]
        for _, _, host in sorted(held)[: max(1, holding - self._share())]:
            self._let_go(host)
        self._last_change = now
        return True

    def _hosts_with_work(self) -> list[tuple[bool, int, str]]:
        """The held hosts with URLs queued, not being let go: (more in the database, in the window, host)."""
        return [
            (hq.overflow, len(hq.queue), host)
            for host, hq in self._hosts.items()
            if host not in self._leaving and (hq.queue or hq.overflow)
        ]

    def _feed_the_hungry(self, now: float) -> None:
        """Another run has no host to work on and found none to take, while this one holds several
        with URLs queued: the one with the most goes (its politeness with it), so it is fetched by
        a process of its own rather than on a share of this one's CPU. One per SHED_EVERY, and one
        per sign of hunger. A hungry run holds no host with work, so hosts never go back and forth."""
        self._leases.hungry = False
        with_work = self._hosts_with_work()
        if len(with_work) > 1:
            self._let_go(max(with_work)[2])
            self._last_change = now

    async def _pace_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closed:
                due = loop.time() + self._pace_every
                await asyncio.sleep(self._pace_every)
                self.pace(max(0.0, loop.time() - due))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc
            self.close()

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
