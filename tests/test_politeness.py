"""Politeness with an injected clock: turns, reservations, capacity, Crawl-delay, back-off, adaptive delay."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from crawler.config import PolitenessConfig
from crawler.politeness import MIN_BACKOFF, HostGate, Lease, Politeness

HOST = "a.test:80"
URL = "http://a.test/page"


class FakeTime:
    """A monotonic clock that only moves when someone sleeps on it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)  # others run while the time passes
        self.now += seconds


def politeness(t: FakeTime, **keys: object) -> Politeness:
    settings: dict[str, object] = {"delay": 1.0, "per_host_concurrency": 2, "concurrency": 8, "adaptive": False}
    settings.update(keys)
    return Politeness(PolitenessConfig(**settings), clock=t, sleep=t.sleep)  # type: ignore[arg-type]


async def start(pol: Politeness, host: str = HOST) -> None:
    """A request's turn, taken and sent at once."""
    await pol.wait_turn(host)
    pol.sent(host)


def lease_of(pol: Politeness, t: FakeTime, url: str = URL, host: str = HOST) -> Lease:
    reservation = pol.try_reserve(host, t.now)
    assert reservation is not None
    return Lease(1, url, host, 0, reservation)


# ---- a clock near zero ---------------------------------------------------------------------

# Where a monotonic clock counts from is unspecified: right after boot it reads a few seconds,
# and an injected clock may read zero or less.  No reading may stand for "long ago".
NEAR_ZERO = [-3.0, 0.0, 5.0]


@pytest.mark.parametrize("boot", NEAR_ZERO)
async def test_a_new_host_is_ready_at_once_and_its_delay_counts_from_the_first_start(boot: float) -> None:
    t = FakeTime(boot)
    pol = politeness(t)
    assert pol.slot(HOST).ready_at <= t.now
    first = lease_of(pol, t)  # a host never asked is ready now, whatever the clock reads
    async with HostGate(pol, first).request(URL):
        assert t.now == boot  # the reserved turn is used at once
    await start(pol)
    assert (t.now, t.slept) == (boot + 1.0, [1.0])


@pytest.mark.parametrize("boot", NEAR_ZERO)
async def test_a_pause_near_zero_holds_the_first_request_for_exactly_its_length(boot: float) -> None:
    t = FakeTime(boot)
    pol = politeness(t, delay=0.0)
    assert pol.try_reserve(HOST, t.now) is not None
    pol.release(HOST)
    pol.retry_after(URL, 2.0, 503)
    assert pol.try_reserve(HOST, boot + 1.9) is None
    await start(pol)
    assert t.now == boot + 2.0


# ---- turns and reservations ----------------------------------------------------------------


def test_a_reservation_takes_capacity_and_the_next_turn() -> None:
    t = FakeTime()
    pol = politeness(t)
    assert pol.try_reserve(HOST, t.now) is not None
    slot = pol.slot(HOST)
    assert (slot.in_flight, slot.ready_at) == (1, t.now + 1.0)
    assert pol.try_reserve(HOST, t.now) is None  # capacity left, but not ready
    t.now += 1.0
    assert pol.try_reserve(HOST, t.now) is not None
    t.now += 1.0
    assert pol.try_reserve(HOST, t.now) is None  # ready, but both units taken
    pol.release(HOST)
    assert pol.try_reserve(HOST, t.now) is not None


async def test_turns_are_delay_apart_and_a_grown_delay_applies_to_the_next_start() -> None:
    t = FakeTime()
    pol = politeness(t)
    starts = []
    await start(pol)
    starts.append(t.now)
    await start(pol)
    starts.append(t.now)
    # The delay grows after a start was taken (Crawl-delay learnt, say): the next start
    # counts the new delay from that start, not the old one.
    pol.set_crawl_delay(HOST, 5.0)
    await start(pol)
    starts.append(t.now)
    assert [b - a for a, b in itertools.pairwise(starts)] == [1.0, 5.0]


async def test_a_delay_that_grows_while_waiting_is_honoured() -> None:
    t = FakeTime()
    pol = politeness(t)
    await start(pol)
    first = t.now

    async def grow_meanwhile() -> None:
        pol.set_crawl_delay(HOST, 3.0)

    await asyncio.gather(start(pol), grow_meanwhile())
    assert t.now - first == 3.0  # woke at +1, saw the longer delay, slept again
    assert t.slept == [1.0, 2.0]


