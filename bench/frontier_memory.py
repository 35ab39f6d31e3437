"""Peak RSS of a crawl whose frontier holds a million URLs, and how soon a resume from it fetches.

    .venv/bin/python bench/frontier_memory.py [--urls 1000000] [--hosts 1] [--links 100]
                                              [--extra 3000] [--keep DIR | --resume-from DIR]

1. build: `crawler crawl` runs against a generated K-ary tree site (page i links to pages
   i*K+1 … i*K+K; with --hosts H, page c lives on loopback address number c mod H) with
   max_pages = urls / K, so it stops once its frontier has discovered about `urls` URLs.
2. resume: max_pages is raised by `extra` and `crawler resume` continues; the script notes
   the moment the server sees the first request and the first page request, counted from
   the launch of the process (interpreter start-up and imports included).

Each phase is a separate process; its peak RSS is the larger of the kernel's ru_maxrss for
that process (os.wait4) and the polled RSS of its process tree (the parser process included).
The site is served from this process by aiohttp on 127.0.0.x (loopback only).
Exit status 0 when both phases ended as expected, whatever the figures; they are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from aiohttp import web
from measure import tree_rss  # bench/ scripts import their siblings this way

LIMIT_RSS_MB = 150
LIMIT_FIRST_FETCH_S = 2.0


class TreeServer:
    """Serves /n/<i> for any i on H loopback addresses, all on one port, from a thread."""

    def __init__(self, hosts: int, links: int, port: int = 0) -> None:
        self.addresses = [f"127.0.{n // 250}.{n % 250 + 1}" for n in range(hosts)]
        self.links = links
        self.port = port
        self.lock = threading.Lock()
        self.first_request: float | None = None
        self.first_page: float | None = None
        self.pages = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def url(self, i: int) -> str:
        return f"http://{self.addresses[i % len(self.addresses)]}:{self.port}/n/{i}"

    def reset_marks(self) -> None:
        with self.lock:
            self.first_request = self.first_page = None

    async def _handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        is_page = request.path.startswith("/n/")
        with self.lock:
            if self.first_request is None:
                self.first_request = now
            if is_page:
                self.pages += 1
                if self.first_page is None:
                    self.first_page = now
        if not is_page:
            return web.Response(status=404, text="not found\n")
        i = int(request.path[3:])
        hrefs = "".join(f'<li><a href="{self.url(i * self.links + j)}">{j}</a></li>' for j in range(1, self.links + 1))
        body = f"<!DOCTYPE html><html><head><title>node {i}</title></head><body><ul>{hrefs}</ul></body></html>"
        return web.Response(text=body, content_type="text/html")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        first = web.TCPSite(runner, self.addresses[0], self.port, backlog=1024)
        await first.start()
        self.port = first._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        for address in self.addresses[1:]:
            await web.TCPSite(runner, address, self.port, backlog=1024).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> TreeServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise SystemExit("the tree server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def write_config(folder: Path, server: TreeServer, max_pages: int) -> Path:
    many = len(server.addresses) > 1
    path = folder / "crawl.toml"
    path.write_text(
        f'[crawl]\nseeds = ["{server.url(0)}"]\nallowed_hosts = {server.addresses!r}\n'.replace("'", '"')
        + f"max_pages = {max_pages}\nmax_depth = 100\nmax_links_per_page = {server.links}\n"
        "[politeness]\n"
        'user_agent = "crawler-bench/0.1 (+https://example.org/bench)"\n'
        f"concurrency = 16\nper_host_concurrency = {2 if many else 8}\ndelay = 0.0\nadaptive = false\n"
        "[http]\nretries = 1\nretry_backoff = 0.05\n"
        '[storage]\npath = "crawl.db"\nstore_bodies = false\n'
    )
    return path


def run_phase(config: Path, command: str, server: TreeServer) -> dict[str, float]:
    """Run one crawler process to its end; its peak RSS and, from launch, the first requests it made."""
    server.reset_marks()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "crawler", command, str(config), "-q"], stderr=subprocess.PIPE)
    # ru_maxrss is the largest single process; the crawl's parser process adds to it, so the
    # summed RSS of the process tree is polled too and the larger figure counts.
    tree_peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal tree_peak
        root = psutil.Process(proc.pid)
        while not done.wait(0.1):
            tree_peak = max(tree_peak, tree_rss(root))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    poller.join()
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"`crawler {command}` exited {proc.returncode}: {err}")
    with server.lock:
        first_request = (server.first_request - started) if server.first_request else float("nan")
        first_page = (server.first_page - started) if server.first_page else float("nan")
    rss_mb = max(usage.ru_maxrss / 1024, tree_peak / 2**20)
    return {"wall": wall, "rss_mb": rss_mb, "first_request": first_request, "first_page": first_page}


def frontier_states(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT state, count(*) FROM urls GROUP BY state").fetchall())
    finally:
        conn.close()


def stored_site(db: Path) -> tuple[int, int, int]:
    """(hosts, links per page, port) of the tree a kept database was built from."""
    conn = sqlite3.connect(db)
    try:
        hosts = conn.execute("SELECT count(DISTINCT host) FROM urls").fetchone()[0]
        links = conn.execute("SELECT count(*) FROM links WHERE from_id = (SELECT min(url_id) FROM pages)").fetchone()[0]
        seed = conn.execute("SELECT url FROM urls ORDER BY id LIMIT 1").fetchone()[0]
    finally:
        conn.close()
    return hosts, links, int(seed.split(":")[2].split("/")[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=1_000_000, help="URLs the first crawl discovers")
    parser.add_argument("--hosts", type=int, default=1, help="loopback addresses the site is spread over")
    parser.add_argument("--links", type=int, default=100, help="links per page")
    parser.add_argument("--extra", type=int, default=3000, help="pages the resumed crawl fetches")
    parser.add_argument("--keep", type=Path, help="work in this (empty) folder and keep it")
    parser.add_argument("--resume-from", type=Path, help="skip the build: resume the crawl kept in this folder")
    args = parser.parse_args()
    folder = args.resume_from or args.keep or Path(tempfile.mkdtemp(prefix="frontier-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "crawl.db"
    if args.resume_from is None and db.exists():
        raise SystemExit(f"{db} exists; give an empty --keep folder, or use --resume-from")

    build: dict[str, float] | None = None
    if args.resume_from is not None:
        hosts, links, port = stored_site(db)
        server = TreeServer(hosts, links, port).start()
    else:
        server = TreeServer(args.hosts, args.links).start()
    try:
        if args.resume_from is None:
            build_pages = -(-args.urls // args.links)
            config = write_config(folder, server, build_pages)
            print(f"build: crawling {build_pages:,} pages of {args.links} links on {args.hosts} host(s) …", flush=True)
            build = run_phase(config, "crawl", server)
        states = frontier_states(db)
        total = sum(states.values())
        fetched = states.get("done", 0) + states.get("failed", 0)
        print(f"frontier: {total:,} URLs ({states}); {db.stat().st_size / 2**20:,.0f} MB on disk")
        config = write_config(folder, server, fetched + args.extra)
        print(f"resume: fetching {args.extra:,} more pages …", flush=True)
        resume = run_phase(config, "resume", server)
    finally:
        server.stop()

    print()
    print("| phase | frontier at start | wall | peak RSS | first request | first page |")
    print("|---|---|---|---|---|---|")
    if build is not None:
        print(f"| build (crawl) | 0 → {total:,} URLs | {build['wall']:.1f} s | {build['rss_mb']:.0f} MB | | |")
    print(
        f"| resume | {total:,} URLs | {resume['wall']:.1f} s | {resume['rss_mb']:.0f} MB"
        f" | {resume['first_request']:.2f} s | {resume['first_page']:.2f} s |"
    )
    peak = max(resume["rss_mb"], build["rss_mb"] if build else 0.0)
    ok_rss = peak < LIMIT_RSS_MB
    ok_first = resume["first_request"] < LIMIT_FIRST_FETCH_S
    print(
        f"\npeak RSS {peak:.0f} MB ({'<' if ok_rss else '≥'} {LIMIT_RSS_MB} MB);"
        f" first fetch {resume['first_request']:.2f} s after launch"
        f" ({'<' if ok_first else '≥'} {LIMIT_FIRST_FETCH_S:g} s)"
    )
    if args.keep is None and args.resume_from is None:
        for name in os.listdir(folder):
            (folder / name).unlink()
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
