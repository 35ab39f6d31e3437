"""Parsing in child processes: same results as in-process, a dead child costs one page, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crawler.errors import ErrorKind, ParseError
from crawler.parse import parse_page
from crawler.parsepool import ParseJob, ParsePool
from crawler.parseworker import NICENESS
from tests.crawlkit import crawl, make_config, rows
from tests.support.localsite import SiteServer
from tests.support.site import Site

Serve = Callable[[Site], SiteServer]

PAGE_URL = "http://example.com/dir/page.html"

# A child that serves like the real one but exits with code 7 when a body holds b"CRASH",
# as a crash in the native parser would.
CRASHING_CHILD = (
    sys.executable,
    "-c",
    "import os\n"
    "from crawler import parseworker\n"
    "real_parse = parseworker.parse_page\n"
    "def parse(body, *args, **kwargs):\n"
    "    if b'CRASH' in body:\n"
    "        os._exit(7)\n"
    "    return real_parse(body, *args, **kwargs)\n"
    "parseworker.parse_page = parse\n"
    "parseworker.main()\n",
)
NEVER_STARTS = (sys.executable, "-c", "import sys; sys.exit(3)")

PAGES = [
    (b"<title> A  title </title><a href='/x'>x</a><a href=y rel=nofollow>y</a><p>Some\n  text</p>", "text/html"),
    (b'<meta name="robots" content="noindex, nofollow"><a href="//other.example/">o</a>', "text/html"),
    ('<meta charset="windows-1252"><title>café</title>'.encode("cp1252"), "text/html"),
    (b'<link rel="canonical" href="/canon"><script>var a = "<a href=/no>";</script><a href="/yes">', None),
]


def job(body: bytes, content_type: str | None = "text/html") -> ParseJob:
    return ParseJob(body, content_type, PAGE_URL, 100, "crawler")


def inline(body: bytes, content_type: str | None = "text/html") -> object:
    return parse_page(body, content_type, PAGE_URL, max_links=100, robots_name="crawler")


async def test_a_child_parses_exactly_as_the_crawl_itself_would() -> None:
    pool = ParsePool(2)
    await pool.start()
    try:
        parsed = await asyncio.gather(*(pool.parse(job(body, ctype)) for body, ctype in PAGES))
    finally:
        await pool.close()
    assert parsed == [inline(body, ctype) for body, ctype in PAGES]
    assert parsed[0].links[1] == (PAGE_URL.rsplit("/", 1)[0] + "/y", True)  # not vacuous: a nofollow link
    assert parsed[1].noindex is True
    assert parsed[2].title == "café"


async def test_a_child_that_dies_costs_its_page_only_and_is_replaced() -> None:
    pool = ParsePool(1, argv=CRASHING_CHILD)
    await pool.start()
    try:
        first_pid = pool._children[0].proc.pid
        # Sent in this order down one pipe: the child answers the first, dies on the second;
        # the third, queued behind it, goes to the new child.
        results = await asyncio.gather(
            pool.parse(job(b"<title>one</title>")),
            pool.parse(job(b"<title>CRASH</title>")),
            pool.parse(job(b"<title>three</title>")),
            return_exceptions=True,
        )
        after = await pool.parse(job(b"<title>four</title>"))
        assert [child.proc.pid for child in pool._children] != [first_pid]
        assert not pool.inline
    finally:
        await pool.close()
    one, crashed, three = results
    assert getattr(one, "title", None) == "one"
    assert isinstance(crashed, ParseError)
    assert crashed.message == "the parser process died on this page (exit code 7)"
    assert getattr(three, "title", None) == "three"
    assert after.title == "four"


async def test_children_that_cannot_start_leave_parsing_to_the_crawl() -> None:
    pool = ParsePool(1, argv=NEVER_STARTS)
    await pool.start()
    try:
        parsed = await asyncio.gather(*(pool.parse(job(body, ctype)) for body, ctype in PAGES))
        assert pool.inline
    finally:
        await pool.close()
    assert parsed == [inline(body, ctype) for body, ctype in PAGES]  # no page was lost


async def test_close_ends_every_child() -> None:
    pool = ParsePool(3)
    await pool.start()
    await pool.parse(job(b"<title>warm</title>"))
    procs = [child.proc for child in pool._children]
    await pool.close()
    assert len(procs) == 3
    assert [proc.returncode for proc in procs] == [0, 0, 0]  # exited on their own: input closed
    assert pool._children == []


async def test_children_start_with_the_first_pages_when_start_was_not_awaited() -> None:
    pool = ParsePool(2)
    assert not pool.started and pool._children == []
    try:
        parsed = await asyncio.gather(*(pool.parse(job(body, ctype)) for body, ctype in PAGES))
        assert pool.started and len(pool._children) == 2 and not pool.inline
        assert all(child.ready for child in pool._children)  # the pages went to children, not inline
    finally:
        await pool.close()
    assert parsed == [inline(body, ctype) for body, ctype in PAGES]


async def test_zero_workers_parses_in_process() -> None:
    pool = ParsePool(0)
    await pool.start()
    assert pool._children == []
    assert await pool.parse(job(PAGES[0][0])) == inline(PAGES[0][0])
    await pool.close()


async def test_a_page_whose_parser_dies_is_an_error_row_and_the_crawl_goes_on(
    site_server: Serve, tmp_path: Path
) -> None:
    site = (
        Site()
        .page("/", body="<a href='/bad'>b</a><a href='/good'>g</a>")
        .page("/bad", body="<title>CRASH</title>")
        .page("/good", body="<title>fine</title>")
    )
    server = site_server(site)
    db = tmp_path / "c.db"
    summary = await crawl(make_config(db, [server.url_for("/")]), parser=ParsePool(1, argv=CRASHING_CHILD))
    assert summary.errors == 1
    assert rows(db, "SELECT url, kind, message FROM errors") == [
        (server.url_for("/bad"), ErrorKind.PARSE, "the parser process died on this page (exit code 7)")
    ]
    assert rows(db, "SELECT url, title FROM pages ORDER BY url") == [
        (server.url_for("/"), None),
        (server.url_for("/good"), "fine"),
    ]
    assert rows(db, "SELECT state FROM urls WHERE url = ?", (server.url_for("/bad"),)) == [("failed",)]


@pytest.mark.parametrize("workers", [0, 2])
async def test_the_same_site_stores_the_same_rows_whatever_the_parse_workers(
    site_server: Serve, tmp_path: Path, workers: int
) -> None:
    site = (
        Site()
        .page("/", body="<title>home</title><a href='/a'>a</a><a href='/b' rel=nofollow>b</a>")
        .page("/a", body="<title>a</title><p>alpha  words</p><a href='/'>home</a><a href='/c'>c</a>")
        .page("/c", body="<title>c</title><meta name=robots content=nofollow><a href='/d'>d</a>")
    )
    server = site_server(site)
    db = tmp_path / f"w{workers}.db"
    await crawl(make_config(db, [server.url_for("/")], crawl={"parse_workers": workers}))
    assert rows(db, "SELECT url, title, text FROM pages ORDER BY url") == [
        (server.url_for("/"), "home", "a b"),
        (server.url_for("/a"), "a", "alpha words home c"),
        (server.url_for("/c"), "c", "d"),
    ]
    assert rows(db, "SELECT count(*), sum(nofollow) FROM links") == [(5, 2)]


async def test_a_parser_that_cannot_be_launched_leaves_parsing_to_the_crawl(tmp_path: Path) -> None:
    pool = ParsePool(1, argv=(str(tmp_path / "no-such-python"),))
    await pool.start()
    try:
        assert pool.inline
        assert await pool.parse(job(PAGES[0][0])) == inline(PAGES[0][0])
    finally:
        await pool.close()


def _pipe_max_size() -> int:
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except OSError:
        return 0


@pytest.mark.skipif(_pipe_max_size() < 1024 * 1024, reason="Linux pipes that may grow to 1 MiB")
async def test_a_child_widens_both_its_pipes_so_dozens_of_pages_fit_in_them() -> None:
    import fcntl

    pool = ParsePool(1)
    await pool.start()
    try:
        await pool.parse(job(PAGES[0][0]))  # answered: the child is past its start
        proc = pool._children[0].proc
        assert proc.stdin is not None and proc.stdout is not None
        pipes = [proc.stdin.get_extra_info("pipe"), proc.stdout._transport.get_extra_info("pipe")]  # type: ignore[attr-defined]
        assert [fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) for pipe in pipes] == [1024 * 1024] * 2
    finally:
        await pool.close()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="Unix process priorities")
async def test_a_child_runs_at_a_lower_priority_than_the_crawl() -> None:
    pool = ParsePool(1)
    await pool.start()
    try:
        await pool.parse(job(PAGES[0][0]))  # answered: the child is past its start
        child = pool._children[0].proc.pid
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, child) == min(own + NICENESS, 19)
    finally:
        await pool.close()
