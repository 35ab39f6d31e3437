"""The full-text index: a flush indexes what it stores, index_pending drains a backlog, triggers keep it exact."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import crawler
from crawler.cli import main
from crawler.errors import UsageError
from crawler.store import MIGRATIONS, PageRecord, Store
from tests.crawlkit import rows


def page(url_id: int, title: str, text: str, *, noindex: bool = False) -> PageRecord:
    return PageRecord(
        url_id=url_id,
        url=f"http://shop.test/{url_id}",
        final_url=f"http://shop.test/{url_id}",
        status=200,
        content_type="text/html",
        title=title,
        depth=0,
        fetched_at="2024-05-01T12:00:00.000Z",
        elapsed_ms=1.0,
        http_version="HTTP/1.1",
        size=len(text),
        headers=[("content-type", "text/html")],
        redirects=[],
        noindex=noindex,
        text=None if noindex else text,
        body=None if noindex else text.encode(),
    )


def found(db: Path, query: str) -> list[int]:
    return [
        rowid for (rowid,) in rows(db, "SELECT rowid FROM pages_fts WHERE pages_fts MATCH ? ORDER BY rowid", (query,))
    ]


def assert_index_exact(db: Path) -> None:
    """FTS5 checks that the index holds exactly the rows of its content view, searchable_pages."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("INSERT INTO pages_fts (pages_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


def insert_by_hand(db: Path, url_id: int, title: str, text: str, *, noindex: bool = False) -> None:
    """A page row written by another tool: its trigger (if any) queues it for the index, nothing indexes it."""
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO pages (url_id, url, final_url, status, title, depth, fetched_at, elapsed_ms, bytes, headers,"
        " redirects, noindex, text) VALUES (?, ?, ?, 200, ?, 0, '2024-05-01T12:00:00.000Z', 1.0, 0, '[]', '[]', ?, ?)",
        (url_id, f"http://shop.test/{url_id}", f"http://shop.test/{url_id}", title, int(noindex), text),
    )
    conn.commit()
    conn.close()


async def test_a_flush_indexes_what_it_stores_and_the_index_follows_every_change(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = await Store.open(db)
    try:
        store.add_page(page(1, "Orchard", "red apples"), [])
        store.add_page(page(2, "Quiet", "secret pears", noindex=True), [])
        await store.flush()
        assert (await store.pending_index(), found(db, "apples"), found(db, "orchard")) == (0, [1], [1])
        assert found(db, "pears") == found(db, "quiet") == []  # noindex pages are never indexed
        assert_index_exact(db)

        # Fetched again with new text: the old words leave the index, the new ones enter it.
        store.add_page(page(1, "Orchard", "green plums"), [])
        await store.flush()
        assert (await store.pending_index(), found(db, "apples"), found(db, "plums")) == (0, [], [1])
        assert_index_exact(db)

        # Turned noindex: out of the index, and not queued.
        store.add_page(page(1, "Orchard", "", noindex=True), [])
        await store.flush()
        assert (await store.pending_index(), found(db, "plums"), found(db, "orchard")) == (0, [], [])
        assert_index_exact(db)

        # Deleted by hand, indexed or still pending: no trace left.
        store.add_page(page(3, "Figs", "ripe figs"), [])
        await store.flush()
        insert_by_hand(db, 4, "Dates", "sweet dates")
        assert (await store.pending_index(), found(db, "figs"), found(db, "dates")) == (1, [3], [])
        conn = sqlite3.connect(db)
        conn.execute("DELETE FROM pages WHERE url_id IN (3, 4)")
        conn.commit()
        conn.close()
        assert (await store.pending_index(), found(db, "figs")) == (0, [])
        assert_index_exact(db)
    finally:
        await store.close()


async def test_index_pending_works_in_chunks_in_url_id_order(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = await Store.open(db)
    try:
        for url_id in (5, 3, 1, 4, 2):
            insert_by_hand(db, url_id, f"Page {url_id}", "common words")
        assert [await store.index_pending(2) for _ in range(4)] == [2, 2, 1, 0]
        assert found(db, "common") == [1, 2, 3, 4, 5]
        assert_index_exact(db)
    finally:
        await store.close()


async def test_each_flush_also_drains_a_backlog_lowest_url_ids_first(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = await Store.open(db)
    try:
        for url_id in (14, 10, 12, 11, 13):
            insert_by_hand(db, url_id, f"Old {url_id}", "old words")
        store.add_page(page(1, "New", "new words"), [])
        store.add_page(page(2, "New", "new words"), [])
        await store.flush()  # indexes twice its 2 pages: 1, 2 and the backlog's 10, 11
        assert (found(db, "new"), found(db, "old"), await store.pending_index()) == ([1, 2], [10, 11], 3)
        assert_index_exact(db)
    finally:
        await store.close()


async def test_a_schema_1_database_gains_search_when_the_crawler_opens_it(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO urls (id, url, host, depth, state, discovered_at) VALUES"
        " (1, 'http://shop.test/1', 'shop.test:80', 0, 'done', '2024-05-01T12:00:00.000Z')"
    )
    conn.commit()
    conn.close()
    insert_by_hand(db, 1, "Lantern shop", "brass lanterns")
    insert_by_hand(db, 2, "Lantern cellar", "brass lanterns", noindex=True)

    with crawler.open_results(db) as results:  # read-only: it cannot add the index itself
        assert [p.title for p in results.pages()] == ["Lantern shop", "Lantern cellar"]
        with pytest.raises(UsageError, match=r"has no full-text index \(schema 1\); any crawl or resume"):
            results.search("lantern")

    store = await Store.open(db)
    try:
        assert await store.pending_index() == 1
        await store.index_pending(100)
    finally:
        await store.close()
    with crawler.open_results(db) as results:
        assert [hit.title for hit in results.search("lanterns")] == ["Lantern shop"]
    assert_index_exact(db)


async def test_search_says_how_many_pages_are_not_searchable_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    await (await Store.open(db)).close()  # the schema
    insert_by_hand(db, 1, "Orchard", "red apples")
    assert main(["query", "search", "apples", "--db", str(db)]) == 0
    assert capsys.readouterr() == (
        "(no rows)\n",
        "crawler: 1 page not searchable yet (stored before search existed, or by hand); the next"
        " `crawler resume` of this database indexes them\n",
    )
    assert main(["query", "stats", "--db", str(db)]) == 0
    assert "\nnot yet searchable: 1\n" in capsys.readouterr().out
