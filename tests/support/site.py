"""The sites tests serve: routes keyed by request target, the request/response types handlers see, generated sites.

    site = Site().page("/", title="Home", links=["/a"]).page("/a", latency=0.2)
    site.raw("/broken", reset_mid_body())  # tests.support.faults

tests.support.localsite serves a Site on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import functools
import html
import http
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate

__all__ = [
    "HTML",
    "DynamicHandler",
    "Link",
    "RawHandler",
    "Request",
    "Response",
    "Site",
    "build_site",
    "html_page",
    "response_head",
]

HTML = "text/html; charset=utf-8"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request as handlers see it; `path` is the raw target incl. query."""

    method: str
    path: str
    version: str
    headers: dict[str, str]  # lowercased names; repeated headers joined with ", "

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


HeadersLike = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Response:
    """What a page or dynamic handler answers; Content-Length, Date, Server are added."""

    status: int = 200
    headers: HeadersLike | None = None
    body: bytes | str = b""
    latency: float = 0.0  # seconds to wait before writing, on top of Site.default_latency


# A raw handler owns the connection: it writes whatever bytes it likes, may return the
# status it sent (for the record), and the connection is closed after it returns.
RawHandler = Callable[[Request, asyncio.StreamWriter], Awaitable[int | None]]
DynamicHandler = Callable[[Request], Response | Awaitable[Response]]
Link = str | tuple[str, str]  # an href, or (href, anchor text)


@dataclass(frozen=True, slots=True)
class DynamicRoute:
    """A route answered by fn(request) (Site.handler, Site.prefix)."""

    fn: DynamicHandler


@dataclass(frozen=True, slots=True)
class RawRoute:
    """A route whose handler owns the connection (Site.raw)."""

    fn: RawHandler


Route = Response | DynamicRoute | RawRoute


# --------------------------------------------------------------------------- HTML

_FILLER_WORDS = [
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod",
    "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim", "ad", "minim",
]  # fmt: skip