async def test_a_stale_reservation_waits_its_turn() -> None:
    # Two leases are reserved 1 s apart; both wait for a robots.txt fetch that takes 5 s,
    # then start together.  The second must not ride on its old reservation.
    t = FakeTime()
    pol = politeness(t)
    first = lease_of(pol, t)
    t.now += 1.0
    second = lease_of(pol, t)
    t.now += 5.0
    starts = []
    for lease in (first, second):
        async with HostGate(pol, lease).request(URL):
            starts.append(t.now)
    assert starts[1] - starts[0] == 1.0


async def test_a_reservation_is_not_used_once_the_delay_has_grown() -> None:
    t = FakeTime()
    pol = politeness(t)
    async with HostGate(pol, lease_of(pol, t)).request(URL):  # robots.txt, say
        robots_start = t.now
    pol.release(HOST)
    t.now += 1.0
    lease = lease_of(pol, t)  # reserved at +1 s, under the 1 s delay
    pol.set_crawl_delay(HOST, 4.0)  # then robots.txt said Crawl-delay: 4
    async with HostGate(pol, lease).request(URL):
        assert t.now - robots_start == 4.0


async def test_an_unused_reservation_is_given_back() -> None:
    # A lease whose URL robots.txt disallows makes no request; the host's next start must
    # not be pushed back by it.
    t = FakeTime()
    pol = politeness(t)
    ready_before = pol.slot(HOST).ready_at
    gate = HostGate(pol, lease_of(pol, t))
    gate.release()
    gate.release()  # idempotent
    slot = pol.slot(HOST)
    assert (slot.in_flight, slot.ready_at) == (0, ready_before)
    assert pol.try_reserve(HOST, t.now) is not None


async def test_an_unused_reservation_is_kept_when_a_later_turn_exists() -> None:
    t = FakeTime()
    pol = politeness(t)
    gate = HostGate(pol, lease_of(pol, t))
    t.now += 1.0
    lease_of(pol, t)
    gate.release()
    assert pol.slot(HOST).ready_at == t.now + 1.0


# ---- a start is when the request is sent --------------------------------------------------


async def test_a_turn_not_yet_sent_holds_the_next_until_its_send_and_the_gap_counts_from_it() -> None:
    t = FakeTime()
    pol = politeness(t)
    changed: list[str] = []
    pol.on_change = changed.append
    sent = asyncio.Event()
    second_start: list[float] = []

    async def first() -> None:
        async with HostGate(pol, lease_of(pol, t)).request(URL) as reports:
            await sent.wait()  # a connection opening, say
            reports.sent()
            reports.sent()  # the same request reported written again moves its start, and ends nothing twice

    async def second() -> None:
        await pol.wait_turn(HOST)
        second_start.append(t.now)
        pol.sent(HOST)

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    for _ in range(5):
        await asyncio.sleep(0)
    t.now += 3.0  # far past the delay: the second still waits, with no sleep of its own
    for _ in range(5):
        await asyncio.sleep(0)
    assert second_start == [] and t.slept == []
    assert pol.slot(HOST).ready_at == float("inf")
    assert pol.try_reserve(HOST, t.now) is None  # no lease either
    assert changed == []
    sent.set()
    await asyncio.gather(*tasks)
    sent_at = 1003.0
    assert changed == [HOST]  # the frontier re-keys the host
    assert second_start == [sent_at + 1.0]
    assert pol.slot(HOST).unsent == 0


async def test_a_request_written_again_takes_a_turn_of_its_own() -> None:
    # Its first write ended its turn, and another request took the next; the second write (a new
    # connection after a dropped one) waits the delay after that one, and holds the host till written.
    t = FakeTime()
    pol = politeness(t)
    gate = HostGate(pol, lease_of(pol, t))
    async with gate.request(URL) as reports:
        reports.sent()
        await reports.before_resend()  # nothing else was waiting: the delay after the first write
        assert (t.now, pol.slot(HOST).unsent) == (1001.0, 1)
        await reports.before_resend()  # not written since: that turn still holds
        assert (t.now, pol.slot(HOST).unsent) == (1001.0, 1)
        reports.sent()
        await start(pol)  # another request, a delay later
        assert t.now == 1002.0
        await reports.before_resend()
        assert t.now == 1003.0
        t.now += 0.5  # a connection opening
        reports.sent()
    slot = pol.slot(HOST)
    assert (slot.unsent, slot.last_start) == (0, 1003.5)
    gate.release()


