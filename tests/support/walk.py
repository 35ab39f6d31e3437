"""A tiny breadth-first walker over one keep-alive connection, to check what a served site holds."""

from __future__ import annotations

import http.client
import urllib.robotparser
from collections import Counter
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin

__all__ = ["OUTCOMES", "PageLinks", "parse_page", "walk"]

OUTCOMES = ("pages", "disallowed", "redirects", "not_found", "non_html")


class PageLinks(HTMLParser):
    """The <title> and every <a href> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v is not None)
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def parse_page(body: bytes) -> PageLinks:
    parser = PageLinks()
    parser.feed(body.decode())
    return parser


def walk(port: int, *, obey_robots: bool = True) -> dict[str, Counter[str]]:
    """Every path reachable from / on 127.0.0.1:port, by outcome (the keys of OUTCOMES)."""
    base = f"http://127.0.0.1:{port}"
    robots = urllib.robotparser.RobotFileParser()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def fetch(path: str) -> tuple[http.client.HTTPResponse, bytes]:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp, resp.read()

    resp, body = fetch("/robots.txt")
    robots.parse(body.decode().splitlines() if resp.status == 200 else [])
    outcome: dict[str, Counter[str]] = {k: Counter() for k in OUTCOMES}
    seen, queue = {"/"}, ["/"]
    while queue:
        path = queue.pop(0)
        if obey_robots and not robots.can_fetch("test", path):
            outcome["disallowed"][path] += 1
            continue
        resp, body = fetch(path)
        targets: list[str] = []
        if resp.status in (301, 302, 307, 308):
            outcome["redirects"][path] += 1
            targets = [resp.getheader("Location", "")]
        elif resp.status == 404:
            outcome["not_found"][path] += 1
        elif not resp.getheader("Content-Type", "").startswith("text/html"):
            outcome["non_html"][path] += 1
        else:
            outcome["pages"][path] += 1
            targets = parse_page(body).hrefs
        for href in targets:
            url = urldefrag(urljoin(base + path, href)).url
            if url.startswith(base + "/"):
                target = url[len(base) :]
                if target not in seen:
                    seen.add(target)
                    queue.append(target)
    conn.close()
    return outcome
