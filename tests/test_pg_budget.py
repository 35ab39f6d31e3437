"""The fleet's page budget on a real PostgreSQL: a run's fetched pages commit with their rows, and
what a dead run claimed and did not fetch comes back exactly once, so the fleet ends at max_pages
(crawler/store/pg/leases.py, crawler/leased_frontier.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from crawler.engine import Outcome
from crawler.store import NewUrl
from crawler.store.pg.store import PgStore
from tests.crawlkit import crawl, make_config
from tests.support.localsite import SiteServer
from tests.support.pg_stores import leases, rows, shared_stores
from tests.support.site import Site, build_site

Serve = Callable[[Site], SiteServer]
HOSTS = [f"h{i}.test" for i in range(4)]
DEADLINE = 120.0  # only so that a broken build fails instead of hanging


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[tuple[PgStore, PgStore, PgStore]]:
    """Three crawlers' stores on one database, each with its run; the first seeds 20 URLs per host."""
    async with shared_stores(pg_url, 3, [NewUrl(f"http://{h}/{n}", h, 0) for h in HOSTS for n in range(20)]) as opened:
        for store in opened:
            await leases(store).open_budget(100, 0)
        yield opened[0], opened[1], opened[2]


async def fetch(store: PgStore, host: str, n: int) -> None:
    """Commit n pages of host as fetched by this run, as the frontier's completions do."""
    ids = [
        r[0] for r in await rows(store, "SELECT id FROM urls WHERE host = %s AND state = 'queued' ORDER BY id", (host,))
    ]
    for url_id in ids[:n]:
        store.set_state(url_id, "done")
        store.batch.counted.append(url_id)
    await store.flush()


async def test_a_dead_runs_unfetched_claim_comes_back_exactly_once(
    stores: tuple[PgStore, PgStore, PgStore],
) -> None:
    a, b, c = stores
    assert await leases(a).claim(64) == (64, 0)
    assert await leases(b).claim(64) == (36, 64)  # a's claim is outstanding: it may come back
    assert sorted(await leases(a).take(16)) == HOSTS
    leases(a).fencing = True
    await fetch(a, "h0.test", 10)
    assert await rows(a, "SELECT claimed, fetched FROM runs WHERE id = %s", (a.run_id,)) == [(64, 10)]
    assert await leases(b).claim(64) == (0, 54)

    # a stops beating: while a lease of its is unexpired, it may still be writing.
    await rows(a, "UPDATE runs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s RETURNING 1", (a.run_id,))
    assert await leases(b).claim(64) == (0, 54)
    await rows(a, "UPDATE hosts SET lease_until = now() - interval '1 second' RETURNING 1")

    # Two live crawlers find it dead at once: the 54 pages come back once.
    grants = await asyncio.gather(leases(b).claim(64), leases(c).claim(64))
    assert sorted(granted for granted, _ in grants) == [0, 54]
    assert await rows(a, "SELECT claimed, fetched FROM runs WHERE id = %s", (a.run_id,)) == [(10, 10)]
    assert await rows(a, "SELECT claimed FROM budget") == [(100,)]
    # Outstanding now: what the live b claimed (36, and the 54 if b was the one that got them).
    assert await leases(c).claim(64) == (0, 90 - grants[1][0])
    assert await rows(a, "SELECT sum(claimed) FROM runs") == [(100,)]


async def test_a_fenced_flush_does_not_count_the_pages_of_a_lost_host(stores: tuple[PgStore, PgStore, PgStore]) -> None:
    a, b, _ = stores
    await leases(a).claim(64)
    await leases(a).take(16)
    leases(a).fencing = True
    await rows(a, "UPDATE hosts SET lease_until = now() - interval '1 second' WHERE host = 'h1.test' RETURNING 1")
    assert await leases(b).take(16) == ["h1.test"]
    ids = [r[0] for r in await rows(a, "SELECT id FROM urls WHERE host IN ('h1.test', 'h2.test') AND id %% 20 < 3")]
    for url_id in ids:
        a.set_state(url_id, "done")
        a.batch.counted.append(url_id)
    await a.flush()
    assert await rows(a, "SELECT fetched FROM runs WHERE id = %s", (a.run_id,)) == [(3,)]  # h2.test's only


async def test_an_idle_or_finishing_run_gives_back_no_more_than_it_has_left(
    stores: tuple[PgStore, PgStore, PgStore],
) -> None:
    a, _, _ = stores
    await leases(a).claim(64)
    await leases(a).take(16)
    leases(a).fencing = True
    await fetch(a, "h3.test", 4)
    await rows(a, "UPDATE runs SET claimed = fetched WHERE id = %s RETURNING 1", (a.run_id,))  # as a reclaim leaves it
    await rows(a, "UPDATE budget SET claimed = claimed - 60 RETURNING 1")
    await leases(a).give_back(60)  # a zombie's give-back after others took its claim back
    assert await rows(a, "SELECT claimed FROM budget") == [(4,)]
    await leases(a).renew()
    assert leases(a).claim_left == 0


async def test_a_crawler_ends_at_max_pages_though_another_died_holding_a_claim(site_server: Serve, pg_url: str) -> None:
    server = site_server(build_site(60, links_per_page=4))
    dead = await PgStore.open(pg_url, lease_seconds=1.0)
    try:
        await dead.start_run("{}")
        await leases(dead).open_budget(30, 0)
        assert await leases(dead).claim(20) == (20, 0)  # and then it stops: no heartbeat, no give-back
    finally:
        await dead.close()

    config = make_config(
        pg_url,
        [server.url + "/"],
        crawl={"max_pages": 30},
        politeness={"max_delay": 1.0},
        storage={"lease_seconds": 1.0},
    )
    summary = await asyncio.wait_for(crawl(config), DEADLINE)

    assert summary.outcome is Outcome.LIMIT
    assert len([r for r in server.requests if r.path != "/robots.txt"]) == 30
    store = await PgStore.open(pg_url)
    try:
        assert await rows(store, "SELECT count(*) FROM pages") == [(30,)]
        assert await rows(store, "SELECT claimed FROM budget") == [(30,)]
        assert await rows(store, "SELECT claimed, fetched FROM runs ORDER BY id") == [(0, 0), (30, 30)]
    finally:
        await store.close()