async def test_a_request_that_fails_before_its_second_write_ends_that_turn() -> None:
    t = FakeTime()
    pol = politeness(t)
    with pytest.raises(ConnectionRefusedError):
        async with HostGate(pol, lease_of(pol, t)).request(URL) as reports:
            reports.sent()
            await reports.before_resend()
            raise ConnectionRefusedError  # the new connection failed: the second write never happened
    slot = pol.slot(HOST)
    assert (slot.unsent, slot.last_start) == (0, 1001.0)
    await reports.before_resend()  # too late: the request is over, and takes nothing
    assert slot.unsent == 0


async def test_a_request_that_fails_before_its_send_ends_its_turn() -> None:
    t = FakeTime()
    pol = politeness(t)
    with pytest.raises(ConnectionRefusedError):
        async with HostGate(pol, lease_of(pol, t)).request(URL):
            t.now += 0.5
            raise ConnectionRefusedError  # the connect failed: nothing was written
    slot = pol.slot(HOST)
    assert (slot.unsent, slot.ready_at) == (0, t.now + 1.0)  # counted from the failure
    await start(pol)
    assert t.now == 1001.5


async def test_a_request_cancelled_before_its_send_ends_its_turn() -> None:
    t = FakeTime()
    pol = politeness(t)
    started = asyncio.Event()

    async def request() -> None:
        async with HostGate(pol, lease_of(pol, t)).request(URL):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(request())
    await started.wait()
    assert pol.slot(HOST).unsent == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pol.slot(HOST).unsent == 0
    assert pol.try_reserve(HOST, t.now + 1.0) is not None


async def test_a_wait_for_an_unsent_turn_can_be_cancelled() -> None:
    t = FakeTime()
    pol = politeness(t)
    await pol.wait_turn(HOST)  # unsent
    waiter = asyncio.create_task(pol.wait_turn(HOST))
    for _ in range(3):
        await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pol.slot(HOST).sent_waiters == []
    pol.sent(HOST)
    await start(pol)
    assert t.now == 1001.0


# ---- capacity across hosts ---------------------------------------------------------------


async def test_a_redirect_to_another_host_moves_the_capacity() -> None:
    t = FakeTime()
    pol = politeness(t, per_host_concurrency=1)
    other = "b.test:80"
    busy = lease_of(pol, t, "http://b.test/x", other)  # b.test's only unit is taken
    gate = HostGate(pol, lease_of(pol, t))

    async def follow() -> None:
        async with gate.request(URL):
            pass
        async with gate.request("http://b.test/y"):  # the redirect hop
            assert pol.slot(other).in_flight == 1

    task = asyncio.create_task(follow())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # waits for b.test's capacity, holding none of a.test's
    assert (pol.slot(HOST).in_flight, pol.slot(other).in_flight) == (0, 1)
    HostGate(pol, busy).release()
    await task
    gate.release()
    assert (pol.slot(HOST).in_flight, pol.slot(other).in_flight) == (0, 0)


async def test_cancelled_while_waiting_for_capacity_releases_nothing_twice() -> None:
    t = FakeTime()
    pol = politeness(t, per_host_concurrency=1)
    other = "b.test:80"
    busy = lease_of(pol, t, "http://b.test/x", other)
    gate = HostGate(pol, lease_of(pol, t))
    waiter_gate = HostGate(pol, lease_of(pol, t, "http://c.test/", "c.test:80"))

    async def hop(g: HostGate) -> None:
        async with g.request("http://b.test/y"):
            pass

    cancelled = asyncio.create_task(hop(gate))
    patient = asyncio.create_task(hop(waiter_gate))
    await asyncio.sleep(0)
    HostGate(pol, busy).release()  # wakes the first waiter ...
    cancelled.cancel()  # ... which is cancelled before it runs: the wake-up passes on
    await patient
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    gate.release()
    waiter_gate.release()
    assert all(slot.in_flight == 0 for slot in pol.slots.values())


def test_no_leases_while_robots_txt_is_fetched() -> None:
    t = FakeTime()
    pol = politeness(t)
    changed: list[str] = []
    pol.on_change = changed.append
    with pol.fetching_robots(HOST):
        assert not pol.slot(HOST).leasable
        assert pol.try_reserve(HOST, t.now) is None
    assert pol.slot(HOST).leasable
    assert changed == [HOST]  # the frontier hears it may lease again


# ---- Crawl-delay, Retry-After, 429 back-off ---------------------------------------------------


