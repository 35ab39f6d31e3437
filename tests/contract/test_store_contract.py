"""The backend contract (crawler/store/backend.py), proven alike on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crawler.errors import StoreError
from crawler.frontier import Frontier
from crawler.store import (
    JSON_ROWS,
    Backend,
    NewUrl,
    PageRecord,
    RobotsRecord,
    SitemapRecord,
    Store,
    StoredVersion,
    is_postgres_url,
    utc_now,
)
from crawler.store.records import seconds_since
from tests.contract.conftest import sql
from tests.crawlkit import closed_port
from tests.test_frontier import Driver, politeness, queue_urls

HOST = "a.test:80"


def page(url_id: int, url: str, *, title: str = "T", text: str = "hello world", body: bytes = b"<p>hi") -> PageRecord:
    return PageRecord(
        url_id, url, url, 200, "text/html", title, 0, utc_now(), 1.5, "HTTP/1.1", len(body),
        [("content-type", "text/html")], [], False, text, body, content_hash="h1", etag='"v1"',
    )  # fmt: skip


async def seeded(store: Backend, *paths: str) -> list[int]:
    store.add_urls([NewUrl(f"http://a.test{p}", HOST, 0) for p in paths])
    return [q.id for q in await store.flush()]


# ---- open, migrate, one crawler -----------------------------------------------------------------------


async def test_reopening_keeps_what_was_stored_and_a_newer_schema_is_refused(target: Path | str) -> None:
    store = await Store.open(target)
    await seeded(store, "/", "/a")
    await store.set_meta("scope", "{}")
    await store.close()

    store = await Store.open(target)  # migrating again is a no-op
    try:
        assert (await store.state_counts())["queued"] == 2
        assert await store.get_meta("scope") == "{}"
        assert await store.get_meta("missing") is None
        if isinstance(target, Path):
            await store.fetchall("PRAGMA user_version = 99")  # type: ignore[attr-defined]
        else:
            await store.set_meta("schema_version", "99")
    finally:
        await store.close()
    with pytest.raises(StoreError, match=r"was written by a newer crawler \(schema 99\)"):
        await Store.open(target)


async def test_a_second_crawler_is_refused_on_sqlite_and_joins_on_postgresql(
    store: Backend, target: Path | str
) -> None:
    if isinstance(target, Path):
        with pytest.raises(StoreError, match="in use by another crawler"):
            await Store.open(target)
    else:  # several crawlers share a PostgreSQL crawl through host leases (tests/test_pg_leases.py)
        second = await Store.open(target)
        await second.close()
    await store.close()
    again = await Store.open(target)  # closing let go of it
    await again.close()


async def test_a_cancelled_flush_still_commits_whole(store: Backend) -> None:
    store.add_urls([NewUrl(f"http://a.test/{i}", HOST, 1) for i in range(500)])
    flush = asyncio.create_task(store.flush())
    await asyncio.sleep(0)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    assert await sql(store, "SELECT count(*) FROM urls") == [(500,)]  # runs after the flush, in call order


# ---- the batch --------------------------------------------------------------------------------------------


async def test_a_batch_applies_state_changes_in_order_and_keeps_new_urls_exactly(store: Backend) -> None:
    odd = "http://h.test/ünï?q=%22quote%22&b=\\back"
    store.add_urls(
        [NewUrl("http://h.test/a", "h.test:80", 2, None), NewUrl(odd, "h.test:80", 3, 7, "skipped", "robots")]
    )
    queued = await store.flush()
    assert [(q.url, q.host, q.depth, q.kind) for q in queued] == [("http://h.test/a", "h.test:80", 2, "page")]
    a_id = queued[0].id
    store.set_state(a_id, "in_flight")
    store.set_state(a_id, "failed", "whatever")
    store.set_state(a_id, "done")  # the last change of a batch wins
    store.add_urls([NewUrl("http://h.test/a", "h.test:80", 9)])  # known: ignored
    assert await store.flush() == []
    assert await sql(store, "SELECT url, depth, parent_id, state, reason FROM urls ORDER BY id") == [
        ("http://h.test/a", 2, None, "done", None),
        (odd, 3, 7, "skipped", "robots"),
    ]


async def test_large_batches_keep_every_row_in_id_order(store: Backend) -> None:
    count = 3 * JSON_ROWS + 5
    store.add_urls([NewUrl(f"http://h.test/{i}", "h.test:80", 1, None) for i in range(count)])
    queued = await store.flush()
    assert [q.url for q in queued] == [f"http://h.test/{i}" for i in range(count)]
    assert [q.id for q in queued] == sorted(q.id for q in queued)
    for q in queued:
        store.set_state(q.id, "done")
    await store.flush()
    assert await store.state_counts() == {"queued": 0, "in_flight": 0, "done": count, "failed": 0, "skipped": 0}


async def test_a_page_its_links_errors_and_robots_commit_together(store: Backend) -> None:
    home, other = await seeded(store, "/", "/other")
    run_id = await store.start_run('{"x": 1}')
    store.set_state(home, "in_flight")
    await store.flush()
    text = "hello\x00world"  # PostgreSQL text holds no NUL: it is stored as U+FFFD there
    store.add_page(page(home, "http://a.test/", title="Home", text=text, body=b"\x00\xffbody"), [
        ("http://a.test/other", False),
        ("http://a.test/new", False),
        ("http://a.test/hidden", True),
    ])  # fmt: skip
    store.add_urls([
        NewUrl("http://a.test/new", HOST, 1, home),
        NewUrl("http://a.test/hidden", HOST, 1, home, "skipped", "nofollow"),
    ])  # fmt: skip
    store.add_error(other, "http://a.test/other", "timeout", "timed out after 5 s", 2)
    store.add_robots(RobotsRecord("http://a.test", 200, 1.5, ("http://a.test/sitemap.xml",), "allowed"))
    queued = await store.flush()

    assert [q.url for q in queued] == ["http://a.test/new"]
    [(title, stored_text, body, status, noindex, run, size, etag, seen)] = await sql(
        store, "SELECT title, text, body, status, noindex, run_id, bytes, etag, seen_at = fetched_at FROM pages"
    )
    assert (title, bytes(body), status, noindex, run, size, etag, seen) == (
        "Home", b"\x00\xffbody", 200, 0, run_id, 6, '"v1"', True
    )  # fmt: skip
    assert stored_text in (text, "hello\ufffdworld")
    assert await sql(
        store,
        "SELECT f.url, t.url, l.nofollow FROM links l JOIN urls f ON f.id = l.from_id JOIN urls t ON t.id = l.to_id"
        " ORDER BY t.url",
    ) == [
        ("http://a.test/", "http://a.test/hidden", 1),
        ("http://a.test/", "http://a.test/new", 0),
        ("http://a.test/", "http://a.test/other", 0),
    ]
    assert await sql(store, "SELECT url_id, url, kind, message, attempts, run_id FROM errors") == [
        (other, "http://a.test/other", "timeout", "timed out after 5 s", 2, run_id)
    ]
    assert await sql(store, "SELECT origin, status, crawl_delay, sitemaps, note FROM robots") == [
        ("http://a.test", 200, 1.5, '["http://a.test/sitemap.xml"]', "allowed")
    ]
    assert await store.state_counts() == {"queued": 1, "in_flight": 0, "done": 1, "failed": 1, "skipped": 1}
    assert await store.fetched_for_host(HOST) == 2
    assert await store.fetched_for_host("b.test:80") == 0


async def test_a_robots_record_comes_back_once_committed_and_the_latest_wins(store: Backend) -> None:
    """What rebuilds an origin's rules: another crawler on the database (or a resumed run) reads it."""
    assert await store.stored_robots("http://a.test") is None
    body = b"\xef\xbb\xbfUser-agent: *\nDisallow: /\x00\xff\n"  # bytes as read, not text
    store.add_robots(RobotsRecord("http://a.test", 200, 2.0, ("http://a.test/s.xml",), "200, 1 rule for *", body))
    store.add_robots(RobotsRecord("http://b.test:8080", None, None, (), "unreachable", b"", "refused", "connect", 2))
    assert await store.stored_robots("http://a.test") is None  # not before the flush commits it
    await store.flush()
    a = await store.stored_robots("http://a.test")
    b = await store.stored_robots("http://b.test:8080")
    assert a is not None and b is not None
    assert (a.status, a.crawl_delay, a.sitemaps, a.body, a.error, a.error_kind, a.misses) == (
        200, 2.0, ("http://a.test/s.xml",), body, None, None, 0
    )  # fmt: skip
    assert (b.status, b.body, b.error, b.error_kind, b.misses) == (None, b"", "refused", "connect", 2)
    assert seconds_since(a.fetched_at) < 60
    # Two fetches of one origin in one batch, and a later one: the latest is what comes back.
    store.add_robots(RobotsRecord("http://b.test:8080", 503, None, (), "503", b"", "HTTP 503", "http_status", 3))
    store.add_robots(RobotsRecord("http://b.test:8080", 404, None, (), "404: allow all"))
    await store.flush()
    b = await store.stored_robots("http://b.test:8080")
    assert b is not None and (b.status, b.misses, b.error_kind) == (404, 0, None)
    assert await sql(store, "SELECT count(*) FROM robots") == [(2,)]


