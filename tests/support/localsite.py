"""An in-memory HTTP/1.1 site served on 127.0.0.1, with request recording and fault injection, for tests and the demo.

    site = Site().page("/", title="Home", links=["/a"]).page("/a", latency=0.2)
    site.raw("/broken", reset_mid_body())
    with SiteServer(site) as server:
        ...  # crawl server.url
        assert server.max_in_flight == 1

The server runs its own asyncio loop in a background thread, so synchronous tests,
async tests and crawler subprocesses can all talk to it.  Every request is recorded
(`server.requests`) with monotonic start/end times and the concurrency it met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import html
import http
import inspect
import logging
import random
import re
import signal
import socket
import ssl as ssl_module
import struct
import sys
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate

__all__ = [
    "DynamicHandler",
    "Link",
    "RawHandler",
    "Request",
    "RequestRecord",
    "Response",
    "Site",
    "SiteServer",
    "bomb_body",
    "build_site",
    "deflate_bomb_body",
    "empty_reply",
    "gzip_bomb",
    "gzip_bomb_body",
    "html_page",
    "raw_bytes",
    "reset_connection",
    "reset_mid_body",
    "response_head",
    "retry_after",
    "trickle",
]

log = logging.getLogger(__name__)

HTML = "text/html; charset=utf-8"
_MAX_HEAD = 64 * 1024  # request line + headers; beyond this → 431
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NO_BODY_STATUSES = frozenset({204, 304})
_ONE_SEND = 16 * 1024  # responses up to this size are handed to the kernel in one write


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


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What the server saw of one request; times are time.monotonic()."""

    path: str
    method: str
    headers: dict[str, str]
    start: float  # request head fully received
    end: float  # response handed to the socket (see _respond), or connection aborted
    in_flight_at_start: int  # requests being served at `start`, this one included
    status: int  # status sent; 0 if none (raw handler that returned None, or aborted early)

    @property
    def duration(self) -> float:
        return self.end - self.start


# A raw handler owns the connection: it writes whatever bytes it likes, may return the
# status it sent (for the record), and the connection is closed after it returns.
RawHandler = Callable[[Request, asyncio.StreamWriter], Awaitable[int | None]]
DynamicHandler = Callable[[Request], Response | Awaitable[Response]]
Link = str | tuple[str, str]  # an href, or (href, anchor text)


@dataclass(frozen=True, slots=True)
class _Dynamic:
    fn: DynamicHandler


@dataclass(frozen=True, slots=True)
class _Raw:
    fn: RawHandler


_Route = Response | _Dynamic | _Raw


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


def _tiny_html(status: int, message: str = "") -> bytes:
    phrase = _reason(status)
    text = f"<!DOCTYPE html>\n<html><head><title>{status} {phrase}</title></head>"
    text += f"<body><h1>{status} {phrase}</h1>{html.escape(message)}</body></html>\n"
    return text.encode()


def _to_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


# --------------------------------------------------------------------------- Site


class Site:
    """Routes keyed by exact request target (path + query), built fluently."""

    def __init__(self, *, default_latency: float = 0.0) -> None:
        # Read on every request, so a test may change it while the site is served.
        self.default_latency = default_latency
        self._routes: dict[str, _Route] = {}
        self._prefixes: dict[str, _Dynamic] = {}

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
        merged = [("Content-Type", content_type), *_header_items(headers)]
        self._routes[path] = Response(status, merged, _to_bytes(body), latency)
        return self

    def redirect(self, path: str, location: str, *, status: int = 301) -> Site:
        body = _tiny_html(status, f"Moved to {location}")
        self._routes[path] = Response(status, [("Location", location), ("Content-Type", HTML)], body)
        return self

    def robots(self, text: str | None = None, *, status: int = 200, latency: float = 0.0) -> Site:
        """Serve /robots.txt (text None → empty); without this call it is a 404."""
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        self._routes["/robots.txt"] = Response(status, headers, (text or "").encode(), latency)
        return self

    def raw(self, path: str, handler: RawHandler) -> Site:
        """Hand the connection to `handler` for any method; it is closed afterwards."""
        self._routes[path] = _Raw(handler)
        return self

    def handler(self, path: str, fn: DynamicHandler) -> Site:
        """Answer GET/HEAD with fn(request) (a Response, or an awaitable of one)."""
        self._routes[path] = _Dynamic(fn)
        return self

    def prefix(self, prefix: str, fn: DynamicHandler) -> Site:
        """Answer every target starting with `prefix` (that no exact route takes) with fn(request).

        For endless generated spaces: `site.prefix("/cal?month=", calendar)`.  The longest
        matching prefix wins.
        """
        self._prefixes[prefix] = _Dynamic(fn)
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

    def _lookup(self, path: str) -> _Route | None:
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


