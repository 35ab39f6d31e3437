"""Politeness end to end: crawls of several real local hosts, checked against what each server saw."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from crawler.http.resolver import DnsCache
from crawler.http.transport import H1Transport
from crawler.politeness import MIN_BACKOFF
from tests.crawlkit import crawl, make_config, rows, stored_paths
from tests.support.faults import retry_after
from tests.support.localsite import RequestRecord, SiteServer
from tests.support.site import Request, Response, Site, html_page, response_head

Serve = Callable[[Site], SiteServer]

# Server-side start times differ from the crawler's turn by a few ms of sending and
# scheduling on a busy machine; gaps are checked to this tolerance.
TOL = 0.05
ALL_LOCAL = {"allowed_hosts": ["127.0.0.1"]}


def by_start(server: SiteServer) -> list[RequestRecord]:
    return sorted(server.requests, key=lambda r: r.start)


def assert_polite(server: SiteServer, *, delay: float, concurrency: int) -> None:
    """No more than `concurrency` in flight, and request starts at least `delay` apart."""
    assert server.max_in_flight <= concurrency, f"{server.url}: {server.max_in_flight} in flight"
    seen = by_start(server)
    for a, b in itertools.pairwise(seen):
        gap = b.start - a.start
        assert gap >= delay - TOL, f"{server.url}: {a.path} → {b.path} only {gap:.3f}s apart (delay {delay})"


def counter_handler(answers: list[Response]) -> Callable[[Request], Response]:
    """A dynamic handler giving answers[i] on the i-th call, then the last one for ever."""
    calls = itertools.count()

    def handler(request: Request) -> Response:
        return answers[min(next(calls), len(answers) - 1)]

    return handler


def text(body: str, status: int = 200) -> Response:
    return Response(status, [("Content-Type", "text/plain")], body)


# ---- delay and concurrency under a mix of hosts, redirects and retries ------------------------


async def test_no_host_ever_exceeds_its_concurrency_or_delay(site_server: Serve, tmp_path: Path) -> None:
    # Answers take longer than the delay, so without a cap more than per_host would overlap.
    delay, per_host = 0.05, 2
    sites = [Site(default_latency=0.25) for _ in range(3)]
    servers = [site_server(site) for site in sites]
    for i, site in enumerate(sites):
        neighbour = servers[(i + 1) % len(servers)]
        site.robots("User-agent: *\nDisallow: /private\n")
        pages = [f"/p{j}" for j in range(5)]
        site.page("/", links=[*pages, "/private/x", "/r", "/flaky", neighbour.url + "/"])
        for path in pages:
            site.page(path, links=["/", neighbour.url + path])
        site.redirect("/r", neighbour.url + "/p0")  # counts against the neighbour
        site.handler("/flaky", counter_handler([Response(503), Response(200, body=html_page("ok"))]))
        site.page("/private/x")
    db = tmp_path / "c.db"
    config = make_config(
        db,
        [server.url + "/" for server in servers],
        crawl=ALL_LOCAL,
        politeness={"delay": delay, "per_host_concurrency": per_host, "concurrency": 8},
    )
    await crawl(config)

    for server in servers:
        assert_polite(server, delay=delay, concurrency=per_host)
        assert server.paths()[0] == "/robots.txt"
        assert "/private/x" not in server.paths()
        assert server.count("/flaky") == 2  # the retry went through the same host's turns
        assert stored_paths(db, server.url) == {"/", "/p0", "/p1", "/p2", "/p3", "/p4", "/r", "/flaky"}
    # Concurrency was really there to be limited: the cap was reached, not just respected.
    assert max(server.max_in_flight for server in servers) == per_host
    skipped = rows(db, "SELECT reason, count(*) FROM urls WHERE state = 'skipped' GROUP BY reason")
    assert skipped == [("robots", 3)]


# ---- gaps count from the send: connections that open late ----------------------------------

LATE = 0.3  # seconds each new connection of slow_connections() takes before its request is written
SLOW_HOST = "slow.test"


def slow_connections() -> H1Transport:
    """Our plain-http transport, whose every new connection looks SLOW_HOST up anew and waits
    LATE for the answer (127.0.0.1): a connect or TLS handshake of the real internet, or an event
    loop busy elsewhere, between a request's turn and its write."""

    async def resolve(host: str) -> list[str]:
        await asyncio.sleep(LATE)
        return ["127.0.0.1"]

    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    return H1Transport(limits=limits, dns=DnsCache(resolve, ttl=0.0))


