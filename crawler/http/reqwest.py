"""Https transport: httpx's transport interface over pyreqwest (Rust reqwest/hyper), HTTP/2 by ALPN.

pyreqwest's own httpx layer sends httpx's Host header next to hyper's and drops the HTTP
version, so this is a transport of our own over `pyreqwest.client.Client`: the body arrives
raw (we decode it, bounded), redirects are ours, and pyreqwest's exceptions become httpx's here.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
from pyreqwest import exceptions as rq
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.proxy import ProxyBuilder
from pyreqwest.request import RequestBuilder, StreamRequest
from pyreqwest.response import Response

from crawler.config import HttpConfig
from crawler.http.conventions import BEFORE_RESEND, MAX_HEAD_BYTES, ON_SENT, RETRY_ON_STALE, ResponseError
from crawler.http.proxies import ProxyError, connect_answer
from crawler.http.rawhead import read_head, tls_context
from crawler.http.reqwest_clients import HttpsClients, Pin

# What pyreqwest has already read of a body when the head is handed over: a body this size or
# smaller is whole in memory then, so one read takes it all and the stream is closed at once.
_BUFFERED = RequestBuilder.default_streamed_read_buffer_limit()

_HTTP_VERSIONS = {"HTTP/2.0": b"HTTP/2", "HTTP/1.1": b"HTTP/1.1", "HTTP/1.0": b"HTTP/1.0", "HTTP/3.0": b"HTTP/3"}

# Cause texts that say only where an error passed (reqwest and hyper wrap every failure in them).
_WRAPPERS = (
    "error sending request",
    "client error (",
    "connection error",
    "error decoding response",
    "request or response body error",
    "error reading a body",
)
# What rustls' errors start with: a connect failure saying one of these happened in the handshake.
_TLS_REASONS = (
    "invalid peer certificate",
    "received corrupt message",
    "received fatal alert",
    "peer is incompatible",
    "peer misbehaved",
    "inappropriate",
    "no certificates",
    "unsupported name type",
    "handshake",
    "tls",
)


_STALE_TRIES = 4  # sends of a safe request while its kept-alive connections turn out dropped


def _stale(exc: rq.PyreqwestError) -> bool:
    """Whether the request met a kept-alive connection the server had closed, before any answer."""
    return isinstance(exc, rq.ConnectError) and "closed before message completed" in _reason(exc).lower()


class TLSError(httpx.ConnectError):
    """A TLS handshake that failed (untrusted certificate, not TLS at all, no common protocol)."""


def build_client(
    http: HttpConfig, *, max_connections: int | None, pin: Pin | None = None, proxy: httpx.URL | None = None
) -> Client:
    """A pyreqwest client for the crawl's https requests, with every HttpConfig option that applies.

    pin: connect to pin.address whenever pin.host is asked for (TLS still checks pin.host);
    proxy: tunnel every request through this http:// proxy with CONNECT, its credentials as Basic auth.
    """
    builder = (
        ClientBuilder()
        .http2(http.http2)  # offered by ALPN; a server that only speaks HTTP/1.1 gets HTTP/1.1
        .gzip(False)  # the stream stays raw: crawler/http/decoding.py decodes it, bounded
        .brotli(False)
        .zstd(False)
        .deflate(False)
        .follow_redirects(False)  # crawler/http/redirects.py walks the hops
        .referer(False)
        .no_proxy()  # reqwest would read proxy variables itself; which proxy is the crawl's decision
        .max_connections(max_connections)
        .connect_timeout(timedelta(seconds=http.connect_timeout))
        .read_timeout(timedelta(seconds=http.read_timeout))
        .pool_timeout(timedelta(seconds=http.pool_timeout))
    )
    if max_connections is not None:
        builder = builder.pool_max_idle_per_host(max_connections)
    if http.ca_bundle is not None:
        builder = builder.add_root_certificate_pem(http.ca_bundle.read_bytes())
    if pin is not None:
        builder = builder.resolve(pin.host, pin.address, pin.port)
    if proxy is not None:
        builder = builder.proxy(_proxy(proxy))
    return builder.build()


def _proxy(url: httpx.URL) -> ProxyBuilder:
    port = f":{url.port}" if url.port is not None else ""
    proxy = ProxyBuilder.https(f"http://{url.raw_host.decode('ascii')}{port}")
    if url.username or url.password:
        proxy = proxy.basic_auth(url.username, url.password)  # httpx has percent-decoded them
    return proxy


class ReqwestTransport(httpx.AsyncBaseTransport):
    """httpx requests sent through pyreqwest: the client HttpsClients chooses per URL (or one client
    for every request); the response body streams raw."""

    honours_target = True  # sends httpx's `target` request extension after the URL's origin (_request_url)
    reports_sent = True  # calls the ON_SENT request extension as the request goes to pyreqwest

    def __init__(self, clients: Client | HttpsClients[Client], http: HttpConfig) -> None:
        self._clients = clients if isinstance(clients, HttpsClients) else HttpsClients.single(clients)
        self._http = http
        self._raw_tls: ssl.SSLContext | None = None  # rawhead's, made when first needed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # hyper writes Host (or :authority) from the URL itself; httpx's would be a second one.
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw if k.lower() != b"host"]
        client = self._clients.ready(request.url) or await self._clients.client_for(request.url)
        body = await request.aread()
        on_sent = request.extensions.get(ON_SENT)
        # A safe method whose kept-alive connection the server had dropped goes again, as on plain
        # http; hyper lets go of the dead connection, though the next one it hands out may be dead too.
        stale_tries = _STALE_TRIES if request.method in RETRY_ON_STALE else 1
        for attempt in range(stale_tries):
            builder = client.request(request.method, _request_url(request)).headers(headers)
            if body:
                builder = builder.body_bytes(body)
            streamed = builder.build_streamed()
            if on_sent is not None:
                # pyreqwest writes on its own thread, which a busy event loop does not hold up.
                on_sent()
            try:
                response: Response = await streamed.__aenter__()
                break
            except rq.PyreqwestError as exc:
                if attempt + 1 < stale_tries and _stale(exc):
                    before_resend = request.extensions.get(BEFORE_RESEND)
                    if before_resend is not None:  # the server saw the first write: this one takes a turn of its own
                        await before_resend()
                    continue
                raise await self._failure(exc, request) from exc
        try:
            head = _headers(response)
            # hyper's own bound on a head is far looser than the one our HTTP/1.1 transport keeps.
            if sum(len(name) + len(value) + 4 for name, value in head) > MAX_HEAD_BYTES:
                raise ResponseError(f"malformed response: status line and headers above {MAX_HEAD_BYTES:,} bytes")
            # Each call into pyreqwest costs a GIL release and a coroutine: a body short of the
            # buffer comes over in one read (a short read means the stream ended), not chunk by chunk.
            try:
                first = await response.body_reader.read(_BUFFERED)
            except rq.PyreqwestError as exc:
                raise await self._failure(exc, request) from exc
            stream: httpx.AsyncByteStream
            if first is None or len(first) < _BUFFERED:
                await streamed.__aexit__(None, None, None)
                stream = _Whole(b"" if first is None else bytes(first))
            else:
                stream = _Body(streamed, response, self, request, bytes(first))
        except _UnreadableLocation:
            await streamed.__aexit__(None, None, None)
            return await self._redirect_read_as_bytes(request)
        except BaseException:
            await streamed.__aexit__(None, None, None)
            raise
        return httpx.Response(
            status_code=response.status,
            headers=head,
            stream=stream,
            request=request,
            extensions={"http_version": _HTTP_VERSIONS.get(response.version, response.version.encode("ascii"))},
        )

    async def _redirect_read_as_bytes(self, request: httpx.Request) -> httpx.Response:
        """A redirect whose Location pyreqwest cannot hand over: the request sent again through rawhead,
        whose answer keeps the header's bytes (redirects.py then reads them as plain http's are read)."""
        if self._raw_tls is None:
            ca_bundle = self._http.ca_bundle
            self._raw_tls = tls_context(str(ca_bundle) if ca_bundle is not None else None)
        http = self._http
        head = await read_head(
            request,
            target=request.extensions.get("target") or request.url.raw_path,
            dns=self._clients.dns,
            context=self._raw_tls,
            proxy=self._clients.proxy_for(request.url),
            timeout=http.connect_timeout + http.read_timeout,
        )
        if head.status not in _REDIRECTS or not any(name.lower() == b"location" for name, _ in head.headers):
            raise ResponseError(_UNREADABLE, request=request)  # a second answer unlike the first
        version = {"http_version": b"HTTP/1.1"}
        return httpx.Response(head.status, headers=head.headers, content=b"", request=request, extensions=version)

    async def _failure(self, exc: rq.PyreqwestError, request: httpx.Request) -> httpx.HTTPError:
        """_translate's answer; a proxy that refused a tunnel is asked again, for the answer hyper drops."""
        failure = self._translate(exc, request)
        if not isinstance(failure, ProxyError) or failure.status is not None or not str(failure).endswith(_UNTOLD):
            return failure
        proxy = self._clients.proxy_for(request.url)
        if proxy is None:
            return failure
        url = request.url
        answer = await connect_answer(proxy, f"{url.host}:{url.port or 443}", self._http.connect_timeout)
        if answer is None:
            return failure
        code = int(answer[:3])
        return ProxyError(f"the proxy {proxy.host}:{proxy.port or 80} refused the tunnel: {answer}", status=code)

    def _translate(self, exc: rq.PyreqwestError, request: httpx.Request) -> httpx.HTTPError:
        """pyreqwest's exception as the httpx exception crawler/http/errors.py turns into an error kind."""
        url = request.url
        where = f"{url.host}:{url.port or 443}"
        reason = _reason(exc)
        http = self._http
        proxy = self._clients.proxy_for(url)
        if proxy is not None:
            failure = _proxy_failure(exc, reason, proxy, http.connect_timeout)
            if failure is not None:
                return failure
        if isinstance(exc, rq.ConnectTimeoutError):
            return httpx.ConnectTimeout(f"no connection to {where} within {http.connect_timeout:g}s", request=request)
        if isinstance(exc, rq.ReadTimeoutError):
            return httpx.ReadTimeout(f"nothing received for {http.read_timeout:g}s", request=request)
        if isinstance(exc, rq.PoolTimeoutError):
            return httpx.PoolTimeout(f"no free connection within {http.pool_timeout:g}s", request=request)
        if isinstance(exc, rq.WriteTimeoutError):
            return httpx.WriteTimeout(reason, request=request)
        if isinstance(exc, rq.RequestTimeoutError):
            return httpx.TimeoutException(reason, request=request)
        if isinstance(exc, rq.ConnectError):
            if reason.lower().startswith(_TLS_REASONS):
                return TLSError(reason, request=request)
            lowered = reason.lower()
            if "http2 error" in lowered:  # the connection was made; the server broke HTTP/2's rules
                return ResponseError(f"malformed response: {reason}", request=request)
            if "closed before message completed" in lowered:  # a kept-alive connection the server had dropped
                return ResponseError(f"connection broken: {reason}", request=request)
            return httpx.ConnectError(f"{reason} ({where})", request=request)
        if isinstance(exc, rq.BodyDecodeError):  # the connection ended or broke within the body
            return ResponseError(f"body cut short: {reason}", request=request)
        if isinstance(exc, rq.DecodeError):  # hyper could not parse the response
            return ResponseError(f"malformed response: {reason}", request=request)
        if isinstance(exc, rq.ReadError):
            return httpx.ReadError(reason, request=request)
        if isinstance(exc, rq.WriteError):
            return httpx.WriteError(reason, request=request)
        if isinstance(exc, rq.NetworkError):
            return httpx.NetworkError(reason, request=request)
        return httpx.TransportError(f"{type(exc).__name__}: {reason}", request=request)

    async def aclose(self) -> None:
        await self._clients.aclose()


