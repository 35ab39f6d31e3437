"""Host leases on a real PostgreSQL (crawler/store/pg/leases.py): one holder per host, takeover of an
expired lease, fenced flushes, next_fetch_at, the fleet's page budget, and storage.lease_seconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crawler.config import config_from_dict
from crawler.errors import ConfigError
from crawler.politeness import HostState
from crawler.store import NewUrl, PageRecord, utc_now
from crawler.store.pg.store import PgStore
from tests.support.pg_stores import leases, rows, shared_stores

HOSTS = [f"h{i}.test" for i in range(12)]


def page(url_id: int, url: str) -> PageRecord:
    return PageRecord(
        url_id, url, url, 200, "text/html", "T", 0, utc_now(), 1.0, "HTTP/1.1", 2, [], [], False, "hi", b"hi",
    )  # fmt: skip


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[tuple[PgStore, PgStore]]:
    """Two crawlers' stores on one database, each with its run; the first seeds two URLs per host."""
    async with shared_stores(pg_url, 2, [NewUrl(f"http://{h}/{n}", h, 0) for h in HOSTS for n in range(2)]) as (a, b):
        yield a, b


async def ids_of(store: PgStore, host: str) -> list[int]:
    return [r[0] for r in await rows(store, "SELECT id FROM urls WHERE host = %s ORDER BY id", (host,))]


async def test_two_stores_never_hold_one_host(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    for _ in range(3):  # concurrent takes, in rounds, until every host is held
        got_a, got_b = await asyncio.gather(leases(a).take(5), leases(b).take(5))
        assert not set(got_a) & set(got_b)
    assert not set(leases(a).held) & set(leases(b).held)
    assert set(leases(a).held) | set(leases(b).held) == set(HOSTS)
    owners = await rows(a, "SELECT host, lease_owner FROM hosts ORDER BY host")
    assert {h: o for h, o in owners} == {
        **{h: a.run_id for h in leases(a).held},
        **{h: b.run_id for h in leases(b).held},
    }
    assert await leases(a).take(16) == [] and await leases(b).take(16) == []  # nothing free is left


async def test_an_expired_lease_is_taken_over_and_its_in_flight_urls_queued_again(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    assert len(await leases(a).take(16)) == len(HOSTS)
    first, second = await ids_of(a, "h3.test")
    a.set_state(first, "in_flight")
    await a.flush()
    assert await leases(b).take(16) == []  # held and unexpired: not b's
    await rows(a, "UPDATE hosts SET lease_until = now() - interval '1 second' WHERE host = 'h3.test' RETURNING 1")

    assert await leases(b).take(16) == ["h3.test"]
    assert await rows(b, "SELECT id, state FROM urls WHERE host = 'h3.test' ORDER BY id") == [
        (first, "queued"),
        (second, "queued"),
    ]
    assert await leases(a).renew() == {"h3.test"}  # a learns it lost the host
    assert leases(a).take_lost() == {"h3.test"}
    assert "h3.test" not in leases(a).held and "h3.test" in leases(b).held


async def test_a_fenced_flush_writes_nothing_for_a_host_it_lost(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    await leases(a).take(16)
    leases(a).fencing = True
    lost_ids, kept_ids = await ids_of(a, "h1.test"), await ids_of(a, "h2.test")
    for url_id in (*lost_ids, *kept_ids):
        a.set_state(url_id, "in_flight")
    await a.flush()
    await rows(a, "UPDATE hosts SET lease_until = now() - interval '1 second' WHERE host = 'h1.test' RETURNING 1")
    assert await leases(b).take(16) == ["h1.test"]

    for host, url_ids in (("h1.test", lost_ids), ("h2.test", kept_ids)):
        a.add_page(page(url_ids[0], f"http://{host}/0"), [(f"http://{host}/new", False)])
        a.add_urls([NewUrl(f"http://{host}/new", host, 1, url_ids[0])])
        a.add_error(url_ids[1], f"http://{host}/1", "timeout", "slow", 1)
    await a.flush()

    assert await rows(a, "SELECT url FROM pages ORDER BY url") == [("http://h2.test/0",)]
    assert await rows(a, "SELECT url FROM errors") == [("http://h2.test/1",)]
    assert await rows(a, "SELECT state, count(*) FROM urls WHERE host = 'h1.test' GROUP BY state") == [("queued", 2)]
    assert await rows(a, "SELECT count(*) FROM urls WHERE url LIKE %s", ("http://h1.test/new",)) == [(0,)]
    assert await rows(a, "SELECT count(*) FROM urls WHERE url = 'http://h2.test/new'") == [(1,)]
    assert leases(a).take_lost() == {"h1.test"}


async def test_a_release_sets_next_fetch_at_from_the_database_clock_and_takes_honour_it(
    stores: tuple[PgStore, PgStore],
) -> None:
    a, b = stores
    await leases(a).take(16)
    leases(a).state_of = lambda host: HostState(2.0 if host == "h5.test" else 0.0)
    await leases(a).release(["h5.test", "h6.test"])
    wait = await rows(a, "SELECT extract(epoch FROM next_fetch_at - now()) FROM hosts WHERE host = 'h5.test'")
    assert 1.0 < float(wait[0][0]) <= 2.0
    assert await leases(b).take(16) == ["h6.test"]  # h5.test is not due yet
    await rows(a, "UPDATE hosts SET next_fetch_at = now() WHERE host = 'h5.test' RETURNING 1")
    assert await leases(b).take(16) == ["h5.test"]


async def test_the_page_budget_is_shared_and_never_overdrawn(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    await leases(a).open_budget(100, 10)
    await leases(b).open_budget(100, 10)  # the second crawler keeps what was claimed
    grants = [granted for granted, _ in await asyncio.gather(*(leases(s).claim(64) for s in (a, b, a, b)))]
    assert sum(grants) == 90 and sorted(grants) == [0, 0, 26, 64]
    await leases(a).give_back(6)
    assert (await leases(b).claim(64))[0] == 6


async def test_killed_runs_are_those_whose_heartbeat_stopped(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    assert await a.mark_killed_runs() == 0  # both beat
    await rows(a, "UPDATE runs SET heartbeat_at = now() - interval '1 minute' WHERE id = %s RETURNING 1", (b.run_id,))
    assert await a.mark_killed_runs() == 1
    assert await rows(a, "SELECT id, outcome FROM runs ORDER BY id") == [(a.run_id, "running"), (b.run_id, "killed")]


def test_lease_seconds_must_outlast_the_longest_delay_with_postgresql() -> None:
    base: dict[str, Any] = {"crawl": {"seeds": ["http://a.test/"]}, "politeness": {"max_delay": 30.0}}
    assert config_from_dict({**base, "storage": {"lease_seconds": 10.0}}).storage.lease_seconds == 10.0
    with pytest.raises(ConfigError) as caught:
        config_from_dict({**base, "storage": {"url": "postgresql://x@y/z", "lease_seconds": 10.0}})
    assert caught.value.key == "storage.lease_seconds"
    with pytest.raises(ConfigError):
        config_from_dict({**base, "storage": {"lease_seconds": 0.5}})
