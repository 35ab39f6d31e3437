"""Raw server throughput: fetch a list of URLs as fast as possible with keep-alive.

Usage: python bench/rawload.py URLS_FILE CONNECTIONS MIN_SECONDS [CA_PEM]

Reads one URL per line (loopback only), then `CONNECTIONS` tasks share one aiohttp session
(at most CONNECTIONS keep-alive connections) and fetch the URLs in order, cycling until every
URL was fetched at least once and MIN_SECONDS have passed. No parsing: this is the
ceiling of a Python client, and a lower bound on what the server can do. Prints one JSON
line: requests, seconds, req_per_s, mb_per_s, errors (non-200 answers or exceptions).
https URLs are verified against CA_PEM (the https bench sites' private CA) when given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp


async def load(urls: list[str], connections: int, min_seconds: float, ca_pem: str | None = None) -> dict[str, float]:
    """Run the load and return the figures."""
    for host in {urlsplit(u).hostname or "" for u in urls}:
        if not ipaddress.ip_address(host).is_loopback:
            raise SystemExit(f"refusing to load non-loopback host {host}")
    order: Iterator[tuple[int, str]] = enumerate(itertools.cycle(urls))
    count = 0
    errors = 0
    body_bytes = 0
    started = time.perf_counter()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal count, errors, body_bytes
        for n, url in order:
            if n >= len(urls) and time.perf_counter() - started >= min_seconds:
                return
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        errors += 1
            except (TimeoutError, aiohttp.ClientError):
                errors += 1
                continue
            count += 1
            body_bytes += len(body)

    tls = ssl.create_default_context(cafile=ca_pem) if ca_pem else True
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections, ssl=tls)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    seconds = time.perf_counter() - started
    return {
        "requests": count,
        "seconds": round(seconds, 3),
        "req_per_s": round(count / seconds, 1),
        "mb_per_s": round(body_bytes / seconds / 1e6, 1),
        "errors": errors,
    }


def main(argv: list[str]) -> int:
    """Parse URLS_FILE CONNECTIONS MIN_SECONDS, run, print JSON."""
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    urls = Path(argv[0]).read_text().split()
    result = asyncio.run(load(urls, int(argv[1]), float(argv[2]), argv[3] if len(argv) == 4 else None))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
