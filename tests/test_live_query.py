"""Queries beside a live crawl: WAL readers never wait for the writer, and the writer never waits for them."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import crawler
from crawler.engine import Outcome
from tests.crawlkit import crawl, make_config
from tests.support.localsite import SiteServer
from tests.support.site import HTML, Request, Response, Site, html_page

Serve = Callable[[Site], SiteServer]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition on the database until it holds (the crawl commits on its own schedule)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_queries_answer_while_a_crawl_is_writing(site_server: Serve, tmp_path: Path) -> None:
    release = threading.Event()

    async def slow(request: Request) -> Response:
        # Holds the crawl open until the test has read what it wants.
        await asyncio.to_thread(release.wait, 30)
        return Response(200, [("Content-Type", HTML)], html_page("Slow page", [], ["finally arrived"]))

    site = (
        Site()
        .page("/", title="Home", links=["/a", "/b", "/slow"])
        .page("/a", title="Alpha lantern")
        .page("/b", title="Beta")
        .handler("/slow", slow)
    )
    server = site_server(site)
    db = tmp_path / "live.db"
    # total_timeout well above the waits below, so only release.set() ends the slow request.
    task = asyncio.create_task(crawl(make_config(db, [server.url + "/"], http={"total_timeout": 60.0})))
    try:
        served = {"/", "/a", "/b"}
        assert await asyncio.to_thread(
            server.wait_for, lambda: served <= set(server.paths()) and server.in_flight == 1, 10.0
        )
        with crawler.open_results(db) as results:
            await until(lambda: len(results.pages()) == 3)
            assert [p.url for p in results.pages()] == [server.url + p for p in ("/", "/a", "/b")]
            # A slow crawl indexes as it goes, so search answers before the crawl ends.
            await until(lambda: [hit.url for hit in results.search("lantern")] == [server.url + "/a"])
            assert not task.done()
            assert results.stats().urls_by_state == {"done": 3, "in_flight": 1}
            assert results.sql("SELECT count(*) FROM runs WHERE finished_at IS NULL").rows == [(1,)]

            # A reader in the middle of a transaction keeps its snapshot and does not hold up the writer.
            reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM pages").fetchone() == (3,)
            release.set()
            summary = await asyncio.wait_for(task, timeout=30)
            assert summary.outcome is Outcome.FINISHED
            assert reader.execute("SELECT count(*) FROM pages").fetchone() == (3,)
            reader.execute("COMMIT")
            assert reader.execute("SELECT count(*) FROM pages").fetchone() == (4,)
            reader.close()

            assert [hit.url for hit in results.search("finally arrived")] == [server.url + "/slow"]
            assert results.unindexed() == 0
    finally:
        release.set()
        await asyncio.gather(task, return_exceptions=True)
