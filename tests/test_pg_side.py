"""A crawler's second PostgreSQL connection (crawler/store/pg/store.py): a host taken, its first
window and its robots.txt row are read beside a flush under way, not behind it; a window read of a
host that flush queues URLs of waits for its commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

import psycopg
import pytest

from crawler.store import NewUrl, QueuedUrl
from crawler.store.pg.store import PgStore
from tests.support.pg_stores import leases, rows, shared_stores
from tests.support.postgres import pg_server, pg_server_url, pg_url  # noqa: F401  (fixtures)

HOSTS = [f"h{i}.test:80" for i in range(4)]
DEADLINE = 30.0  # seconds before a wait counts as a hang (not a speed check)
_T = TypeVar("_T")


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PgStore]:  # noqa: F811
    seeds = [NewUrl(f"http://h{i}.test/{n}", HOSTS[i], 0) for i in range(len(HOSTS)) for n in range(2)]
    async with shared_stores(pg_url, 1, seeds) as (a,):
        yield a


async def soon(step: Awaitable[_T]) -> _T:
    return await asyncio.wait_for(step, DEADLINE)


@asynccontextmanager
async def h0_locked(store: PgStore, url: str) -> AsyncIterator[None]:
    """Put in the store's batch the end of a lease of h0 (held by the store) and a new URL of h1,
    and hold h0's row locked from another connection until the block ends: a flush waits at its
    fence meanwhile."""
    leases(store).fencing = True  # as a leased frontier sets it: a flush renews the hosts it writes for
    assert await leases(store).take(1) == [HOSTS[0]]
    [(url_id,)] = await rows(store, "SELECT min(id) FROM urls WHERE host = %s", (HOSTS[0],))
    store.set_state(url_id, "done")
    store.add_urls([NewUrl("http://h1.test/new", HOSTS[1], 1, parent_id=url_id)])
    blocker = await psycopg.AsyncConnection.connect(url)
    try:
        await blocker.execute("SELECT 1 FROM hosts WHERE host = %s FOR UPDATE", (HOSTS[0],))
        yield
    finally:
        await blocker.commit()
        await blocker.close()


async def waiting_flush(store: PgStore, url: str) -> asyncio.Task[list[QueuedUrl]]:
    """The store's flush, once its backend waits for the lock (synchronised on the server)."""
    flush = asyncio.create_task(store.flush())
    for _ in range(int(DEADLINE * 50)):
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as look:
            cur = await look.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            row = await cur.fetchone()
        if row is not None and row[0] == 1:
            return flush
        await asyncio.sleep(0.02)
    raise AssertionError("the flush never waited for the lock")


async def test_a_host_is_taken_and_its_window_read_while_a_flush_waits(store: PgStore, pg_url: str) -> None:  # noqa: F811
    async with h0_locked(store, pg_url):
        flush = await waiting_flush(store, pg_url)
        taken = await soon(leases(store).take(1, passed=[HOSTS[1]]))
        assert len(taken) == 1 and taken[0] in HOSTS[2:]
        window = await soon(store.queued_for_host(taken[0], 0, 10))
        assert [row.host for row in window] == [taken[0]] * 2
        assert await soon(store.stored_robots("http://h2.test")) is None
        assert not flush.done()
    await soon(flush)


async def test_a_window_read_of_a_host_the_flush_queues_urls_of_waits_for_its_commit(
    store: PgStore,
    pg_url: str,  # noqa: F811
) -> None:
    async with h0_locked(store, pg_url):
        flush = await waiting_flush(store, pg_url)
        behind = asyncio.create_task(store.queued_for_host(HOSTS[1], 0, 10))
        beside = await soon(store.queued_for_host(HOSTS[2], 0, 10))
        assert len(beside) == 2
        # Asked first, answered later: it went to the connection the flush holds.
        assert not behind.done()
    await soon(flush)
    urls = [row.url for row in await soon(behind)]
    assert urls[-1] == "http://h1.test/new" and len(urls) == 3


async def test_a_window_read_overtaken_by_a_flush_that_queues_its_host_is_read_again_after_it(
    store: PgStore,
    pg_url: str,  # noqa: F811
) -> None:
    """Asked before the flush began, the read goes beside it; the flush starting meanwhile may make
    another crawler's newer rows visible to it and not its own, so it is read again after the commit."""
    async with h0_locked(store, pg_url):
        read = asyncio.create_task(store.queued_for_host(HOSTS[1], 0, 10))
        await asyncio.sleep(0)  # the read is asked, on the side connection
        flush = await waiting_flush(store, pg_url)
        beside = await soon(store.queued_for_host(HOSTS[2], 0, 10))  # after the first read, on the same connection
        assert len(beside) == 2
        assert not read.done()
    await soon(flush)
    assert [row.url for row in await soon(read)][-1] == "http://h1.test/new"