def test_crawl_delay_is_capped_and_the_cap_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTime()
    pol = politeness(t, max_crawl_delay=30.0)
    with caplog.at_level(logging.WARNING, logger="crawler.politeness"):
        for _ in range(3):
            pol.set_crawl_delay(HOST, 120.0)
    assert pol.slot(HOST).delay == 30.0
    assert [r.getMessage() for r in caplog.records] == [
        "a.test:80: robots.txt Crawl-delay 120s capped at max_crawl_delay 30s"
    ]
    pol.set_crawl_delay(HOST, 0.5)  # below the configured delay: delay stays 1 s
    assert pol.slot(HOST).delay == 1.0
    pol.set_crawl_delay(HOST, None)
    assert pol.slot(HOST).delay == 1.0


def test_retry_after_pauses_the_whole_host() -> None:
    t = FakeTime()
    pol = politeness(t, delay=0.0)
    pol.retry_after(URL, 7.0, 503)
    assert pol.slot(HOST).ready_at == t.now + 7.0
    assert pol.try_reserve(HOST, t.now + 6.9) is None
    assert pol.try_reserve(HOST, t.now + 7.0) is not None
    assert pol.slot(HOST).backoff_delay == 0.0  # a 503 pauses, only 429s back off


def test_repeated_429s_back_off_exponentially_up_to_max_delay() -> None:
    t = FakeTime()
    pol = politeness(t, delay=0.0, max_delay=10.0)
    pauses = []
    for _ in range(7):
        pol.retry_after(URL, None, 429)
        pauses.append(pol.slot(HOST).paused_until - t.now)
    assert pauses == [MIN_BACKOFF, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert pol.slot(HOST).delay == 10.0
    # A Retry-After still sets the pause, and the 429 still doubles the delay.
    t.now += 100
    pol.slot(HOST).backoff_delay = 1.0
    pol.retry_after(URL, 3.0, 429)
    assert (pol.slot(HOST).paused_until - t.now, pol.slot(HOST).delay) == (3.0, 2.0)
    # Successes halve the back-off until it is gone.
    for _ in range(4):
        pol.observe(HOST, 200, 0.01)
    assert pol.slot(HOST).backoff_delay == 0.0
    assert pol.slot(HOST).delay == 0.0


def test_the_first_429_doubles_a_larger_delay() -> None:
    t = FakeTime()
    pol = politeness(t, delay=2.0, max_delay=60.0)
    pol.retry_after(URL, None, 429)
    assert pol.slot(HOST).delay == 4.0


# ---- adaptive delay (AutoThrottle) ------------------------------------------------------------


def test_adaptive_delay_follows_latency_within_delay_and_max_delay() -> None:
    t = FakeTime()
    pol = politeness(t, adaptive=True, delay=0.2, max_delay=5.0, per_host_concurrency=2)
    slot = pol.slot(HOST)
    pol.observe(HOST, 200, 0.01)  # fast: the delay stays at `delay`
    assert slot.delay == 0.2
    pol.observe(HOST, 200, 3.0)  # slow: up at once to latency / concurrency
    assert slot.delay == 1.5
    pol.observe(HOST, 200, 0.0)  # relaxes by halving the gap, never below delay
    assert slot.delay == 0.75
    for _ in range(20):
        pol.observe(HOST, 200, 0.0)
    assert slot.delay == 0.2
    pol.observe(HOST, 200, 60.0)  # very slow: capped at max_delay
    assert slot.delay == 5.0


def test_adaptive_delay_is_never_lowered_by_errors_or_non_2xx() -> None:
    t = FakeTime()
    pol = politeness(t, adaptive=True, delay=0.0, max_delay=60.0, per_host_concurrency=1)
    slot = pol.slot(HOST)
    pol.observe(HOST, 200, 2.0)
    assert slot.delay == 2.0
    for status in (None, 500, 404, 301):
        pol.observe(HOST, status, 0.001)  # fast failures and redirects
        assert slot.delay == 2.0
    pol.observe(HOST, None, 10.0)  # a slow timeout raises it
    assert slot.delay == 10.0


@pytest.mark.parametrize("latency", [0.0, 0.001, 0.3, 1.0, 7.0, 1e6])
def test_adaptive_delay_bounds_hold_for_any_latency(latency: float) -> None:
    t = FakeTime()
    pol = politeness(t, adaptive=True, delay=0.5, max_delay=4.0)
    for status in (200, None, 503, 200, 200):
        pol.observe(HOST, status, latency)
        assert 0.5 <= pol.slot(HOST).adaptive_delay <= 4.0


def test_adaptive_off_keeps_the_delay() -> None:
    t = FakeTime()
    pol = politeness(t, adaptive=False, delay=0.5)
    pol.observe(HOST, 200, 30.0)
    assert pol.slot(HOST).delay == 0.5
