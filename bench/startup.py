"""Start-up and exit bench: the CPU one `crawler crawl` process spends before its first request and after its last.

    python bench/startup.py [--runs 7] [--pages 20] [--store sqlite|postgresql|both] [--tree DIR]
                            [--bytecode cached|none]

A loopback HTTP server (a thread of this process) serves robots.txt and `--pages` small linked
pages on one host; each run crawls them with a fresh database and `python -m crawler crawl
CONFIG -q`, uncapped. At every request the server reads the crawler's CPU time and its parse
worker's (psutil); the exit's CPU is the crawler's rusage at exit (its reaped parse worker
included) less both at the last request. CPU seconds, unlike wall time, barely move with the
machine's load, so the medians of a few runs compare two trees on a shared machine.

`--bytecode cached` (the default) compiles the tree's modules once beforehand (into its
__pycache__), as installing the package does; `none` runs a copy of the tree without them, so
every start compiles every module of ours (as PYTHONDONTWRITEBYTECODE=1 on a fresh checkout does).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.support (the throwaway PostgreSQL)

from tests.support.postgres import PostgresServer, PostgresUnavailable  # noqa: E402


@dataclass
class Samples:
    """The crawler's and its parse worker's CPU seconds at the first and at the latest request."""

    pid: int = 0
    first: tuple[float, float] | None = None
    last: tuple[float, float] = (0.0, 0.0)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            own = task_seconds(self.pid) + sum(proc.cpu_times()[2:4])  # its reaped children too
            worker = sum(task_seconds(child.pid) for child in proc.children(recursive=True))
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            return
        now = (own, worker)
        with self.lock:
            self.requests += 1
            if self.first is None:
                self.first = now
            self.last = now


def task_seconds(pid: int) -> float:
    """CPU seconds of a live process's threads, in nanoseconds from the scheduler (Linux's schedstat),
    finer than the clock ticks of its rusage."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def site_handler(pages: int, samples: list[Samples]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            samples[-1].take()
            if self.path == "/robots.txt":
                body, kind = b"User-agent: *\nAllow: /\n", "text/plain"
            else:
                n = int(self.path.strip("/p.html") or 0)
                links = "".join(f'<a href="/p{i}.html">page {i}</a> ' for i in range(n + 1, min(n + 4, pages)))
                body = f"<html><head><title>page {n}</title></head><body><p>text {n}</p>{links}</body></html>".encode()
                kind = "text/html; charset=utf-8"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def site(pages: int, samples: list[Samples]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), site_handler(pages, samples))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def config_text(seed: str, storage: str) -> str:
    return (
        f"[crawl]\nseeds = [{json.dumps(seed + 'p0.html')}]\nparse_workers = 1\n"
        '[politeness]\nuser_agent = "crawler-bench/0.1"\ndelay = 0.0\nadaptive = false\nconcurrency = 4\n'
        f"[storage]\n{storage}\n"
    )


def one_run(seed: str, storage: str, workdir: Path, env: dict[str, str], samples: list[Samples]) -> tuple[float, ...]:
    config = workdir / "config.toml"
    config.write_text(config_text(seed, storage))
    child = subprocess.Popen(
        [sys.executable, "-m", "crawler", "crawl", str(config), "-q"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=workdir,
    )
    samples.append(Samples(pid=child.pid))
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.stderr is not None
    err = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    got = samples[-1]
    if child.returncode != 0 or got.first is None:
        raise SystemExit(f"crawler exited {child.returncode}: {err[-400:]}")
    total = usage.ru_utime + usage.ru_stime
    own_first, worker_first = got.first
    own_last, worker_last = got.last
    return own_first, worker_first, worker_last, total - own_last - worker_last, total, float(got.requests)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--pages", type=int, default=20)
    p.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--tree", type=Path, default=REPO_ROOT, help="the source tree whose crawler runs")
    p.add_argument("--bytecode", choices=("cached", "none"), default="cached")
    args = p.parse_args(argv)
    stores = ("sqlite", "postgresql") if args.store == "both" else (args.store,)
    samples: list[Samples] = []
    pg: PostgresServer | None = None
    with tempfile.TemporaryDirectory(prefix="crawler-startup-") as tmp, site(args.pages, samples) as seed:
        root = Path(tmp)
        tree = args.tree
        if args.bytecode == "cached":
            compileall.compile_dir(tree / "crawler", quiet=1)  # as installing the package does
        else:
            tree = root / "source"
            shutil.copytree(args.tree / "crawler", tree / "crawler", ignore=shutil.ignore_patterns("__pycache__"))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH", "")]))
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # runs alike: none writes bytecode for the next
        try:
            print(f"{args.pages} pages, 1 process uncapped, median of {args.runs} runs; bytecode {args.bytecode}")
            print(
                "store      | crawler's start-up CPU s (to its first request) | parse worker's CPU s (its whole life)"
                " | exit CPU s (after the last request) | total CPU s | requests"
            )
            for store in stores:
                if store == "postgresql":
                    try:
                        pg = pg or PostgresServer.start()
                    except PostgresUnavailable as exc:
                        print(f"no PostgreSQL: {exc}", file=sys.stderr)
                        return 2
                rows = []
                for n in range(args.runs):
                    workdir = root / f"{store}-{n}"
                    workdir.mkdir()
                    storage = (
                        f'path = "{workdir / "crawl.db"}"'
                        if store == "sqlite"
                        else f"url = {json.dumps(pg.create_database())}"  # type: ignore[union-attr]
                    )
                    rows.append(one_run(seed, storage, workdir, env, samples))
                med = [statistics.median(column) for column in zip(*rows, strict=True)]
                print(
                    f"{store:<10} | {med[0]:.3f} | {med[2]:.3f} | {med[3]:.3f} | {med[4]:.3f} | {med[5]:.0f}",
                    flush=True,
                )
        finally:
            if pg is not None:
                pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
