"""Schema migrations: an older crawl database opened by this crawler keeps every row and reads the same."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import crawler
from crawler.rows import LinkRow
from crawler.store import MIGRATIONS, SCHEMA_VERSION, Store
from crawler.store.migrations import migrate
from tests.crawlkit import rows

SHOP = "http://shop.test"


def schema_2_database(db: Path) -> None:
    """Two fetched pages and their links as schema 2 kept them: targets by URL text, nofollow-only
    targets (/nf, and one on another host) with no urls row."""
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0] + ";" + MIGRATIONS[1] + "; PRAGMA user_version = 2;")
    conn.executemany(
        "INSERT INTO urls (id, url, host, depth, state, discovered_at)"
        " VALUES (?, ?, 'shop.test:80', ?, 'done', '2024-05-01T12:00:00.000Z')",
        [(1, f"{SHOP}/", 0), (2, f"{SHOP}/a", 1)],
    )
    conn.executemany(
        "INSERT INTO links (from_id, to_url, nofollow) VALUES (?, ?, ?)",
        [
            (1, f"{SHOP}/a", 0),
            (1, f"{SHOP}/nf", 1),
            (2, f"{SHOP}/", 0),
            (2, f"{SHOP}/nf", 1),
            (2, "https://other.test/x", 1),
        ],
    )
    conn.commit()
    conn.close()


def links_of(db: Path, url: str) -> list[LinkRow]:
    with crawler.open_results(db) as results:
        return results.links(url)


async def test_a_schema_2_database_keys_its_links_by_url_id_once_the_crawler_opens_it(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    schema_2_database(db)
    before = links_of(db, f"{SHOP}/a")  # read-only: the query reads schema 2 as it is
    assert before == [
        LinkRow("out", f"{SHOP}/a", f"{SHOP}/", False, "done", None),
        LinkRow("out", f"{SHOP}/a", f"{SHOP}/nf", True, None, None),
        LinkRow("out", f"{SHOP}/a", "https://other.test/x", True, None, None),
        LinkRow("in", f"{SHOP}/", f"{SHOP}/a", False, "done", None),
    ]

    await (await Store.open(db)).close()

    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert [name for (_, name, *_) in rows(db, "PRAGMA table_info(links)")] == ["from_id", "to_id", "nofollow"]
    # Each nofollow-only target gained one row, found at its first linking page's depth + 1.
    assert rows(db, "SELECT url, host, depth, parent_id, state, reason FROM urls WHERE id > 2 ORDER BY id") == [
        (f"{SHOP}/nf", "shop.test:80", 1, 1, "skipped", "nofollow"),
        ("https://other.test/x", "other.test:443", 2, 2, "skipped", "nofollow"),
    ]
    after = links_of(db, f"{SHOP}/a")
    assert after == [dataclasses.replace(row, to_state="skipped") if row.nofollow else row for row in before]
    assert rows(db, "SELECT count(*) FROM links") == [(5,)]
    assert rows(db, "SELECT count(*) FROM link_urls WHERE to_url = ?", (f"{SHOP}/nf",)) == [(2,)]
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]


async def test_a_schema_3_database_gains_content_hashes_and_the_recrawl_and_sitemap_tables(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for version in (1, 2, 3):
        migrate(conn, version)
    conn.executemany(
        "INSERT INTO urls (id, url, host, depth, state, discovered_at)"
        " VALUES (?, ?, 'shop.test:80', 0, 'done', '2024-05-01T12:00:00.000Z')",
        [(1, f"{SHOP}/"), (2, f"{SHOP}/nobody")],
    )
    conn.executemany(
        "INSERT INTO pages (url_id, url, final_url, status, depth, fetched_at, elapsed_ms, bytes, headers,"
        " redirects, body) VALUES (?, ?, ?, 200, 0, '2024-05-01T12:00:01.000Z', 1.0, 5, '[]', '[]', ?)",
        [(1, f"{SHOP}/", f"{SHOP}/", b"hello"), (2, f"{SHOP}/nobody", f"{SHOP}/nobody", None)],
    )
    conn.commit()
    conn.close()

    await (await Store.open(db)).close()

    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    hello = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256(b"hello")
    assert rows(db, "SELECT url_id, content_hash, seen_at, gone FROM pages ORDER BY url_id") == [
        (1, hello, "2024-05-01T12:00:01.000Z", 0),
        (2, None, "2024-05-01T12:00:01.000Z", 0),
    ]
    assert rows(db, "SELECT kind, source, lastmod FROM urls WHERE id = 1") == [("page", None, None)]
    for table in ("sitemaps", "page_history", "changes"):
        assert rows(db, f"SELECT count(*) FROM {table}") == [(0,)]
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