async def test_the_first_page_waits_the_delay_after_robots_txt_reached_the_server(
    site_server: Serve, tmp_path: Path
) -> None:
    # robots.txt opens the host's connection, so it reaches the server late by the connect time;
    # the page after it, on the open connection, would not: the gap counts from robots.txt's send.
    delay = 0.1
    server = site_server(Site().robots("User-agent: *\nAllow: /\n").page("/", links=["/a"]).page("/a"))
    seed = f"http://{SLOW_HOST}:{server.port}/"
    config = make_config(tmp_path / "c.db", [seed], crawl={"allowed_hosts": [SLOW_HOST]}, politeness={"delay": delay})
    await crawl(config, transport=slow_connections())

    robots, first, *_ = by_start(server)
    assert (robots.path, first.path) == ("/robots.txt", "/")
    assert_polite(server, delay=delay, concurrency=1)


async def test_a_turn_waits_for_the_request_before_it_to_be_sent(site_server: Serve, tmp_path: Path) -> None:
    # /slow holds the host's first connection when /a takes its turn, so /a opens a second one,
    # LATE; meanwhile /b, /c, /d take their turns delay apart on the first. Counted from the
    # turns, /d would reach the server together with /a.
    delay, per_host = 0.1, 2
    pages = ["/slow", "/a", "/b", "/c", "/d", "/e"]
    site = Site().robots("User-agent: *\nAllow: /\n").page("/", links=pages)
    for path in pages:
        site.page(path, latency=1.5 * delay if path == "/slow" else 0.0)
    server = site_server(site)
    seed = f"http://{SLOW_HOST}:{server.port}/"
    config = make_config(
        tmp_path / "c.db",
        [seed],
        crawl={"allowed_hosts": [SLOW_HOST]},
        politeness={"delay": delay, "per_host_concurrency": per_host},
    )
    await crawl(config, transport=slow_connections())

    assert sorted(server.paths()) == sorted(["/robots.txt", "/", *pages])
    assert_polite(server, delay=delay, concurrency=per_host)


async def test_redirects_count_against_the_target_host_and_obey_its_robots(site_server: Serve, tmp_path: Path) -> None:
    delay, per_host = 0.05, 2
    target_site = Site(default_latency=0.3).robots("User-agent: *\nDisallow: /secret\n")
    target = site_server(target_site)
    own = [f"/u{i}" for i in range(4)]
    target_site.page("/", links=own)
    for path in own:
        target_site.page(path)
    for i in range(4):
        target_site.page(f"/t{i}")
    target_site.page("/secret")
    source_site = Site()
    redirects = [f"/r{i}" for i in range(4)]
    # A slow start, so most hops arrive while the target is busy with its own pages.
    source_site.page("/", links=[*redirects, "/to-secret"], latency=0.35)
    for i, path in enumerate(redirects):
        source_site.redirect(path, target.url + f"/t{i}")
    source_site.redirect("/to-secret", target.url + "/secret")
    source = site_server(source_site)
    db = tmp_path / "c.db"
    config = make_config(
        db,
        [source.url + "/", target.url + "/"],
        crawl=ALL_LOCAL,
        politeness={"delay": delay, "per_host_concurrency": per_host, "concurrency": 8},
    )
    await crawl(config)

    # The target's own pages and the redirect hops into it share its capacity and its turns.
    assert_polite(target, delay=delay, concurrency=per_host)
    assert target.paths()[0] == "/robots.txt"
    assert target.count("/robots.txt") == 1
    assert "/secret" not in target.paths()
    assert sorted(p for p in target.paths() if p.startswith("/t")) == ["/t0", "/t1", "/t2", "/t3"]
    finals = dict(rows(db, "SELECT url, final_url FROM pages WHERE url LIKE ?", (source.url + "/r%",)))
    assert finals == {source.url + f"/r{i}": target.url + f"/t{i}" for i in range(4)}
    skipped = rows(db, "SELECT url, reason FROM urls WHERE state = 'skipped'")
    assert skipped == [(target.url + "/secret", "robots")]


