"""End-to-end crawls of real local servers: what was fetched, what was stored, exactly once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from crawler.engine import Outcome
from tests.crawlkit import crawl, make_config, rows, stored_paths
from tests.support.localsite import SiteServer
from tests.support.site import Site, build_site

Serve = Callable[[Site], SiteServer]


def serve_small_shop(site_server: Serve) -> SiteServer:
    """Six pages, a redirect, a 404, a disallowed area, a PDF and links that must be skipped.

    The home page links to its own server by absolute URL, so it is added once the port is known
    (a served Site reads its routes on every request)."""
    site = (
        Site()
        .robots("User-agent: *\nDisallow: /private/\n")
        .page("/a", title="A", links=["/", "/b", "/c?Q=Case"])
        .page("/b", title="B", links=["/a"])
        .page("/c?Q=Case", title="C with query", links=["/c?q=case"])
        .page("/c?q=case", title="c lower query")
        .redirect("/old", "/new")
        .page("/new", title="New home of old")
        .page("/private/x", title="secret")
        .page("/doc.pdf", body=b"%PDF-1.4 fake", content_type="application/pdf")
    )
    server = site_server(site)
    site.page(
        "/",
        title="Home",
        links=[
            "/a",
            "/b#frag",
            "/old",
            "/private/x",
            "/missing",
            "/doc.pdf",
            "mailto:x@y.z",
            "javascript:void(0)",
            "http://elsewhere.test/",
            f"HTTP://127.0.0.1:{server.port}/a",
        ],
    )
    return server


async def test_crawl_fetches_and_stores_exactly_the_reachable_pages(site_server: Serve, tmp_path: Path) -> None:
    server = serve_small_shop(site_server)
    db = tmp_path / "crawl.db"
    summary = await crawl(make_config(db, [server.url + "/"]))

    assert summary.outcome is Outcome.FINISHED
    # robots.txt first, then every reachable page once; never the disallowed one.
    assert server.paths()[0] == "/robots.txt"
    assert Counter(server.paths()) == Counter(
        ["/robots.txt", "/", "/a", "/b", "/c?Q=Case", "/c?q=case", "/old", "/new", "/missing", "/doc.pdf"]
    )
    assert stored_paths(db, server.url) == {"/", "/a", "/b", "/c?Q=Case", "/c?q=case", "/old", "/missing", "/doc.pdf"}
    statuses = dict(rows(db, "SELECT url, status FROM pages"))
    assert statuses[server.url + "/missing"] == 404
    assert statuses[server.url + "/old"] == 200
    assert rows(db, "SELECT count(*) FROM errors") == [(0,)]

    final, redirects = rows(db, "SELECT final_url, redirects FROM pages WHERE url = ?", (server.url + "/old",))[0]
    assert final == server.url + "/new"
    assert json.loads(redirects) == [{"url": server.url + "/old", "status": 301, "location": server.url + "/new"}]

    skipped = dict(rows(db, "SELECT url, reason FROM urls WHERE state = 'skipped'"))
    assert skipped == {server.url + "/private/x": "robots", "http://elsewhere.test/": "off_site"}


async def test_pages_hold_metadata_and_links(site_server: Serve, tmp_path: Path) -> None:
    server = serve_small_shop(site_server)
    db = tmp_path / "crawl.db"
    await crawl(make_config(db, [server.url + "/"]))

    title, depth, ctype, version, size, headers = rows(
        db,
        "SELECT title, depth, content_type, http_version, bytes, headers FROM pages WHERE url = ?",
        (server.url + "/a",),
    )[0]
    assert (title, depth, ctype, version) == ("A", 1, "text/html; charset=utf-8", "HTTP/1.1")
    assert size > 0
    assert ["server", "localsite"] in json.loads(headers)

    pdf = rows(db, "SELECT content_type, title, bytes FROM pages WHERE url = ?", (server.url + "/doc.pdf",))
    assert pdf == [("application/pdf", None, len(b"%PDF-1.4 fake"))]

    links_of_home = {to for (to,) in rows(db, "SELECT to_url FROM link_urls WHERE from_url = ?", (server.url + "/",))}
    # Fragments dropped, scheme and host lowercased; mailto/javascript never become links.
    assert links_of_home == {server.url + p for p in ["/a", "/b", "/old", "/private/x", "/missing", "/doc.pdf"]} | {
        "http://elsewhere.test/"
    }


async def test_limits_max_pages_and_max_depth(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(50, links_per_page=3))
    limited = tmp_path / "limited.db"
    summary = await crawl(make_config(limited, [server.url + "/"], crawl={"max_pages": 10}))
    assert summary.outcome is Outcome.LIMIT
    assert rows(limited, "SELECT count(*) FROM pages") == [(10,)]
    assert rows(limited, "SELECT count(*) FROM urls WHERE state = 'queued'")[0][0] > 0

    shallow = tmp_path / "shallow.db"
    await crawl(make_config(shallow, [server.url + "/"], crawl={"max_depth": 1}))
    assert rows(shallow, "SELECT max(depth), count(*) FROM pages") == [(1, 4)]  # / and its 3 links
    assert rows(shallow, "SELECT count(*) FROM urls WHERE reason = 'depth'")[0][0] > 0


async def test_include_and_exclude_rules(site_server: Serve, tmp_path: Path) -> None:
    site = Site().page("/", links=["/keep/1", "/keep/2", "/drop/1", "/keep/skip-me"])
    for path in ["/keep/1", "/keep/2", "/drop/1", "/keep/skip-me"]:
        site.page(path)
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"], crawl={"include": ["/keep/", "/$"], "exclude": ["skip-me"]}))
    assert stored_paths(db, server.url) == {"/", "/keep/1", "/keep/2"}
    reasons = dict(rows(db, "SELECT url, reason FROM urls WHERE state = 'skipped'"))
    assert reasons == {server.url + "/drop/1": "not_included", server.url + "/keep/skip-me": "excluded"}


async def test_a_generated_site_is_stored_once_per_page_with_no_errors(site_server: Serve, tmp_path: Path) -> None:
    pages = 2000
    server = site_server(build_site(pages, links_per_page=20))
    db = tmp_path / "big.db"
    summary = await crawl(
        make_config(
            db, [server.url + "/"], crawl={"max_depth": 1000}, politeness={"per_host_concurrency": 8, "concurrency": 8}
        )
    )
    assert summary.outcome is Outcome.FINISHED
    assert rows(db, "SELECT count(*), count(DISTINCT url) FROM pages") == [(pages, pages)]
    assert rows(db, "SELECT count(*) FROM errors") == [(0,)]
    page_requests = [p for p in server.paths() if p != "/robots.txt"]
    assert len(page_requests) == len(set(page_requests)) == pages
    assert server.max_in_flight <= 8
