"""Hosts are taken by demand and let go on a real PostgreSQL (crawler/leased_frontier.py): one host at
start, another only when no held host can start a request, one let go at a time while the process is
short of CPU (never the last), and every host held longer than max_hold let go once its URLs out are done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from crawler.config import ConfigError, config_from_dict
from crawler.leased_frontier import BUSY_LAG, MAX_HOLD, SHED_EVERY, LeasedFrontier
from crawler.politeness import Politeness
from crawler.store import NewUrl
from crawler.store.pg.store import PgStore
from tests.support.pg_stores import finish, leases, owners, shared_stores, until_free
from tests.support.postgres import pg_server, pg_server_url, pg_url  # noqa: F401  (fixtures)

HOSTS = [f"h{i}.test:80" for i in range(5)]
DELAY = 10.0  # the test clock moves only when told to: a host just leased is not ready again


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


async def test_a_crawler_takes_one_host_at_start_and_another_only_when_none_of_its_own_can_start(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    f = frontier(a, Clock(0.0))
    await f.load(0)
    assert len(leases(a).held) == 1  # not every free host, as a fixed count would take

    first = await f.next()
    assert first is not None and set(leases(a).held) == {first.host}
    # Its host now waits for its delay while workers are free: one more host, and its URL.
    second = await f.next()
    assert second is not None and second.host != first.host
    assert set(leases(a).held) == {first.host, second.host}
    # The others stay free for other crawlers.
    assert sorted(await leases(b).take(16)) == sorted(set(HOSTS) - {first.host, second.host})
    await close(f)


async def test_a_crawler_short_of_cpu_takes_no_host_and_lets_one_go_at_a_time_never_the_last(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    clock = Clock(0.0)
    f = frontier(a, clock)
    await f.load(0)
    out = [await f.next() for _ in range(3)]
    assert all(lease is not None for lease in out) and len({lease.host for lease in out if lease}) == 3
    first, second, third = (lease.host for lease in out if lease is not None)
    assert f.wants_host()  # all three wait for their delay

    f.pace(lag=BUSY_LAG * 20)  # the event loop ran late: the process is short of CPU
    assert not f.wants_host()
    clock.now += SHED_EVERY
    await leases(a).renew()
    f.pace(lag=BUSY_LAG * 20)
    assert set(leases(a).held) == {first, second, third}  # other hosts are free: nobody waits for these
    assert len(await leases(b).take(16)) == 2  # now every host with work is held
    await leases(a).renew()
    f.pace(lag=BUSY_LAG * 20)
    # The longest held goes, once its URL out is done and committed; no new URL of it is handed out.
    assert (await owners(a))[first] == a.run_id
    await finish(f, a, *[lease for lease in out if lease is not None and lease.host == first])
    await until_free(a, first)
    assert first not in await leases(b).take(16)  # free, but not before its delay, which travels with it
    await a.fetchall("UPDATE hosts SET next_fetch_at = now() WHERE host = %s RETURNING 1", (first,))
    assert await leases(b).take(16) == [first]
    await leases(a).renew()

    f.pace(lag=BUSY_LAG * 20)  # within SHED_EVERY of the last one: nothing more goes
    assert set(leases(a).held) == {second, third}
    clock.now += SHED_EVERY
    f.pace(lag=BUSY_LAG * 20)
    await finish(f, a, *[lease for lease in out if lease is not None and lease.host == second])
    await until_free(a, second)
    clock.now += SHED_EVERY
    f.pace(lag=BUSY_LAG * 20)  # the last host stays
    assert set(leases(a).held) == {third}

    for _ in range(60):  # the lag fades as the loop keeps time again
        f.pace(lag=0.0)
    assert f.wants_host()
    await close(f)


async def test_a_host_held_longer_than_max_hold_is_let_go_after_its_urls_out_and_taken_by_another(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    clock = Clock(0.0)
    f = frontier(a, clock, max_hold=5.0)
    await f.load(0)
    lease = await f.next()
    assert lease is not None
    clock.now += 2.0
    other = await f.next()  # taken two seconds later
    assert other is not None and other.host != lease.host
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
    f = frontier(a, clock, max_hold=1.0)
    await f.load(0)
    lease = await f.next()
    assert lease is not None
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


def test_max_hold_seconds_is_read_and_range_checked() -> None:
    base: dict[str, Any] = {"crawl": {"seeds": ["http://a.test/"]}}
    assert config_from_dict(base).storage.max_hold_seconds == MAX_HOLD
    assert config_from_dict({**base, "storage": {"max_hold_seconds": 5}}).storage.max_hold_seconds == 5.0
    with pytest.raises(ConfigError) as caught:
        config_from_dict({**base, "storage": {"max_hold_seconds": 0.5}})
    assert caught.value.key == "storage.max_hold_seconds"