async def test_a_redirect_into_a_host_whose_robots_txt_fails_is_queued_for_later(
    site_server: Serve, tmp_path: Path
) -> None:
    held_site = Site().handler("/robots.txt", counter_handler([text("", 503)] * 2 + [text("User-agent: *\n")]))
    held = site_server(held_site.page("/page"))
    source = site_server(Site().page("/", links=["/go"]).redirect("/go", held.url + "/page"))
    db = tmp_path / "c.db"
    config = make_config(db, [source.url + "/"], crawl=ALL_LOCAL, politeness={"robots_retry_interval": 0.2})
    await crawl(config)

    # The hop was not taken while robots.txt failed; the target waited in the queue instead
    # of being skipped, and was fetched once robots.txt answered.
    assert held.paths() == ["/robots.txt", "/robots.txt", "/robots.txt", "/page"]
    go = rows(db, "SELECT status, final_url FROM pages WHERE url = ?", (source.url + "/go",))
    assert go == [(301, source.url + "/go")]
    assert rows(db, "SELECT state FROM urls WHERE url = ?", (held.url + "/page",)) == [("done",)]


# ---- Crawl-delay --------------------------------------------------------------------------


async def test_crawl_delay_is_honoured_and_capped(
    site_server: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pages = ["/a", "/b", "/c"]
    polite_site = Site().robots("User-agent: *\nCrawl-delay: 0.3\n").page("/", links=pages)
    greedy_site = Site().robots("User-agent: *\nCrawl-delay: 100\n").page("/", links=pages)
    for site in (polite_site, greedy_site):
        for path in pages:
            site.page(path)
    polite, greedy = site_server(polite_site), site_server(greedy_site)
    db = tmp_path / "c.db"
    config = make_config(
        db,
        [polite.url + "/", greedy.url + "/"],
        crawl=ALL_LOCAL,
        politeness={"delay": 0.0, "max_crawl_delay": 0.4, "per_host_concurrency": 2},
    )
    with caplog.at_level(logging.WARNING, logger="crawler.politeness"):
        await crawl(config)

    assert_polite(polite, delay=0.3, concurrency=1)  # robots.txt → first page included
    assert_polite(greedy, delay=0.4, concurrency=1)
    for server in (polite, greedy):
        assert stored_paths(db, server.url) == {"/", *pages}
    capped = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert capped == [f"{greedy.host_key}: robots.txt Crawl-delay 100s capped at max_crawl_delay 0.4s"]
    stored = dict(rows(db, "SELECT origin, crawl_delay FROM robots"))
    assert stored == {polite.url: 0.3, greedy.url: 100.0}  # what the site asked, as it asked


# ---- robots.txt fetch outcomes ----------------------------------------------------------------


def flaky_connection(failures: int, body: str) -> Callable[[Request, asyncio.StreamWriter], object]:
    """A raw handler that closes the connection without a reply `failures` times, then serves body."""
    calls = itertools.count()

    async def handler(request: Request, writer: asyncio.StreamWriter) -> int | None:
        if next(calls) < failures:
            writer.close()
            return None
        data = body.encode()
        writer.write(response_head(200, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))]))
        writer.write(data)
        await writer.drain()
        return 200

    return handler


async def test_robots_txt_failing_holds_the_host_until_it_answers(site_server: Serve, tmp_path: Path) -> None:
    retry_interval = 0.3
    pages = ["/a", "/b", "/no"]
    # 503 four times: with one HTTP retry, that is two failed robots.txt fetches.
    failing = Site().handler(
        "/robots.txt", counter_handler([text("", 503)] * 4 + [text("User-agent: *\nDisallow: /no\n")])
    )
    # No answer at all (connection closed) four times: at least one failed fetch, however
    # many of those the HTTP client retries on its own.
    silent = Site().raw("/robots.txt", flaky_connection(4, "User-agent: *\nDisallow: /no\n"))  # type: ignore[arg-type]
    missing = Site()  # robots.txt is a 404: everything is allowed
    for site in (failing, silent, missing):
        site.page("/", links=pages)
        for path in pages:
            site.page(path)
    servers = [site_server(site) for site in (failing, silent, missing)]
    db = tmp_path / "c.db"
    config = make_config(
        db,
        # Several seeds per host: leases taken together before robots.txt is known.
        [server.url + path for server in servers for path in ("/", "/a", "/b")],
        crawl=ALL_LOCAL,
        politeness={"robots_retry_interval": retry_interval},
    )
    await crawl(config)

    for server, failed_fetches in ((servers[0], 2), (servers[1], 1)):
        seen = by_start(server)
        answered = next(i for i, r in enumerate(seen) if r.path == "/robots.txt" and r.status == 200)
        # While robots.txt kept failing, nothing but robots.txt was asked for ...
        assert {r.path for r in seen[:answered]} == {"/robots.txt"}
        # ... it was asked again only after the retry interval, not once per URL ...
        assert seen[answered].start - seen[0].start >= failed_fetches * retry_interval - TOL
        assert server.count("/robots.txt") == answered + 1
        # ... and once it answered, the host was crawled under its rules.
        assert stored_paths(db, server.url) == {"/", "/a", "/b"}
        assert "/no" not in server.paths()
    assert stored_paths(db, servers[2].url) == {"/", "/a", "/b", "/no"}
    # The 404 host was not held up by the failing ones.
    first_good_robots = min(r.start for r in servers[0].requests if r.status == 200)
    assert all(r.end < first_good_robots for r in servers[2].requests)
    notes = dict(rows(db, "SELECT origin, note FROM robots"))
    assert notes[servers[0].url] == "200, 1 rule for *"
    assert notes[servers[2].url] == "404: allow all"


