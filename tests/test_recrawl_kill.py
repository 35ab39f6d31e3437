"""A recrawl pass killed with SIGKILL, then resumed: every stored page is reported once, nothing is lost.

The server answers the first page requests of the pass and holds the rest, so when the test
kills the crawler every worker waits on a held request and everything answered is committed:
the test waits on what the server holds and what the database holds, never on time.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crawler.config import load_config
from crawler.engine import Crawl
from tests.crawlkit import rows
from tests.support.hold import Hold
from tests.support.localsite import SiteServer
from tests.support.versioned import VersionedSite

PAGES = 60
ANSWERED = 20  # page requests of the pass answered before the kill
CONCURRENCY = 4
DEADLINE = 60.0

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[VersionedSite, SiteServer, Hold, Path]]:
    site = VersionedSite()
    paths = [f"/p/{i}" for i in range(1, PAGES)]
    site.page("/", "Home", tuple(paths))
    for i, path in enumerate(paths, 1):
        site.page(path, f"Page {i}", ("/",), text=f"version one of page {i}")
    hold = Hold()
    with SiteServer(site.site) as server:
        config = tmp_path / "crawl.toml"
        config.write_text(
            "\n".join(
                [
                    "[crawl]",
                    f'seeds = ["{server.url}/"]',
                    "max_pages = 0",
                    "[politeness]",
                    "delay = 0.0",
                    "adaptive = false",
                    f"concurrency = {CONCURRENCY}",
                    f"per_host_concurrency = {CONCURRENCY}",
                    "[storage]",
                    'path = "crawl.db"',
                ]
            )
            + "\n"
        )
        yield site, server, hold, config


def gate_every_page(site: VersionedSite, hold: Hold) -> None:
    for path in site.site.paths():
        route = site.site.lookup(path)
        fn = getattr(route, "fn", None)
        if fn is not None and path != "/robots.txt":
            site.site.handler(path, hold.wrap(fn))  # type: ignore[arg-type]


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str]) -> None:
    """Poll a condition that stays true once it holds (the held requests keep the crawler from moving on)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"crawler exited ({proc.returncode}) before {what}: {proc.stderr.read()}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def read(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def test_sigkill_during_a_pass_then_resume_reports_every_page_once(
    served: tuple[VersionedSite, SiteServer, Hold, Path],
) -> None:
    site, server, hold, config = served
    db = config.parent / "crawl.db"
    asyncio.run(Crawl(load_config(config)).run())
    assert rows(db, "SELECT count(*) FROM pages") == [(PAGES,)]

    changed = {f"/p/{i}" for i in range(3, PAGES, 6)}
    for path in sorted(changed):
        site.page(path, f"Page {path}", ("/", "/fresh") if path == "/p/3" else ("/",), text="version two")
    site.page("/fresh", "Fresh", text="a new page")
    gate_every_page(site, hold)
    hold.close(ANSWERED)

    proc = subprocess.Popen(
        [sys.executable, "-m", "crawler", "recrawl", str(config), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: hold.held >= CONCURRENCY, "every worker waits on a held request", proc)
        wait_until(
            lambda: read(db, "SELECT count(*) FROM changes") == [(ANSWERED,)], "the answered pages committed", proc
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hold.open()
    assert rows(db, "SELECT value FROM meta WHERE key = 'recrawl_pass'") == [("2",)]

    resumed = subprocess.run(
        [sys.executable, "-m", "crawler", "resume", str(config), "-q"], capture_output=True, text=True, timeout=DEADLINE
    )
    assert resumed.returncode == 0, resumed.stderr

    report = {
        url.removeprefix(server.url): (change, status)
        for url, change, status in rows(
            db, "SELECT u.url, c.change, c.status FROM changes c JOIN urls u ON u.id = c.url_id WHERE c.run_id = 2"
        )
    }
    expected = {"/": ("unchanged", 304), "/fresh": ("new", 200)}
    expected |= {f"/p/{i}": ("unchanged", 304) for i in range(1, PAGES)}
    expected |= {path: ("changed", 200) for path in changed}
    assert report == expected
    assert rows(db, "SELECT id, kind, outcome FROM runs") == [
        (1, "crawl", "finished"),
        (2, "recrawl", "killed"),
        (3, "recrawl", "finished"),
    ]
    assert rows(db, "SELECT count(*) FROM changes WHERE run_id <> 2") == [(0,)]
    assert rows(db, "SELECT count(*) FROM meta WHERE key = 'recrawl_pass'") == [(0,)]
    history = [
        url.removeprefix(server.url)
        for (url,) in rows(db, "SELECT u.url FROM page_history h JOIN urls u ON u.id = h.url_id")
    ]
    assert sorted(history) == sorted(changed)  # each replaced version kept exactly once
    assert rows(db, "SELECT state, count(*) FROM urls GROUP BY state") == [("done", PAGES + 1)]
    assert rows(db, "SELECT count(*) FROM pages WHERE text LIKE '%version two%'") == [(len(changed),)]
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
