"""Sitemaps end to end: what robots.txt names is read (index, gzip, text, feeds), safely and within limits."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crawler.cli import main
from crawler.engine import Crawl, Outcome
from crawler.store import NewUrl, Store
from tests.crawlkit import crawl, make_config, rows, stored_paths
from tests.support.localsite import SiteServer
from tests.support.site import Request, Response, Site
from tests.test_sitemap_parse import BILLION_LAUGHS, EXTERNAL_ENTITY, NS, urlset

Serve = Callable[[Site], SiteServer]
XML = "application/xml"


def sitemap_index(*locs: str) -> str:
    items = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return f'<?xml version="1.0"?><sitemapindex {NS}>{items}</sitemapindex>'


def dated_urlset(entries: dict[str, str]) -> str:
    items = "".join(f"<url><loc>{loc}</loc><lastmod>{date}</lastmod></url>" for loc, date in entries.items())
    return f'<?xml version="1.0"?><urlset {NS}>{items}</urlset>'


def pages(site: Site, *paths: str) -> Site:
    for path in paths:
        site.page(path)
    return site


def sitemaps_table(db: Path, base: str) -> dict[str, tuple[Any, ...]]:
    """path → (parent path, status, urls, error) of each sitemaps row."""
    table = {}
    for url, parent, status, count, error in rows(db, "SELECT url, parent, status, urls, error FROM sitemaps"):
        short_parent = parent.removeprefix(base) if parent else None
        table[url.removeprefix(base)] = (short_parent, status, count, error)
    return table


def errors(db: Path, base: str) -> dict[str, tuple[str, str]]:
    return {url.removeprefix(base): (kind, msg) for url, kind, msg in rows(db, "SELECT url, kind, message FROM errors")}


def listed(db: Path, base: str) -> dict[str, tuple[Any, ...]]:
    """path → (kind, source, state, reason, depth, lastmod) of each urls row that robots.txt or a sitemap listed."""
    return {
        url.removeprefix(base): tuple(rest)
        for url, *rest in rows(
            db, "SELECT url, kind, source, state, reason, depth, lastmod FROM urls WHERE source IS NOT NULL"
        )
    }


# ---- the whole story: robots.txt → index → every format ----------------------------------------


async def test_robots_txt_leads_through_an_index_to_every_format_and_an_orphan_page(
    site_server: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Site()
    server = site_server(site)
    base = server.url
    site.robots("User-agent: *\nDisallow: /private\nSitemap: " + base + "/sitemap_index.xml\n")
    site.page("/", links=["/a"])
    pages(site, "/a", "/orphan", "/gz/1", "/gz/2", "/enc/1", "/txt/1", "/txt/2", "/private/x")
    site.page("/sitemap_index.xml", content_type=XML, body=sitemap_index(
        base + "/sm/pages.xml", base + "/sm/more.xml.gz", base + "/sm/encoded.xml", base + "/sm/list.txt"
    ))  # fmt: skip
    site.page("/sm/pages.xml", content_type=XML, body=dated_urlset({
        base + "/a": "2024-02-03T04:05:06+01:00",
        base + "/orphan": "2024-01-01",
        base + "/private/x": "2024-01-01",
        "http://elsewhere.test/page": "2024-01-01",
    }))  # fmt: skip
    # A .gz file (gzip body, no Content-Encoding), and a sitemap sent with Content-Encoding: gzip.
    site.page("/sm/more.xml.gz", content_type="application/x-gzip",
              body=gzip.compress(urlset(base + "/gz/1", base + "/gz/2")))  # fmt: skip
    site.page("/sm/encoded.xml", content_type=XML, body=gzip.compress(urlset(base + "/enc/1")),
              headers=[("Content-Encoding", "gzip")])  # fmt: skip
    site.page("/sm/list.txt", content_type="text/plain", body=f"{base}/txt/1\n{base}/txt/2\n")
    db = tmp_path / "c.db"
    summary = await crawl(make_config(db, [base + "/"], politeness={"per_host_concurrency": 1}))

    assert summary.outcome is Outcome.FINISHED
    # The orphan is known only to the sitemap, and was crawled; sitemaps themselves are no pages.
    assert stored_paths(db, base) == {"/", "/a", "/orphan", "/gz/1", "/gz/2", "/enc/1", "/txt/1", "/txt/2"}
    assert summary.pages == 8
    assert sitemaps_table(db, base) == {
        "/sitemap_index.xml": ("/robots.txt", 200, 4, None),
        "/sm/pages.xml": ("/sitemap_index.xml", 200, 4, None),
        "/sm/more.xml.gz": ("/sitemap_index.xml", 200, 2, None),
        "/sm/encoded.xml": ("/sitemap_index.xml", 200, 1, None),
        "/sm/list.txt": ("/sitemap_index.xml", 200, 2, None),
    }
    found = listed(db, base)
    assert found["/sitemap_index.xml"] == ("sitemap", "robots", "done", None, 0, None)
    assert found["/sm/more.xml.gz"] == ("sitemap", "sitemap", "done", None, 1, None)
    assert found["/orphan"] == ("page", "sitemap", "done", None, 1, "2024-01-01T00:00:00.000Z")
    assert found["/txt/2"] == ("page", "sitemap", "done", None, 1, None)
    # Disallowed by robots.txt: skipped when leased, never requested; off-site: never queued.
    assert found["/private/x"][2:4] == ("skipped", "robots")
    assert found["http://elsewhere.test/page"][2:4] == ("skipped", "off_site")
    assert "/private/x" not in server.paths()
    # / linked to /a before the index was read: /a keeps its source (a link) and takes the sitemap's lastmod.
    assert rows(db, "SELECT source, lastmod FROM urls WHERE url = ?", (base + "/a",)) == [
        (None, "2024-02-03T03:05:06.000Z")
    ]
    # Crawl requests like any other: robots.txt first, each fetched once, one at a time.
    assert server.paths()[0] == "/robots.txt"
    assert all(server.count(path) == 1 for path in server.paths())
    assert server.max_in_flight == 1
    assert rows(db, "SELECT count(*) FROM errors") == [(0,)]

    # query stats tells how many URLs came from sitemaps, in every format.
    assert main(["query", "stats", "--db", str(db)]) == 0
    table = capsys.readouterr().out
    counts = {"read": 5, "failed": 0, "urls listed": 13, "urls from sitemaps": 8}
    assert "sitemaps:\n" + "".join(f"  {key:<32} {value:>10,}\n" for key, value in counts.items()) in table + "\n"
    assert main(["query", "stats", "--db", str(db), "--format", "jsonl"]) == 0
    sitemaps = json.loads(capsys.readouterr().out)["sitemaps"]
    assert sitemaps["read"] == 5 and sitemaps["urls listed"] == 13
    assert main(["query", "stats", "--db", str(db), "--format", "csv"]) == 0
    assert "sitemaps,read,5\n" in capsys.readouterr().out


# ---- limits and hostile XML ----------------------------------------------------------------------


async def test_an_oversized_sitemap_and_xml_bombs_are_error_rows_and_the_rest_is_read(
    site_server: Serve, tmp_path: Path
) -> None:
    site = Site()
    server = site_server(site)
    base = server.url
    names = ["/big.xml", "/laughs.xml", "/external.xml", "/missing.xml", "/good.xml"]
    site.robots("User-agent: *\n" + "".join(f"Sitemap: {base}{name}\n" for name in names))
    site.page("/")
    # One URL over the protocol's 50,000: the file is invalid, so none of its URLs is queued.
    site.page("/big.xml", content_type=XML, body=urlset(*(f"{base}/big/{i}" for i in range(50_001))))
    site.page("/laughs.xml", content_type=XML, body=BILLION_LAUGHS)
    site.page("/external.xml", content_type=XML, body=EXTERNAL_ENTITY)
    site.page("/good.xml", content_type=XML, body=urlset(base + "/fine"))
    site.page("/fine")
    db = tmp_path / "c.db"
    summary = await crawl(make_config(db, [base + "/"]))

    assert summary.outcome is Outcome.FINISHED
    assert stored_paths(db, base) == {"/", "/fine"}
    assert rows(db, "SELECT count(*) FROM urls WHERE url LIKE ?", (base + "/big/%",)) == [(0,)]
    failed = errors(db, base)
    assert failed["/big.xml"] == ("sitemap", "more than 50,000 URLs (the protocol's limit per file); none read")
    assert failed["/laughs.xml"][0] == failed["/external.xml"][0] == "sitemap"
    assert "refused XML" in failed["/laughs.xml"][1] and "refused XML" in failed["/external.xml"][1]
    assert failed["/missing.xml"] == ("http_status", "HTTP 404")
    table = sitemaps_table(db, base)
    assert table["/big.xml"] == ("/robots.txt", 200, 0, failed["/big.xml"][1])
    assert table["/missing.xml"] == ("/robots.txt", 404, 0, "HTTP 404")
    assert table["/good.xml"] == ("/robots.txt", 200, 1, None)
    assert rows(db, "SELECT url, state FROM urls WHERE kind = 'sitemap' AND state != 'done' ORDER BY url") == [
        (base + name, "failed") for name in sorted(names) if name != "/good.xml"
    ]


async def test_a_sitemap_above_50_mb_is_an_error_whatever_max_body_bytes_says(
    site_server: Serve, tmp_path: Path
) -> None:
    # The fetch takes a sitemap up to the protocol's size, not max_body_bytes; the limit is lowered here
    # (it is the same code path) so the test does not serve 50 MB.
    site = Site()
    server = site_server(site)
    base = server.url
    site.robots(f"Sitemap: {base}/huge.xml\nSitemap: {base}/medium.xml\n")
    site.page("/")
    site.page("/huge.xml", content_type=XML, body=urlset(base + "/h") + b" " * 300_000)
    site.page("/medium.xml", content_type=XML, body=urlset(base + "/m") + b" " * 150_000)
    site.page("/m")
    db = tmp_path / "c.db"
    config = make_config(db, [base + "/"], http={"max_body_bytes": 100_000})
    run = Crawl(config)
    summary = await run_with_sitemap_limit(run, 200_000)

    assert summary.outcome is Outcome.FINISHED
    assert stored_paths(db, base) == {"/", "/m"}  # /medium.xml is above max_body_bytes, and was read
    kind, message = errors(db, base)["/huge.xml"]
    assert kind == "sitemap"
    assert message.startswith("larger than the protocol's 200,000 bytes uncompressed:")


async def run_with_sitemap_limit(run: Crawl, max_bytes: int) -> Any:
    """Run a crawl whose sitemap reader has a lower size limit than the protocol's."""
    from crawler.sitemaps import reader

    original = reader.SitemapReader.__init__

    def lowered(self: reader.SitemapReader, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.max_bytes = max_bytes

    reader.SitemapReader.__init__ = lowered  # type: ignore[method-assign]
    try:
        return await run.run()
    finally:
        reader.SitemapReader.__init__ = original  # type: ignore[method-assign]


async def test_index_nesting_stops_at_three_levels(site_server: Serve, tmp_path: Path) -> None:
    site = Site()
    server = site_server(site)
    base = server.url
    site.robots(f"Sitemap: {base}/level0.xml\n")
    site.page("/")
    site.page("/level0.xml", content_type=XML, body=sitemap_index(base + "/level1.xml"))
    site.page("/level1.xml", content_type=XML, body=sitemap_index(base + "/level2.xml"))
    site.page("/level2.xml", content_type=XML, body=sitemap_index(base + "/level3.xml"))
    site.page("/level3.xml", content_type=XML, body=urlset(base + "/deep"))
    site.page("/deep")
    db = tmp_path / "c.db"
    await crawl(make_config(db, [base + "/"]))

    assert "/level3.xml" not in server.paths()
    assert stored_paths(db, base) == {"/"}
    table = sitemaps_table(db, base)
    assert table["/level1.xml"] == ("/level0.xml", 200, 1, None)
    message = "sitemap index nested 3 levels deep (at most 3): its 1 sitemaps are not read"
    assert table["/level2.xml"] == ("/level1.xml", 200, 0, message)
    assert errors(db, base) == {"/level2.xml": ("sitemap", message)}


# ---- feeds, seeds, the switch -----------------------------------------------------------------------


async def test_rss_and_atom_feeds_are_read_as_sitemaps(site_server: Serve, tmp_path: Path) -> None:
    site = Site()
    server = site_server(site)
    base = server.url
    site.robots(f"Sitemap: {base}/rss.xml\nSitemap: {base}/atom.xml\n")
    site.page("/")
    site.page("/rss.xml", content_type="application/rss+xml", body=(
        f'<rss version="2.0"><channel><title>News</title><link>{base}/</link>'
        f"<item><link>{base}/news/1</link><pubDate>Tue, 10 Jun 2003 04:00:00 GMT</pubDate></item>"
        f"<item><link>{base}/news/2</link></item></channel></rss>"
    ))  # fmt: skip
    site.page("/atom.xml", content_type="application/atom+xml", body=(
        f'<feed xmlns="http://www.w3.org/2005/Atom"><link rel="self" href="{base}/atom.xml"/>'
        f'<entry><link href="{base}/post/1"/><updated>2003-12-13T18:30:02Z</updated></entry></feed>'
    ))  # fmt: skip
    pages(site, "/news/1", "/news/2", "/post/1")
    db = tmp_path / "c.db"
    await crawl(make_config(db, [base + "/"]))

    assert stored_paths(db, base) == {"/", "/news/1", "/news/2", "/post/1"}
    found = listed(db, base)
    assert found["/news/1"][5] == "2003-06-10T04:00:00.000Z"
    assert found["/post/1"][5] == "2003-12-13T18:30:02.000Z"


async def test_a_seed_that_answers_with_a_sitemap_is_read_as_one_and_counts_as_no_page(
    site_server: Serve, tmp_path: Path
) -> None:
    site = Site()
    server = site_server(site)
    base = server.url
    # Not named for what it is: the content decides.
    site.page("/export", content_type="text/xml; charset=utf-8", body=urlset(*(f"{base}/p{i}" for i in range(5))))
    site.page("/feed.gz", content_type="application/octet-stream", body=gzip.compress(urlset(base + "/g")))
    pages(site, "/g", *(f"/p{i}" for i in range(5)))
    db = tmp_path / "c.db"
    summary = await crawl(make_config(db, [base + "/export", base + "/feed.gz"], crawl={"max_pages": 3}))

    assert summary.outcome is Outcome.LIMIT
    assert summary.pages == 3  # max_pages counts the listed pages, not the two sitemaps
    assert len(stored_paths(db, base)) == 3
    assert rows(db, "SELECT url, kind, state FROM urls WHERE depth = 0 ORDER BY id") == [
        (base + "/export", "sitemap", "done"),
        (base + "/feed.gz", "sitemap", "done"),
    ]
    assert sitemaps_table(db, base) == {"/export": (None, 200, 5, None), "/feed.gz": (None, 200, 1, None)}


async def test_with_sitemaps_false_none_is_read(site_server: Serve, tmp_path: Path) -> None:
    site = Site()
    server = site_server(site)
    base = server.url
    site.robots(f"Sitemap: {base}/sitemap.xml\n")
    site.page("/", links=["/export"])
    site.page("/sitemap.xml", content_type=XML, body=urlset(base + "/orphan"))
    site.page("/export", content_type=XML, body=urlset(base + "/orphan"))
    site.page("/orphan")
    db = tmp_path / "c.db"
    await crawl(make_config(db, [base + "/", base + "/export"], crawl={"sitemaps": False}))

    assert "/sitemap.xml" not in server.paths()
    assert stored_paths(db, base) == {"/", "/export"}  # the seed is stored as the page it is
    assert rows(db, "SELECT count(*) FROM sitemaps") == [(0,)]


async def test_listed_urls_are_depth_1_and_the_scope_judges_them(site_server: Serve, tmp_path: Path) -> None:
    site = Site()
    server = site_server(site)
    base = server.url
    site.robots(f"Sitemap: {base}/sitemap.xml\nSitemap: http://elsewhere.test/sitemap.xml\n")
    site.page("/")
    site.page("/sitemap.xml", content_type=XML, body=urlset(base + "/listed", base + "/skip-me"))
    pages(site, "/listed", "/skip-me")
    db = tmp_path / "c.db"
    await crawl(make_config(db, [base + "/"], crawl={"exclude": ["skip-me"]}))

    found = listed(db, base)
    assert found["/sitemap.xml"][2:5] == ("done", None, 0)  # a sitemap's depth is its nesting level
    assert found["/listed"][2:5] == ("done", None, 1)
    assert found["/skip-me"][2:5] == ("skipped", "excluded", 1)
    # A sitemap robots.txt names on a host out of scope is not read.
    assert found["http://elsewhere.test/sitemap.xml"] == ("sitemap", "robots", "skipped", "off_site", 0, None)


# ---- the store, and resuming -------------------------------------------------------------------------


async def test_a_url_found_by_a_link_first_keeps_its_source_and_takes_the_newest_lastmod(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    try:
        url, host = "http://a.test/page", "a.test:80"
        store.add_urls([NewUrl(url, host, 3)])
        await store.flush()
        for lastmod in ("2024-05-01T00:00:00.000Z", "2023-01-01T00:00:00.000Z"):  # the older one does not win
            store.add_listed_urls([NewUrl(url, host, 1, None, "queued", None, "page", "sitemap", lastmod)])
            assert await store.flush() == []  # nothing new to queue
        assert [tuple(row) for row in await store.fetchall("SELECT depth, kind, source, lastmod FROM urls")] == [
            (3, "page", None, "2024-05-01T00:00:00.000Z")
        ]
    finally:
        await store.close()


async def test_a_sitemap_in_flight_when_the_crawl_stops_is_read_on_resume(site_server: Serve, tmp_path: Path) -> None:
    requested = threading.Event()
    release = threading.Event()
    site = Site()
    server = site_server(site)
    base = server.url
    site.robots(f"Sitemap: {base}/sitemap.xml\n")
    site.page("/")
    site.page("/orphan")

    async def hanging(request: Request) -> Response:
        requested.set()
        while not release.is_set():
            await asyncio.sleep(0.02)
        return Response(503)

    site.handler("/sitemap.xml", hanging)
    db = tmp_path / "c.db"
    config = make_config(db, [base + "/"])
    first = Crawl(config, stop_grace=0.0)
    running = asyncio.create_task(first.run())
    try:
        assert await asyncio.to_thread(requested.wait, 10)
        first.request_stop()
        assert (await running).outcome is Outcome.INTERRUPTED
    finally:
        release.set()
    assert rows(db, "SELECT state FROM urls WHERE url = ?", (base + "/sitemap.xml",)) == [("in_flight",)]

    site.page("/sitemap.xml", content_type=XML, body=urlset(base + "/orphan"))
    summary = await Crawl(config).run()
    assert summary.outcome is Outcome.FINISHED
    assert stored_paths(db, base) == {"/", "/orphan"}
    assert sitemaps_table(db, base) == {"/sitemap.xml": ("/robots.txt", 200, 1, None)}


async def test_on_resume_the_page_limits_still_do_not_count_sitemaps(site_server: Serve, tmp_path: Path) -> None:
    site = Site()
    server = site_server(site)
    base = server.url
    site.page("/sitemap.xml", content_type=XML, body=urlset(*(f"{base}/p{i}" for i in range(6))))
    pages(site, *(f"/p{i}" for i in range(6)))
    db = tmp_path / "c.db"
    first = await crawl(make_config(db, [base + "/sitemap.xml"], crawl={"max_pages": 2}))
    assert (first.outcome, first.pages) == (Outcome.LIMIT, 2)

    # Done rows: the sitemap and 2 pages; the per-host limit counts the 2 pages only.
    second = await crawl(make_config(db, [base + "/sitemap.xml"], crawl={"max_pages": 0, "max_pages_per_host": 4}))
    assert second.pages == 2
    assert len(stored_paths(db, base)) == 4