async def test_robots_txt_redirects_apply_to_the_original_host(site_server: Serve, tmp_path: Path) -> None:
    rules_site = Site().page("/rules.txt", body="User-agent: *\nDisallow: /secret\n", content_type="text/plain")
    rules_host = site_server(rules_site)
    five = Site().page("/", links=["/secret", "/ok"]).page("/secret").page("/ok")
    for i, target in enumerate(["/r1", "/r2", "/r3", "/r4", rules_host.url + "/rules.txt"]):
        five.redirect("/robots.txt" if i == 0 else f"/r{i}", target)
    six = Site().page("/", links=["/secret", "/ok"]).page("/secret").page("/ok")
    for i, target in enumerate(["/r1", "/r2", "/r3", "/r4", "/r5", rules_host.url + "/rules.txt"]):
        six.redirect("/robots.txt" if i == 0 else f"/r{i}", target)
    five_host, six_host = site_server(five), site_server(six)
    db = tmp_path / "c.db"
    config = make_config(db, [five_host.url + "/", six_host.url + "/"], crawl=ALL_LOCAL)
    await crawl(config)

    # Five redirects are followed, and the rules found apply to the host that was asked.
    assert stored_paths(db, five_host.url) == {"/", "/ok"}
    assert "/secret" not in five_host.paths()
    assert rules_host.paths() == ["/rules.txt"]
    # Six are too many: robots.txt counts as unavailable, which RFC 9309 says allows all.
    assert stored_paths(db, six_host.url) == {"/", "/ok", "/secret"}
    notes = dict(rows(db, "SELECT origin, note FROM robots"))
    assert notes[five_host.url] == "200, 1 rule for *"
    assert notes[six_host.url].endswith(": allow all")
    assert "more than 5 redirects" in notes[six_host.url]


async def test_a_huge_robots_txt_is_read_up_to_500_kib_not_refused(site_server: Serve, tmp_path: Path) -> None:
    # 2 MB of robots.txt, above max_body_bytes: a page that large would be too_large, but
    # robots.txt is read up to 500 KiB and parsed; what lies beyond is not read at all.
    filler = "# " + "x" * 98 + "\n"
    body = "User-agent: *\nDisallow: /early\n" + filler * 20_000 + "Disallow: /late\n"
    site = Site().robots(body).page("/", links=["/early", "/late", "/ok"]).page("/early").page("/late").page("/ok")
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"], http={"max_body_bytes": 1_000_000}))
    assert stored_paths(db, server.url) == {"/", "/late", "/ok"}
    assert "/early" not in server.paths()
    assert rows(db, "SELECT status, note FROM robots") == [(200, "200, 1 rule for *")]


async def test_robots_txt_is_fetched_again_after_robots_ttl(site_server: Serve, tmp_path: Path) -> None:
    pages = [f"/p{i}" for i in range(6)]
    site = Site().handler(
        "/robots.txt", counter_handler([text("User-agent: *\nAllow: /\n"), text("User-agent: *\nDisallow: /p5\n")])
    )
    site.page("/", links=pages)
    for path in pages:
        site.page(path)
    server = site_server(site)
    db = tmp_path / "c.db"
    delay = 0.1
    config = make_config(
        db,
        [server.url + "/"],
        politeness={"delay": delay, "robots_ttl": 0.25, "per_host_concurrency": 1},
    )
    await crawl(config)

    assert server.count("/robots.txt") >= 2  # asked again while the crawl went on
    assert "/p5" not in server.paths()  # the new rules applied from then on
    assert rows(db, "SELECT reason FROM urls WHERE url = ?", (server.url + "/p5",)) == [("robots",)]
    assert rows(db, "SELECT note FROM robots") == [("200, 1 rule for *",)]
    assert_polite(server, delay=delay, concurrency=1)  # refetches take turns too


