"""`crawler status`: the crawl at a glance, read beside a live crawl and after it, once or live."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from crawler.cli import main
from crawler.cli_status import watch
from crawler.engine import Outcome
from crawler.status import CrawlStatus, HeldHost, open_status
from tests.crawlkit import crawl, make_config, rows
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


def _finished_site() -> Site:
    return (
        Site()
        .robots("User-agent: *\nDisallow: /private\n")
        .page("/", title="Home", links=["/a", "/b", "/down", "/private"])
        .page("/a", title="Alpha")
        .page("/b", title="Beta")
        .page("/down", status=503)
    )


@pytest.fixture
def finished_db(site_server: Serve, tmp_path: Path) -> Iterator[tuple[Path, SiteServer]]:
    server = site_server(_finished_site())
    db = tmp_path / "done.db"
    summary = asyncio.run(crawl(make_config(db, [server.url + "/"])))
    assert summary.outcome is Outcome.FINISHED
    yield db, server


async def test_during_a_crawl_status_shows_the_running_run_its_pid_and_the_hosts_it_holds(
    site_server: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release = threading.Event()

    async def slow(request: Request) -> Response:
        # Holds the crawl mid-way until the test has read its status.
        await asyncio.to_thread(release.wait, 30)
        return Response(200, [("Content-Type", HTML)], html_page("Slow page", [], ["at last"]))

    site = Site().page("/", title="Home", links=["/a", "/slow"]).page("/a", title="Alpha").handler("/slow", slow)
    server = site_server(site)
    db = tmp_path / "live.db"
    task = asyncio.create_task(crawl(make_config(db, [server.url + "/"], http={"total_timeout": 60.0})))
    try:
        assert await asyncio.to_thread(
            server.wait_for, lambda: {"/", "/a"} <= set(server.paths()) and server.in_flight == 1, 10.0
        )
        with open_status(db) as source:
            # The lease of /slow reaches the database with the next commit.
            await until(lambda: (s := source.snapshot()).in_flight == 1 and s.fetched == 2)
            status = source.snapshot()
        assert not task.done()
        (process,) = status.processes
        assert (process.pid, process.alive, process.state) == (os.getpid(), True, "running")
        assert process.hosts == (HeldHost(server.host_key, 1),)
        assert process.pages == 2
        assert process.kind == "crawl"
        assert (status.fetched, status.queued, status.in_flight, status.failed, status.errors) == (2, 0, 1, 0, 0)
        assert status.last_run is not None and status.last_run.id == process.run
        assert status.last_run.outcome == "running"

        # The command beside the crawl: not a terminal, so it prints once; it never takes the writer lock.
        assert main(["status", "--db", str(db)]) == 0
        out = capsys.readouterr().out
        assert "processes:" in out and f" {os.getpid()} " in out and " running " in out
        assert "hosts held:" in out and server.host_key in out
        assert main(["status", "--db", str(db), "--format", "jsonl"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["processes"][0]["pid"] == os.getpid()
        assert record["processes"][0]["state"] == "running"
        assert record["processes"][0]["hosts"] == [{"host": server.host_key, "in_flight": 1, "lease_until": None}]

        release.set()
        assert (await asyncio.wait_for(task, timeout=30)).outcome is Outcome.FINISHED
    finally:
        release.set()
        await asyncio.gather(task, return_exceptions=True)


def test_after_a_crawl_status_shows_the_counts_and_the_finished_run(finished_db: tuple[Path, SiteServer]) -> None:
    db, _ = finished_db
    with open_status(db) as source:
        status = source.snapshot()
    assert status.processes == ()
    assert (status.fetched, status.queued, status.in_flight, status.failed, status.skipped) == (3, 0, 0, 1, 1)
    assert status.errors == 1
    assert status.backend == "sqlite" and status.database == str(db)
    run = status.last_run
    assert run is not None and (run.id, run.outcome, run.pages) == (1, "finished", 3)
    assert run.finished_at is not None


def test_the_recent_rate_counts_the_pages_stored_in_the_window_before_now(
    finished_db: tuple[Path, SiteServer],
) -> None:
    db, _ = finished_db
    (last,) = rows(db, "SELECT max(fetched_at) FROM pages")[0]
    last_fetch = datetime.fromisoformat(last)
    soon = open_status(db, recent_seconds=60, clock=lambda: last_fetch + timedelta(seconds=1))
    with soon as source:
        status = source.snapshot()
    assert (status.recent_pages, status.recent_seconds, status.recent_pages_per_second) == (3, 60, 3 / 60)
    with open_status(db, clock=lambda: last_fetch + timedelta(hours=1)) as source:
        assert source.snapshot().recent_pages == 0


def test_a_running_run_whose_process_is_gone_shows_as_gone(finished_db: tuple[Path, SiteServer]) -> None:
    db, server = finished_db
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead_pid = int(child.stdout)
    # What a crawl killed with SIGKILL leaves behind: its runs row still running, its pid in the lock file.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO runs (started_at, config, outcome) VALUES ('2020-01-01T00:00:00.000Z', '{}', 'running')"
        )
        conn.execute("UPDATE urls SET state = 'in_flight' WHERE url = ?", (server.url + "/b",))
    conn.close()
    Path(f"{db}-lock").write_text(str(dead_pid))

    with open_status(db) as source:
        status = source.snapshot()
    (process,) = status.processes
    assert (process.run, process.pid, process.alive, process.state) == (2, dead_pid, False, "gone")
    assert process.hosts == (HeldHost(server.host_key, 1),)

    # While that pid still runs, the same row shows as running.
    with open_status(db, is_alive=lambda pid: pid == dead_pid) as source:
        assert source.snapshot().processes[0].state == "running"


def test_printed_once_off_a_terminal_and_as_one_json_object(
    finished_db: tuple[Path, SiteServer], capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = finished_db
    assert main(["status", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.count(f"crawl {db} at ") == 1
    assert "urls: 3 fetched · 0 queued · 0 in flight · 1 failed · 1 skipped · 1 errors" in out
    assert "processes: none" in out
    assert "last run: 1 (crawl) · finished" in out and "· 3 pages ·" in out

    assert main(["status", "--db", str(db), "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert (record["fetched"], record["failed"], record["skipped"], record["errors"]) == (3, 1, 1, 1)
    assert record["processes"] == []
    assert record["last_run"]["outcome"] == "finished"


def test_status_reads_the_database_a_config_names(
    finished_db: tuple[Path, SiteServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = finished_db
    config = tmp_path / "config.toml"
    config.write_text(f'[crawl]\nseeds = ["http://127.0.0.1/"]\n[storage]\npath = "{db}"\n')
    assert main(["status", "-c", str(config), "--format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["database"] == str(db)


def test_a_missing_database_exits_2_and_an_unreadable_one_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--db", str(tmp_path / "none.db")]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 10)
    assert main(["status", "--db", str(bad)]) == 3
    assert "is not a crawl database" in capsys.readouterr().err


def test_an_unreachable_postgresql_database_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--db", "postgresql://crawler@127.0.0.1:1/crawl"]) == 3
    assert capsys.readouterr().err.startswith(
        "crawler: error: cannot connect to postgresql://crawler@127.0.0.1:1/crawl"
    )


def test_on_a_terminal_it_refreshes_every_second_until_ctrl_c(finished_db: tuple[Path, SiteServer]) -> None:
    db, _ = finished_db
    start = datetime(2030, 1, 1, tzinfo=UTC)
    ticks = iter(range(100))
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise KeyboardInterrupt  # the user's Ctrl-C, while waiting for the next refresh

    screen = StringIO()
    console = Console(file=screen, force_terminal=True, width=200)
    with open_status(db, clock=lambda: start + timedelta(seconds=next(ticks))) as source:
        reads: list[CrawlStatus] = []

        def read() -> CrawlStatus:
            reads.append(source.snapshot())
            return reads[-1]

        assert watch(read, console, sleep=sleep) == 0
    assert slept == [1.0, 1.0, 1.0]
    assert [s.at for s in reads] == ["2030-01-01T00:00:00.000Z", "2030-01-01T00:00:01.000Z", "2030-01-01T00:00:02.000Z"]
    shown = screen.getvalue()
    for s in reads:
        assert f"crawl {db} at {s.at}" in shown
    assert "\x1b[" in shown  # drawn as a terminal display, redrawn in place