async def test_a_robots_row_from_before_its_body_was_kept_rebuilds_nothing(store: Backend) -> None:
    insert = "INSERT INTO robots (origin, status, fetched_at, crawl_delay, sitemaps, note) VALUES (?, ?, ?, ?, ?, ?)"
    if is_postgres_url(store.location):
        insert = insert.replace("?", "%s")
    # As the schema's migration leaves a row written before it: no body.
    await store._write(insert, ("http://a.test", 200, utc_now(), None, "[]", "200, 1 rule for *"))  # type: ignore[attr-defined]
    assert await store.stored_robots("http://a.test") is None


async def test_a_nofollow_target_followed_later_is_queued_with_a_fresh_id(store: Backend) -> None:
    [home] = await seeded(store, "/")
    store.add_page(page(home, "http://a.test/"), [("http://a.test/hidden", True)])
    store.add_urls([NewUrl("http://a.test/hidden", HOST, 1, home, "skipped", "nofollow")])
    assert await store.flush() == []
    await seeded(store, "/later")  # (SQLite would hand the highest id out again)
    [(old_id,)] = await sql(store, "SELECT id FROM urls WHERE url = 'http://a.test/hidden'")

    store.add_urls([NewUrl("http://a.test/hidden", HOST, 2, home)])  # now a followed link finds it
    [promoted] = await store.flush()
    assert promoted.url == "http://a.test/hidden" and promoted.id > old_id
    assert await sql(store, "SELECT to_id FROM links") == [(promoted.id,)]  # the link followed its target
    assert await sql(store, "SELECT state, reason FROM urls WHERE id = ?", (promoted.id,)) == [("queued", None)]