# ---- Retry-After and 429 back-off ---------------------------------------------------------------


async def test_retry_after_pauses_the_host_and_repeated_429s_back_off(site_server: Serve, tmp_path: Path) -> None:
    others = ["/a", "/b", "/c"]
    # A: 429 with Retry-After: 2 (seconds), once.
    seconds_site = Site().page("/", links=["/busy", *others]).handler("/busy", retry_after(2, times=1))
    # B: 503 with Retry-After as an HTTP date two whole seconds ahead, once.
    date_pause: dict[str, float] = {}

    def until_date(request: Request) -> Response:
        if date_pause:
            return Response(200, body=html_page("ok"))
        wall = time.time()
        when = math.ceil(wall) + 2
        date_pause["until"] = time.monotonic() + (when - wall)  # when the pause ends, on our clock
        return Response(503, [("Retry-After", email.utils.formatdate(when, usegmt=True))])

    date_site = Site().page("/", links=["/down", *others]).handler("/down", until_date)
    # C: a Retry-After beyond max_retry_after is an error, not a wait.
    away_site = Site().page("/", links=["/away"]).handler("/away", retry_after(3600, status=503, times=100))
    # D: 429 without Retry-After, twice: the host backs off, doubling.
    backoff_site = Site().page("/", links=["/flood"]).handler("/flood", retry_after("", times=2))
    for site in (seconds_site, date_site):
        for path in others:
            site.page(path)
    servers = [site_server(site) for site in (seconds_site, date_site, away_site, backoff_site)]
    db = tmp_path / "c.db"
    config = make_config(
        db,
        [server.url + "/" for server in servers],
        crawl=ALL_LOCAL,
        # One request at a time per host, so none can be on its way when a 429 arrives.
        politeness={"max_retry_after": 60.0, "per_host_concurrency": 1},
        http={"retries": 3},
    )
    await crawl(config)
    seconds_host, date_host, away_host, backoff_host = servers

    throttled = next(r for r in seconds_host.requests if r.status == 429)
    later = [r for r in seconds_host.requests if r.start > throttled.start]
    assert later, "the host was crawled on after the pause"
    assert min(r.start for r in later) >= throttled.end + 2.0 - TOL
    assert seconds_host.count("/busy") == 2
    assert stored_paths(db, seconds_host.url) == {"/", "/busy", *others}

    down = next(r for r in date_host.requests if r.status == 503)
    later = [r for r in date_host.requests if r.start > down.start]
    assert min(r.start for r in later) >= date_pause["until"] - TOL
    assert stored_paths(db, date_host.url) == {"/", "/down", *others}

    assert away_host.count("/away") == 1
    kinds = rows(db, "SELECT url, kind, attempts FROM errors")
    assert kinds == [(away_host.url + "/away", "retry_after_too_long", 1)]

    flood = [r for r in by_start(backoff_host) if r.path == "/flood"]
    assert [r.status for r in flood] == [429, 429, 200]
    first_gap, second_gap = flood[1].start - flood[0].end, flood[2].start - flood[1].end
    assert first_gap >= MIN_BACKOFF - TOL
    assert second_gap >= 2 * MIN_BACKOFF - TOL


# ---- nofollow, noindex, X-Robots-Tag --------------------------------------------------------------


def robots_meta_site() -> Site:
    site = Site()
    site.page(
        "/",
        body='<a href="/a">a</a> <a href="/nf" rel="nofollow">nf</a> <a href="/meta-nofollow">m</a>'
        ' <a href="/meta-noindex">n</a> <a href="/xrt-us">x</a> <a href="/xrt-other">o</a>',
    )
    site.page("/a").page("/nf").page("/from-meta-nofollow").page("/from-noindex")
    site.page("/from-xrt-us").page("/from-xrt-other")
    site.page(
        "/meta-nofollow",
        body='<meta name="robots" content="nofollow"><a href="/from-meta-nofollow">x</a>',
    )
    site.page(
        "/meta-noindex",
        body='<meta name="robots" content="noindex"><title>Hidden</title><p>secret words</p>'
        '<a href="/from-noindex">x</a>',
    )
    site.page(
        "/xrt-us",
        body='<p>tagged</p><a href="/from-xrt-us">x</a>',
        headers={"X-Robots-Tag": "crawler-test: nofollow, noindex"},
    )
    site.page(
        "/xrt-other",
        body='<p>for others</p><a href="/from-xrt-other">x</a>',
        headers={"X-Robots-Tag": "otherbot: noindex, nofollow"},
    )
    return site


