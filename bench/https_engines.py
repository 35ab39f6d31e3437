"""Which engine under the one httpx.AsyncClient fetches https fastest: pages/s and CPU µs per request.

    .venv/bin/python bench/https_engines.py [--pages 4000] [--hosts 50] [--rounds 3] [--only a,b]

Generates the bench's two sites as https twins (bench/sitegen.py; TLS from a private trustme
CA), serves both with nginx (HTTP/2 and HTTP/1.1 by ALPN; the aiohttp fallback if nginx is
missing, HTTP/1.1 only), and has each engine fetch every page once, in a fresh process:
  single  one host, `--single-concurrency` (8) requests in flight;
  multi   `--hosts` hosts, `--multi-concurrency` (64) in flight, at most `--per-host` (2) per host.
Every engine but the floor sits under crawler.http.fetcher.Fetcher, the crawl's fetch path
(the one httpx client, raw body streamed and decoded by us under max_body_bytes), with
HTTP/2 offered where it can speak it:
  httpcore       httpx's own transport (what https goes through today), http2=True
  httpcore-h1    the same, http2=False (what HTTP/2 itself costs httpcore)
  httpx-aiohttp  aiohttp's ClientSession under httpx (httpx_aiohttp.AiohttpTransport); HTTP/1.1 only
  curl_cffi      libcurl through curl_cffi's AsyncSession, no impersonation (bench/engine_adapters.py)
  pyreqwest      Rust reqwest/hyper (pyreqwest.compatibility.httpx.HttpxTransport), http2 on
  ours-tls       crawler/http/transport.py with TLS under it (bench/engine_adapters.py); HTTP/1.1 only
  aiohttp-bare   aiohttp's ClientSession alone, no httpx, no fetch path: the floor reference
Rounds interleave the engines (round 1: every engine, then round 2 …) so a burst of other load
hits all of them alike. Prints, per site and engine: median pages/s (and its spread), median
CPU µs per request (user + system of the whole process, its threads included, start-up
excluded; the figure least disturbed by other load), and the HTTP version each response came with.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

ENGINES = ("httpcore", "httpcore-h1", "httpx-aiohttp", "curl_cffi", "pyreqwest", "ours-tls", "aiohttp-bare")
DISTRIBUTIONS = {
    "httpcore": ("httpx", "httpcore", "h2"),
    "httpcore-h1": ("httpx", "httpcore"),
    "httpx-aiohttp": ("httpx-aiohttp", "aiohttp"),
    "curl_cffi": ("curl_cffi",),
    "pyreqwest": ("pyreqwest",),
    "ours-tls": ("httptools",),
    "aiohttp-bare": ("aiohttp",),
}
USER_AGENT = "crawler-bench/0.1 (+https://example.org/bench)"


class _NoGate:
    """Fetcher's politeness gate, open: the driver below limits requests per host itself."""

    @contextlib.asynccontextmanager
    async def request(self, url: str) -> AsyncIterator[None]:
        yield


