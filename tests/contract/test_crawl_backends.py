"""Whole crawls on both backends: the same site gives the same rows in SQLite and in PostgreSQL, and
a PostgreSQL crawl killed with SIGKILL resumes; the CLI's answers for PostgreSQL targets."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from crawler.cli import main
from crawler.engine import Crawl, Outcome
from crawler.errors import ConfigError
from tests.crawlkit import closed_port, crawl, make_config, rows
from tests.support.hold import Hold
from tests.support.localsite import SiteServer
from tests.support.site import Request, Response, Site, build_site, html_page

Serve = Callable[[Site], SiteServer]
DEADLINE = 60.0

PAGES_SQL = "SELECT url, status, title, depth, content_type, content_hash FROM pages"
LINKS_SQL = "SELECT f.url, t.url, l.nofollow FROM links l JOIN urls f ON f.id = l.from_id JOIN urls t ON t.id = l.to_id"
ERRORS_SQL = "SELECT url, kind FROM errors"
URLS_SQL = "SELECT url, state, reason, depth FROM urls"


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(sql).fetchall()]  # type: ignore[arg-type]


def mixed_site() -> Site:
    site = build_site(30, links_per_page=4)
    site.page("/", body=html_page("Home", ["/p/1", "/p/2", "/gone", "/moved", "/broken"]))
    site.page("/gone", status=404, body="<title>Gone</title>")
    site.page("/broken", status=503, body="down")
    site.redirect("/moved", "/p/3")
    site.robots("User-agent: *\nDisallow: /p/7\n")
    return site


async def test_a_crawl_into_postgresql_stores_what_a_crawl_into_sqlite_stores(
    site_server: Serve, tmp_path: Path, pg_url: str
) -> None:
    server = site_server(mixed_site())
    seeds = [server.url + "/"]
    db = tmp_path / "c.db"
    # One request at a time: which page finds a URL first (and so its depth) must not depend on timing.
    serial = {"concurrency": 1, "per_host_concurrency": 1}
    lite = await crawl(make_config(db, seeds, politeness=serial))
    pg = await crawl(make_config(pg_url, seeds, politeness=serial))

    assert (lite.outcome, pg.outcome) == (Outcome.FINISHED, Outcome.FINISHED)
    assert (pg.pages, pg.errors, pg.skipped) == (lite.pages, lite.errors, lite.skipped)
    assert pg.db_path == pg_url
    for query in (PAGES_SQL, LINKS_SQL, ERRORS_SQL, URLS_SQL, "SELECT origin, status FROM robots"):
        stored = sorted(rows(db, query), key=repr)
        assert stored, query
        assert sorted(pg_rows(pg_url, query), key=repr) == stored, query
    # Search was filled at the end of the run (deferred on PostgreSQL).
    assert pg_rows(pg_url, "SELECT count(*) FROM pages WHERE search IS NULL AND noindex = 0") == [(0,)]
    assert pg_rows(pg_url, "SELECT count(*) FROM pages WHERE search @@ 'page'::tsquery") == [(29,)]
    assert pg_rows(pg_url, "SELECT outcome, pages FROM runs") == [("finished", pg.pages)]


async def test_a_changed_scope_is_refused_on_postgresql_too(site_server: Serve, pg_url: str) -> None:
    server = site_server(build_site(10, links_per_page=3))
    seeds = [server.url + "/"]
    await crawl(make_config(pg_url, seeds, crawl={"max_pages": 3}))
    before = pg_rows(pg_url, "SELECT * FROM urls ORDER BY id")
    with pytest.raises(ConfigError) as caught:
        await Crawl(make_config(pg_url, seeds, crawl={"exclude": ["/p/3$"]})).run()
    assert caught.value.key == "crawl.exclude"
    assert f"the crawl stored in {pg_url} used []" in str(caught.value)
    assert pg_rows(pg_url, "SELECT * FROM urls ORDER BY id") == before


# ---- the command line ---------------------------------------------------------------------------------------


def _always(answer: Response) -> Callable[[Request], Response]:
    return lambda request: answer


def write_config(tmp_path: Path, seed: str, storage: str) -> Path:
    path = tmp_path / "crawl.toml"
    path.write_text(
        f'[crawl]\nseeds = ["{seed}"]\nmax_pages = 0\n'
        "[politeness]\ndelay = 0.0\nadaptive = false\nconcurrency = 4\nper_host_concurrency = 4\n"
        f"[storage]\n{storage}\n"
    )
    return path


def test_cli_postgresql_answers(tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A database no crawl has written to yet: a clear message, exit 2, as a missing SQLite file.
    assert main(["query", "stats", "--db", pg_url]) == 2
    assert capsys.readouterr().err == f"crawler: error: {pg_url} holds no crawl (run a crawl into it first)\n"
    assert main(["export", "--format", "jsonl", "-o", "-", "--db", pg_url]) == 2
    assert "holds no crawl" in capsys.readouterr().err

    both = write_config(tmp_path, "http://127.0.0.1:9/", f'path = "c.db"\nurl = "{pg_url}"')
    assert main(["crawl", "-q", str(both)]) == 2
    assert "storage.url: set storage.path (SQLite) or storage.url (PostgreSQL), not both" in capsys.readouterr().err
    wrong = write_config(tmp_path, "http://127.0.0.1:9/", 'url = "mysql://x@y/z"')
    assert main(["crawl", "-q", str(wrong)]) == 2
    assert "storage.url: must be a postgresql:// URL, got 'mysql'" in capsys.readouterr().err

    dead = write_config(tmp_path, "http://127.0.0.1:9/", f'url = "postgresql://u:pw@127.0.0.1:{closed_port()}/x"')
    assert main(["crawl", "-q", str(dead)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("crawler: error: cannot connect to postgresql://u:***@127.0.0.1:") and "pw" not in err
    assert main(["crawl", "--fresh", "-q", str(dead)]) == 2
    assert "--fresh moves a SQLite file aside" in capsys.readouterr().err


_launched: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_stray_crawlers() -> Iterator[None]:
    yield
    while _launched:
        proc = _launched.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE)


def launch(config: Path, command: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawler", command, "-q", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _launched.append(proc)
    return proc


def test_kill_9_then_resume_on_postgresql(site_server: Serve, tmp_path: Path, pg_url: str) -> None:
    pages = 150
    site = build_site(pages, links_per_page=4)
    # The server answers 30 page requests, then holds the rest until the kill: it lands mid-crawl.
    hold = Hold()
    for path in site.paths():
        answer = site.response(path)
        if answer is not None and path != "/robots.txt":
            site.handler(path, hold.wrap(_always(answer)))
    hold.close(30)
    server = site_server(site)
    # The killed crawler's host is blocked until its lease expires: two seconds here.
    config = write_config(tmp_path, server.url + "/", f'url = "{pg_url}"\nlease_seconds = 2.0')
    config.write_text(config.read_text().replace("[politeness]\n", "[politeness]\nmax_delay = 2.0\n"))

    first = launch(config, "crawl")
    deadline = time.monotonic() + DEADLINE
    while True:
        if first.poll() is not None:
            raise AssertionError(f"crawler exited ({first.returncode}) early: {first.stderr.read()}")  # type: ignore[union-attr]
        try:
            stored = pg_rows(pg_url, "SELECT count(*) FROM pages")[0][0]
        except psycopg.Error:
            stored = 0  # the schema is not there yet
        if stored >= 20:
            break
        assert time.monotonic() < deadline, "timed out waiting for 20 pages"
        time.sleep(0.02)

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=DEADLINE)
    assert pg_rows(pg_url, "SELECT count(*) FROM pages")[0][0] < pages
    hold.open()

    resumed = launch(config, "resume")
    assert resumed.wait(timeout=DEADLINE) == 0, resumed.stderr.read()  # type: ignore[union-attr]
    assert pg_rows(pg_url, "SELECT state, count(*) FROM urls GROUP BY state") == [("done", pages)]
    assert pg_rows(pg_url, "SELECT count(*), count(DISTINCT url) FROM pages") == [(pages, pages)]
    assert pg_rows(pg_url, "SELECT outcome FROM runs ORDER BY id") == [("killed",), ("finished",)]
