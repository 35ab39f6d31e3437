"""The store's own SQLite thread: it stops on close and on every failed open, a cancelled
caller never cuts a commit short, and errors arrive as StoreError."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from crawler.errors import StoreError
from crawler.store import NewUrl, Store, writer_lock


def sqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("sqlite")}


async def test_closing_stops_the_thread_and_releases_the_writer_lock(tmp_path: Path) -> None:
    before = sqlite_threads()
    store = await Store.open(tmp_path / "c.db")
    assert sqlite_threads() - before, "the store runs SQLite in a thread of its own"
    await store.close()
    assert sqlite_threads() == before
    with writer_lock(tmp_path / "c.db"):
        pass
    await store.close()  # a second close is harmless


@pytest.mark.parametrize("content", [b"not a database\n" * 300, b""])
async def test_a_failed_open_leaves_no_thread_and_no_lock(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "c.db"
    if content:
        db.write_bytes(content)
    else:  # a database from a newer crawler
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA user_version = 999")
        conn.close()
    before = sqlite_threads()
    with pytest.raises(StoreError) as info:
        await Store.open(db)
    assert "not a SQLite database" in str(info.value) or "newer crawler" in str(info.value)
    assert sqlite_threads() == before
    with writer_lock(db):
        pass


async def test_a_read_only_store_reads_and_refuses_to_write(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = await Store.open(db)
    store.add_urls([NewUrl("http://a.test/", "a.test:80", 0)])
    await store.flush()
    await store.close()
    reader = await Store.open(db, readonly=True)
    try:
        assert (await reader.state_counts())["queued"] == 1
        with pytest.raises(StoreError, match="read-only"):
            await reader.set_meta("k", "v")
    finally:
        await reader.close()
    with pytest.raises(StoreError, match="no database at"):
        await Store.open(tmp_path / "missing.db", readonly=True)


async def test_a_cancelled_flush_still_commits_whole(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    try:
        store.add_urls([NewUrl(f"http://a.test/{i}", "a.test:80", 1) for i in range(500)])
        flush = asyncio.create_task(store.flush())
        await asyncio.sleep(0)  # the flush is handed to SQLite's thread
        flush.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush
        assert await store.scalar("SELECT count(*) FROM urls") == 500  # runs after the flush, in call order
    finally:
        await store.close()
