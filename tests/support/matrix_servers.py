"""The protocol matrix's Python servers: raw asyncio bytes, hypercorn, aiohttp and http.server, all on 127.0.0.1.

Every server answers the same paths (those it can), so one test parametrized by server reads
as one row of the matrix:

    /page               a plain 200 HTML page with a Content-Length (and the HEAD target)
    /chunked-trailers   the page chunked, with a trailer field after the last chunk
    /interim            100 Continue and 103 Early Hints, then the page
    /no-content         204;  /not-modified  304
    /close-delimited    HTTP/1.0, no length: the body ends when the connection closes
    /short-body         Content-Length SHORT_DECLARED, SHORT_SENT bytes sent, then the connection closed
    /drop-after         the page, then the connection closed though it looked kept alive
    /drop-next          the page; the next request on that connection is read and left unanswered (closed)
    /gzip /deflate /deflate-raw /br   the page under that Content-Encoding
    /big-header         the page with a BIG_HEADER_BYTES header value
    /accept-encoding    the request's Accept-Encoding as the body (what the client offers)
    /location-utf8 /location-latin1   (raw only) 302 to /café, its Location in UTF-8 or Latin-1 bytes
    /caf%C3%A9          (raw only) the page, where both of those lead

The asyncio servers (raw, hypercorn, aiohttp) share one event loop in a background thread, so
tests keep their own loop; http.server runs in its own thread. TLS is a trustme CA's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.server
import socket
import ssl
import threading
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import brotli
import trustme
from aiohttp import web
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

PAGE = (
    b"<!doctype html><html><head><title>matrix page</title></head><body>"
    + b"".join(b"<p>paragraph %d of the protocol matrix page</p>" % i for i in range(150))
    + b"</body></html>"
)
HTML = "text/html; charset=utf-8"
TRAILER = ("X-Matrix-Trailer", "done")
EARLY_HINT = "</style.css>; rel=preload; as=style"
BIG_HEADER_BYTES = 100 * 1024
SHORT_DECLARED = 100_000
SHORT_SENT = 1_000
ETAG = '"matrix"'


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


# path -> (Content-Encoding value, the page encoded with it)
ENCODED: dict[str, tuple[str, bytes]] = {
    "/gzip": ("gzip", gzip.compress(PAGE)),
    "/deflate": ("deflate", zlib.compress(PAGE)),  # RFC 9110's deflate: zlib-wrapped
    "/deflate-raw": ("deflate", _raw_deflate(PAGE)),  # what some servers send as deflate
    "/br": ("br", brotli.compress(PAGE)),
}


@dataclass(frozen=True, slots=True)
class Tls:
    """A private CA (ca_pem, for [http] ca_bundle) and a certificate for 127.0.0.1 served from cert_pem/key_pem."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    def server_context(self, alpn: list[str]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_pem, self.key_pem)
        ctx.set_alpn_protocols(alpn)
        return ctx


def make_tls(folder: Path) -> Tls:
    """A new trustme CA and a certificate for 127.0.0.1 and localhost, as world-readable files (nginx workers)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="crawler protocol matrix CA")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    tls = Tls(ca_pem=folder / "ca.pem", cert_pem=folder / "server.pem", key_pem=folder / "server.key")
    ca.cert_pem.write_to_path(str(tls.ca_pem))
    cert.private_key_pem.write_to_path(str(tls.key_pem))
    cert.cert_chain_pems[0].write_to_path(str(tls.cert_pem))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(tls.cert_pem), append=True)
    for path in (tls.ca_pem, tls.cert_pem, tls.key_pem):
        path.chmod(0o644)
    return tls


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where one server listens: its plain base URL and, if it serves TLS, its https one."""

    http: str
    https: str | None = None


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 on a port the OS picked."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _base(scheme: str, sock: socket.socket) -> str:
    return f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"


T = TypeVar("T")
Stop = Callable[[], Coroutine[Any, Any, None]]  # stops a server started on a LoopThread


