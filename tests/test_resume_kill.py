"""The crawler as a subprocess, killed or interrupted mid-crawl and resumed: nothing lost, nothing fetched twice.

Nothing here races the crawler.  The local server answers pages through a Gate that holds
the requests the test chooses, so a crawler cannot get past a stage (let alone finish)
before the test has signalled it; mid-batch, the test also holds SQLite's write lock, so
pages the crawler has fetched cannot be committed before the kill.  The test waits on what
the server holds and what the database holds, never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.crawlkit import rows
from tests.support.localsite import SiteServer
from tests.support.site import Request, Response, Site, build_site

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


_launched: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_stray_crawlers() -> Iterator[None]:
    """A failed test must not leave a crawler behind, waiting on a gate or a lock."""
    yield
    while _launched:
        proc = _launched.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE)


def launch(config: Path, command: str = "crawl", *flags: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawler", command, str(config), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _launched.append(proc)
    return proc


def exited(proc: subprocess.Popen[str], what: str) -> AssertionError:
    return AssertionError(f"crawler exited ({proc.returncode}) before {what}: {proc.stderr.read()}")  # type: ignore[union-attr]


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str] | None = None) -> None:
    """Poll a condition on the database until it holds; fail after DEADLINE.

    Only for conditions that stay true once they hold (the gate keeps the crawler from
    moving on), so a slow poll can be late but never miss its moment.
    """
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise exited(proc, what)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def signal_running(proc: subprocess.Popen[str], sig: int) -> None:
    """Signal a crawler that must still be running (Popen.send_signal ignores one that has exited)."""
    if proc.poll() is not None:
        raise exited(proc, f"it was sent signal {sig}")
    proc.send_signal(sig)


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the database of a running crawl (WAL readers never block its writer); [] until it is readable."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    except sqlite3.DatabaseError:  # the schema is not created yet, or the file is being set up
        return []
    finally:
        conn.close()


DONE_SQL = "SELECT url FROM urls WHERE state = 'done'"


def done_paths(db: Path, base: str) -> set[str]:
    """Paths stored as done, read while a crawler may be running (for waiting, not for asserting)."""
    return {str(url).removeprefix(base) for (url,) in query(db, DONE_SQL)}


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


@dataclass(eq=False)
class _Held:
    ticket: int | None  # None for robots.txt
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None] = field(repr=False)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Gate:
    """Holds page requests on the local server until the test lets them through.

    Every page of the site answers through the gate: a request takes a ticket as it arrives
    (tickets count page requests, robots.txt aside) and is answered at once if its ticket is
    below the allowance, or waits, on the server's loop without blocking it, until allow(),
    release_held() or open() reaches it.  A crawler whose every worker waits on a held request
    can neither fetch, commit nor finish anything more, and has no request on its way to the
    server: the test can look at it, signal it and kill it when it likes.
    """

    def __init__(self, server: SiteServer) -> None:
        self._cond = threading.Condition()
        self._tickets = 0
        self._allowed = 0
        self._open = True
        self._robots = False  # hold robots.txt too
        self._held: list[_Held] = []
        site = server.site
        for path in site.paths():
            response = site.response(path)
            assert response is not None, f"{path} is not a static page"
            site.handler(path, self._page(response))
        # Unlike a missing route, a handler can wait; a 404 still means "no robots.txt".
        site.handler("/robots.txt", self._robots_txt)

    # ---- the server's side (its event loop thread)

    def _page(self, response: Response) -> Callable[[Request], Awaitable[Response]]:
        async def answer(request: Request) -> Response:
            await self._pass(page=True)
            return response

        return answer

    async def _robots_txt(self, request: Request) -> Response:
        await self._pass(page=False)
        return Response(404, [("Content-Type", "text/plain")], b"no robots.txt here\n")

    async def _pass(self, *, page: bool) -> None:
        loop = asyncio.get_running_loop()
        with self._cond:
            ticket: int | None = None
            if page:
                ticket, self._tickets = self._tickets, self._tickets + 1
                if self._open or ticket < self._allowed:
                    return
            elif self._open or not self._robots:
                return
            held = _Held(ticket, loop, loop.create_future())
            self._held.append(held)
            self._cond.notify_all()
        try:
            await held.future
        finally:  # released, or cancelled as the server stops
            with self._cond:
                if held in self._held:
                    self._held.remove(held)
                self._cond.notify_all()

    # ---- the test's side

    def _release(self, held: _Held) -> None:
        self._held.remove(held)
        with contextlib.suppress(RuntimeError):  # the server's loop is closed: nothing waits any more
            held.loop.call_soon_threadsafe(_wake, held.future)
        self._cond.notify_all()

    @property
    def held(self) -> int:
        with self._cond:
            return len(self._held)

    def close(self, after: int = 0, *, robots: bool = False) -> None:
        """Answer the next `after` page requests, hold the ones after them (and robots.txt if `robots`)."""
        with self._cond:
            assert not self._held, "a request from an earlier run is still held"
            self._open = False
            self._allowed = self._tickets + after
            self._robots = robots

    def allow(self, n: int) -> None:
        """Let n more page requests through, the held ones first."""
        with self._cond:
            self._allowed += n
            for held in [h for h in self._held if h.ticket is not None and h.ticket < self._allowed]:
                self._release(held)

    def release_held(self) -> None:
        """Answer every request that has arrived; hold the ones that come later."""
        with self._cond:
            self._allowed = max(self._allowed, self._tickets)
            for held in list(self._held):
                self._release(held)

    def open(self) -> None:
        """Answer everything, now and from now on."""
        with self._cond:
            self._open = True
            for held in list(self._held):
                self._release(held)

    def wait_held(self, n: int, proc: subprocess.Popen[str], what: str) -> None:
        """Block until at least n requests are held (woken by the server as they arrive)."""
        deadline = time.monotonic() + DEADLINE
        with self._cond:
            while len(self._held) < n:
                if proc.poll() is not None:
                    raise exited(proc, what)
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what} ({len(self._held)} of {n} held)")
                self._cond.wait(0.05)  # the timeout only notices a crawler that died


class WriteLock:
    """SQLite's write lock on the crawl database, taken by the test.

    Until release() the crawler reads on (WAL) but every commit of its waits: what it fetches
    stays in its batch.  Its busy_timeout is 10 s, so hold this only for the moments a stage
    needs (a few milliseconds of crawling and a kill).
    """

    def __init__(self, db: Path) -> None:
        self._conn: sqlite3.Connection | None = sqlite3.connect(db, timeout=DEADLINE, isolation_level=None)
        self._conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None

    def __enter__(self) -> WriteLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Kill:
    """What the server had been asked and what the store held when a crawler was killed or stopped.

    With `sig`, sends it to the (running) crawler first; then waits for the crawler to exit,
    drops the test's write lock, opens the gate so the server answers (into the void) what it
    held, and reads what was asked and stored.
    """

    def __init__(
        self,
        server: SiteServer,
        gate: Gate,
        db: Path,
        proc: subprocess.Popen[str],
        sig: int | None = None,
        *,
        lock: WriteLock | None = None,
        stderr: LineReader | None = None,
    ) -> None:
        if sig is not None:
            signal_running(proc, sig)
        if stderr is None:
            _, self.stderr = proc.communicate(timeout=DEADLINE)
        else:
            proc.wait(timeout=DEADLINE)
            self.stderr = stderr.rest()
        if lock is not None:
            lock.release()
        # The crawler is gone; let the server answer what it had received and held.  Every
        # request the crawler sent had arrived (the stages kill only a crawler whose workers
        # all wait on the gate, or one that stopped on its own), so this is all of them.
        gate.open()
        assert server.wait_for(lambda: server.in_flight == 0, timeout=DEADLINE)
        self.returncode = proc.returncode
        self.requested = len(page_requests(server))  # requests so far, in arrival order
        self.done = {str(url).removeprefix(server.url) for (url,) in rows(db, DONE_SQL)}
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

MID_BATCH_COMMITTED = 300  # pages the mid-batch run fetches and commits before the test locks the store
MID_BATCH_UNCOMMITTED = 3 * CONCURRENCY  # pages it then fetches that cannot be committed before the kill


def test_kill_9_early_at_start_mid_batch_and_late_then_resume(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(PAGES, links_per_page=LINKS))
    server.site.default_latency = 0.002
    gate = Gate(server)
    config = write_config(tmp_path, server)
    db = tmp_path / "crawl.db"
    kills: list[Kill] = []

    # Early: as soon as the first page was asked for (it is held: nothing else can be asked).
    gate.close()
    proc = launch(config, "crawl", "-q")
    gate.wait_held(1, proc, "the first page request")
    kills.append(Kill(server, gate, db, proc, signal.SIGKILL))
    assert (kills[-1].requested, kills[-1].done) == (1, set())

    # During start-up of the resumed run: it has recorded itself in `runs` and waits for robots.txt.
    gate.close(robots=True)
    proc = launch(config, "resume", "-q")
    gate.wait_held(1, proc, "the second run's robots.txt request")
    wait_until(lambda: query(db, "SELECT count(*) FROM runs") == [(2,)], "the second run to start", proc)
    kills.append(Kill(server, gate, db, proc, signal.SIGKILL))
    assert (kills[-1].requested, kills[-1].done) == (1, set())

    # Mid-batch: pages are committed, and more have been served than the store holds as done.
    base = len(kills[-1].done)
    gate.close(after=MID_BATCH_COMMITTED)
    proc = launch(config, "crawl", "-q")
    gate.wait_held(CONCURRENCY, proc, f"every worker to wait after {MID_BATCH_COMMITTED} pages")

    def committed() -> bool:
        states = {row[0]: row[1] for row in query(db, "SELECT state, count(*) FROM urls GROUP BY state")}
        return states.get("done") == base + MID_BATCH_COMMITTED and states.get("in_flight") == CONCURRENCY

    wait_until(committed, f"{MID_BATCH_COMMITTED} pages and the held leases committed", proc)
    with WriteLock(db) as lock:
        # The crawler now fetches MID_BATCH_UNCOMMITTED pages it cannot commit, and once its
        # workers all wait on the gate again, it has processed them all: they are in its batch.
        gate.allow(MID_BATCH_UNCOMMITTED)
        gate.wait_held(CONCURRENCY, proc, f"every worker to wait after {MID_BATCH_UNCOMMITTED} more pages")
        served = set(page_requests(server))
        kills.append(Kill(server, gate, db, proc, signal.SIGKILL, lock=lock))
    assert len(kills[-1].done) >= base + 200
    assert len(served - kills[-1].done) >= MID_BATCH_UNCOMMITTED, "served pages not yet committed"

    # Late: most of the site is stored.
    late = PAGES * 9 // 10
    gate.close(after=late - len(kills[-1].done))
    proc = launch(config, "resume", "-q")
    gate.wait_held(CONCURRENCY, proc, "every worker to wait near the end")
    wait_until(lambda: len(done_paths(db, server.url)) >= late, "90% of the pages", proc)
    kills.append(Kill(server, gate, db, proc, signal.SIGKILL))

    proc = launch(config, "resume", "-q")  # the gate is open
    _, err = proc.communicate(timeout=DEADLINE * 2)
    assert proc.returncode == 0, err

    assert [k.returncode for k in kills] == [-signal.SIGKILL] * 4
    assert [k.integrity for k in kills] == ["ok"] * 4
    # Each kill found the store further along, and each resume lost nothing committed.
    assert [len(k.done) for k in kills] == sorted(len(k.done) for k in kills)
    assert len(kills[-1].done) >= late
    assert all(a.done <= b.done for a, b in itertools.pairwise(kills))
    assert_fetched_once_except_at_risk(server, kills)
    assert_complete(db, server)
    # The killed runs are told apart from the ones that ended.
    outcomes = [o for (o,) in rows(db, "SELECT outcome FROM runs ORDER BY id")]
    assert outcomes == ["killed"] * 4 + ["finished"]


def test_sigint_stops_cleanly_exits_130_and_resume_finishes(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(PAGES, links_per_page=LINKS))
    server.site.default_latency = 0.002
    gate = Gate(server)
    config = write_config(tmp_path, server)
    db = tmp_path / "crawl.db"

    gate.close(after=300)
    proc = launch(config, "crawl")
    err = LineReader(proc.stderr)
    gate.wait_held(CONCURRENCY, proc, "every worker to wait after 300 pages")
    wait_until(lambda: len(done_paths(db, server.url)) >= 300, "300 stored pages", proc)
    signal_running(proc, signal.SIGINT)
    err.wait_for("stopping: finishing in-flight requests")
    # It takes no new work now; what it has in flight may finish (within its stop_grace).
    gate.open()
    stop = Kill(server, gate, db, proc, stderr=err)
    assert stop.returncode == 130, stop.stderr
    assert stop.integrity == "ok"
    assert rows(db, "SELECT outcome FROM runs") == [("interrupted",)]

    counts = dict(rows(db, "SELECT state, count(*) FROM urls GROUP BY state"))
    done, queued, in_flight = (counts.get(state, 0) for state in ("done", "queued", "in_flight"))
    proc = launch(config, "resume")
    _, err_text = proc.communicate(timeout=DEADLINE * 2)
    assert proc.returncode == 0, err_text
    assert f"resuming: {done:,} done, {queued + in_flight:,} queued, {in_flight:,} were in flight" in err_text
    assert_fetched_once_except_at_risk(server, [stop])
    assert_complete(db, server)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_says_how_to_resume_even_when_quiet(site_server: Serve, tmp_path: Path, sig: int) -> None:
    server = site_server(build_site(200, links_per_page=4))
    server.site.default_latency = 0.01
    gate = Gate(server)
    config = write_config(tmp_path, server)
    db = tmp_path / "crawl.db"
    gate.close(after=20)
    proc = launch(config, "crawl", "-q")
    gate.wait_held(CONCURRENCY, proc, "every worker to wait after 20 pages")
    wait_until(lambda: len(done_paths(db, server.url)) >= 20, "20 stored pages", proc)
    signal_running(proc, sig)
    # The held requests finish; any it asks for before it has seen the signal wait out stop_grace.
    gate.release_held()
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
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"no line starting {prefix!r} within {DEADLINE}s: {''.join(self.seen)}") from None
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
    gate = Gate(server)
    config = write_config(tmp_path, server)
    db = tmp_path / "crawl.db"

    gate.close(after=200)
    proc = launch(config, "crawl")
    err = LineReader(proc.stderr)
    # From now on its requests hang on the gate: the graceful stop has to wait for them.
    gate.wait_held(CONCURRENCY, proc, "every worker to wait after 200 pages")
    wait_until(lambda: len(done_paths(db, server.url)) >= 200, "200 stored pages", proc)
    signal_running(proc, signal.SIGINT)
    err.wait_for("stopping: finishing in-flight requests")
    signal_running(proc, signal.SIGINT)  # within stop_grace (5 s) of the first: the held requests still hang
    assert proc.wait(timeout=DEADLINE) == 130
    # It quit at once: no final summary, no "interrupted: continue with" line.
    assert "interrupted:" not in err.rest()
    assert integrity(db) == "ok"

    gate.open()  # the server answers the hanging requests into the void
    assert server.wait_for(lambda: server.in_flight == 0, timeout=DEADLINE)
    done = {str(url).removeprefix(server.url) for (url,) in rows(db, DONE_SQL)}
    requested = len(page_requests(server))
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
