"""Several crawlers' stores on one throwaway PostgreSQL, for the lease tests: opened, seeded, read back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from crawler.store import NewUrl
from crawler.store.pg.leases import HostLeases
from crawler.store.pg.store import PgStore


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