# --------------------------------------------------------------------------- wire helpers


@functools.cache
def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _header_items(headers: HeadersLike | None) -> list[tuple[str, str]]:
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
    lines.extend(f"{k}: {v}" for k, v in _header_items(headers))
    # UTF-8 rather than latin-1: real servers do send raw UTF-8 (e.g. in Location)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _encode_response(resp: Response, *, head_only: bool, close: bool, keep_alive_10: bool) -> bytes:
    body = _to_bytes(resp.body)
    items = _header_items(resp.headers)
    names = {k.lower() for k, _ in items}
    extra: list[tuple[str, str]] = []
    if resp.status in _NO_BODY_STATUSES or 100 <= resp.status < 200:
        body = b""
    else:
        if "content-length" not in names:  # a handler may lie on purpose
            extra.append(("Content-Length", str(len(body))))
        if body and "content-type" not in names:
            extra.append(("Content-Type", HTML))
    if "connection" not in names:  # else the response chose its own (see _response_closes)
        if close:
            extra.append(("Connection", "close"))
        elif keep_alive_10:
            extra.append(("Connection", "keep-alive"))
    head = response_head(resp.status, items + extra)
    return head if head_only else head + body


def _parse_head(head: bytes) -> Request | None:
    """Request line + headers, or None when malformed."""
    try:
        text = head.decode("latin-1").lstrip("\r\n")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or version not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    if target.startswith(("http://", "https://")):  # absolute-form → origin-form
        slash = target.find("/", target.find("//") + 2)
        target = "/" if slash < 0 else target[slash:]
    if not target.startswith("/") or any(c in target for c in " \t"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            return None
        key, value = name.lower(), value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Request(method, target, version, headers)


def _wants_keep_alive(req: Request) -> bool:
    tokens = {t.strip().lower() for t in req.headers.get("connection", "").split(",")}
    if "close" in tokens:
        return False
    return req.version == "HTTP/1.1" or "keep-alive" in tokens


def _response_closes(resp: Response) -> bool:
    return any(k.lower() == "connection" and "close" in v.lower() for k, v in _header_items(resp.headers))


# --------------------------------------------------------------------------- faults


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Abort with a TCP RST (SO_LINGER 0 + close) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def reset_mid_body(declared: int = 100_000, sent: int = 1000) -> RawHandler:
    """Promise `declared` body bytes, send `sent` of them, then RST the connection."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> int:
        writer.write(response_head(200, [("Content-Type", HTML), ("Content-Length", str(declared))]))
        if request.method != "HEAD":
            writer.write(b"<" + b"x" * max(0, sent - 1) if sent else b"")
        await writer.drain()  # the partial body must reach the peer before the RST
        reset_connection(writer)
        return 200

    return handler


def empty_reply() -> RawHandler:
    """Close the connection without sending a single byte."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.close()

    return handler


def raw_bytes(data: bytes, *, reset: bool = False) -> RawHandler:
    """Send `data` verbatim (e.g. a malformed status line), then close or RST."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if reset:
            reset_connection(writer)

    return handler


def trickle(total_bytes: int, bytes_per_second: float, *, content_type: str = "text/plain") -> RawHandler:
    """A correct response whose body dribbles out at `bytes_per_second`."""
    if bytes_per_second <= 0:
        raise ValueError("bytes_per_second must be > 0")
    chunk = max(1, int(bytes_per_second // 20))  # ~20 writes a second

    async def handler(request: Request, writer: asyncio.StreamWriter) -> int:
        headers = [("Content-Type", content_type), ("Content-Length", str(total_bytes)), ("Connection", "close")]
        writer.write(response_head(200, headers))
        await writer.drain()
        if request.method == "HEAD":
            return 200
        loop = asyncio.get_running_loop()
        t0, sent = loop.time(), 0
        while sent < total_bytes:
            n = min(chunk, total_bytes - sent)
            writer.write(b"." * n)
            await writer.drain()
            sent += n
            # pace against the start time so per-write overheads don't accumulate
            await asyncio.sleep(max(0.0, t0 + sent / bytes_per_second - loop.time()))
        return 200

    return handler


_ZEROS = bytes(1 << 20)


def _deflate_zeros(inflated_bytes: int) -> bytes:
    """Raw deflate of `inflated_bytes` zeros (~1000:1) without compressing them all.

    After Z_FULL_FLUSH the deflate state is reset, so every MiB of zeros compresses to
    the same block: compress one, repeat it, finish with the remainder.
    """
    n_blocks, rest = divmod(inflated_bytes, len(_ZEROS))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(_ZEROS) + comp.flush(zlib.Z_FULL_FLUSH) if n_blocks else b""
    tail = comp.compress(_ZEROS[:rest]) + comp.flush(zlib.Z_FINISH)
    return block * n_blocks + tail


def _checksum_zeros(fn: Callable[[bytes, int], int], start: int, inflated_bytes: int) -> int:
    n_blocks, rest = divmod(inflated_bytes, len(_ZEROS))
    value = start
    for _ in range(n_blocks):
        value = fn(_ZEROS, value)
    return fn(_ZEROS[:rest], value)


@functools.lru_cache(maxsize=8)
def gzip_bomb_body(inflated_bytes: int) -> bytes:
    """A gzip member that inflates to `inflated_bytes` zeros (~1000:1); ~0.25 s per GiB.

    Only the CRC has to walk the whole length.
    """
    crc = _checksum_zeros(zlib.crc32, 0, inflated_bytes)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # magic, deflate, no flags, mtime 0
    trailer = struct.pack("<II", crc, inflated_bytes & 0xFFFFFFFF)
    return b"".join([header, _deflate_zeros(inflated_bytes), trailer])


@functools.lru_cache(maxsize=8)
def deflate_bomb_body(inflated_bytes: int) -> bytes:
    """A zlib stream (HTTP's `deflate`) that inflates to `inflated_bytes` zeros (~1000:1)."""
    adler = _checksum_zeros(zlib.adler32, 1, inflated_bytes)
    return b"".join([b"\x78\xda", _deflate_zeros(inflated_bytes), struct.pack(">I", adler)])


def bomb_body(inflated_bytes: int, encodings: Sequence[str] = ("gzip",)) -> bytes:
    """Zeros compressed with each Content-Encoding in turn (the first is applied first).

    Stacking helps an attacker: the inner bomb is itself repetitive, so `gzip, gzip` sends
    a few KB that inflate to megabytes of gzip that inflate to gigabytes.
    """
    if not encodings:
        raise ValueError("at least one encoding")
    first, *rest = encodings
    body = gzip_bomb_body(inflated_bytes) if first == "gzip" else deflate_bomb_body(inflated_bytes)
    for encoding in rest:
        wbits = 31 if encoding == "gzip" else 15
        comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
        body = comp.compress(body) + comp.flush()
    return body


def gzip_bomb(inflated_bytes: int, *, content_type: str = HTML, encodings: Sequence[str] = ("gzip",)) -> RawHandler:
    """A compressed response that inflates to `inflated_bytes`; `encodings` may be e.g. ("deflate",)."""
    for encoding in encodings:
        if encoding not in ("gzip", "deflate"):
            raise ValueError(f"unsupported encoding {encoding!r}")
    body = bomb_body(inflated_bytes, encodings)
    headers = [
        ("Content-Type", content_type),
        ("Content-Encoding", ", ".join(encodings)),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]

    async def handler(request: Request, writer: asyncio.StreamWriter) -> int:
        writer.write(response_head(200, headers))
        if request.method != "HEAD":
            writer.write(body)
        await writer.drain()
        return 200

    return handler


def retry_after(
    value: str | int,
    status: int = 429,
    then: Response | None = None,
    *,
    times: int = 1,
) -> DynamicHandler:
    """For Site.handler: `times` answers of `status` + Retry-After, then `then` (or 200)."""
    calls = 0  # only touched on the server loop, so no lock
    final = then or Response(200, [("Content-Type", HTML)], html_page("OK"))

    def handler(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls <= times:
            return Response(status, [("Retry-After", str(value))], _tiny_html(status))
        return final

    return handler


# --------------------------------------------------------------------------- server


class SiteServer:
    """Serves one Site on 127.0.0.1:<ephemeral> from a thread with its own event loop."""

    def __init__(self, site: Site, *, host: str = "127.0.0.1", ssl: ssl_module.SSLContext | None = None) -> None:
        """ssl: a server context (e.g. from `trustme`) to serve https:// instead of http://."""
        self.site = site
        self.host = host
        self._ssl = ssl
        self._port = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._closing = False
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # recording; RLock-based so wait_for predicates may call count()/paths()
        self._cond = threading.Condition(threading.RLock())
        self._slots: list[RequestRecord | None] = []  # arrival order; filled on completion
        self._in_flight = 0
        self._max_in_flight = 0

    # ----- lifecycle

    def start(self, timeout: float = 10.0) -> SiteServer:
        """Start serving; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("SiteServer already started")
        self._thread = threading.Thread(target=self._run, name="localsite", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("localsite did not start")
        if self._error is not None:
            self._thread.join(timeout)
            raise RuntimeError("localsite failed to start") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection, then join the thread. Idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            # RuntimeError: the loop is already closed, so the thread is ending anyway
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("localsite thread did not stop")

    def __enter__(self) -> SiteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self.host}:{self._port}"

    @property
    def host_key(self) -> str:
        return f"{self.host}:{self._port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    # ----- recording

    @property
    def requests(self) -> list[RequestRecord]:
        """Completed requests, in arrival order (a snapshot).

        A normal response is recorded before the client can finish reading it, so no
        waiting is needed; a raw handler's request is recorded when the handler returns,
        which a client may notice first, so use wait_for() for those.
        """
        with self._cond:
            return [r for r in self._slots if r is not None]

    def paths(self) -> list[str]:
        """Paths of completed requests, in arrival order."""
        return [r.path for r in self.requests]

    def count(self, path: str) -> int:
        with self._cond:
            return sum(1 for r in self._slots if r is not None and r.path == path)

    @property
    def in_flight(self) -> int:
        """Requests received whose response is not yet written."""
        with self._cond:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._cond:
            return self._max_in_flight

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until predicate() holds (re-checked whenever a request starts or ends)."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def clear(self) -> None:
        """Forget recorded requests and reset max_in_flight to the current in-flight count."""
        with self._cond:
            self._slots = []
            self._max_in_flight = self._in_flight

    def _begin(self) -> tuple[list[RequestRecord | None], int, float, int]:
        start = time.monotonic()
        with self._cond:
            self._in_flight += 1
            n = self._in_flight
            self._max_in_flight = max(self._max_in_flight, n)
            slots = self._slots
            slots.append(None)
            self._cond.notify_all()
        return slots, len(slots) - 1, start, n

    def _end(self, token: tuple[list[RequestRecord | None], int, float, int], req: Request, status: int) -> None:
        slots, index, start, n = token
        record = RequestRecord(req.path, req.method, req.headers, start, time.monotonic(), n, status)
        with self._cond:
            self._in_flight -= 1
            slots[index] = record  # after clear() this lands in the discarded list
            self._cond.notify_all()

    # ----- event loop side

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to start() if we never got ready
            self._error = exc
            if self._ready.is_set():
                log.exception("localsite crashed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._on_connect, self.host, 0, backlog=1024, limit=_MAX_HEAD, ssl=self._ssl
        )
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            self._closing = True
            server.close()
            await self._close_connections()
            await server.wait_closed()

    async def _close_connections(self) -> None:
        while self._conns:
            tasks = list(self._conns)
            for task, writer in list(self._conns.items()):
                # An empty buffer closes at once with a FIN; a busy one (trickle to a
                # peer that stopped reading) would wait forever, so it is aborted.
                if writer.transport.get_write_buffer_size():
                    writer.transport.abort()
                else:
                    writer.close()
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            if pending:
                log.warning("localsite: %d connections did not close", len(pending))
                return

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            writer.transport.abort()
            return
        self._conns[task] = writer
        # high-water 0: drain() returns only once the kernel has every byte, which is what
        # `end` of a large response and a fault's "reach the peer before the RST" rely on
        writer.transport.set_write_buffer_limits(high=0)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            writer.transport.abort()
        except Exception:
            log.exception("localsite: connection handler failed")
        finally:
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self._conns.pop(task, None)

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True if the connection stays open for another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # clean EOF between requests (or a truncated head)
        except asyncio.LimitOverrunError:
            await self._reject(writer, Request("", "", "HTTP/1.1", {}), 431)
            return False
        req = _parse_head(head)
        if req is None:
            await self._reject(writer, Request("", "", "HTTP/1.1", {}), 400)
            return False
        if "transfer-encoding" in req.headers:
            await self._reject(writer, req, 400)  # request bodies are never chunked here
            return False
        length = req.headers.get("content-length", "0")
        if not length.isdigit():
            await self._reject(writer, req, 400)
            return False
        if int(length):
            await reader.readexactly(int(length))  # discard, keeping the stream in sync
        return await self._respond(req, writer)

    async def _reject(self, writer: asyncio.StreamWriter, req: Request, status: int) -> None:
        token = self._begin()
        try:
            resp = Response(status, None, _tiny_html(status))
            writer.write(_encode_response(resp, head_only=False, close=True, keep_alive_10=False))
            await writer.drain()
        finally:
            self._end(token, req, status)

    async def _respond(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        token = self._begin()
        status = 0
        try:
            if self.site.default_latency > 0:
                await asyncio.sleep(self.site.default_latency)  # simulated slow server
            route = self.site._lookup(req.path)
            if isinstance(route, _Raw):
                try:
                    status = await route.fn(req, writer) or 0
                    if not writer.is_closing():
                        await writer.drain()
                except ConnectionError:
                    pass
                return False
            resp = await self._resolve(req, route)
            if resp.latency > 0:
                await asyncio.sleep(resp.latency)
            status = resp.status
            close = not _wants_keep_alive(req) or _response_closes(resp)
            keep_alive_10 = req.version == "HTTP/1.0"
            data = _encode_response(resp, head_only=req.method == "HEAD", close=close, keep_alive_10=keep_alive_10)
            # Record before the client can have the whole response, so a test that has read
            # it always finds it in server.requests and never sees it still in flight.  A
            # small response goes to the kernel in one send() right after; a large one is
            # written but for its last byte first, so `end` still means "written".
            if len(data) > _ONE_SEND:
                writer.write(data[:-1])
                await writer.drain()
                data = data[-1:]
        finally:
            self._end(token, req, status)
        writer.write(data)
        await writer.drain()
        return not close

    async def _resolve(self, req: Request, route: _Route | None) -> Response:
        if req.method not in ("GET", "HEAD"):
            return Response(405, [("Allow", "GET, HEAD")], _tiny_html(405))
        if route is None:
            return Response(404, None, _tiny_html(404, f"No page at {req.path}"))
        if isinstance(route, _Dynamic):
            try:
                result = route.fn(req)
                return await result if inspect.isawaitable(result) else result
            except Exception:
                log.exception("localsite: handler for %s failed", req.path)
                return Response(500, None, _tiny_html(500))
        assert isinstance(route, Response)
        return route


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.localsite", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--links", type=int, default=5, help="links per page")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every response")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--page-bytes", type=int, default=0)
    parser.add_argument("--demo", action="store_true", help="serve the bundled demo site instead")
    args = parser.parse_args(argv)
    if args.demo:
        from crawler.demo import build_demo_site

        site = build_demo_site()
    else:
        site = build_site(args.pages, links_per_page=args.links, seed=args.seed, page_bytes=args.page_bytes)
    site.default_latency = args.latency
    # SIGTERM → SystemExit, so the `with` below closes connections on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with SiteServer(site) as server:
        print(server.url, flush=True)  # the one stdout line a parent process waits for
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()  # serve until killed
    return 0


if __name__ == "__main__":
    # Run the importable copy, not this __main__ one, so Site/Response classes are the
    # same objects crawler.demo uses.
    from tests.support import localsite

    sys.exit(localsite.main())
