"""Fairness benchmark: many hosts with a per-host delay; crawl time over the lower bound pages_per_host × delay.

    .venv/bin/python bench/fairness.py [--hosts 20] [--pages 25] [--delay 0.2] [--concurrency 32]

Each host is its own local server (127.0.0.1, its own port) with `--pages` pages, all linked from
its home page, and no robots.txt (a 404: all allowed).  All homes are seeds.  A host takes at most
one request start per `delay`; robots.txt and its pages are pages + 1 requests, so no schedule
can get from a host's first start to its last in less than pages × delay, the lower bound.  A
fair scheduler without head-of-line blocking keeps every host at that pace, and the crawl close
to the bound.  Prints the crawl time, the bound and their ratio (also for the request phase
alone, without start-up), each host's span, and the closest two starts any host saw.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The repo root, for tests.support (the local test server) when run as `python bench/fairness.py`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crawler.config import config_from_dict
from crawler.engine import Crawl
from tests.support.localsite import SiteServer
from tests.support.site import Site


def host_site(pages: int) -> Site:
    paths = [f"/p/{i}" for i in range(1, pages)]
    site = Site().page("/", title="Home", links=paths)
    for path in paths:
        site.page(path, title=path)
    return site


async def run(hosts: int, pages: int, delay: float, concurrency: int, per_host: int) -> int:
    servers = [SiteServer(host_site(pages)).start() for _ in range(hosts)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = config_from_dict(
                {
                    "crawl": {"seeds": [s.url + "/" for s in servers], "allowed_hosts": ["127.0.0.1"], "max_pages": 0},
                    "politeness": {
                        "delay": delay,
                        "concurrency": concurrency,
                        "per_host_concurrency": per_host,
                        "user_agent": "crawler-bench/0.1 (+https://example.org/bench)",
                    },
                    "storage": {"path": str(Path(tmp) / "fair.db")},
                },
                source="<bench>",
            )
            started = time.monotonic()
            summary = await Crawl(config).run()
            ended = time.monotonic()
            elapsed = ended - started
    finally:
        for server in servers:
            server.stop()

    bound = pages * delay
    spans, tightest = [], float("inf")
    for server in servers:
        starts = sorted(r.start for r in server.requests)
        spans.append(starts[-1] - starts[0])
        tightest = min([tightest, *(b - a for a, b in itertools.pairwise(starts))])
    first = min(r.start for server in servers for r in server.requests)
    last = max(r.end for server in servers for r in server.requests)
    expected = hosts * pages
    print(f"hosts {hosts}, pages per host {pages}, delay {delay:g}s, concurrency {concurrency}, per host {per_host}")
    print(f"pages stored         {summary.pages} of {expected}")
    print(f"crawl time           {elapsed:.2f}s  (Crawl.run, start-up and final commit included)")
    print(f"lower bound          {bound:.2f}s  (pages per host × delay)")
    print(f"ratio                {elapsed / bound:.3f}")
    print(
        f"of which             {first - started:.2f}s start-up before the first request, "
        f"{last - first:.2f}s of requests ({(last - first) / bound:.3f} × bound), {ended - last:.2f}s to finish"
    )
    print(
        f"per-host span        first→last request start: min {min(spans):.2f}s, "
        f"median {statistics.median(spans):.2f}s, max {max(spans):.2f}s "
        f"(robots.txt + {pages} pages: ≥ {pages * delay:.2f}s)"
    )
    print(
        f"closest two starts   {tightest:.3f}s on one host, as the server saw them (delay {delay:g}s; "
        "the crawler spaces its turns by the delay, the server sees them shifted by send lag)"
    )
    return 0 if summary.pages == expected else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--pages", type=int, default=25, help="pages per host, home included")
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--per-host", type=int, default=2)
    args = parser.parse_args()
    return asyncio.run(run(args.hosts, args.pages, args.delay, args.concurrency, args.per_host))


if __name__ == "__main__":
    sys.exit(main())
