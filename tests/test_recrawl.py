"""Recrawl passes against a server that sends ETag and Last-Modified and answers 304: the change report,
history, links and search follow the new version, --older-than and sitemap lastmod choose what is due."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.config import Config
from crawler.engine import Crawl, CrawlSummary
from crawler.parsepool import ParsePool
from crawler.recrawl import RecrawlRequest
from tests.crawlkit import make_config, rows
from tests.support.localsite import SiteServer
from tests.support.versioned import VersionedSite


def shop() -> VersionedSite:
    site = VersionedSite()
    site.page("/", "Home", ("/a", "/b", "/c", "/lm", "/plain"))
    site.page("/a", "Apples", ("/c",), text="crisp apples")
    site.page("/b", "Bananas", text="yellow bananas")
    site.page("/c", "Cherries", text="red cherries", canonical="/c?ref=canon")
    site.page("/lm", "Limes", etag=False, text="green limes")
    site.page("/plain", "Plums", etag=False, last_modified=False, text="purple plums")
    return site


Served = tuple[VersionedSite, SiteServer]


@pytest.fixture
def versioned() -> Iterator[Served]:
    site = shop()
    with SiteServer(site.site) as server:
        yield site, server


def config(tmp_path: Path, server: SiteServer, **storage: object) -> Config:
    return make_config(tmp_path / "crawl.db", [server.url_for("/")], storage=dict(storage))


def run(cfg: Config, recrawl: RecrawlRequest | None = None) -> CrawlSummary:
    return asyncio.run(Crawl(cfg, recrawl=recrawl).run())


def changes(db: Path, run_id: int | None = None) -> dict[str, tuple[str, int]]:
    """path → (change, status) of a pass (the latest by default)."""
    if run_id is None:
        run_id = rows(db, "SELECT max(run_id) FROM changes")[0][0]
    found = rows(
        db,
        "SELECT u.url, c.change, c.status FROM changes c JOIN urls u ON u.id = c.url_id WHERE c.run_id = ?",
        (run_id,),
    )
    return {"/" + url.split("/", 3)[3]: (change, status) for url, change, status in found}


def change_site(site: VersionedSite) -> None:
    """Between passes: /a changes and links a new page, /b is deleted."""
    site.page("/a", "Apples", ("/c", "/new"), text="ripe apples")
    site.page("/new", "Nectarines", text="new nectarines")
    site.remove("/b")


def test_first_crawl_stores_hash_validators_canonical_and_seen_at(tmp_path: Path, versioned: Served) -> None:
    _, server = versioned
    db = tmp_path / "crawl.db"
    run(config(tmp_path, server))
    stored = {
        url.removeprefix(server.url): (h, etag, lm, canonical, seen, fetched)
        for url, h, etag, lm, canonical, seen, fetched in rows(
            db, "SELECT url, content_hash, etag, last_modified, canonical, seen_at, fetched_at FROM pages"
        )
    }
    c_hash, c_etag, c_lm, c_canonical, c_seen, c_fetched = stored["/c"]
    body = rows(db, "SELECT body FROM pages WHERE url LIKE '%/c'")[0][0]
    from crawler.store import body_hash

    assert c_hash == body_hash(body)
    assert c_etag and c_etag.startswith('"') and c_lm and c_lm.endswith("GMT")
    assert c_canonical == server.url_for("/c?ref=canon")
    assert c_seen == c_fetched
    assert stored["/lm"][1] is None and stored["/lm"][2]
    assert stored["/plain"][1] is None and stored["/plain"][2] is None
    assert all(h for h, *_ in stored.values())


def test_a_pass_reports_new_changed_unchanged_gone_with_conditional_requests(tmp_path: Path, versioned: Served) -> None:
    site, server = versioned
    db = tmp_path / "crawl.db"
    cfg = config(tmp_path, server)
    run(cfg)
    before = dict(rows(db, "SELECT url, etag FROM pages"))
    seen_before = dict(rows(db, "SELECT url, seen_at FROM pages"))
    change_site(site)
    server.clear()

    summary = run(cfg, RecrawlRequest())

    assert changes(db) == {
        "/": ("unchanged", 304),
        "/a": ("changed", 200),
        "/b": ("gone", 404),
        "/c": ("unchanged", 304),
        "/lm": ("unchanged", 304),
        "/plain": ("unchanged", 200),
        "/new": ("new", 200),
    }
    assert summary.changes == {"new": 1, "changed": 1, "unchanged": 4, "gone": 1}
    seen = {r.path: r.headers for r in server.requests if r.path != "/robots.txt"}
    assert seen["/c"].get("if-none-match") == before[server.url_for("/c")]
    assert "if-modified-since" in seen["/c"]
    assert "if-none-match" not in seen["/lm"] and seen["/lm"]["if-modified-since"].endswith("GMT")
    assert "if-none-match" not in seen["/plain"] and "if-modified-since" not in seen["/plain"]
    assert "if-none-match" not in seen["/new"]
    # The pass is one run of kind recrawl, closed when it finished.
    assert rows(db, "SELECT id, kind, outcome FROM runs") == [(1, "crawl", "finished"), (2, "recrawl", "finished")]
    assert rows(db, "SELECT value FROM meta WHERE key = 'recrawl_pass'") == []
    # Unchanged pages: seen_at moves, nothing else; gone: flagged with its status.
    url_c = server.url_for("/c")
    moved = rows(db, "SELECT seen_at > ?, fetched_at < seen_at FROM pages WHERE url = ?", (seen_before[url_c], url_c))
    assert moved == [(1, 1)]
    assert rows(db, "SELECT status, gone FROM pages WHERE url = ?", (server.url_for("/b"),)) == [(404, 1)]
    assert rows(db, "SELECT count(*) FROM pages WHERE gone = 1") == [(1,)]


def test_a_pass_starts_the_parser_processes_only_for_a_page_to_parse(tmp_path: Path, versioned: Served) -> None:
    site, server = versioned
    db = tmp_path / "crawl.db"
    cfg = config(tmp_path, server)
    first = ParsePool(1)
    asyncio.run(Crawl(cfg, parser=first).run())
    assert first.started

    unchanged = ParsePool(1)
    asyncio.run(Crawl(cfg, recrawl=RecrawlRequest(), parser=unchanged).run())
    assert set(change for change, _ in changes(db).values()) == {"unchanged"}
    assert not unchanged.started  # nothing to parse: no child process was launched

    change_site(site)
    changed = ParsePool(1)
    asyncio.run(Crawl(cfg, recrawl=RecrawlRequest(), parser=changed).run())
    assert changed.started
    assert changes(db)["/a"] == ("changed", 200)
    new_links = rows(
        db,
        "SELECT u.url FROM links l JOIN urls u ON u.id = l.to_id JOIN urls f ON f.id = l.from_id WHERE f.url = ?",
        (server.url_for("/a"),),
    )
    assert (server.url_for("/new"),) in new_links  # parsed in a child started for it


def test_changed_page_replaces_row_links_and_search_entry_and_keeps_history(tmp_path: Path, versioned: Served) -> None:
    site, server = versioned
    db = tmp_path / "crawl.db"
    cfg = config(tmp_path, server)
    run(cfg)
    old_a = rows(db, "SELECT fetched_at, status, content_hash, body FROM pages WHERE url = ?", (server.url_for("/a"),))
    old_b = rows(db, "SELECT fetched_at, status, content_hash, body FROM pages WHERE url = ?", (server.url_for("/b"),))
    change_site(site)
    run(cfg, RecrawlRequest())

    history = rows(
        db,
        "SELECT u.url, h.fetched_at, h.status, h.content_hash, h.body, h.run_id FROM page_history h"
        " JOIN urls u ON u.id = h.url_id ORDER BY h.id",
    )
    assert sorted((url, *rest[:4]) for url, *rest in history) == sorted(
        [(server.url_for("/a"), *old_a[0]), (server.url_for("/b"), *old_b[0])]
    )
    assert {run_id for *_, run_id in history} == {1}  # the run that fetched the replaced version
    # Links of /a are the new set; the old search entry is gone, the new one found.
    links = rows(
        db,
        "SELECT to_url FROM link_urls WHERE from_url = ? ORDER BY to_url",
        (server.url_for("/a"),),
    )
    assert links == [(server.url_for("/c"),), (server.url_for("/new"),)]

    def search(word: str) -> list[str]:
        sql = "SELECT p.url FROM pages_fts JOIN pages p ON p.url_id = pages_fts.rowid WHERE pages_fts MATCH ?"
        found = rows(db, sql, (word,))
        return sorted(url.removeprefix(server.url) for (url,) in found)

    assert search("ripe") == ["/a"]
    assert search("crisp") == []
    assert search("bananas") == []  # gone
    assert search("nectarines") == ["/new"]
    assert rows(db, "INSERT INTO pages_fts (pages_fts, rank) VALUES ('integrity-check', 1)") == []


def test_keep_history_false_keeps_versions_without_bodies(tmp_path: Path, versioned: Served) -> None:
    site, server = versioned
    db = tmp_path / "crawl.db"
    cfg = config(tmp_path, server, keep_history=False)
    run(cfg)
    change_site(site)
    run(cfg, RecrawlRequest())
    assert rows(db, "SELECT count(*), count(body), count(content_hash) FROM page_history") == [(2, 0, 2)]


def test_older_than_picks_only_pages_seen_longer_ago(tmp_path: Path, versioned: Served) -> None:
    _, server = versioned
    db = tmp_path / "crawl.db"
    cfg = config(tmp_path, server)
    run(cfg)
    rows_set(db, "UPDATE pages SET seen_at = '2000-01-01T00:00:00.000Z' WHERE url LIKE '%/c' OR url LIKE '%/lm'")
    server.clear()
    run(cfg, RecrawlRequest(older_than=3600))
    assert changes(db) == {"/c": ("unchanged", 304), "/lm": ("unchanged", 304)}
    assert sorted(p for p in server.paths() if p != "/robots.txt") == ["/c", "/lm"]


def test_a_sitemap_lastmod_newer_than_the_last_fetch_makes_a_page_due(tmp_path: Path, versioned: Served) -> None:
    _, server = versioned
    db = tmp_path / "crawl.db"
    cfg = config(tmp_path, server)
    run(cfg)
    rows_set(db, "UPDATE urls SET lastmod = '2999-01-01T00:00:00.000Z' WHERE url LIKE '%/a'")
    rows_set(db, "UPDATE urls SET lastmod = '2000-01-01T00:00:00.000Z' WHERE url LIKE '%/c'")
    server.clear()
    run(cfg, RecrawlRequest(older_than=86400))
    assert changes(db) == {"/a": ("unchanged", 304)}


def test_recrawl_of_an_empty_database_is_refused(tmp_path: Path, versioned: Served) -> None:
    _, server = versioned
    from crawler.errors import NothingToResume

    cfg = config(tmp_path, server)
    (tmp_path / "crawl.db").touch()
    with pytest.raises(NothingToResume, match="nothing to recrawl"):
        run(cfg, RecrawlRequest())


def rows_set(db: Path, sql: str) -> None:
    import sqlite3

    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql)
    conn.close()


def test_a_pass_refetches_every_stored_page_past_max_pages_and_new_urls_wait(tmp_path: Path, versioned: Served) -> None:
    """max_pages counts URLs first fetched: a crawl that stopped at its limit is still recrawled whole."""
    _, server = versioned
    db = tmp_path / "crawl.db"
    cfg = make_config(db, [server.url_for("/")], crawl={"max_pages": 4})
    assert run(cfg).outcome == "limit"
    stored = {url.removeprefix(server.url) for (url,) in rows(db, "SELECT url FROM pages")}
    assert len(stored) == 4
    summary = run(cfg, RecrawlRequest())
    assert set(changes(db)) == stored
    assert summary.changes["new"] == 0
    assert rows(db, "SELECT count(*) FROM urls WHERE state = 'queued'") == [(2,)]  # still waiting for a raised limit
    assert rows(db, "SELECT count(*) FROM meta WHERE key = 'recrawl_pass'") == [(0,)]


def test_a_failure_during_a_pass_is_an_error_row_and_the_stored_page_stays(tmp_path: Path, versioned: Served) -> None:
    site, server = versioned
    db = tmp_path / "crawl.db"
    cfg = config(tmp_path, server)
    run(cfg)
    url = server.url_for("/c")
    before = rows(db, "SELECT status, fetched_at, content_hash, seen_at, text FROM pages WHERE url = ?", (url,))
    site.site.page("/c", status=503, body="busy")
    run(cfg, RecrawlRequest())
    assert rows(db, "SELECT status, fetched_at, content_hash, seen_at, text FROM pages WHERE url = ?", (url,)) == before
    assert rows(db, "SELECT kind FROM errors WHERE url = ?", (url,)) == [("http_status",)]
    assert "/c" not in changes(db)
    assert changes(db)["/a"] == ("unchanged", 304)
