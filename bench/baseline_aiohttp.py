"""aiohttp-min: the smallest honest crawler on our stack, as a ceiling for the benchmark.

A queue, N worker tasks, one aiohttp session (its connector caps connections globally and
per host), robots.txt fetched once per host and obeyed (Protego), selectolax for links,
an in-memory seen set, and no storage: a page counts as stored once its HTML is parsed.

Usage:
  python bench/baseline_aiohttp.py --seeds URL[,URL...] [--allowed-hosts H[,H...]]
      [--concurrency 64] [--per-host 2] [--user-agent UA] [--no-robots] [--ca-bundle PEM]

Prints one JSON line: pages, errors, robots_blocked, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from urllib.parse import urldefrag, urljoin, urlsplit

import aiohttp
from protego import Protego
from selectolax.lexbor import LexborHTMLParser


class MinCrawler:
    """Breadth-first crawl of the in-scope hosts; counts pages, keeps nothing."""

    def __init__(
        self,
        seeds: list[str],
        allowed_hosts: set[str],
        concurrency: int,
        per_host: int,
        user_agent: str,
        obey_robots: bool,
        ca_bundle: str | None = None,
    ) -> None:
        self.seeds = seeds
        self.allowed_hosts = allowed_hosts or {urlsplit(s).hostname or "" for s in seeds}
        self.concurrency = concurrency
        self.per_host = per_host
        self.user_agent = user_agent
        self.obey_robots = obey_robots
        self.ca_bundle = ca_bundle
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.seen: set[str] = set()
        self.robots: dict[str, asyncio.Task[Protego | None]] = {}
        self.pages = 0
        self.errors = 0
        self.robots_blocked = 0

    def enqueue(self, url: str) -> None:
        """Queue an absolute URL once, if it is http(s) and in scope."""
        url = urldefrag(url)[0]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname not in self.allowed_hosts:
            return
        if url not in self.seen:
            self.seen.add(url)
            self.queue.put_nowait(url)

    async def _fetch_robots(self, session: aiohttp.ClientSession, origin: str) -> Protego | None:
        """RFC 9309: 4xx → allow all (None); 5xx or unreachable → disallow all."""
        try:
            async with session.get(origin + "/robots.txt") as resp:
                if 400 <= resp.status < 500:
                    return None
                if resp.status >= 500:
                    return Protego.parse("User-agent: *\nDisallow: /\n")
                return Protego.parse(await resp.text(errors="replace"))
        except (TimeoutError, aiohttp.ClientError):
            return Protego.parse("User-agent: *\nDisallow: /\n")

    async def allowed(self, session: aiohttp.ClientSession, url: str) -> bool:
        """Whether robots.txt of the URL's origin lets us fetch it (fetched once per origin)."""
        if not self.obey_robots:
            return True
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        task = self.robots.get(origin)
        if task is None:
            task = asyncio.ensure_future(self._fetch_robots(session, origin))
            self.robots[origin] = task
        rules = await task
        return rules is None or rules.can_fetch(url, self.user_agent)

    async def process(self, session: aiohttp.ClientSession, url: str) -> None:
        """Fetch one URL, count it if it is an HTML 200, and queue its links."""
        if not await self.allowed(session, url):
            self.robots_blocked += 1
            return
        try:
            async with session.get(url) as resp:
                body = await resp.read()
                if resp.status != 200 or resp.content_type != "text/html":
                    self.errors += 1
                    return
                base = str(resp.url)
        except (TimeoutError, aiohttp.ClientError):
            self.errors += 1
            return
        self.pages += 1
        for node in LexborHTMLParser(body).css("a[href]"):
            href = node.attributes.get("href")
            if href:
                self.enqueue(urljoin(base, href.strip()))

    async def worker(self, session: aiohttp.ClientSession) -> None:
        """Take URLs off the queue until cancelled."""
        while True:
            url = await self.queue.get()
            try:
                await self.process(session, url)
            finally:
                self.queue.task_done()

    async def run(self) -> None:
        """Crawl until the queue is empty and every worker is idle."""
        # Certificates are checked as always; a private CA is trusted through an ssl context.
        tls = ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.per_host, ssl=tls)
        timeout = aiohttp.ClientTimeout(total=60)
        headers = {"User-Agent": self.user_agent}
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            for seed in self.seeds:
                self.enqueue(seed)
            workers = [asyncio.create_task(self.worker(session)) for _ in range(self.concurrency)]
            await self.queue.join()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, crawl, print the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, help="comma-separated start URLs")
    parser.add_argument("--allowed-hosts", default="", help="comma-separated hostnames; default: the seeds'")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=2)
    parser.add_argument("--user-agent", default="crawler-bench/0.1 (+https://example.org/bench)")
    parser.add_argument("--no-robots", action="store_true", help="do not fetch or obey robots.txt")
    parser.add_argument("--ca-bundle", help="PEM file of a CA to trust (the https bench sites' private CA)")
    args = parser.parse_args(argv)
    crawler = MinCrawler(
        seeds=[s for s in args.seeds.split(",") if s],
        allowed_hosts={h for h in args.allowed_hosts.split(",") if h},
        concurrency=args.concurrency,
        per_host=args.per_host,
        user_agent=args.user_agent,
        obey_robots=not args.no_robots,
        ca_bundle=args.ca_bundle,
    )
    started = time.perf_counter()
    asyncio.run(crawler.run())
    summary = {
        "pages": crawler.pages,
        "errors": crawler.errors,
        "robots_blocked": crawler.robots_blocked,
        "seconds": round(time.perf_counter() - started, 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
