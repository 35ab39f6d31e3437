"""Three crawler processes on one PostgreSQL crawl of many hosts, one SIGKILLed mid-crawl: the servers'
own request logs prove every page fetched, refetches only of what the killed one held, and
per-host politeness across processes; the survivors exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.localsite import SiteServer
from tests.support.site import Site, build_site
from tests.test_polite_crawl import assert_polite

Serve = Callable[[Site], SiteServer]
HOSTS = 12  # one SiteServer per host (each a host:port of its own on 127.0.0.1)
PAGES = 40  # per host
DELAY = 0.1
PER_HOST = 2
LEASE = 2.0
DEADLINE = 120.0

_launched: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_stray_crawlers() -> Iterator[None]:
    yield
    while _launched:
        proc = _launched.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE)


def launch(config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawler", "crawl", "-q", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _launched.append(proc)
    return proc


def pg_rows(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]  # type: ignore[arg-type]


def test_three_processes_one_killed_fetch_every_page_politely(site_server: Serve, tmp_path: Path, pg_url: str) -> None:
    servers = []
    for i in range(HOSTS):
        site = build_site(PAGES, links_per_page=3, seed=i)
        site.default_latency = 0.01
        servers.append(site_server(site))
    seeds = ", ".join(f'"{s.url}/"' for s in servers)
    config = tmp_path / "crawl.toml"
    config.write_text(
        f'[crawl]\nseeds = [{seeds}]\nallowed_hosts = ["127.0.0.1"]\nparse_workers = 1\n'
        f"[politeness]\ndelay = {DELAY}\nmax_delay = 1.0\nadaptive = false\nconcurrency = 4\n"
        f"per_host_concurrency = {PER_HOST}\n"
        f'[storage]\nurl = "{pg_url}"\nlease_seconds = {LEASE}\n'
    )

    crawlers = [launch(config) for _ in range(3)]
    deadline = time.monotonic() + DEADLINE
    while True:
        for proc in crawlers:
            assert proc.poll() is None, f"a crawler exited ({proc.returncode}) early: {proc.stderr.read()}"  # type: ignore[union-attr]
        try:
            stored = int(pg_rows(pg_url, "SELECT count(*) FROM pages")[0][0])  # type: ignore[call-overload]
        except psycopg.Error:
            stored = 0  # the schema is not there yet
        if stored >= HOSTS * PAGES // 4:
            break
        assert time.monotonic() < deadline, "timed out waiting for a quarter of the pages"
        time.sleep(0.05)
    victim = crawlers[0]
    (killed_run,) = pg_rows(pg_url, "SELECT id FROM runs WHERE pid = %s", (victim.pid,))[0]
    held_sql = "SELECT host FROM hosts WHERE lease_owner = %s"
    # Killed while one of its requests is being served, so that it dies holding work.
    while not any(
        s.in_flight for s in servers if s.host_key in {h for (h,) in pg_rows(pg_url, held_sql, (killed_run,))}
    ):
        assert time.monotonic() < deadline, "timed out waiting for a request of the victim's"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=DEADLINE)
    killed_at = time.monotonic()
    held = {h for (h,) in pg_rows(pg_url, held_sql, (killed_run,))}

    for proc in crawlers[1:]:
        assert proc.wait(timeout=DEADLINE) == 0, proc.stderr.read()  # type: ignore[union-attr]

    # Every page fetched and stored, once.
    assert pg_rows(pg_url, "SELECT state, count(*) FROM urls GROUP BY state") == [("done", HOSTS * PAGES)]
    assert pg_rows(pg_url, "SELECT count(*), count(DISTINCT url) FROM pages") == [(HOSTS * PAGES, HOSTS * PAGES)]
    refetched: dict[str, int] = {}
    for server in servers:
        # robots.txt once per host for the whole fleet (the robots row is shared); twice at most where
        # the killed crawler held the host, its fetch perhaps in the batch it never committed.
        robots = sum(r.path == "/robots.txt" for r in server.requests)
        assert robots == 1 or (robots == 2 and server.host_key in held), (server.host_key, robots)
        fetches = Counter(r.path for r in server.requests if r.path != "/robots.txt")
        assert set(fetches) == {"/", *(f"/p/{i}" for i in range(1, PAGES))}
        extra = sum(n - 1 for n in fetches.values())
        if extra:
            refetched[server.host_key] = extra
            # Fetched again only what the killed crawler had fetched before it died.
            first = {p: min(r.start for r in server.requests if r.path == p) for p, n in fetches.items() if n > 1}
            assert all(start < killed_at for start in first.values())
        # Politeness across processes: per host, never more than PER_HOST in flight, and starts
        # at least DELAY apart (to the tolerance the politeness tests use for the send lag).
        assert_polite(server, delay=DELAY, concurrency=PER_HOST)
    assert 0 < sum(refetched.values()) <= HOSTS * PAGES // 4  # what it held in flight or uncommitted
    assert set(refetched) <= held, f"refetches on hosts the killed crawler did not hold: {refetched}, held {held}"
    print(f"SIGKILL cost {sum(refetched.values())} refetches on {len(refetched)} of {len(held)} held hosts")

    runs = pg_rows(pg_url, "SELECT pid, outcome, machine IS NOT NULL, finished_at IS NOT NULL, pages FROM runs")
    by_pid = {r[0]: r[1:] for r in runs}
    assert by_pid[victim.pid][:3] == ("killed", True, False)
    for proc in crawlers[1:]:
        assert by_pid[proc.pid][:3] == ("finished", True, True)


def test_max_pages_counts_across_the_fleet(site_server: Serve, tmp_path: Path, pg_url: str) -> None:
    servers = [site_server(build_site(30, links_per_page=3, seed=i)) for i in range(6)]
    seeds = ", ".join(f'"{s.url}/"' for s in servers)
    config = tmp_path / "crawl.toml"
    config.write_text(
        f'[crawl]\nseeds = [{seeds}]\nallowed_hosts = ["127.0.0.1"]\nparse_workers = 1\nmax_pages = 70\n'
        "[politeness]\ndelay = 0.0\nadaptive = false\nconcurrency = 4\nper_host_concurrency = 2\n"
        f'[storage]\nurl = "{pg_url}"\nlease_seconds = 60.0\n'
    )
    crawlers = [launch(config) for _ in range(2)]
    for proc in crawlers:
        assert proc.wait(timeout=DEADLINE) == 0, proc.stderr.read()  # type: ignore[union-attr]
    assert pg_rows(pg_url, "SELECT count(*) FROM pages") == [(70,)]
    assert sum(s.count("/") + sum(s.count(f"/p/{i}") for i in range(1, 30)) for s in servers) == 70
    assert pg_rows(pg_url, "SELECT max_pages, claimed FROM budget") == [(70, 70)]
    assert pg_rows(pg_url, "SELECT count(*) FROM runs WHERE outcome = 'limit' AND pid IS NOT NULL") == [(2,)]