async def test_a_per_host_skip_marks_only_that_hosts_queued_urls(store: Backend) -> None:
    store.add_urls([NewUrl(f"http://{h}.test/{i}", f"{h}.test:80", 1) for h in "ab" for i in range(3)])
    first, *_ = await store.flush()
    store.set_state(first.id, "in_flight")
    store.skip_queued_of_host("a.test:80", "host_limit")
    await store.flush()
    assert await sql(
        store, "SELECT host, state, reason, count(*) FROM urls GROUP BY host, state, reason ORDER BY 1, 2"
    ) == [
        ("a.test:80", "in_flight", None, 1),
        ("a.test:80", "skipped", "host_limit", 2),
        ("b.test:80", "queued", None, 3),
    ]


# ---- frontier reads ----------------------------------------------------------------------------------------


async def test_queued_for_host_reads_windows_in_id_order_and_queued_hosts_pages_through_hosts(store: Backend) -> None:
    store.add_urls([NewUrl(f"http://h{h}.test/{i}", f"h{h}.test:80", 1) for i in range(5) for h in range(4)])
    queued = await store.flush()
    h1 = [q for q in queued if q.host == "h1.test:80"]
    store.set_state(h1[1].id, "done")
    await store.flush()

    window = await store.queued_for_host("h1.test:80", 0, 2)
    assert [q.url for q in window] == ["http://h1.test/0", "http://h1.test/2"]
    assert all(q.host == "h1.test:80" and q.previous is None for q in window)
    rest = await store.queued_for_host("h1.test:80", window[-1].id, 10)
    assert [q.url for q in rest] == ["http://h1.test/3", "http://h1.test/4"]
    assert await store.queued_for_host("nowhere.test:80", 0, 10) == []

    assert await store.queued_hosts("", 3) == ["h0.test:80", "h1.test:80", "h2.test:80"]
    assert await store.queued_hosts("h2.test:80", 3) == ["h3.test:80"]
    store.skip_queued_of_host("h3.test:80", "host_limit")
    await store.flush()
    assert await store.queued_hosts("h2.test:80", 3) == []


