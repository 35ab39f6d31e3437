"""A minimal Scrapy spider for the benchmark: follow every in-scope link, export url/status/title.

Run by the harness as a subprocess:
  python bench/scrapy_spider.py --seeds URL[,URL...] --output pages.jsonl
      [--allowed-hosts H,...] [--concurrency 64] [--per-host 2] [--user-agent UA] [--ca-bundle PEM]

It also works with `scrapy runspider bench/scrapy_spider.py -a seeds=URL,... -a
allowed_hosts=H,... -s ROBOTSTXT_OBEY=True ...`, but then the settings are yours to pass.

Settings: ROBOTSTXT_OBEY=True, CONCURRENT_REQUESTS and CONCURRENT_REQUESTS_PER_DOMAIN as given
(Scrapy's per-"domain" slot is the hostname, so hosts must differ by address, not by port),
DOWNLOAD_DELAY=0, AutoThrottle off, cookies off (the cookie middleware would load the public
suffix list), telnet console off, JSON Lines feed export. Needs Scrapy 2.13 or newer
(`async def start`). Seeds are scheduled with dont_filter=False so that a later link back to
a seed is recognised as a duplicate (Scrapy's default start requests bypass the dupe filter,
which would store the seed pages twice).

https: Scrapy does not check certificates by default. With --ca-bundle it does, as the other
contestants do: DOWNLOAD_VERIFY_CERTIFICATES=True makes its context factory verify through
Twisted's platform trust, which is OpenSSL's default paths, so SSL_CERT_FILE names the CA.
Scrapy's default https handler speaks HTTP/1.1 (its HTTP/2 handler is opt-in).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response, TextResponse
from scrapy.linkextractors import LinkExtractor


class BenchSpider(scrapy.Spider):
    """Follows all links within `allowed_hosts`; yields one item per page."""

    name = "bench"

    def __init__(self, seeds: str = "", allowed_hosts: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = [s for s in seeds.split(",") if s]
        hosts = [h for h in allowed_hosts.split(",") if h]
        self.allowed_domains = hosts or sorted({urlsplit(s).hostname or "" for s in self.start_urls})
        # Scope is enforced by the offsite middleware (hostname match via allowed_domains). Not by
        # LinkExtractor(allow_domains=...): that compares the netloc, port included, so
        # "127.0.0.1" would reject every link to "127.0.0.1:8080".
        self.link_extractor = LinkExtractor()

    async def start(self) -> AsyncIterator[scrapy.Request]:
        """Seeds go through the dupe filter like every other request."""
        for url in self.start_urls:
            yield scrapy.Request(url, callback=self.parse, dont_filter=False)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """One item per page, then a request per extracted link (the scheduler dedupes)."""
        if not isinstance(response, TextResponse):
            return
        yield {"url": response.url, "status": response.status, "title": response.css("title::text").get()}
        for link in self.link_extractor.extract_links(response):
            yield response.follow(link.url, callback=self.parse)


def settings_for(output: str, concurrency: int, per_host: int, user_agent: str) -> dict[str, Any]:
    """The benchmark's Scrapy settings (equal to the other contestants')."""
    return {
        "ROBOTSTXT_OBEY": True,
        "USER_AGENT": user_agent,
        "CONCURRENT_REQUESTS": concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": per_host,
        "CONCURRENT_REQUESTS_PER_IP": 0,
        "DOWNLOAD_DELAY": 0,
        "RANDOMIZE_DOWNLOAD_DELAY": False,
        "AUTOTHROTTLE_ENABLED": False,
        "COOKIES_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "DEPTH_LIMIT": 0,
        "LOG_LEVEL": "WARNING",
        "FEEDS": {output: {"format": "jsonlines", "fields": ["url", "status", "title"], "overwrite": True}},
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one crawl in this process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, help="comma-separated start URLs")
    parser.add_argument("--allowed-hosts", default="", help="comma-separated hostnames; default: the seeds'")
    parser.add_argument("--output", required=True, help="JSON Lines file for the items")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=2)
    parser.add_argument("--user-agent", default="crawler-bench/0.1 (+https://example.org/bench)")
    parser.add_argument("--ca-bundle", help="PEM file of the CA to trust; certificates are then verified")
    args = parser.parse_args(argv)
    settings = settings_for(args.output, args.concurrency, args.per_host, args.user_agent)
    if args.ca_bundle:
        os.environ["SSL_CERT_FILE"] = args.ca_bundle
        settings["DOWNLOAD_VERIFY_CERTIFICATES"] = True
    process = CrawlerProcess(settings=settings)
    process.crawl(BenchSpider, seeds=args.seeds, allowed_hosts=args.allowed_hosts)
    process.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