class _Whole(httpx.AsyncByteStream):
    """A body read whole with its head, its pyreqwest stream already closed."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._data:
            yield self._data


class _Body(httpx.AsyncByteStream):
    """A response body, its first read and then chunk by chunk as pyreqwest reads it; closing it ends the stream."""

    __slots__ = ("_closed", "_first", "_request", "_response", "_streamed", "_transport")

    def __init__(
        self, streamed: StreamRequest, response: Response, transport: ReqwestTransport, request: Any, first: bytes
    ) -> None:
        self._streamed = streamed
        self._response = response
        self._transport = transport
        self._request = request
        self._first = first
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        first, self._first = self._first, b""
        yield first
        reader = self._response.body_reader
        while True:
            try:
                chunk = await reader.read_chunk()
            except rq.PyreqwestError as exc:
                raise self._transport._translate(exc, self._request) from exc
            if chunk is None:
                return
            yield bytes(chunk)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._streamed.__aexit__(None, None, None)


def _headers(response: Response) -> list[tuple[str, str]]:
    """The response headers in order. pyreqwest hands out only values of visible ASCII: a header
    holding other bytes is dropped, except a Location, without which a redirect would be misread:
    that raises _UnreadableLocation."""
    try:
        return list(response.headers.items())
    except ValueError:
        pass
    headers: list[tuple[str, str]] = []
    for name in dict.fromkeys(response.headers.keys()):
        try:
            headers.extend((name, value) for value in response.headers.getall(name))
        except ValueError:
            if name == "location":
                raise _UnreadableLocation(_UNREADABLE) from None
    return headers


_UNREADABLE = "malformed response: a Location header of non-ASCII bytes"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _UnreadableLocation(ResponseError):
    """A Location header of bytes pyreqwest cannot hand over as text."""


_UNTOLD = "(its answer to CONNECT was not 2xx)"


def _proxy_failure(exc: rq.PyreqwestError, reason: str, proxy: httpx.URL, timeout: float) -> ProxyError | None:
    """The ProxyError a request through proxy failed with, or None when the failure lies past the proxy."""
    where = f"{proxy.host}:{proxy.port or 80}"
    if isinstance(exc, rq.ConnectTimeoutError):  # the proxy, or the tunnel it opens: both are the proxy's part
        return ProxyError(f"no connection to the proxy {where} within {timeout:g}s")
    if not isinstance(exc, rq.ConnectError) or not reason.startswith("tunnel error: "):
        return None
    what = reason.removeprefix("tunnel error: ")
    if what.startswith("failed to create underlying connection"):
        return ProxyError(f"cannot connect to the proxy {where}: {_root(exc)}")
    if what == "proxy authorization required":
        return ProxyError(f"the proxy {where} refused the tunnel: 407 Proxy Authentication Required", status=407)
    if what == "unsuccessful":  # hyper keeps no more of the proxy's answer than that it was not 2xx
        return ProxyError(f"the proxy {where} refused the tunnel {_UNTOLD}")
    return ProxyError(f"the proxy {where} failed: {what}")


def _root(exc: rq.PyreqwestError) -> str:
    """The innermost cause's words, without Rust's "(os error N)"."""
    causes = (getattr(exc, "details", None) or {}).get("causes") or []
    text = str(causes[-1].get("message", "")) if causes else str(exc.message)
    return text.rsplit(" (os error", 1)[0]


def _reason(exc: rq.PyreqwestError) -> str:
    """The words of a pyreqwest error: its causes less the wrappers, the outermost and the root."""
    details = getattr(exc, "details", None) or {}
    causes = [str(c.get("message", "")) for c in details.get("causes") or []]
    meaningful = [text for text in causes if text and not text.lower().startswith(_WRAPPERS)]
    if not meaningful:
        return str(exc.message)
    if len(meaningful) == 1:
        return meaningful[0]
    return f"{meaningful[0]}: {meaningful[-1]}"


def _request_url(request: httpx.Request) -> str:
    """The URL to send: the request's, or its origin followed by httpx's `target` extension when given."""
    target = request.extensions.get("target")
    if target is None:
        return str(request.url)
    url = request.url
    return f"{url.scheme}://{url.netloc.decode('ascii')}{target.decode('ascii')}"
