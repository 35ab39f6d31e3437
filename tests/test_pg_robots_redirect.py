"""robots.txt redirected into another host on a shared PostgreSQL crawl: nothing is sent to a host
another crawler holds; the target's fresh record answers, or a free target is leased for the fetch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import psycopg
import pytest

from crawler.engine import Crawl, Outcome
from crawler.politeness import HostState
from crawler.store import NewUrl
from crawler.store.pg.store import PgStore
from crawler.urls import host_key
from tests.crawlkit import make_config
from tests.support.pg_stores import leases, owners, shared_stores
from tests.support.site import Request, Response, Site
from tests.test_pg_sharing import DEADLINE, Serve, agent, pg_rows, wait_for

RULES = "User-agent: *\nDisallow: /private\n"
SCOPE = {"allowed_hosts": ["127.0.0.1"]}
SEND_LAG = 0.05  # seconds a request's start may precede its turn, as the server's clock sees it


def robots_site(target: str) -> Site:
    """A host whose robots.txt redirects to `target`, with a page it disallows there."""
    return Site().redirect("/robots.txt", target).page("/", links=["/a", "/private/x"]).page("/a")


def held_open(release: threading.Event) -> Site:
    """A host whose robots.txt answers RULES once `release` is set (its requests are recorded as they end)."""

    async def robots(request: Request) -> Response:
        await asyncio.to_thread(release.wait, DEADLINE)
        return Response(200, [("Content-Type", "text/plain")], RULES.encode())

    return Site().handler("/robots.txt", robots).page("/")


def user_agents(requests: list[object]) -> set[str]:
    return {r.headers["user-agent"].split("/")[0] for r in requests}  # type: ignore[attr-defined]


def pg_exec(url: str, sql: str, params: tuple[object, ...] = ()) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def robots_row(pg_url: str, site: str) -> tuple[object, ...] | None:
    found = pg_rows(pg_url, "SELECT body, misses, fetched_at FROM robots WHERE origin = %s", (site,))
    return found[0] if found else None


async def test_robots_txt_redirected_into_a_host_another_crawler_holds_sends_nothing_to_it(
    site_server: Serve, pg_url: str
) -> None:
    """A's robots.txt redirects to B's while the other crawler holds B (its B/robots.txt held open):
    A's URLs wait, nothing of the first crawler reaches B, and once B's holder recorded B's
    robots.txt, A's rules are B's, read from that record."""
    release_b = threading.Event()
    b = site_server(held_open(release_b))
    a = site_server(robots_site(f"{b.url}/robots.txt"))
    # Concurrency 1: waiting for B's robots.txt, the other crawler has no capacity to take A too.
    two = {**agent("crawler-two"), "concurrency": 1}
    patient = {"total_timeout": DEADLINE}  # B/robots.txt is held open longer than the default timeout
    one = {**agent("crawler-one"), "robots_retry_interval": 0.1, "robots_max_attempts": 100}

    other = asyncio.create_task(
        Crawl(make_config(pg_url, [b.url + "/"], crawl=SCOPE, politeness=two, http=patient)).run()
    )
    try:
        await wait_for(lambda: b.in_flight == 1, "B/robots.txt to be requested")
        first = asyncio.create_task(Crawl(make_config(pg_url, [a.url + "/"], crawl=SCOPE, politeness=one)).run())
        # A's robots.txt counted as unavailable (recorded for the fleet), and nothing sent to B.
        await wait_for(lambda: (robots_row(pg_url, a.url) or (None, 0))[1] >= 1, "A's robots.txt to be held")
        assert (b.requests, b.in_flight) == ([], 1)  # only the other crawler's B/robots.txt, held open
        assert a.paths().count("/robots.txt") >= 1 and "/" not in a.paths()
        release_b.set()
        summaries = await asyncio.gather(first, other)
    finally:
        release_b.set()
        if not other.done():
            await other
    assert [s.outcome for s in summaries] == [Outcome.FINISHED, Outcome.FINISHED]

    assert Counter(b.paths()) == Counter({"/robots.txt": 1, "/": 1})
    assert user_agents(b.requests) == {"crawler-two"}
    assert "/private/x" not in a.paths()
    assert Counter(p for p in a.paths() if p != "/robots.txt") == Counter({"/": 1, "/a": 1})
    skipped = pg_rows(pg_url, "SELECT url, reason FROM urls WHERE state = 'skipped'")
    assert skipped == [(a.url + "/private/x", "robots")]
    # A's row is B's answer, B's fetched time included: A's rules expire with B's record.
    a_row, b_row = robots_row(pg_url, a.url), robots_row(pg_url, b.url)
    assert a_row is not None and b_row is not None
    assert (bytes(a_row[0]), a_row[1], a_row[2]) == (RULES.encode(), 0, b_row[2])


@pytest.mark.parametrize("paused", [True, False], ids=["row-with-pause", "no-row"])
async def test_robots_txt_redirected_into_a_free_host_is_fetched_under_that_host_s_lease(
    site_server: Serve, pg_url: str, paused: bool
) -> None:
    """Nobody holds B: the crawler leases B for the fetch (inserting its hosts row if missing), sends
    under B's politeness as its row hands it over (a pause still ahead), and releases B with it."""
    b = site_server(Site().robots(RULES))
    a = site_server(robots_site(f"{b.url}/robots.txt"))
    b_host = host_key(b.url + "/")
    pause_ends = 0.0
    if paused:
        await (await PgStore.open(pg_url)).close()  # makes the schema
        pause_ends = time.monotonic() + 1.5
        pg_exec(
            pg_url,
            "INSERT INTO hosts (host, next_fetch_at, crawl_delay) VALUES (%s, now() + interval '1.5 s', 0.25)",
            (b_host,),
        )

    summary = await Crawl(make_config(pg_url, [a.url + "/"], crawl=SCOPE, politeness=agent("crawler-one"))).run()
    assert summary.outcome is Outcome.FINISHED

    assert b.paths() == ["/robots.txt"]
    if paused:
        assert b.requests[0].start >= pause_ends - SEND_LAG
    assert "/private/x" not in a.paths()
    assert Counter(p for p in a.paths() if p != "/robots.txt") == Counter({"/": 1, "/a": 1})
    a_row = robots_row(pg_url, a.url)
    assert a_row is not None and (bytes(a_row[0]), a_row[1]) == (RULES.encode(), 0)
    # B was released, with the politeness it was taken with.
    [(owner, crawl_delay, urls)] = pg_rows(
        pg_url,
        "SELECT lease_owner, crawl_delay, (SELECT count(*) FROM urls u WHERE u.host = h.host) FROM hosts h"
        " WHERE host = %s",
        (b_host,),
    )
    assert (owner, crawl_delay, urls) == (None, 0.25 if paused else 0.0, 0)


