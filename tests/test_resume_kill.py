"""The crawler as a subprocess, killed or interrupted mid-crawl and resumed: nothing lost, nothing fetched twice."""

from __future__ import annotations

import itertools
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from crawler.localsite import Site, SiteServer, build_site
from tests.crawlkit import rows

Serve = Callable[[Site], SiteServer]

PAGES = 2500
LINKS = 8
CONCURRENCY = 8
DEADLINE = 60.0  # generous: these wait on a subprocess sharing two cores with other test runs

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


# ---- story helpers ------------------------------------------------------------------------------


def write_config(tmp_path: Path, server: SiteServer, **crawl: object) -> Path:
    settings = {"max_pages": 0, "max_depth": 10_000, **crawl}
    lines = [
        "[crawl]",
        f'seeds = ["{server.url}/"]',
        *(f"{key} = {value!r}" for key, value in settings.items()),
        "[politeness]",
        'user_agent = "crawler-test/0.1 (+https://example.org/tests)"',
        "delay = 0.0",
        "adaptive = false",
        f"concurrency = {CONCURRENCY}",
        f"per_host_concurrency = {CONCURRENCY}",
        "[http]",
        "retries = 1",
        "retry_backoff = 0.01",
        "[storage]",
        'path = "crawl.db"',
    ]
    path = tmp_path / "crawl.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def launch(config: Path, command: str = "crawl", *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crawler", command, str(config), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str] | None = None) -> None:
    """Poll a condition on the database or the server until it holds; fail after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"crawler exited ({proc.returncode}) before {what}: {proc.stderr.read()}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the database of a running crawl (WAL readers never block its writer)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    except sqlite3.OperationalError:  # the schema is not created yet
        return []
    finally:
        conn.close()


def done_paths(db: Path, base: str) -> set[str]:
    return {str(url).removeprefix(base) for (url,) in query(db, "SELECT url FROM urls WHERE state = 'done'")}


def page_requests(server: SiteServer) -> list[str]:
    return [p for p in server.paths() if p != "/robots.txt"]


def integrity(db: Path) -> str:
    return str(rows(db, "PRAGMA integrity_check")[0][0])


def assert_complete(db: Path, server: SiteServer, pages: int = PAGES) -> None:
    """Every reachable page stored exactly once, with its links; nothing left in the queue."""
    assert integrity(db) == "ok"
    expected = {"/"} | {f"/p/{i}" for i in range(1, pages)}
    stored = [str(url).removeprefix(server.url) for (url,) in rows(db, "SELECT url FROM pages")]
    assert len(stored) == len(set(stored)) == pages
    assert set(stored) == expected
    assert rows(db, "SELECT count(*) FROM links") == [(pages * LINKS,)]
    assert rows(db, "SELECT state, count(*) FROM urls GROUP BY state") == [("done", pages)]
    assert rows(db, "SELECT count(*) FROM errors") == [(0,)]


class Kill:
    """What the server had been asked and what the store held when a crawler was killed."""

    def __init__(self, server: SiteServer, db: Path, proc: subprocess.Popen[str], sig: int) -> None:
        proc.send_signal(sig)
        proc.communicate(timeout=DEADLINE)
        # The crawler is gone; let the server finish answering what it had received.
        assert server.wait_for(lambda: server.in_flight == 0, timeout=DEADLINE)
        self.returncode = proc.returncode
        self.requested = len(page_requests(server))  # requests so far, in arrival order
        self.done = done_paths(db, server.url)
        self.integrity = integrity(db)
        # Asked for but not committed as done: the only pages a resume may ask for again.
        self.at_risk = set(page_requests(server)) - self.done


def assert_fetched_once_except_at_risk(server: SiteServer, kills: list[Kill]) -> None:
    requests = page_requests(server)
    counts = Counter(requests)
    for kill in kills:
        later = requests[kill.requested :]
        assert not kill.done & set(later), "a page stored as done was fetched again"
    for path, n in counts.items():
        allowed = 1 + sum(path in kill.at_risk for kill in kills)
        assert n <= allowed, f"{path} fetched {n} times; only in flight at {allowed - 1} kills"


# ---- the tests ----------------------------------------------------------------------------------


def test_kill_9_early_at_start_mid_batch_and_late_then_resume(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(PAGES, links_per_page=LINKS))
    server.site.default_latency = 0.002
    config = write_config(tmp_path, server)
    db = tmp_path / "crawl.db"
    kills: list[Kill] = []

    # Early: as soon as the first page was asked for.
    proc = launch(config, "crawl", "-q")
    wait_until(lambda: len(page_requests(server)) >= 1, "the first page request", proc)
    kills.append(Kill(server, db, proc, signal.SIGKILL))

    # During start-up of the resumed run: right after it recorded itself in `runs`.
    proc = launch(config, "resume", "-q")
    wait_until(lambda: query(db, "SELECT count(*) FROM runs") == [(2,)], "the second run to start", proc)
    kills.append(Kill(server, db, proc, signal.SIGKILL))

    # Mid-batch: pages are committed, and more have been served than the store holds as done.
    proc = launch(config, "crawl", "-q")
    base = len(kills[-1].done)

    def mid_batch() -> bool:
        done = len(done_paths(db, server.url))
        return done >= base + 200 and len(set(page_requests(server))) >= done + CONCURRENCY

    wait_until(mid_batch, "served pages not yet committed", proc)
    kills.append(Kill(server, db, proc, signal.SIGKILL))

    # Late: most of the site is stored.
    proc = launch(config, "resume", "-q")
    wait_until(lambda: len(done_paths(db, server.url)) >= PAGES * 9 // 10, "90% of the pages", proc)
    kills.append(Kill(server, db, proc, signal.SIGKILL))

    proc = launch(config, "resume", "-q")
    _, err = proc.communicate(timeout=DEADLINE * 2)
    assert proc.returncode == 0, err

    assert [k.returncode for k in kills] == [-signal.SIGKILL] * 4
    assert [k.integrity for k in kills] == ["ok"] * 4
    # Each kill found the store further along, and each resume lost nothing committed.
    assert [len(k.done) for k in kills] == sorted(len(k.done) for k in kills)
    assert all(a.done <= b.done for a, b in itertools.pairwise(kills))
    assert_fetched_once_except_at_risk(server, kills)
    assert_complete(db, server)
    # The killed runs are told apart from the ones that ended.
    outcomes = [o for (o,) in rows(db, "SELECT outcome FROM runs ORDER BY id")]
    assert outcomes == ["killed"] * 4 + ["finished"]


def test_sigint_stops_cleanly_exits_130_and_resume_finishes(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(PAGES, links_per_page=LINKS))
    server.site.default_latency = 0.002
    config = write_config(tmp_path, server)
    db = tmp_path / "crawl.db"

    proc = launch(config, "crawl")
    wait_until(lambda: len(done_paths(db, server.url)) >= 300, "300 stored pages", proc)
    stop = Kill(server, db, proc, signal.SIGINT)
    assert stop.returncode == 130
    assert stop.integrity == "ok"
    assert rows(db, "SELECT outcome FROM runs") == [("interrupted",)]

    counts = dict(rows(db, "SELECT state, count(*) FROM urls GROUP BY state"))
    done, queued, in_flight = (counts.get(state, 0) for state in ("done", "queued", "in_flight"))
    proc = launch(config, "resume")
    _, err = proc.communicate(timeout=DEADLINE * 2)
    assert proc.returncode == 0, err
    assert f"resuming: {done:,} done, {queued + in_flight:,} queued, {in_flight:,} were in flight" in err
    assert_fetched_once_except_at_risk(server, [stop])
    assert_complete(db, server)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_says_how_to_resume_even_when_quiet(site_server: Serve, tmp_path: Path, sig: int) -> None:
    server = site_server(build_site(200, links_per_page=4))
    server.site.default_latency = 0.01
    config = write_config(tmp_path, server)
    db = tmp_path / "crawl.db"
    proc = launch(config, "crawl", "-q")
    wait_until(lambda: len(done_paths(db, server.url)) >= 20, "20 stored pages", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130
    # --quiet hides progress and the summary, not the way to continue.
    assert err == f"interrupted: continue with `crawler resume {config}`\n"
    assert rows(db, "SELECT outcome FROM runs") == [("interrupted",)]


class LineReader:
    """Collects a subprocess's stderr lines on a thread, so a test can wait for one."""

    def __init__(self, stream: object) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def wait_for(self, prefix: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            self.seen.append(line)
            if line.startswith(prefix):
                return

    def rest(self) -> str:
        self._thread.join(DEADLINE)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


def test_second_sigint_quits_at_once_and_is_still_resumable(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(1000, links_per_page=LINKS))
    server.site.default_latency = 0.002
    config = write_config(tmp_path, server)
    db = tmp_path / "crawl.db"

    proc = launch(config, "crawl")
    err = LineReader(proc.stderr)
    wait_until(lambda: len(done_paths(db, server.url)) >= 200, "200 stored pages", proc)
    server.site.default_latency = 3600.0  # from now on requests hang: the graceful stop has to wait
    assert server.wait_for(lambda: server.in_flight >= 1, timeout=DEADLINE)
    proc.send_signal(signal.SIGINT)
    err.wait_for("stopping: finishing in-flight requests")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=DEADLINE) == 130
    # It quit at once: no final summary, no "interrupted: continue with" line.
    assert "interrupted:" not in err.rest()
    assert integrity(db) == "ok"

    done = done_paths(db, server.url)
    requested = len(page_requests(server))  # the hanging requests are not recorded (yet)
    server.site.default_latency = 0.002
    proc = launch(config, "resume", "-q")
    _, stderr = proc.communicate(timeout=DEADLINE * 2)
    assert proc.returncode == 0, stderr
    later = page_requests(server)[requested:]
    assert not done & set(later)
    assert_complete(db, server, pages=1000)


def test_resume_with_nothing_to_resume_exits_1(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(20, links_per_page=3))
    config = write_config(tmp_path, server)
    proc = launch(config, "resume")
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert err == f"crawler: error: no database at {tmp_path / 'crawl.db'}: nothing to resume\n"

    proc = launch(config, "crawl", "-q")
    assert proc.wait(timeout=DEADLINE) == 0
    proc = launch(config, "resume")
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert err == (f"crawler: error: {tmp_path / 'crawl.db'} holds no unfinished crawl (20 done): nothing to resume\n")