async def test_the_frontier_leases_every_url_once_and_a_host_waits_for_its_commit(store: Backend) -> None:
    """tests/test_frontier.py's story on both backends: a lease finished while a flush commits."""
    await queue_urls(store, hosts=2, per_host=2)  # type: ignore[arg-type]
    pol = politeness()
    frontier = Frontier(store, pol, max_hosts=1)
    await frontier.load(fetched=0)
    driver = Driver(store, frontier, pol)  # type: ignore[arg-type]
    first = await driver.lease()
    assert first is not None and first.host == "h0.test:80"
    await driver.finish(first)
    completions = frontier.take_completions()
    flush = asyncio.ensure_future(store.flush())
    await asyncio.sleep(0)
    second = await driver.lease()
    assert second is not None
    await driver.finish(second)
    frontier.committed(completions, await flush)
    assert await sql(store, "SELECT state FROM urls WHERE id = ?", (second.url_id,)) == [("queued",)]
    while (lease := await driver.lease()) is not None:
        await driver.finish(lease)
    assert driver.leased == ["http://h0.test/0", "http://h0.test/1", "http://h1.test/0", "http://h1.test/1"]
    await store.flush()
    assert (await store.state_counts())["done"] == 4


async def test_max_pages_per_host_counts_pages_of_earlier_runs(store: Backend) -> None:
    await queue_urls(store, hosts=2, per_host=3, state="done")  # type: ignore[arg-type]
    store.add_urls([NewUrl(f"http://h{h}.test/more/{i}", f"h{h}.test:80", 1) for h in range(2) for i in range(5)])
    await store.flush()
    pol = politeness()
    frontier = Frontier(store, pol, max_pages_per_host=4)
    await frontier.load(fetched=6)
    driver = Driver(store, frontier, pol)  # type: ignore[arg-type]
    while (lease := await driver.lease()) is not None:
        await driver.finish(lease)
    await store.flush()
    assert len(driver.leased) == 2
    counts = await sql(store, "SELECT state, reason, count(*) FROM urls GROUP BY state, reason ORDER BY state")
    assert counts == [("done", None, 8), ("skipped", "host_limit", 8)]


# ---- resume and runs ------------------------------------------------------------------------------------------


async def test_resume_preparation_requeues_in_flight_marks_killed_runs_and_rejudges(store: Backend) -> None:
    ids = await seeded(store, "/0", "/1", "/2", "/3")
    dead = await store.start_run("{}")
    for url_id in ids[:2]:
        store.set_state(url_id, "in_flight")
    store.set_state(ids[2], "skipped", "depth")
    store.set_state(ids[3], "skipped", "host_limit")
    await store.flush()
    if is_postgres_url(store.location):
        # Several crawlers share PostgreSQL: a run is dead once its heartbeat is older than a lease.
        assert await store.mark_killed_runs() == 0
        await sql(store, "UPDATE runs SET heartbeat_at = now() - interval '1 hour' RETURNING id")

    assert await store.mark_killed_runs() == 1
    assert await store.requeue_in_flight() == 2
    assert await store.urls_in_state("skipped", ["depth"], 0, 10) == [(ids[2], "http://a.test/2", 0, "depth")]
    assert [row[0] for row in await store.urls_in_state("skipped", None, 0, 10)] == ids[2:]
    assert [row[0] for row in await store.urls_in_state("skipped", None, ids[2], 10)] == ids[3:]
    await store.set_states([("queued", None, ids[2])])
    assert await store.requeue_skipped("host_limit") == 1
    assert await store.state_counts() == {"queued": 4, "in_flight": 0, "done": 0, "failed": 0, "skipped": 0}

    live = await store.start_run('{"a": 1}', "recrawl")
    assert live > dead and store.run_id == live
    await store.finish_run("finished", 12)
    assert await sql(store, "SELECT id, outcome, pages, kind, finished_at IS NULL FROM runs ORDER BY id") == [
        (dead, "killed", 0, "crawl", True),
        (live, "finished", 12, "recrawl", False),
    ]


