"""What one request costs the event loop, client by client: the figures behind crawler/http/transport.py.

    .venv/bin/python bench/transport_cost.py [--pages 5000] [--connections 8] [--rounds 3]

Generates the single-host bench site (15 KB pages), serves it with nginx (or the Python
fallback server), and has each client fetch every page once with `--connections` requests in
flight, in a fresh process. Prints CPU µs per request (the process's user + system time over
the requests, start-up excluded) and wall seconds, the median of `--rounds` runs:
  floor     asyncio protocols and httptools, no httpx: the least an HTTP/1.1 client can do here;
  aiohttp   aiohttp's ClientSession, get and read (what aiohttp-min does per page);
  crawler   crawler.http.fetcher.Fetcher, as the crawl calls it: the one httpx.AsyncClient over
            crawler/http/transport.py, body streamed under max_body_bytes;
  httpcore  the same Fetcher over httpx's own transport (httpcore), as https requests went before pyreqwest;
  reqwest   the same Fetcher over crawler/http/reqwest.py (pyreqwest), as https requests go, here on plain http.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLIENTS = ("floor", "aiohttp", "crawler", "httpcore", "reqwest")
USER_AGENT = "crawler-bench/0.1 (+https://example.org/bench)"


async def _run_all(urls: list[str], connections: int, fetch: Callable[[str], Awaitable[int]]) -> int:
    pending = iter(urls)
    sizes: list[int] = []

    async def worker() -> None:
        for url in pending:
            sizes.append(await fetch(url))

    await asyncio.gather(*(worker() for _ in range(connections)))
    return sum(sizes)


async def _floor(urls: list[str], connections: int) -> int:
    import httptools

    loop = asyncio.get_running_loop()

    class Conn(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.body: list[bytes] = []
            self.done: asyncio.Future[bytes] = loop.create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            self.done.set_result(b"".join(self.body))

        def get(self, url: str) -> asyncio.Future[bytes]:
            parts = urlsplit(url)
            self.body, self.done = [], loop.create_future()
            head = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: {USER_AGENT}\r\n\r\n"
            self.transport.write(head.encode())
            return self.done

    parts = urlsplit(urls[0])
    idle: list[Conn] = []
    for _ in range(connections):
        _, conn = await loop.create_connection(Conn, parts.hostname, parts.port)
        idle.append(conn)

    async def fetch(url: str) -> int:
        conn = idle.pop()
        try:
            return len(await conn.get(url))
        finally:
            idle.append(conn)

    return await _run_all(urls, connections, fetch)


async def _aiohttp(urls: list[str], connections: int) -> int:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT}) as session:

        async def fetch(url: str) -> int:
            async with session.get(url) as response:
                return len(await response.read())

        return await _run_all(urls, connections, fetch)


class _NoGate:
    @contextlib.asynccontextmanager
    async def request(self, url: str) -> AsyncIterator[None]:
        yield


async def _fetcher(urls: list[str], connections: int, *, engine: str) -> int:
    import httpx

    from crawler.config import HttpConfig
    from crawler.http.fetcher import Fetcher
    from crawler.http.reqwest import ReqwestTransport, build_client

    http = HttpConfig()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    transport: httpx.AsyncBaseTransport | None = None
    if engine == "httpcore":
        transport = httpx.AsyncHTTPTransport(limits=limits, retries=0)
    elif engine == "reqwest":
        transport = ReqwestTransport(build_client(http, max_connections=connections), http)
    fetcher = Fetcher(http, USER_AGENT, concurrency=connections, transport=transport)
    gate = _NoGate()

    async def fetch(url: str) -> int:
        return len((await fetcher.fetch(url, gate)).body)

    try:
        return await _run_all(urls, connections, fetch)
    finally:
        await fetcher.aclose()


def child(client: str, urls_file: Path, connections: int) -> None:
    """Fetch every URL with one client; print a JSON line with CPU seconds, wall and bytes."""
    urls = urls_file.read_text().split()
    run: Callable[[], Awaitable[int]] = {
        "floor": lambda: _floor(urls, connections),
        "aiohttp": lambda: _aiohttp(urls, connections),
        "crawler": lambda: _fetcher(urls, connections, engine="crawler"),
        "httpcore": lambda: _fetcher(urls, connections, engine="httpcore"),
        "reqwest": lambda: _fetcher(urls, connections, engine="reqwest"),
    }[client]
    cpu, wall = time.process_time(), time.perf_counter()
    size = asyncio.run(run())
    result = {
        "cpu": time.process_time() - cpu,
        "wall": time.perf_counter() - wall,
        "bytes": size,
        "requests": len(urls),
    }
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(CLIENTS), help="comma-separated clients")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--urls", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.urls, args.connections)
        return 0

    from bench.servers import NginxServer, PythonServer, find_nginx, pick_port
    from bench.sitegen import generate_site, single_host_spec

    clients = [c for c in args.only.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="transport-cost-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)  # nginx workers (run as `nobody` when started by root) read the site from here
        spec = single_host_spec(args.pages)
        site = generate_site(spec, folder / "site", port=pick_port(spec.hosts))
        urls_file = folder / "urls.txt"
        urls_file.write_text("\n".join(site.urls))
        nginx = find_nginx()
        server = NginxServer(site, folder / "server", 1, nginx) if nginx else PythonServer(site, folder / "server", 1)
        print(f"{len(site.urls):,} pages of ~{site.bytes_total // max(len(site.urls), 1):,} bytes, {server.describe()}")
        with server:
            print("| client | CPU µs per request | wall s | runs (CPU µs) |")
            print("|---|---:|---:|---|")
            for client in clients:
                runs = []
                for _ in range(args.rounds):
                    argv = [sys.executable, __file__, "--child", client, "--urls", str(urls_file)]
                    out = subprocess.run(
                        [*argv, "--connections", str(args.connections)],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                per = [r["cpu"] / r["requests"] * 1e6 for r in runs]
                wall = statistics.median(r["wall"] for r in runs)
                listed = ", ".join(f"{p:.0f}" for p in per)
                print(f"| {client} | {statistics.median(per):.0f} | {wall:.2f} | {listed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
