"""Hosts are spread by fair share and taken by demand on a real PostgreSQL (crawler/leased_frontier.py):
a crawler below its share of the hosts with work takes them whatever its CPU; beyond it, one more host
only when no held host can start a request and it has CPU to spare; above it, with none free and room
at the others, it lets the rest go for them (those with the fewest URLs queued); and every host held
longer than max_hold is let go once its URLs out are done."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crawler.config import ConfigError, config_from_dict
from crawler.leased_frontier import BUSY_LAG, MAX_HOLD, SHED_EVERY, LeasedFrontier
from crawler.politeness import Lease, Politeness
from crawler.store import NewUrl
from crawler.store.pg.store import PgStore
from tests.support.pg_stores import Clock, finish, leases, owners, rows, shared_stores, until_free
from tests.support.postgres import pg_server, pg_server_url, pg_url  # noqa: F401  (fixtures)

HOSTS = [f"h{i}.test:80" for i in range(5)]
DELAY = 10.0  # the test clock moves only when told to: a host just leased is not ready again


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[tuple[PgStore, PgStore]]:  # noqa: F811
    seeds = [NewUrl(f"http://h{i}.test/{n}", HOSTS[i], 0) for i in range(len(HOSTS)) for n in range(3)]
    async with shared_stores(pg_url, 2, seeds) as (a, b):
        yield a, b


def frontier(store: PgStore, clock: Clock, *, max_hold: float = 3600.0) -> LeasedFrontier:
    config = config_from_dict(
        {"crawl": {"seeds": ["http://h0.test/"]}, "politeness": {"delay": DELAY, "adaptive": False}}
    )
    # pace_every=0: no ticks of its own; the test calls pace() with the lag it means.
    return LeasedFrontier(
        store, leases(store), Politeness(config.politeness, clock=clock), max_hold=max_hold, pace_every=0
    )


async def close(f: LeasedFrontier) -> None:
    f.close()
    await f.settle()


async def held_one_second(store: PgStore, clock: Clock) -> tuple[LeasedFrontier, Lease]:
    """A frontier whose hosts are let go after a second of holding, and its first lease."""
    f = frontier(store, clock, max_hold=1.0)
    await f.load(0)
    lease = await f.next()
    assert lease is not None
    return f, lease


async def test_a_crawler_takes_its_fair_share_at_start_and_one_more_only_with_cpu_to_spare(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    clock = Clock(0.0)
    f = frontier(a, clock)
    f.pace(lag=BUSY_LAG * 20)  # short of CPU from the start: the share is taken anyway
    await f.load(0)
    share = -(-len(HOSTS) // 2)  # two runs, five hosts with work
    assert len(leases(a).held) == share
    assert not f.wants_host()  # at its share, and no CPU to spare for more

    out = [await f.next() for _ in range(share)]
    assert {lease.host for lease in out if lease is not None} == set(leases(a).held)
    for _ in range(60):  # the lag fades as the loop keeps time again
        f.pace(lag=0.0)
    # Every held host now waits for its delay while workers are free: one more host, by demand.
    assert f.wants_host()
    more = await f.next()
    assert more is not None and more.host not in {lease.host for lease in out if lease is not None}
    assert len(leases(a).held) == share + 1
    # The other crawler takes what is left.
    assert len(await leases(b).take(16)) == len(HOSTS) - share - 1
    await close(f)


async def test_a_crawler_above_its_fair_share_lets_the_rest_go_for_a_run_below_its_own(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    # The second crawler's run looks dead while the first starts: it takes every host.
    await a.fetchall("UPDATE runs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s RETURNING 1", (b.run_id,))
    clock = Clock(0.0)
    f = frontier(a, clock)
    await f.load(0)
    assert len(leases(a).held) == len(HOSTS)

    # It comes to life (a heartbeat) holding nothing: the first one's share is three hosts of five.
    await leases(b).renew()
    await leases(a).renew()
    assert leases(a).fair_share() == 3 and not leases(a).free_hosts
    clock.now += SHED_EVERY
    f.pace(lag=0.0)
    # Nothing of theirs is out: both go at once, with their politeness, and the other run takes them.
    gone = set(HOSTS) - set(f._hosts)
    assert len(gone) == 2
    for host in gone:
        await until_free(a, host)
    assert set(leases(a).held) == set(HOSTS) - gone
    assert sorted(await leases(b).take(16)) == sorted(gone)
    assert sorted(h for h, owner in (await owners(a)).items() if owner == b.run_id) == sorted(gone)

    # At its share and one host more than the other run, it keeps the rest.
    await leases(a).renew()
    clock.now += SHED_EVERY
    f.pace(lag=0.0)
    assert len(leases(a).held) == 3 and not f._leaving

    # Two more than the run holding fewest (as that run says): one goes.
    await a.fetchall("UPDATE runs SET held = 1 WHERE id = %s RETURNING 1", (b.run_id,))
    await leases(a).renew()
    assert leases(a).others_least == 1 and not leases(a).free_hosts
    f.pace(lag=0.0)
    assert len(leases(a).held) == 3  # not within SHED_EVERY of the last time
    clock.now += SHED_EVERY
    f.pace(lag=0.0)
    one = set(HOSTS) - set(f._hosts) - gone
    assert len(one) == 1
    await until_free(a, one.pop())
    await close(f)


async def test_a_host_held_longer_than_max_hold_is_let_go_after_its_urls_out_and_taken_by_another(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    elsewhere = await leases(b).take(len(HOSTS) - 1)  # one host is left for the first crawler
    clock = Clock(0.0)
    f = frontier(a, clock, max_hold=5.0)
    await f.load(0)
    lease = await f.next()
    assert lease is not None and set(leases(a).held) == {lease.host}
    await leases(b).release(elsewhere[:1])
    clock.now += 2.0
    other = await f.next()  # taken two seconds later, by demand
    assert other is not None and other.host == elsewhere[0]
    await finish(f, a, other)

    clock.now += 3.0  # the first host is held 5 s, the second 3 s
    f.pace(lag=0.0)
    assert (await owners(a))[lease.host] == a.run_id  # its URL is still out
    assert set(leases(a).held) == {lease.host, other.host}
    await finish(f, a, lease)
    await until_free(a, lease.host)
    assert lease.host not in leases(a).held and other.host in leases(a).held
    # Its URLs left in the window went back to the database, for the next holder.
    await a.fetchall("UPDATE hosts SET next_fetch_at = now() WHERE host = %s RETURNING 1", (lease.host,))
    assert lease.host in await leases(b).take(16)
    queued = await a.fetchall("SELECT count(*) FROM urls WHERE host = %s AND state = 'queued'", (lease.host,))
    assert queued[0][0] == 2

    clock.now += 2.0
    f.pace(lag=0.0)  # the second host reaches max_hold with nothing out: let go at once
    await until_free(a, other.host)
    await close(f)


async def test_rows_of_a_host_being_let_go_stay_in_the_database(stores: tuple[PgStore, PgStore]) -> None:
    a, _ = stores
    clock = Clock(0.0)
    f, lease = await held_one_second(a, clock)
    clock.now += 1.0
    f.pace(lag=0.0)
    # The page's link to its own host arrives with the commit that ends the lease.
    a.add_urls([NewUrl(f"http://{lease.host.split(':')[0]}/new", lease.host, 1, lease.url_id)])
    await finish(f, a, lease)
    await until_free(a, lease.host)
    assert f.queued_in_memory() == 0 and lease.host not in leases(a).held
    found: Any = await a.fetchall("SELECT state FROM urls WHERE url LIKE %s", ("%/new",))
    assert [row[0] for row in found] == ["queued"]
    await close(f)


async def test_each_run_says_how_many_hosts_it_holds_and_a_dead_run_counts_for_nobody(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores

    async def held_by_run() -> dict[int, int]:
        return {row[0]: row[1] for row in await rows(a, "SELECT id, held FROM runs")}

    taken = await leases(b).take(3)
    assert (await held_by_run())[b.run_id] == 3
    await leases(b).release(taken[:1])
    assert (await held_by_run())[b.run_id] == 2
    await leases(a).renew()
    assert (leases(a).other_runs, leases(a).others_held) == (1, 2)
    assert leases(a).free_count == len(HOSTS) - 2 and leases(a).fair_share() == 3

    await a.fetchall("UPDATE runs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s RETURNING 1", (b.run_id,))
    await leases(a).renew()
    assert (leases(a).other_runs, leases(a).others_held) == (0, 0)
    # Its hosts stay held until their leases expire, so they are not counted as free either.
    assert leases(a).free_count == len(HOSTS) - 2 and leases(a).fair_share() == len(HOSTS) - 2


async def test_a_take_reads_the_fleet_back_so_a_run_that_joined_shrinks_the_share(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    await a.fetchall("UPDATE runs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s RETURNING 1", (b.run_id,))
    await leases(a).renew()
    assert leases(a).fair_share() == len(HOSTS)  # alone, as far as it knows
    await a.fetchall("UPDATE runs SET heartbeat_at = now() WHERE id = %s RETURNING 1", (b.run_id,))  # b joins
    assert len(await leases(a).take(1)) == 1
    assert leases(a).other_runs == 1 and leases(a).fair_share() == 3


def test_max_hold_seconds_is_read_and_range_checked() -> None:
    base: dict[str, Any] = {"crawl": {"seeds": ["http://a.test/"]}}
    assert config_from_dict(base).storage.max_hold_seconds == MAX_HOLD
    assert config_from_dict({**base, "storage": {"max_hold_seconds": 5}}).storage.max_hold_seconds == 5.0
    with pytest.raises(ConfigError) as caught:
        config_from_dict({**base, "storage": {"max_hold_seconds": 0.5}})
    assert caught.value.key == "storage.max_hold_seconds"


async def test_a_host_let_go_with_a_redirect_into_it_in_flight_is_released_only_once_that_ends(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, _ = stores
    clock = Clock(0.0)
    f, lease = await held_one_second(a, clock)
    # A worker of another host follows a redirect into this one: it holds the host's capacity.
    await f._pol.acquire(lease.host)
    clock.now += 1.0
    f.pace(lag=0.0)
    await finish(f, a, lease)
    await f._leases.renew()  # a round trip: a release would have been sent by now
    assert (await owners(a))[lease.host] == a.run_id
    f._pol.release(lease.host)  # the redirect's request ended
    await until_free(a, lease.host)
    await close(f)


async def loaded(f: LeasedFrontier, queued: int) -> None:
    """Wait until the held hosts' windows hold `queued` URLs (their reads are the frontier's tasks)."""
    for _ in range(1000):
        if f.queued_in_memory() == queued:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{f.queued_in_memory()} URLs in the windows, not {queued}")


async def test_a_crawler_above_its_share_lets_go_of_its_hosts_with_the_fewest_urls_queued(pg_url: str) -> None:  # noqa: F811
    seeds = [NewUrl(f"http://{host.split(':')[0]}/{n}", host, 0) for i, host in enumerate(HOSTS) for n in range(i + 1)]
    async with shared_stores(pg_url, 2, seeds) as (a, b):
        await a.fetchall(
            "UPDATE runs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s RETURNING 1", (b.run_id,)
        )
        clock = Clock(0.0)
        f = frontier(a, clock)
        await f.load(0)
        assert await f.next() is not None
        await loaded(f, len(seeds) - 1)
        queued = {host: len(hq.queue) for host, hq in f._hosts.items()}
        await leases(b).renew()
        await leases(a).renew()
        clock.now += SHED_EVERY
        f.pace(lag=0.0)
        let_go = set(HOSTS) - set(f._hosts) | f._leaving  # the one with a URL out goes once it is done
        assert let_go == set(sorted(queued, key=lambda h: (queued[h], h))[:2])
        await close(f)