async def test_a_robots_txt_redirect_into_a_host_held_for_good_ends_as_the_usual_robots_error(
    site_server: Serve, pg_url: str
) -> None:
    """B stays held by the other crawler: A's robots.txt is unavailable robots_max_attempts times,
    then A's URL fails with the robots.txt error, and nothing was sent to B."""
    release_b = threading.Event()
    b = site_server(held_open(release_b))
    a = site_server(robots_site(f"{b.url}/robots.txt"))
    two = {**agent("crawler-two"), "concurrency": 1}
    patient = {"total_timeout": DEADLINE}  # B/robots.txt is held open longer than the default timeout
    one = {**agent("crawler-one"), "robots_retry_interval": 0.05, "robots_max_attempts": 2}
    error = "SELECT message FROM errors WHERE url = %s"

    other = asyncio.create_task(
        Crawl(make_config(pg_url, [b.url + "/"], crawl=SCOPE, politeness=two, http=patient)).run()
    )
    try:
        await wait_for(lambda: b.in_flight == 1, "B/robots.txt to be requested")
        first = asyncio.create_task(Crawl(make_config(pg_url, [a.url + "/"], crawl=SCOPE, politeness=one)).run())
        await wait_for(lambda: bool(pg_rows(pg_url, error, (a.url + "/",))), "A/ to fail")
        assert (b.requests, b.in_flight) == ([], 1)  # only the other crawler's B/robots.txt, held open
        release_b.set()
        summaries = await asyncio.gather(first, other)
    finally:
        release_b.set()
        if not other.done():
            await other
    assert [s.outcome for s in summaries] == [Outcome.FINISHED, Outcome.FINISHED]

    [(message,)] = pg_rows(pg_url, error, (a.url + "/",))
    assert message.startswith(f"not fetched: {a.url}/robots.txt was unreachable 2 times: redirected to {b.url}/")
    assert "another crawler holds" in message
    assert a.paths() == ["/robots.txt", "/robots.txt"]
    assert user_agents(b.requests) == {"crawler-two"}


async def test_take_if_free_leases_a_free_host_with_its_politeness_and_not_a_held_one(pg_url: str) -> None:
    seeds = [NewUrl("http://a.test/", "a.test:80", 0, None, "queued", None)]
    async with shared_stores(pg_url, 2, seeds) as (first, second):
        restored: dict[str, HostState] = {}
        leases(first).restore = restored.__setitem__
        assert await leases(first).take(1) == ["a.test:80"]
        assert not await leases(second).take_if_free("a.test:80")  # held by the first
        assert await leases(second).take_if_free("b.test:80")  # no row yet: one is made
        assert not await leases(first).take_if_free("b.test:80")
        assert (await owners(first)) == {"a.test:80": first.run_id, "b.test:80": second.run_id}
        await leases(second).release(["b.test:80"])
        pg_exec(
            pg_url,
            "UPDATE hosts SET crawl_delay = 0.5, next_fetch_at = now() + interval '10 s' WHERE host = 'b.test:80'",
        )
        await leases(first).release(["a.test:80"])
        assert await leases(first).take_if_free("b.test:80")
        state = restored["b.test:80"]
        assert state.crawl_delay == 0.5 and state.wait > 5
        assert set(leases(first).held) == {"b.test:80"}