def _transport(engine: str, ca_pem: str, concurrency: int) -> object:
    """The httpx transport for one engine, trusting the private CA, HTTP/2 offered where it can."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    verify = __import__("ssl").create_default_context(cafile=ca_pem)
    if engine in ("httpcore", "httpcore-h1"):
        return httpx.AsyncHTTPTransport(http2=engine == "httpcore", verify=verify, limits=limits, retries=0)
    if engine == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(verify=verify, limits=limits)
    if engine == "curl_cffi":
        from engine_adapters import CurlTransport

        return CurlTransport(max_clients=concurrency, ca_pem=ca_pem)
    if engine == "pyreqwest":
        from engine_adapters import pyreqwest_transport
        from pyreqwest.client import ClientBuilder

        client = (
            ClientBuilder()
            .http2(True)
            .add_root_certificate_pem(Path(ca_pem).read_bytes())
            .max_connections(concurrency)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .follow_redirects(False)
            .no_proxy()
            .build()
        )
        return pyreqwest_transport(client)
    if engine == "ours-tls":
        from engine_adapters import TlsH1Transport

        return TlsH1Transport(limits=limits, ca_pem=ca_pem)
    raise ValueError(engine)


async def _drive(
    urls: list[str], concurrency: int, per_host: int, fetch: Callable[[str], Awaitable[tuple[int, str]]]
) -> tuple[int, collections.Counter[str], int]:
    """Fetch every URL once with `concurrency` workers, at most `per_host` in flight per host."""
    pending = iter(urls)
    slots: dict[str, asyncio.Semaphore] = {}
    versions: collections.Counter[str] = collections.Counter()
    size = errors = 0

    async def worker() -> None:
        nonlocal size, errors
        for url in pending:
            host = urlsplit(url).netloc
            slot = slots.setdefault(host, asyncio.Semaphore(per_host))
            async with slot:
                try:
                    got, version = await fetch(url)
                except Exception as exc:
                    errors += 1
                    if errors <= 3:
                        print(f"error: {url}: {exc!r}", file=sys.stderr)
                    continue
            size += got
            versions[version] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return size, versions, errors


async def _with_fetcher(engine: str, urls: list[str], concurrency: int, per_host: int, ca_pem: str) -> tuple:
    from crawler.config import HttpConfig
    from crawler.http.fetcher import Fetcher

    fetcher = Fetcher(
        HttpConfig(), USER_AGENT, concurrency=concurrency, transport=_transport(engine, ca_pem, concurrency)
    )
    gate = _NoGate()

    async def fetch(url: str) -> tuple[int, str]:
        result = await fetcher.fetch(url, gate)
        if result.status != 200:
            raise RuntimeError(f"status {result.status}")
        return len(result.body), result.http_version

    try:
        return await _drive(urls, concurrency, per_host, fetch)
    finally:
        await fetcher.aclose()


async def _aiohttp_bare(urls: list[str], concurrency: int, per_host: int, ca_pem: str) -> tuple:
    import ssl

    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=per_host, ssl=ssl.create_default_context(cafile=ca_pem)
    )
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT}) as session:

        async def fetch(url: str) -> tuple[int, str]:
            async with session.get(url, auto_decompress=False) as response:
                size = 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
                return size, f"HTTP/{response.version.major}.{response.version.minor}"

        return await _drive(urls, concurrency, per_host, fetch)


def child(engine: str, urls_file: Path, concurrency: int, per_host: int, ca_pem: str) -> None:
    """Fetch every URL with one engine; print one JSON line of figures."""
    urls = urls_file.read_text().split()
    if engine == "aiohttp-bare":
        run = _aiohttp_bare(urls, concurrency, per_host, ca_pem)
    else:
        import crawler.http.fetcher  # noqa: F401 - imports are start-up, not requests

        _transport(engine, ca_pem, concurrency)  # the same for the engine's own modules
        run = _with_fetcher(engine, urls, concurrency, per_host, ca_pem)
    cpu, wall = time.process_time(), time.perf_counter()
    size, versions, errors = asyncio.run(run)
    print(
        json.dumps(
            {
                "cpu": time.process_time() - cpu,
                "wall": time.perf_counter() - wall,
                "requests": len(urls),
                "bytes": size,
                "errors": errors,
                "versions": dict(versions),
            }
        )
    )


def versions_of(engine: str) -> str:
    """The installed versions of the distributions an engine is made of."""
    found = []
    for dist in DISTRIBUTIONS[engine]:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{dist} {metadata.version(dist)}")
    return ", ".join(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=4000, help="pages of the single site and of the multi site")
    parser.add_argument("--hosts", type=int, default=50, help="hosts of the multi site")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single-concurrency", type=int, default=8)
    parser.add_argument("--multi-concurrency", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=2)
    parser.add_argument("--only", default=",".join(ENGINES), help="comma-separated engines")
    parser.add_argument("--site", choices=("single", "multi", "both"), default="both")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--urls", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--host-limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.urls, args.concurrency, args.host_limit, args.ca)
        return 0

    from contestants import child_env
    from servers import NginxServer, PythonServer, Server, find_nginx, make_tls, pick_port
    from sitegen import generate_site, multi_host_spec, single_host_spec

    engines = [e for e in args.only.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(sorted(unknown))}; known: {', '.join(ENGINES)}")
    specs = []
    if args.site in ("single", "both"):
        specs.append((single_host_spec(args.pages, scheme="https"), args.single_concurrency, args.single_concurrency))
    if args.site in ("multi", "both"):
        multi = multi_host_spec(args.hosts, max(1, args.pages // args.hosts), scheme="https")
        specs.append((multi, args.multi_concurrency, args.per_host))
    nginx = find_nginx()
    with tempfile.TemporaryDirectory(prefix="https-engines-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        folder.chmod(0o755)  # nginx workers (run as `nobody` when started by root) read the site from here
        runs = []
        for spec, concurrency, per_host in specs:
            site = generate_site(spec, folder / f"site-{spec.name}", pick_port(spec.hosts))
            tls = make_tls(folder / f"tls-{spec.name}", spec.hosts)
            workdir = folder / f"server-{spec.name}"
            server: Server = NginxServer(site, workdir, 1, nginx, tls) if nginx else PythonServer(site, workdir, 1, tls)
            stack.enter_context(server)
            urls_file = folder / f"urls-{spec.name}.txt"
            urls_file.write_text("\n".join(site.urls))
            runs.append((spec.name, urls_file, tls.ca_pem, concurrency, per_host, len(site.urls)))
            print(f"{spec.name}: {len(site.urls):,} pages on {len(spec.hosts)} host(s), {server.describe()}, https")
        print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
        figures: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
        for round_no in range(args.rounds):
            for name, urls_file, ca_pem, concurrency, per_host, _ in runs:
                for engine in engines:
                    cmd = [sys.executable, __file__, "--child", engine, "--urls", str(urls_file), "--ca", str(ca_pem)]
                    cmd += ["--concurrency", str(concurrency), "--host-limit", str(per_host)]
                    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
                    if done.returncode != 0:
                        print(f"  {name}/{engine}: failed: {done.stderr.strip().splitlines()[-1:]}")
                        continue
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    figures[(name, engine)].append(result)
                    print(
                        f"  round {round_no + 1} {name}/{engine}: {result['requests'] / result['wall']:,.0f} pages/s, "
                        f"{result['cpu'] / result['requests'] * 1e6:,.0f} CPU µs/req, {result['versions']}"
                        + (f", {result['errors']} errors" if result["errors"] else "")
                    )
        print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print()
    print("| site | engine | pages/s (median) | pages/s (min–max) | CPU µs/req (median) | CPU µs/req (runs) | HTTP |")
    print("|---|---|---:|---:|---:|---|---|")
    for name, *_ in runs:
        for engine in engines:
            results = figures.get((name, engine), [])
            if not results:
                print(f"| {name} | {engine} | failed | | | | |")
                continue
            rates = [r["requests"] / r["wall"] for r in results]
            cpus = [r["cpu"] / r["requests"] * 1e6 for r in results]
            seen = collections.Counter[str]()
            for r in results:
                seen.update(r["versions"])
            print(
                f"| {name} | {engine} | {statistics.median(rates):,.0f} | {min(rates):,.0f}–{max(rates):,.0f} | "
                f"{statistics.median(cpus):,.0f} | {', '.join(f'{c:,.0f}' for c in cpus)} | "
                f"{', '.join(sorted(seen))} |"
            )
    print()
    for engine in engines:
        print(f"- {engine}: {versions_of(engine)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