# ---- recrawl passes --------------------------------------------------------------------------------------------


async def test_a_recrawl_pass_queues_due_pages_with_their_version_and_records_changes(store: Backend) -> None:
    a, b, c = await seeded(store, "/a", "/b", "/c")
    await store.start_run("{}")
    store.add_page(page(a, "http://a.test/a"), [("http://a.test/b", False)])
    store.add_page(page(b, "http://a.test/b"), [])
    store.add_page(page(c, "http://a.test/c"), [])
    await store.flush()
    assert await store.open_pass() is None

    pass_id = await store.start_run("{}", "recrawl")
    assert await store.start_pass(pass_id, "9999-01-01T00:00:00.000Z") == 3
    store.begin_pass(pass_id, keep_history=True)
    assert await store.open_pass() == pass_id
    assert await store.revisits_queued() == 3
    window = await store.queued_for_host(HOST, 0, 10)
    assert [q.previous for q in window] == [StoredVersion(200, "h1", '"v1"', None)] * 3

    store.confirm_page(a, 304, '"v2"', None)
    store.replace_page(page(b, "http://a.test/b", title="New", body=b"new"), [("http://a.test/a", False)], "changed")
    store.add_change(c, "new", 200, utc_now())
    await store.flush()
    assert await sql(
        store, "SELECT url_id, change, status FROM changes WHERE run_id = ? ORDER BY url_id", (pass_id,)
    ) == [
        (a, "unchanged", 304),
        (b, "changed", 200),
        (c, "new", 200),
    ]
    assert await sql(store, "SELECT etag, seen_at > fetched_at FROM pages WHERE url_id = ?", (a,)) == [('"v2"', True)]
    assert await sql(store, "SELECT url_id, status, content_hash, body FROM page_history") == [(b, 200, "h1", b"<p>hi")]
    assert await sql(store, "SELECT from_id, to_id FROM links ORDER BY from_id") == [(a, b), (b, a)]
    assert await sql(store, "SELECT title FROM pages WHERE url_id = ?", (b,)) == [("New",)]
    await store.end_pass()
    assert await store.open_pass() is None


# ---- sitemaps --------------------------------------------------------------------------------------------------


