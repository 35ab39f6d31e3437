"""Opening a PostgreSQL crawl database (crawler/store/pg/store.py): crawlers starting together on an
empty database create the schema once, taking turns on an advisory lock; one joining a database whose
schema is current takes no lock, so joiners never queue behind one another."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg

from crawler.store.pg.schema import SCHEMA_VERSION
from crawler.store.pg.store import MIGRATION_LOCK, PgStore

DEADLINE = 10.0  # seconds before an open counts as hung (not a speed check)


async def test_crawlers_starting_together_on_an_empty_database_create_the_schema_once(pg_url: str) -> None:
    stores = await asyncio.wait_for(asyncio.gather(*(PgStore.open(pg_url) for _ in range(4))), DEADLINE)
    try:
        versions = [await store.scalar("SELECT value FROM meta WHERE key = 'schema_version'") for store in stores]
    finally:
        for store in stores:
            await store.close()
    assert versions == [str(SCHEMA_VERSION)] * 4


async def test_a_crawler_joining_a_current_schema_takes_no_lock(pg_url: str) -> None:
    await (await PgStore.open(pg_url)).close()  # the schema, made
    opened = asyncio.Event()
    released = False
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as holder:
        # Another crawler holds the lock (migrating, or throttled while it looks) until this one has
        # opened, or gives up waiting for that.
        await holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))

        async def release() -> None:
            nonlocal released
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(opened.wait(), DEADLINE)
            await holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            released = True

        releasing = asyncio.create_task(release())
        store = await PgStore.open(pg_url)
        assert not released  # it opened while the lock was held
        opened.set()
        await releasing
        await store.close()
