"""The drain on a real PostgreSQL (crawler/leased_frontier.py, crawler/store/pg/leases.py): a run with
no host to work on that finds none to take records that it is hungry; a holder of several hosts with
URLs queued, at its fair share or below, sees it at its renewal or commit and lets one go, with its
politeness, for the hungry run to take; a holder of one host with work never lets it go, and a run
with work of its own is never hungry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from crawler.config import config_from_dict
from crawler.leased_frontier import SHED_EVERY, LeasedFrontier
from crawler.politeness import Politeness
from crawler.store import NewUrl
from crawler.store.pg.store import PgStore
from tests.support.pg_stores import Clock, finish, leases, owners, rows, shared_stores, until_free
from tests.support.postgres import pg_server, pg_server_url, pg_url  # noqa: F401  (fixtures)

HOSTS = [f"h{i}.test:80" for i in range(5)]
DELAY = 10.0  # the test clock moves only when told to: a host just leased is not ready again


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[list[PgStore]]:  # noqa: F811
    seeds = [NewUrl(f"http://h{i}.test/{n}", HOSTS[i], 0) for i in range(len(HOSTS)) for n in range(4)]
    async with shared_stores(pg_url, 3, seeds) as opened:
        yield opened


def frontier(store: PgStore, clock: Clock) -> LeasedFrontier:
    config = config_from_dict(
        {"crawl": {"seeds": ["http://h0.test/"]}, "politeness": {"delay": DELAY, "adaptive": False}}
    )
    return LeasedFrontier(store, leases(store), Politeness(config.politeness, clock=clock), pace_every=0)


async def hungry_runs(store: PgStore) -> list[int]:
    return [row[0] for row in await rows(store, "SELECT id FROM runs WHERE hungry_at IS NOT NULL ORDER BY id")]


async def test_a_holder_of_several_hosts_lets_one_go_for_a_hungry_run_which_takes_it(
    stores: list[PgStore],
) -> None:
    a, b, c = stores
    clock = Clock(0.0)
    f = frontier(a, clock)
    await f.load(0)
    out = [await f.next() for _ in range(3)]
    held = {lease.host for lease in out if lease is not None}
    assert len(held) == 3 and set(leases(a).held) == held
    assert len(await leases(b).take(16)) == 2  # every host with work is held now

    # A run holding a host with work is not hungry, whatever it finds; one with none is.
    assert await leases(b).work_due_in(idle=False) == float("inf")
    assert await hungry_runs(a) == []
    assert await leases(c).work_due_in(idle=True) == float("inf")
    assert await hungry_runs(a) == [c.run_id]

    await leases(a).renew()
    assert leases(a).hungry and leases(a).free_hosts is False
    assert not leases(c).hungry  # its own hunger is not news to itself
    await leases(c).renew()
    assert not leases(c).hungry

    clock.now += SHED_EVERY
    # Three hosts are one more than its share (five hosts for three runs), and none is free.
    assert leases(a).fair_share() == 2
    f.pace(lag=0.0)
    leaving = [host for host in held if (await owners(a))[host] == a.run_id and host not in f._leaving]
    assert len(leaving) == 2  # one host goes, once its URL out is done; the others stay
    gone = (held - set(leaving)).pop()
    assert leases(a).hungry  # that was its share, not the hunger's
    f.pace(lag=0.0)
    assert len(f._leaving) == 1  # and within SHED_EVERY of it nothing more goes
    await finish(f, a, *[lease for lease in out if lease is not None and lease.host == gone])
    await until_free(a, gone)
    # Its delay travels with it: not taken before it is due.
    assert await leases(c).take(16) == []
    await a.fetchall("UPDATE hosts SET next_fetch_at = now() WHERE host = %s RETURNING 1", (gone,))
    assert await leases(c).take(16) == [gone]
    assert await hungry_runs(a) == []  # a take ends the hunger
    queued = await rows(a, "SELECT count(*) FROM urls WHERE host = %s AND state = 'queued'", (gone,))
    assert queued == [(3,)]  # what was left of its window is there for the new holder

    # A commit tells a holder of the hunger too: of its two hosts with work (its share), one more goes.
    assert await leases(c).work_due_in(idle=True) == float("inf")
    rest = [lease for lease in out if lease is not None and lease.host != gone]
    await finish(f, a, rest[0])
    assert leases(a).hungry
    clock.now += SHED_EVERY
    f.pace(lag=0.0)
    assert len(f._leaving) == 1
    second = next(iter(f._leaving))
    await finish(f, a, *[lease for lease in rest if lease.host == second and lease is not rest[0]])
    await until_free(a, second)
    await a.fetchall("UPDATE hosts SET next_fetch_at = now() WHERE host = %s RETURNING 1", (second,))
    assert await leases(c).take(16) == [second]

    # With one host with work left, it keeps it, hungry runs or not.
    assert await leases(c).work_due_in(idle=True) == float("inf")
    await leases(a).renew()
    assert leases(a).hungry
    clock.now += SHED_EVERY
    f.pace(lag=0.0)
    assert len(leases(a).held) == 1 and not f._leaving
    f.close()
    await f.settle()


async def test_a_finished_run_is_no_longer_hungry(stores: list[PgStore]) -> None:
    a, b, c = stores
    assert len(await leases(a).take(16)) == len(HOSTS)
    assert await leases(c).work_due_in(idle=True) == float("inf")
    await leases(a).renew()
    assert leases(a).hungry
    await c.finish_run("done", 0)
    await leases(a).renew()
    assert not leases(a).hungry
    assert not leases(b).hungry