def _filler(n_bytes: int, seed: int = 0) -> str:
    """About n_bytes of ASCII prose; the seed only rotates the words so pages differ."""
    words = _FILLER_WORDS[seed % len(_FILLER_WORDS) :] + _FILLER_WORDS[: seed % len(_FILLER_WORDS)]
    text = " ".join(words) + ". "
    return (text * (n_bytes // len(text) + 1))[:n_bytes]


def html_page(
    title: str,
    links: Iterable[Link] = (),
    paragraphs: Iterable[str] = (),
    *,
    pad_to: int = 0,
) -> str:
    """A small valid HTML page: <title>, <h1>, paragraphs, one <a href> per link."""
    esc = html.escape
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">',
        f"<title>{esc(title)}</title></head>\n<body>\n<h1>{esc(title)}</h1>\n",
    ]
    parts.extend(f"<p>{esc(p)}</p>\n" for p in paragraphs)
    items = []
    for link in links:
        href, text = (link, link) if isinstance(link, str) else link
        items.append(f'<li><a href="{esc(href)}">{esc(text)}</a></li>\n')
    if items:
        parts.append("<ul>\n" + "".join(items) + "</ul>\n")
    tail = "</body>\n</html>\n"
    size = sum(len(p.encode()) for p in parts) + len(tail)
    if pad_to > size:
        # "<p>" + "</p>\n" is 8 bytes of markup around the filler
        parts.append(f"<p>{_filler(max(0, pad_to - size - 8), len(title))}</p>\n")
    parts.append(tail)
    return "".join(parts)


def status_page(status: int, message: str = "") -> bytes:
    """The tiny HTML body of an error or redirect response."""
    phrase = _reason(status)
    text = f"<!DOCTYPE html>\n<html><head><title>{status} {phrase}</title></head>"
    text += f"<body><h1>{status} {phrase}</h1>{html.escape(message)}</body></html>\n"
    return text.encode()


def to_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


# --------------------------------------------------------------------------- Site


class Site:
    """Routes keyed by exact request target (path + query), built fluently."""

    def __init__(self, *, default_latency: float = 0.0) -> None:
        # Read on every request, so a test may change it while the site is served.
        self.default_latency = default_latency
        self._routes: dict[str, Route] = {}
        self._prefixes: dict[str, DynamicRoute] = {}

    def page(
        self,
        path: str,
        *,
        title: str | None = None,
        links: Iterable[Link] = (),
        body: bytes | str | None = None,
        status: int = 200,
        content_type: str = HTML,
        headers: HeadersLike | None = None,
        latency: float = 0.0,
    ) -> Site:
        """A static response; without `body`, an HTML page titled `title` (or the path)."""
        if body is None:
            body = html_page(path if title is None else title, links)
        merged = [("Content-Type", content_type), *header_items(headers)]
        self._routes[path] = Response(status, merged, to_bytes(body), latency)
        return self

    def redirect(self, path: str, location: str, *, status: int = 301) -> Site:
        body = status_page(status, f"Moved to {location}")
        self._routes[path] = Response(status, [("Location", location), ("Content-Type", HTML)], body)
        return self

    def robots(self, text: str | None = None, *, status: int = 200, latency: float = 0.0) -> Site:
        """Serve /robots.txt (text None → empty); without this call it is a 404."""
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        self._routes["/robots.txt"] = Response(status, headers, (text or "").encode(), latency)
        return self

    def raw(self, path: str, handler: RawHandler) -> Site:
        """Hand the connection to `handler` for any method; it is closed afterwards."""
        self._routes[path] = RawRoute(handler)
        return self

    def handler(self, path: str, fn: DynamicHandler) -> Site:
        """Answer GET/HEAD with fn(request) (a Response, or an awaitable of one)."""
        self._routes[path] = DynamicRoute(fn)
        return self

    def prefix(self, prefix: str, fn: DynamicHandler) -> Site:
        """Answer every target starting with `prefix` (that no exact route takes) with fn(request).

        For endless generated spaces: `site.prefix("/cal?month=", calendar)`.  The longest
        matching prefix wins.
        """
        self._prefixes[prefix] = DynamicRoute(fn)
        return self

    def remove(self, path: str) -> Site:
        self._routes.pop(path, None)
        self._prefixes.pop(path, None)
        return self

    def paths(self) -> list[str]:
        return list(self._routes)

    def response(self, path: str) -> Response | None:
        """The static response at `path`; None for dynamic, raw or unknown paths."""
        route = self._routes.get(path)
        return route if isinstance(route, Response) else None

    def __contains__(self, path: object) -> bool:
        return path in self._routes

    def __len__(self) -> int:
        return len(self._routes)

    def lookup(self, path: str) -> Route | None:
        route = self._routes.get(path)
        if route is None and self._prefixes:
            matches = [p for p in self._prefixes if path.startswith(p)]
            if matches:
                route = self._prefixes[max(matches, key=len)]
        return route


def build_site(pages: int, *, links_per_page: int, seed: int = 0, page_bytes: int = 0) -> Site:
    """A deterministic site `/`, `/p/1` … `/p/N-1`, all reachable from `/`.

    Page i links first to page (i+1) mod N — that chain guarantees reachability — and
    then to distinct pages drawn from random.Random(seed), `links_per_page` in all
    (capped at N-1).  HTML is padded to about `page_bytes` when that is > 0.
    """
    if pages < 1:
        raise ValueError("pages must be >= 1")
    if links_per_page < 1 and pages > 1:
        raise ValueError("links_per_page must be >= 1 for the site to be reachable")
    rng = random.Random(seed)
    n_links = min(links_per_page, pages - 1)

    def path(i: int) -> str:
        return "/" if i == 0 else f"/p/{i}"

    site = Site()
    for i in range(pages):
        targets: list[int] = []
        if n_links:
            chain = (i + 1) % pages
            targets.append(chain)
            chosen = {i, chain}
            while len(targets) < n_links:
                # rejection sampling: cheap when n_links << pages, still terminates otherwise
                j = rng.randrange(pages)
                if j not in chosen:
                    chosen.add(j)
                    targets.append(j)
        title = "Home" if i == 0 else f"Page {i}"
        body = html_page(title, [path(j) for j in targets], pad_to=page_bytes)
        site.page(path(i), body=body)
    return site


# --------------------------------------------------------------------------- response heads


@functools.cache
def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def header_items(headers: HeadersLike | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


class _DateCache:
    """RFC 7231 Date values, formatted once per second (formatdate is slowish)."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, formatdate(now, usegmt=True)
        return self._value


_dates = _DateCache()


def response_head(status: int, headers: HeadersLike | None = None) -> bytes:
    """Status line + headers + blank line, for raw handlers; adds Date and Server."""
    lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Date: {_dates.get()}", "Server: localsite"]
    lines.extend(f"{k}: {v}" for k, v in header_items(headers))
    # UTF-8 rather than latin-1: real servers do send raw UTF-8 (e.g. in Location)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
