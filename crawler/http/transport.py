"""Plain-http transport: httpx's transport interface over asyncio protocols and httptools' HTTP/1.1 parser.

Per request it writes the request head and feeds llhttp (C, through httptools) what arrives,
and little else, so the crawl's fetch path stays cheap (bench/transport_cost.py measures it).
One keep-alive pool per origin, under httpx.Limits. A request that ProxyRules sends through a
proxy goes to it in absolute form, on connections pooled per proxy. New connections take their
addresses from a DnsCache and race them with happy eyeballs (RFC 8305).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import AsyncIterator

import httptools
import httpx

from crawler.http.conventions import (
    BEFORE_RESEND,
    HAPPY_EYEBALLS_DELAY,
    MAX_HEAD_BYTES,
    ON_SENT,
    RETRY_ON_STALE,
    ResponseError,
    request_head,
)
from crawler.http.proxies import ProxyError, ProxyRules, basic_credentials
from crawler.http.resolver import DnsCache, open_socket

# Above this many unread body bytes a connection stops reading from its socket until the
# reader catches up, so a fast server cannot fill memory faster than the crawl reads.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_HTTP_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}

_Origin = tuple[str, int, bool]  # host, port, whether it is a proxy (requests in absolute form)


class _HeadTooBig(Exception):
    """A response head above MAX_HEAD_BYTES arrived whole, in one read."""


class _Surplus(Exception):
    """Bytes after the end of a response, before the next request."""


class _Stale(Exception):
    """A reused keep-alive connection closed before any byte of the answer: the server had dropped it."""


class _Connection(asyncio.Protocol):
    """One TCP connection, carrying one request at a time."""

    def __init__(self, pool: H1Transport, origin: _Origin) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()  # where the protocol's callbacks run
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = float("-inf")  # set when the connection goes idle; never idle counts as expired
        self.used = False  # has answered a request before
        self._parser = httptools.HttpResponseParser(self)
        self._active = False
        self._start()

    def _start(self) -> None:
        """State for the next response."""
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._got_bytes = False
        self._head_bytes = 0  # bytes read while the head was unfinished
        self._head_size = 0  # the parsed head's status line and headers
        self._body_bytes = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._head_only = False

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._active:  # bytes nobody asked for: this connection cannot be trusted again
            self._close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ResponseError("malformed response: an unasked-for protocol upgrade"))
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooBig):
                self._fail(ResponseError(f"malformed response: status line and headers above {MAX_HEAD_BYTES:,} bytes"))
                return
            if self.complete:  # bytes after the whole response (see on_message_begin)
                self._close()
                return
            start = data.split(b"\r\n", 1)[0][:80] if not self.head_done and not self._head_bytes else None
            where = f" in {start!r}" if start is not None else ""
            self._fail(ResponseError(f"malformed response: {exc}{where}"))
            return
        if not self.head_done:  # llhttp keeps what it has of an unfinished header: bound it
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(ResponseError(f"malformed response: status line and headers above {MAX_HEAD_BYTES:,} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._active or self.complete or self.error is not None:
            return
        reset = "; connection reset by peer" if isinstance(exc, ConnectionResetError) else ""
        if not self._got_bytes and self.used:
            self.error = _Stale()
        elif not self.head_done:
            what = "without a response" if not self._got_bytes else "in the middle of the response head"
            self.error = ResponseError(f"connection broken: the server closed the connection {what}{reset}")
        elif self._delimited_by_close():
            self.complete = True  # HTTP/1.0 style: the body ends where the connection does
        else:
            length = self._content_length()
            of = f" of {length:,}" if length is not None else " (chunked)"
            self.error = ResponseError(f"body cut short: received {self._body_bytes:,}{of} bytes{reset}")
        self._wake()

    # ---- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: keep the first, drop the connection
            raise _Surplus

    def on_status(self, reason: bytes) -> None:
        self.reason += reason
        self._head_size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        # The bound in data_received sees only heads still unfinished after a read; this one sees a whole head.
        if self._head_size > MAX_HEAD_BYTES:
            raise _HeadTooBig
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self.headers = []
            self._head_size = 0
            self.reason = b""
            return
        self.status = status
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._body_bytes += len(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:  # the end of an interim answer
            return
        self.keep_alive = self._parser.should_keep_alive()  # valid only until the next message starts
        self.complete = True
        self._wake()

    # ---- for the transport and the body stream ---------------------------------------------

    def _header(self, wanted: bytes) -> bytes | None:
        for name, value in self.headers:
            if name.lower() == wanted:
                return value
        return None

    def _content_length(self) -> int | None:
        value = self._header(b"content-length")
        return int(value) if value is not None and value.strip().isdigit() else None

    def _delimited_by_close(self) -> bool:
        return self._header(b"content-length") is None and self._header(b"transfer-encoding") is None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._close()
        self._wake()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, head: bytes, body: bytes, head_only: bool) -> None:
        self._start()
        self._active = True
        self._head_only = head_only
        assert self.transport is not None
        self.transport.write(head + body if body else head)

    async def wait(self, read_timeout: float | None) -> None:
        """Until something arrives (the head, body bytes, the end) or goes wrong; ReadTimeout after read_timeout."""
        if self.error is not None:
            raise self.error
        loop = self._loop
        self._waiter = waiter = loop.create_future()
        timer = None if read_timeout is None else loop.call_later(read_timeout, self._timed_out, read_timeout)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self.error is not None:
            raise self.error

    def _timed_out(self, read_timeout: float) -> None:
        self._fail(httpx.ReadTimeout(f"nothing received for {read_timeout:g}s"))

    def take(self) -> bytes | None:
        """The next body chunk; b"" at the end, None while none is buffered yet."""
        if self._chunks:
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return chunk
        if self.complete or self._head_only:
            return b""
        if self.error is not None:
            raise self.error
        return None

    def finish(self) -> None:
        """The response is done with: back to the pool if the connection can carry another, else closed."""
        self._active = False
        self._chunks.clear()
        if self.complete and self.keep_alive and not self.closed and not self._head_only:
            self.used = True
            self._pool._release(self)
        else:
            self._pool._drop(self)


class _Body(httpx.AsyncByteStream):
    """A response body, chunk by chunk as it arrives."""

    __slots__ = ("_closed", "_conn", "_read_timeout")

    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            chunk = conn.take()
            if chunk is None:
                await conn.wait(self._read_timeout)
            elif chunk:
                yield chunk
            else:
                return

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.finish()


class H1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 for http:// URLs: keep-alive connections per origin, at most limits.max_connections open.

    proxies: which requests go through a proxy; dns: where new connections look their host up.
    """

    honours_target = True  # writes httpx's `target` request extension as the request target
    reports_sent = True  # calls the ON_SENT request extension once the request head is written

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        proxies: ProxyRules | None = None,
        dns: DnsCache | None = None,
        happy_eyeballs_delay: float = HAPPY_EYEBALLS_DELAY,
    ) -> None:
        self._proxies = proxies if proxies is not None and proxies.any else None
        self._proxy_auth: dict[httpx.URL, bytes] = {}  # proxy → its Proxy-Authorization header line, or b""
        self._dns = dns if dns is not None else DnsCache()
        self._happy_eyeballs_delay = happy_eyeballs_delay
        self._max_open = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0  # connections open or opening, idle ones included
        self._conns: set[_Connection] = set()  # the same connections, for aclose
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()  # waiting for _open to drop

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"this transport speaks plain http, not {url.scheme}")
        timeouts = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        body = await request.aread()
        proxy = self._proxies.for_url(url) if self._proxies is not None else None
        path = request.extensions.get("target") or url.raw_path  # httpx's `target` extension, when given
        if proxy is None:
            origin = (url.raw_host.decode("ascii"), url.port or 80, False)  # IDNA hosts in their ASCII form
            head = request_head(request, len(body), path)
        else:
            origin = (proxy.raw_host.decode("ascii"), proxy.port or 80, True)
            target = b"http://" + url.netloc + path  # absolute form, without any userinfo
            head = request_head(request, len(body), target, self._proxy_authorization(proxy))
        head_only = request.method == "HEAD"
        on_sent = request.extensions.get(ON_SENT)
        conn = await self._checkout(origin, timeouts.get("connect"), timeouts.get("pool"))
        while True:
            conn.send(head, body, head_only)
            if on_sent is not None:
                on_sent()
            try:
                while not conn.head_done:
                    await conn.wait(read_timeout)
                break
            except _Stale:
                # The server closed the kept-alive connection without a byte of answer (an idle
                # timeout racing the request): a safe method goes again on a new connection, as
                # browsers do; any other could have had an effect, so it fails.
                self._drop(conn)
                if request.method not in RETRY_ON_STALE:
                    raise ResponseError(
                        "connection broken: the server closed the kept-alive connection without a response"
                    ) from None
                before_resend = request.extensions.get(BEFORE_RESEND)
                if before_resend is not None:  # the server saw the first write: this one takes a turn of its own
                    await before_resend()
                conn = await self._checkout(origin, timeouts.get("connect"), timeouts.get("pool"), reuse=False)
            except BaseException:
                conn.finish()
                raise
        if conn.status == 407 and proxy is not None:
            conn.finish()
            raise ProxyError(f"the proxy {_where(origin)} asked for credentials (407)", status=407)
        return httpx.Response(
            status_code=conn.status,
            headers=conn.headers,
            stream=_Body(conn, read_timeout),
            request=request,
            extensions={
                "http_version": _HTTP_VERSIONS.get(conn._parser.get_http_version(), b"HTTP/1.1"),
                "reason_phrase": conn.reason,
            },
        )

    async def _checkout(
        self, origin: _Origin, connect_timeout: float | None, pool_timeout: float | None, *, reuse: bool = True
    ) -> _Connection:
        idle = self._idle.get(origin) if reuse else None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been dropped
            self._idle_count -= 1
            if not conn.closed and (self._expiry is None or now - conn.idle_since < self._expiry):
                return conn
            self._drop(conn)
        if self._max_open is not None and self._open >= self._max_open:
            try:
                async with asyncio.timeout(pool_timeout):
                    await self._make_room()
            except TimeoutError:
                raise httpx.PoolTimeout(f"no free connection within {pool_timeout:g}s") from None
        self._open += 1
        conn = _Connection(self, origin)
        self._conns.add(conn)
        try:
            async with asyncio.timeout(connect_timeout):
                await self._connect(conn, origin)
        except BaseException as exc:
            self._drop(conn)
            where, proxied = _where(origin), origin[2]
            if isinstance(exc, TimeoutError):
                if proxied:
                    raise ProxyError(f"no connection to the proxy {where} within {connect_timeout:g}s") from None
                raise httpx.ConnectTimeout(f"no connection to {where} within {connect_timeout:g}s") from None
            if isinstance(exc, OSError):
                # asyncio's own text repeats the address; the errno's words say what happened.
                reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else (exc.strerror or str(exc))
                if proxied:
                    raise ProxyError(f"cannot connect to the proxy {where}: {reason}") from exc
                raise httpx.ConnectError(f"{reason} ({where})") from exc
            raise
        return conn

    async def _connect(self, conn: _Connection, origin: _Origin) -> None:
        """Look the host up (cached), race its addresses (happy eyeballs), and hand the winner to conn."""
        host, port, _ = origin
        sock = await open_socket(self._dns, host, port, happy_eyeballs_delay=self._happy_eyeballs_delay)
        try:
            await asyncio.get_running_loop().create_connection(lambda: conn, sock=sock)
        except BaseException:
            sock.close()
            raise

    def _proxy_authorization(self, proxy: httpx.URL) -> bytes:
        line = self._proxy_auth.get(proxy)
        if line is None:
            credentials = basic_credentials(proxy)
            line = self._proxy_auth[proxy] = b"Proxy-Authorization: %s\r\n" % credentials if credentials else b""
        return line

    async def _make_room(self) -> None:
        """At the limit: close the longest-idle connection (to any origin), or wait until one closes."""
        assert self._max_open is not None
        while self._open >= self._max_open:
            if self._idle_count:
                oldest = min((c for conns in self._idle.values() for c in conns), key=lambda c: c.idle_since)
                self._idle[oldest.origin].remove(oldest)
                self._idle_count -= 1
                self._drop(oldest)
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._room.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, but leaving (a pool timeout): pass the turn on
                else:
                    waiter.cancel()
                raise

    def _release(self, conn: _Connection) -> None:
        """A connection that can carry another request goes idle, if the pool keeps that many."""
        if self._max_idle is not None and self._idle_count >= self._max_idle:
            self._drop(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._idle_count += 1
        self._wake_one()

    def _drop(self, conn: _Connection) -> None:
        """Close a connection (if it ever opened) for good: its place in the pool counts no more."""
        conn._close()
        self._open -= 1
        self._conns.discard(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        for conn in self._conns:
            conn._close()
        self._conns.clear()
        self._idle.clear()
        self._idle_count = 0
        self._open = 0


def _where(origin: _Origin) -> str:
    host, port, _ = origin
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
