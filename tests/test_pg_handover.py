"""A host's politeness travels with its lease on a real PostgreSQL: a 429 pause and back-off, a
Crawl-delay and a dead holder's state bind the next holder; an idle crawler's poll is capped at the
earliest free host's due time (crawler/leased_frontier.py, crawler/store/pg/leases.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from crawler.config import config_from_dict
from crawler.leased_frontier import MAX_POLL, MIN_POLL, LeasedFrontier, poll_wait
from crawler.politeness import MIN_BACKOFF, Politeness
from crawler.store import NewUrl
from crawler.store.pg.store import PgStore
from tests.support.pg_stores import leases, rows, shared_stores

HOSTS = [f"h{i}.test:80" for i in range(4)]  # host keys, as the politeness and urls.host have them
DELAY = 0.1


class Clock:
    """A machine's monotonic clock that moves only when slept on; each process has its own."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def politeness(clock: Clock) -> Politeness:
    config = config_from_dict(
        {
            "crawl": {"seeds": ["http://h0.test/"]},
            "politeness": {"delay": DELAY, "max_delay": 10.0, "max_crawl_delay": 5.0, "adaptive": False},
        }
    )
    return Politeness(config.politeness, clock=clock, sleep=clock.sleep)


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[tuple[PgStore, PgStore]]:
    seeds = [NewUrl(f"http://h{i}.test/{n}", HOSTS[i], 0) for i in range(len(HOSTS)) for n in range(2)]
    async with shared_stores(pg_url, 2, seeds) as (a, b):
        yield a, b


async def due_in(store: PgStore, host: str) -> float:
    found = await rows(
        store, "SELECT extract(epoch FROM next_fetch_at - now())::float8 FROM hosts WHERE host = %s", (host,)
    )
    return float(found[0][0])


async def starts(pol: Politeness, clock: Clock, host: str, n: int) -> list[float]:
    """The start times of n consecutive requests to host, as its politeness spaces them."""
    times = []
    for _ in range(n):
        await pol.wait_turn(host)
        pol.sent(host)
        times.append(clock.now)
    return times