async def test_nofollow_noindex_and_x_robots_tag_are_honoured(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(robots_meta_site())
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"]))

    assert stored_paths(db, server.url) == {
        "/", "/a", "/meta-nofollow", "/meta-noindex", "/from-noindex", "/xrt-us", "/xrt-other", "/from-xrt-other"
    }  # fmt: skip
    for path in ("/nf", "/from-meta-nofollow", "/from-xrt-us"):
        assert path not in server.paths()
    # Links are still recorded, marked nofollow.
    marked = rows(
        db, "SELECT to_url, nofollow FROM link_urls WHERE to_url IN (?, ?)", (server.url + "/nf", server.url + "/a")
    )
    assert sorted(marked) == [(server.url + "/a", 0), (server.url + "/nf", 1)]
    # noindex: the page row is kept, without body or text.
    kept = {
        url.removeprefix(server.url): (noindex, body is None, text is None)
        for url, noindex, body, text in rows(db, "SELECT url, noindex, body, text FROM pages")
    }
    assert kept["/meta-noindex"] == (1, True, True)
    assert kept["/xrt-us"] == (1, True, True)
    assert kept["/xrt-other"] == (0, False, False)
    assert kept["/a"] == (0, False, False)


def late_follow_site() -> Site:
    """/later is linked with nofollow from the seed, then followed from /b, a page deeper."""
    site = Site()
    site.page("/", body='<a href="/later" rel="nofollow">l</a> <a href="/b">b</a>')
    site.page("/b", body='<a href="/later">l</a>').page("/later")
    return site


def later_rows(db: Path, base: str) -> list[tuple[Any, ...]]:
    return rows(db, "SELECT state, reason FROM urls WHERE url = ?", (base + "/later",))


async def test_a_nofollow_target_is_crawled_once_a_followed_link_reaches_it(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(late_follow_site())
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"]))
    assert server.paths().count("/later") == 1
    assert later_rows(db, server.url) == [("done", None)]
    # Both links point at the one row, the one stored before the promotion included.
    assert rows(db, "SELECT from_url, nofollow, to_state FROM link_urls WHERE to_url = ? ORDER BY from_url", (
        server.url + "/later",
    )) == [(server.url + "/", 1, "done"), (server.url + "/b", 0, "done")]  # fmt: skip


async def test_a_nofollow_target_stored_by_an_earlier_run_is_queued_by_a_followed_link(
    site_server: Serve, tmp_path: Path
) -> None:
    server = site_server(late_follow_site())
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"], crawl={"max_pages": 1}))
    assert later_rows(db, server.url) == [("skipped", "nofollow")]
    await crawl(make_config(db, [server.url + "/"], crawl={"max_pages": 0}))
    assert server.paths().count("/later") == 1
    assert later_rows(db, server.url) == [("done", None)]
    assert rows(
        db, "SELECT count(*) FROM link_urls WHERE to_url = ? AND to_state = 'done'", (server.url + "/later",)
    ) == [(2,)]


async def test_follow_nofollow_queues_nofollow_links(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(robots_meta_site())
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"], politeness={"follow_nofollow": True}))
    for path in ("/nf", "/from-meta-nofollow", "/from-xrt-us"):
        assert path in server.paths()
    noindex = rows(db, "SELECT url FROM pages WHERE noindex = 1 ORDER BY url")
    assert noindex == [(server.url + "/meta-noindex",), (server.url + "/xrt-us",)]  # noindex still holds


async def test_robots_rows_keep_the_sitemaps(tmp_path: Path, site_server: Serve) -> None:
    site = Site().robots("Sitemap: http://x.test/a.xml\nUser-agent: *\nDisallow:\nSitemap: /b.xml\n").page("/")
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"]))
    (sitemaps,) = rows(db, "SELECT sitemaps FROM robots")[0]
    assert json.loads(sitemaps) == ["http://x.test/a.xml", "/b.xml"]