async def test_sitemap_rows_listed_urls_and_the_newest_lastmod(store: Backend) -> None:
    [robots_seed] = await seeded(store, "/")
    store.add_listed_urls([NewUrl("http://a.test/sitemap.xml", HOST, 1, robots_seed, kind="sitemap", source="robots")])
    [sitemap] = await store.flush()
    assert sitemap.kind == "sitemap"

    store.add_urls([NewUrl("http://a.test/page", HOST, 3)])  # a link found it first
    await store.flush()
    for lastmod in ("2024-05-01T00:00:00.000Z", "2023-01-01T00:00:00.000Z"):  # the older one does not win
        store.add_listed_urls([NewUrl("http://a.test/page", HOST, 1, sitemap.id, source="sitemap", lastmod=lastmod)])
        assert await store.flush() == []
    # One batch listing a URL twice: the newer lastmod wins whatever the order.
    store.add_listed_urls([
        NewUrl("http://a.test/twice", HOST, 1, sitemap.id, source="sitemap", lastmod="2021-03-03T00:00:00.000Z"),
        NewUrl("http://a.test/twice", HOST, 1, sitemap.id, source="sitemap", lastmod="2021-01-01T00:00:00.000Z"),
    ])  # fmt: skip
    store.add_urls([NewUrl("http://a.test/known", HOST, 3)])
    await store.flush()
    store.add_listed_urls([
        NewUrl("http://a.test/known", HOST, 1, sitemap.id, source="sitemap", lastmod="2021-01-01T00:00:00.000Z"),
        NewUrl("http://a.test/known", HOST, 1, sitemap.id, source="sitemap", lastmod="2021-03-03T00:00:00.000Z"),
        NewUrl("http://a.test/known", HOST, 1, sitemap.id, source="sitemap", lastmod="2021-02-02T00:00:00.000Z"),
    ])  # fmt: skip
    await store.flush()
    assert await sql(
        store,
        "SELECT url, lastmod FROM urls WHERE url IN (?, ?) ORDER BY url",
        ("http://a.test/known", "http://a.test/twice"),
    ) == [("http://a.test/known", "2021-03-03T00:00:00.000Z"), ("http://a.test/twice", "2021-03-03T00:00:00.000Z")]
    store.add_listed_urls(
        [NewUrl("http://a.test/listed", HOST, 1, sitemap.id, source="sitemap", lastmod="2022-02-02T00:00:00.000Z")]
    )
    store.add_sitemap(SitemapRecord("http://a.test/sitemap.xml", sitemap.id, None, 200, 3, utc_now(), None))
    store.set_state(sitemap.id, "done")
    queued = await store.flush()

    assert [(q.url, q.kind) for q in queued] == [("http://a.test/listed", "page")]
    assert await sql(store, "SELECT url, depth, kind, source, lastmod FROM urls ORDER BY id") == [
        ("http://a.test/", 0, "page", None, None),
        ("http://a.test/sitemap.xml", 1, "sitemap", "robots", None),
        ("http://a.test/page", 3, "page", None, "2024-05-01T00:00:00.000Z"),
        # A flush inserts the links' URLs before the listed ones.
        ("http://a.test/known", 3, "page", None, "2021-03-03T00:00:00.000Z"),
        ("http://a.test/twice", 1, "page", "sitemap", "2021-03-03T00:00:00.000Z"),
        ("http://a.test/listed", 1, "page", "sitemap", "2022-02-02T00:00:00.000Z"),
    ]
    assert await sql(store, "SELECT url, url_id, parent, status, urls, error FROM sitemaps") == [
        ("http://a.test/sitemap.xml", sitemap.id, "http://a.test/", 200, 3, None)
    ]
    assert await store.sitemaps_settled() == 1
    assert await store.fetched_for_host(HOST) == 0  # a sitemap is no page


# ---- search backlog ------------------------------------------------------------------------------------------------


async def test_every_stored_page_is_indexed_once_the_backlog_is_drained(store: Backend) -> None:
    ids = await seeded(store, *(f"/{i}" for i in range(5)))
    for url_id in ids:
        record = page(url_id, f"http://a.test/{url_id}")
        record.noindex = url_id == ids[0]
        store.add_page(record, [])
    await store.flush()
    assert 0 <= await store.pending_index() <= 4  # SQLite indexes in the flush; PostgreSQL later
    while await store.index_pending(2):
        pass
    assert await store.pending_index() == 0


# ---- bad targets (PostgreSQL) ------------------------------------------------------------------------------------


async def test_an_unreachable_postgresql_or_missing_database_is_a_store_error(pg_server_url: str) -> None:
    with pytest.raises(StoreError, match=r"^cannot connect to postgresql://postgres@127\.0\.0\.1:\d+/x: "):
        await Store.open(f"postgresql://postgres@127.0.0.1:{closed_port()}/x")
    missing = pg_server_url.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(StoreError, match='database "no_such_db" does not exist'):
        await Store.open(missing)
    with pytest.raises(StoreError, match=r"postgresql://postgres:\*\*\*@127"):  # never the password
        await Store.open(f"postgresql://postgres:secret@127.0.0.1:{closed_port()}/x")