async def test_a_429_pause_and_back_off_set_by_one_holder_bind_the_next(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    # The two machines' monotonic clocks are far apart: only waits relative to now() travel.
    clock_a, clock_b = Clock(5_000.0), Clock(0.0)
    pol_a, pol_b = politeness(clock_a), politeness(clock_b)
    LeasedFrontier(a, leases(a), pol_a)
    LeasedFrontier(b, leases(b), pol_b)
    assert sorted(await leases(a).take(16)) == HOSTS

    await pol_a.wait_turn("h1.test:80")  # a request, answered 429 with Retry-After: 1
    pol_a.sent("h1.test:80")
    pol_a.retry_after("http://h1.test/0", 1.0, 429)
    widened = pol_a.slot("h1.test:80").delay
    assert widened == MIN_BACKOFF > DELAY
    released_at = await a.scalar("SELECT now()")  # a new transaction: the database's time before the release
    await leases(a).release(["h1.test:80", "h2.test:80"])
    assert 0.5 < await due_in(a, "h1.test:80") <= 1.0

    # b may take h2.test at once, but not h1.test before the pause ends on the database's clock.
    taken = await leases(b).take(16)
    assert taken == ["h2.test:80"]
    for _ in range(400):  # polling the database, as an idle crawler does
        if taken := await leases(b).take(16):
            break
        await asyncio.sleep(0.05)
    taken_at = await b.scalar("SELECT now()")
    assert taken == ["h1.test:80"]
    assert (taken_at - released_at).total_seconds() >= 1.0 - 0.01

    # b keeps the widened gap for the requests that follow.
    assert pol_b.slot("h1.test:80").backoff_delay == widened
    first, second, third = await starts(pol_b, clock_b, "h1.test:80", 3)
    assert second - first >= widened - 1e-9 and third - second >= widened - 1e-9
    assert await rows(a, "SELECT backoff_delay FROM hosts WHERE host = 'h1.test:80'") == [(widened,)]


async def test_a_crawl_delay_learnt_by_one_holder_spaces_the_next_holders_requests(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    clock_a, clock_b = Clock(7.0), Clock(0.25)
    pol_a, pol_b = politeness(clock_a), politeness(clock_b)
    LeasedFrontier(a, leases(a), pol_a)
    LeasedFrontier(b, leases(b), pol_b)
    await leases(a).take(16)
    pol_a.set_crawl_delay("h3.test:80", 2.0)  # robots.txt said Crawl-delay: 2
    pol_a.set_crawl_delay("h0.test:80", 60.0)  # above max_crawl_delay: capped, and carried capped
    await starts(pol_a, clock_a, "h3.test:80", 1)
    await leases(a).release(["h0.test:80", "h3.test:80"])
    assert 1.0 < await due_in(a, "h3.test:80") <= 2.0  # the gap after a's last request
    await rows(a, "UPDATE hosts SET next_fetch_at = now() WHERE host = 'h3.test:80' RETURNING 1")

    assert sorted(await leases(b).take(16)) == ["h0.test:80", "h3.test:80"]
    assert (pol_b.slot("h3.test:80").crawl_delay, pol_b.slot("h0.test:80").crawl_delay) == (2.0, 5.0)
    times = await starts(pol_b, clock_b, "h3.test:80", 3)
    assert all(later - earlier >= 2.0 - 1e-9 for earlier, later in itertools.pairwise(times))


async def test_a_dead_holders_pause_and_back_off_bind_whoever_takes_its_expired_lease(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    clock_a, clock_b = Clock(100.0), Clock(3.0)
    pol_a, pol_b = politeness(clock_a), politeness(clock_b)
    LeasedFrontier(a, leases(a), pol_a)
    LeasedFrontier(b, leases(b), pol_b)
    await leases(a).take(16)
    await pol_a.wait_turn("h2.test:80")
    pol_a.sent("h2.test:80")
    pol_a.retry_after("http://h2.test/0", 30.0, 429)  # then a renews once, and dies
    await leases(a).renew()
    assert 29.0 < await due_in(a, "h2.test:80") <= 30.0
    await rows(a, "UPDATE hosts SET lease_until = now() - interval '1 second' RETURNING 1")  # every lease expired

    taken = await leases(b).take(16)
    assert "h2.test:80" not in taken and sorted(taken) == ["h0.test:80", "h1.test:80", "h3.test:80"]
    await rows(a, "UPDATE hosts SET next_fetch_at = now() WHERE host = 'h2.test:80' RETURNING 1")  # the pause is over
    assert await leases(b).take(16) == ["h2.test:80"]
    assert pol_b.slot("h2.test:80").backoff_delay == MIN_BACKOFF


async def test_a_renewal_writes_the_changed_back_off_and_the_next_holder_starts_from_it(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    clock_a, clock_b = Clock(1.0), Clock(50.0)
    pol_a, pol_b = politeness(clock_a), politeness(clock_b)
    LeasedFrontier(a, leases(a), pol_a)
    LeasedFrontier(b, leases(b), pol_b)
    await leases(a).take(16)
    for _ in range(3):
        pol_a.throttled("h0.test:80")  # three 429s: 0.5, 1, 2
    pol_a.observe("h0.test:80", 200, 0.01)  # a success halves it
    await leases(a).renew()
    assert await rows(a, "SELECT backoff_delay FROM hosts WHERE host = 'h0.test:80'") == [(1.0,)]
    pol_b.throttled("h0.test:80")  # what b knew of the host from an earlier lease is older
    await leases(a).release(["h0.test:80"])
    assert await leases(b).take(1) == ["h0.test:80"]
    slot = pol_b.slot("h0.test:80")
    assert slot.backoff_delay == 1.0 and slot.paused_until <= clock_b.now


def test_the_poll_wait_is_the_back_off_capped_at_the_earliest_due_host() -> None:
    assert poll_wait(MAX_POLL, float("inf"), 1.0) == MAX_POLL
    assert poll_wait(MAX_POLL, float("inf"), 0.5) == MAX_POLL / 2
    assert poll_wait(MAX_POLL, MAX_POLL * 0.75, 1.0) == MAX_POLL * 0.75  # a release with a wait, a pause: ends then
    assert poll_wait(MAX_POLL / 4, MAX_POLL * 0.75, 1.0) == MAX_POLL / 4  # the back-off is shorter still
    assert poll_wait(MAX_POLL, -3.0, 1.0) == MIN_POLL / 2  # due now, but taken by another: look again soon


async def test_an_idle_crawler_looks_again_when_a_released_host_is_due(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    await leases(a).take(16)
    a_pol = politeness(Clock(0.0))
    LeasedFrontier(a, leases(a), a_pol)
    await leases(a).release(["h1.test:80"])  # free, with no wait
    due = MAX_POLL * 0.8  # within the back-off's reach
    await rows(
        a,
        "UPDATE hosts SET next_fetch_at = now() + make_interval(secs => %s) WHERE host = 'h1.test:80' RETURNING 1",
        (due,),
    )
    waits: list[float] = []
    frontier: LeasedFrontier

    async def record(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 8:
            frontier.close()

    frontier = LeasedFrontier(b, leases(b), politeness(Clock(0.0)), sleep=record)
    await frontier.load(0)
    assert await frontier.next() is None  # closed after eight looks, none of which found h1.test due
    await frontier.settle()
    assert all(0 < wait <= due for wait in waits)
    # The back-off grew to the due time (to MAX_POLL, jittered ≥ MAX_POLL / 2) and was capped at
    # it: the last looks wait for the host to be due, neither longer nor much shorter.
    assert waits[-1] >= MAX_POLL / 2 - 0.05

    # With every host held, the back-off alone sets the wait.
    await rows(
        a, "UPDATE hosts SET lease_owner = %s, lease_until = now() + interval '30 seconds' RETURNING 1", (a.run_id,)
    )
    assert await leases(b).work_due_in() == float("inf")
    await rows(a, "UPDATE urls SET state = 'done' RETURNING 1")
    assert await leases(b).work_due_in() is None  # nothing queued or in flight anywhere
