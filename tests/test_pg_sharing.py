"""Crawlers sharing one PostgreSQL crawl: robots.txt fetched once per host for all of them, and a
redirect into a host another crawler holds handed over to it rather than followed."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg

from crawler.engine import Crawl, Outcome
from tests.crawlkit import make_config
from tests.support.localsite import SiteServer
from tests.support.site import Request, Response, Site, html_page

Serve = Callable[[Site], SiteServer]
DEADLINE = 60.0  # seconds a wait may take before the test gives up (a hang, not a speed check)


def pg_rows(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def agent(name: str) -> dict[str, Any]:
    return {"user_agent": f"{name}/0.1 (+https://example.org/tests)", "per_host_concurrency": 1}


async def test_a_host_crawled_by_two_crawlers_has_its_robots_txt_fetched_once(site_server: Serve, pg_url: str) -> None:
    site = (
        Site()
        .robots("User-agent: *\nDisallow: /private\n")
        .page("/", links=["/a", "/private/x"])
        .page("/a")
        .page("/b", links=["/private/y"])
    )
    server = site_server(site)
    first = await Crawl(make_config(pg_url, [server.url + "/"], politeness=agent("crawler-one"))).run()
    assert first.outcome is Outcome.FINISHED
    # A second crawler joins the crawl with a new page of the same host: it leases the host and
    # rebuilds the rules from the robots row the first one committed.
    second_config = make_config(pg_url, [server.url + "/", server.url + "/b"], politeness=agent("crawler-two"))
    second = await Crawl(second_config).run()
    assert second.outcome is Outcome.FINISHED

    assert Counter(server.paths()) == Counter({"/robots.txt": 1, "/": 1, "/a": 1, "/b": 1})
    assert [r.headers["user-agent"].split("/")[0] for r in server.requests if r.path == "/b"] == ["crawler-two"]
    skipped = pg_rows(pg_url, "SELECT url, reason FROM urls WHERE state = 'skipped' ORDER BY url")
    assert skipped == [(server.url + "/private/x", "robots"), (server.url + "/private/y", "robots")]
    runs = pg_rows(pg_url, "SELECT count(DISTINCT run_id) FROM pages")
    assert runs == [(2,)]  # the host's pages were fetched by both
    [(misses, body)] = pg_rows(pg_url, "SELECT misses, body FROM robots")
    assert (misses, bytes(body)) == (0, b"User-agent: *\nDisallow: /private\n")


async def test_a_redirect_into_a_host_another_crawler_holds_is_queued_for_it(site_server: Serve, pg_url: str) -> None:
    """A redirects to B while the other crawler holds B's lease (its request to B/ is held open):
    the first crawler sends nothing to B, and B's page is fetched once, by B's holder."""
    release_b = threading.Event()

    async def slow_home(request: Request) -> Response:
        await asyncio.to_thread(release_b.wait, DEADLINE)
        return Response(200, [("Content-Type", "text/html")], html_page("B home"))

    b = site_server(Site().handler("/", slow_home).page("/target"))
    a = site_server(Site().redirect("/", f"{b.url}/target"))
    scope = {"allowed_hosts": ["127.0.0.1"]}

    # One request at a time: with B/ out, the other crawler has no room to take A by demand first.
    two = {**agent("crawler-two"), "concurrency": 1}
    other = asyncio.create_task(Crawl(make_config(pg_url, [b.url + "/"], crawl=scope, politeness=two)).run())
    try:
        await wait_for(lambda: b.paths() == ["/robots.txt"] and b.in_flight == 1, "B/ to be requested")
        first = asyncio.create_task(
            Crawl(make_config(pg_url, [a.url + "/"], crawl=scope, politeness=agent("crawler-one"))).run()
        )
        queued = "SELECT count(*) FROM urls WHERE url = %s AND state = 'queued'"
        await wait_for(lambda: pg_rows(pg_url, queued, (b.url + "/target",)) == [(1,)], "B/target to be queued")
        assert [r.path for r in b.requests] == ["/robots.txt"]  # and B/ in flight: nothing of the first's
        release_b.set()
        summaries = await asyncio.gather(first, other)
    finally:
        release_b.set()
        if not other.done():
            await other
    assert [s.outcome for s in summaries] == [Outcome.FINISHED, Outcome.FINISHED]

    assert Counter(b.paths()) == Counter({"/robots.txt": 1, "/": 1, "/target": 1})
    assert all(r.in_flight_at_start == 1 for r in b.requests)
    # Whoever fetched B/target held B's lease then: it started after the other crawler's B/ ended.
    [home] = [r for r in b.requests if r.path == "/"]
    [target] = [r for r in b.requests if r.path == "/target"]
    assert target.start >= home.end
    # The redirect's page records the hop it stopped at, as a robots-disallowed stop does.
    [(status, final_url, redirects)] = pg_rows(
        pg_url, "SELECT status, final_url, redirects FROM pages WHERE url = %s", (a.url + "/",)
    )
    assert (status, final_url) == (301, a.url + "/")
    assert json.loads(redirects) == [{"url": a.url + "/", "status": 301, "location": b.url + "/target"}]
    [(depth, parent)] = pg_rows(
        pg_url,
        "SELECT t.depth, p.url FROM urls t JOIN urls p ON p.id = t.parent_id WHERE t.url = %s",
        (b.url + "/target",),
    )
    assert (depth, parent) == (0, a.url + "/")
    assert pg_rows(pg_url, "SELECT count(*) FROM pages WHERE url = %s", (b.url + "/target",)) == [(1,)]