class LoopThread:
    """An event loop in a daemon thread, for servers that must not share the test's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="matrix-servers", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# --------------------------------------------------------------------------- raw asyncio server


def _head(status_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [status_line, *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _page_head(extra: list[tuple[str, str]] | None = None, length: int = len(PAGE)) -> bytes:
    return _head("HTTP/1.1 200 OK", [("Content-Type", HTML), ("Content-Length", str(length)), *(extra or [])])


def _chunked(body: bytes, size: int = 1000) -> bytes:
    pieces = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(pieces) + b"0\r\n%s: %s\r\n\r\n" % (TRAILER[0].encode(), TRAILER[1].encode())


async def _raw_answer(
    method: str, path: str, headers: dict[str, str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Write the answer to one request; whether the connection carries on."""
    body = b"" if method == "HEAD" else PAGE
    if path in NON_ASCII_LOCATIONS:
        head = b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % NON_ASCII_LOCATIONS[path]
        writer.write(head)
        return True
    if path == "/caf%C3%A9":
        path = "/page"
    if path in ("/page", "/drop-after", "/drop-next"):
        writer.write(_page_head() + body)
        if path == "/drop-next":
            await writer.drain()
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await reader.readuntil(b"\r\n\r\n")  # the next request: read, then dropped unanswered
                dropped_unanswered[path] = dropped_unanswered.get(path, 0) + 1
        return path == "/page"
    if path == "/chunked-trailers":
        writer.write(_head("HTTP/1.1 200 OK", [("Content-Type", HTML), ("Transfer-Encoding", "chunked"),
                                                ("Trailer", TRAILER[0])]) + _chunked(PAGE))  # fmt: skip
    elif path == "/interim":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + _head("HTTP/1.1 103 Early Hints", [("Link", EARLY_HINT)]))
        await writer.drain()  # the interim answers arrive on their own, before the real one
        writer.write(_page_head() + body)
    elif path == "/no-content":
        writer.write(_head("HTTP/1.1 204 No Content", []))
    elif path == "/not-modified":
        writer.write(_head("HTTP/1.1 304 Not Modified", [("ETag", ETAG)]))
    elif path == "/close-delimited":
        writer.write(_head("HTTP/1.0 200 OK", [("Content-Type", HTML)]) + body)
        return False
    elif path == "/short-body":
        writer.write(_page_head(length=SHORT_DECLARED) + PAGE[:SHORT_SENT])
        return False
    elif path in ENCODED:
        coding, encoded = ENCODED[path]
        writer.write(_page_head([("Content-Encoding", coding)], len(encoded)) + encoded)
    elif path == "/big-header":
        writer.write(_page_head([("X-Big", "b" * BIG_HEADER_BYTES)]) + body)
    elif path == "/accept-encoding":
        offered = headers.get("accept-encoding", "").encode()
        writer.write(_head("HTTP/1.1 200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(offered)))]))
        writer.write(offered)
    else:
        writer.write(_head("HTTP/1.1 404 Not Found", [("Content-Length", "0")]))
    return True


# path -> the bytes of its Location: /café, as UTF-8 and as Latin-1
NON_ASCII_LOCATIONS = {"/location-utf8": "/café".encode(), "/location-latin1": "/café".encode("latin-1")}
dropped_unanswered: dict[str, int] = {}  # "/drop-next" -> requests the raw server read and left unanswered
_raw_writers: set[asyncio.StreamWriter] = set()  # open raw connections, closed when the server stops


async def _raw_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _raw_writers.add(writer)
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            keep = await _raw_answer(method, target, headers, reader, writer)
            await writer.drain()
            if not keep:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
        pass
    finally:
        _raw_writers.discard(writer)
        writer.close()


async def start_raw(tls: Tls) -> tuple[Endpoints, Stop]:
    """The raw server on a plain and a TLS port (HTTP/1.1 by ALPN); returns its endpoints and its stop."""
    plain_sock, tls_sock = listening_socket(), listening_socket()
    endpoints = Endpoints(_base("http", plain_sock), _base("https", tls_sock))
    plain = await asyncio.start_server(_raw_connection, sock=plain_sock)
    secure = await asyncio.start_server(_raw_connection, sock=tls_sock, ssl=tls.server_context(["http/1.1"]))

    async def stop() -> None:
        for server in (plain, secure):
            server.close()
        for writer in list(_raw_writers):
            writer.close()

    return endpoints, stop


# --------------------------------------------------------------------------- hypercorn (ASGI)

Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _asgi_app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    extensions = scope.get("extensions") or {}

    async def start(status: int, headers: list[tuple[str, str]], **more: Any) -> None:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw, **more})

    async def body(data: bytes, more: bool = False) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": more})

    page_headers = [("content-type", HTML), ("content-length", str(len(PAGE)))]
    if path == "/page":
        await start(200, page_headers)
        await body(PAGE)
    elif path == "/chunked-trailers":
        # hypercorn sends trailers over HTTP/2 and only to a client that sent `TE: trailers`.
        trailers = "http.response.trailers" in extensions
        await start(200, [("content-type", HTML), ("trailer", TRAILER[0])], trailers=trailers)
        for i in range(0, len(PAGE), 1000):
            await body(PAGE[i : i + 1000], more=True)
        await body(b"")
        if trailers:
            await send({"type": "http.response.trailers", "headers": [(TRAILER[0].lower().encode(), b"done")]})
    elif path == "/interim":
        if "http.response.early_hint" in extensions:  # HTTP/2 only
            await send({"type": "http.response.early_hint", "links": [EARLY_HINT.encode()]})
        await start(200, page_headers)
        await body(PAGE)
    elif path == "/no-content":
        await start(204, [])
        await body(b"")
    elif path == "/not-modified":
        await start(304, [("etag", ETAG)])
        await body(b"")
    elif path == "/short-body":
        await start(200, [("content-type", HTML), ("content-length", str(SHORT_DECLARED))])
        await body(PAGE[:SHORT_SENT])
    elif path in ENCODED:
        coding, encoded = ENCODED[path]
        await start(200, [("content-type", HTML), ("content-encoding", coding), ("content-length", str(len(encoded)))])
        await body(encoded)
    elif path == "/big-header":
        await start(200, [*page_headers, ("x-big", "b" * BIG_HEADER_BYTES)])
        await body(PAGE)
    elif path == "/accept-encoding":
        offered = dict(scope["headers"]).get(b"accept-encoding", b"")
        await start(200, [("content-type", "text/plain"), ("content-length", str(len(offered)))])
        await body(offered)
    else:
        await start(404, [("content-length", "0")])
        await body(b"")


