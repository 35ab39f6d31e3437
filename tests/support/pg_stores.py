"""Several crawlers' stores on one throwaway PostgreSQL, for the lease tests: opened, seeded, read back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from crawler.leased_frontier import LeasedFrontier
from crawler.politeness import HostGate, Lease
from crawler.store import NewUrl
from crawler.store.pg.leases import HostLeases
from crawler.store.pg.store import PgStore


class Clock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def shared_stores(pg_url: str, count: int, seeds: list[NewUrl]) -> AsyncIterator[list[PgStore]]:
    """`count` stores on one database, each with its run started; the first stores `seeds` first."""
    opened = [await PgStore.open(pg_url, lease_seconds=30) for _ in range(count)]
    try:
        opened[0].add_urls(seeds)
        await opened[0].flush()
        for store in opened:
            await store.start_run("{}")
        yield opened
    finally:
        for store in opened:
            await store.close()


def leases(store: PgStore) -> HostLeases:
    assert store.leases is not None
    return store.leases


async def rows(store: PgStore, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in await store.fetchall(sql, params)]


async def owners(store: PgStore) -> dict[str, int | None]:
    """Each host's lease owner (a run id), or None for a free host."""
    return {row[0]: row[1] for row in await rows(store, "SELECT host, lease_owner FROM hosts ORDER BY host")}


async def until_free(store: PgStore, host: str) -> None:
    """Wait for a frontier's release task to commit, by polling the database as a crawler does."""
    for _ in range(400):
        if (await owners(store))[host] is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{host} was never released")


async def finish(frontier: LeasedFrontier, store: PgStore, *done: Lease) -> None:
    """The workers are done with `done`: each sends its request through its gate (the request
    itself is left out) and lets go of its host; then the writer commits them."""
    for lease in done:
        store.set_state(lease.url_id, "done")
        gate = HostGate(frontier._pol, lease)
        async with gate.request(lease.url) as reports:
            reports.sent()
        gate.release()
        frontier.complete(lease, fetched=True)
    completions = frontier.take_completions()
    frontier.committed(completions, await store.flush())