async def start_hypercorn(tls: Tls) -> tuple[Endpoints, Stop]:
    """hypercorn on a plain port (HTTP/1.1) and a TLS port (HTTP/2 and HTTP/1.1 by ALPN)."""
    plain_sock, tls_sock = listening_socket(), listening_socket()
    endpoints = Endpoints(_base("http", plain_sock), _base("https", tls_sock))
    config = HypercornConfig()
    config.insecure_bind = [f"fd://{plain_sock.detach()}"]  # hypercorn owns (and closes) the sockets
    config.bind = [f"fd://{tls_sock.detach()}"]
    config.certfile, config.keyfile = str(tls.cert_pem), str(tls.key_pem)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = config.errorlog = None
    stopping = asyncio.Event()
    task = asyncio.ensure_future(serve(_asgi_app, config, shutdown_trigger=stopping.wait))  # type: ignore[arg-type]

    async def stop() -> None:
        stopping.set()
        await asyncio.wait_for(task, 10)

    return endpoints, stop


# --------------------------------------------------------------------------- aiohttp


async def _aiohttp_handler(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path == "/page":
        return web.Response(body=PAGE, content_type="text/html", charset="utf-8")
    if path == "/no-content":
        return web.Response(status=204)
    if path == "/not-modified":
        return web.Response(status=304, headers={"ETag": ETAG})
    if path in ("/gzip", "/deflate"):  # aiohttp's own compressor
        response = web.Response(body=PAGE, content_type="text/html", charset="utf-8")
        response.enable_compression(web.ContentCoding.gzip if path == "/gzip" else web.ContentCoding.deflate)
        return response
    if path in ENCODED:
        coding, encoded = ENCODED[path]
        return web.Response(body=encoded, headers={"Content-Type": HTML, "Content-Encoding": coding})
    if path == "/big-header":
        return web.Response(body=PAGE, headers={"Content-Type": HTML, "X-Big": "b" * BIG_HEADER_BYTES})
    if path == "/accept-encoding":
        return web.Response(text=request.headers.get("Accept-Encoding", ""))
    raise web.HTTPNotFound()


async def start_aiohttp(tls: Tls) -> tuple[Endpoints, Stop]:
    """aiohttp's server on a plain and a TLS port (HTTP/1.1)."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", _aiohttp_handler)  # HEAD too (allow_head)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    plain_sock, tls_sock = listening_socket(), listening_socket()
    endpoints = Endpoints(_base("http", plain_sock), _base("https", tls_sock))
    await web.SockSite(runner, plain_sock).start()
    await web.SockSite(runner, tls_sock, ssl_context=tls.server_context(["http/1.1"])).start()
    return endpoints, runner.cleanup


# --------------------------------------------------------------------------- http.server


class _StdlibHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _page(self, extra: list[tuple[str, str]] | None = None, *, with_body: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", HTML)
        self.send_header("Content-Length", str(len(PAGE)))
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(PAGE)

    def do_HEAD(self) -> None:
        self._page(with_body=False)

    def do_GET(self) -> None:
        path = self.path
        if path == "/page":
            self._page()
        elif path == "/interim":
            self.send_response_only(100)
            self.end_headers()
            self.send_response_only(103)
            self.send_header("Link", EARLY_HINT)
            self.end_headers()
            self._page()
        elif path in ("/no-content", "/not-modified"):
            self.send_response(204 if path == "/no-content" else 304)
            if path == "/not-modified":
                self.send_header("ETag", ETAG)
            self.end_headers()
        elif path == "/close-delimited":
            self.protocol_version = "HTTP/1.0"  # the status line says 1.0; no length: the close ends the body
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", HTML)
            self.end_headers()
            self.wfile.write(PAGE)
        elif path == "/drop-after":
            self._page()
            self.close_connection = True  # closed after the answer, with no `Connection: close` to warn
        elif path == "/deflate-raw":
            coding, encoded = ENCODED[path]
            self.send_response(200)
            self.send_header("Content-Type", HTML)
            self.send_header("Content-Encoding", coding)
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)
        elif path == "/big-header":
            self._page([("X-Big", "b" * BIG_HEADER_BYTES)])
        elif path == "/accept-encoding":
            offered = (self.headers.get("Accept-Encoding") or "").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(offered)))
            self.end_headers()
            self.wfile.write(offered)
        else:
            self.send_error(404)


class StdlibServer:
    """http.server's ThreadingHTTPServer in a daemon thread, plain http only."""

    def __init__(self) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StdlibHandler)
        self._server.daemon_threads = True
        self.endpoints = Endpoints(f"http://127.0.0.1:{self._server.server_address[1]}")
        self._thread = threading.Thread(target=self._server.serve_forever, name="matrix-http.server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
