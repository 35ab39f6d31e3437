"""The shared AsyncClient: redirects hop by hop, retries, streamed bodies with limits; httpx errors → FetchError."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from crawler.config import HttpConfig
from crawler.errors import ErrorKind, FetchError
from crawler.urls import join_url

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
THROTTLE_STATUSES = frozenset({429, 503})


class Gate(Protocol):
    """What the fetcher needs from politeness: a turn for each request, and feedback."""

    def request(self, url: str) -> AbstractAsyncContextManager[None]: ...


class Feedback(Protocol):
    def observe_url(self, url: str, status: int | None, latency: float) -> None: ...
    def retry_after(self, url: str, seconds: float | None, status: int) -> None: ...


# Called with each redirect target; returns a reason to stop following, or None.
RedirectCheck = Callable[[str], Awaitable[str | None]]


@dataclass(slots=True)
class FetchResult:
    """The final response of one URL, after redirects."""

    url: str
    final_url: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str
    elapsed: float  # seconds for the final hop, body included
    redirects: list[dict[str, object]] = field(default_factory=list)
    attempts: int = 1
    stopped_redirect: tuple[str, str] | None = None  # (target, reason) when a redirect was not followed

    @property
    def content_type(self) -> str | None:
        for name, value in self.headers:
            if name == "content-type":
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class _Retryable(FetchError):
    """A transient failure tenacity may retry; keeps the status for the final message."""

    def __init__(self, kind: ErrorKind, message: str, status: int | None = None) -> None:
        super().__init__(kind, message, status=status)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _Retryable)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or junk."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def build_transport(http: HttpConfig, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """HTTP/1.1 over aiohttp for plain http (the fast path), httpx's own transport (h2 via ALPN) for https."""
    from httpx_aiohttp import AiohttpTransport

    return SchemeRouter(
        plain=AiohttpTransport(limits=limits),
        tls=httpx.AsyncHTTPTransport(http2=http.http2, limits=limits, retries=0),
    )


class SchemeRouter(httpx.AsyncBaseTransport):
    """Sends http:// requests through one transport and https:// through another."""

    def __init__(self, *, plain: httpx.AsyncBaseTransport, tls: httpx.AsyncBaseTransport) -> None:
        self._plain = plain
        self._tls = tls

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._tls if request.url.scheme == "https" else self._plain
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._plain.aclose()
        await self._tls.aclose()


class Fetcher:
    """Fetches URLs through ONE shared httpx.AsyncClient that lives for the whole crawl."""

    def __init__(
        self,
        http: HttpConfig,
        user_agent: str,
        *,
        concurrency: int,
        transport: httpx.AsyncBaseTransport | None = None,
        feedback: Feedback | None = None,
        max_retry_after: float = 600.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.http = http
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(
            http2=http.http2,
            follow_redirects=True,  # for direct users of the client; fetch() follows hop by hop
            max_redirects=http.max_redirects,
            timeout=httpx.Timeout(
                connect=http.connect_timeout, read=http.read_timeout, write=http.write_timeout, pool=http.pool_timeout
            ),
            limits=limits,
            headers={"User-Agent": user_agent, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
            transport=transport if transport is not None else build_transport(http, limits),
        )
        self._feedback = feedback
        self._max_retry_after = max_retry_after
        self._sleep = sleep

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(
        self,
        url: str,
        gate: Gate,
        *,
        max_redirects: int | None = None,
        redirect_check: RedirectCheck | None = None,
        body_limit: int | None = None,
    ) -> FetchResult:
        """GET url following redirects; each hop and each retry takes its own turn at the gate.

        body_limit: read at most this many body bytes and keep them (robots.txt), instead of
        failing with too_large above max_body_bytes.
        """
        limit = self.http.max_redirects if max_redirects is None else max_redirects
        chain: list[dict[str, object]] = []
        seen = {url}
        current = url
        attempts_total = 0
        while True:
            result = await self._fetch_with_retries(current, gate, body_limit)
            attempts_total += result.attempts
            if result.status not in REDIRECT_STATUSES:
                break
            location = next(iter(result.header_values("location")), None)
            target = join_url(current, location) if location else None
            if target is None:
                raise FetchError(
                    ErrorKind.BAD_REDIRECT,
                    f"HTTP {result.status} from {current} with an unusable Location: {location!r}",
                    attempts=attempts_total,
                )
            chain.append({"url": current, "status": result.status, "location": target})
            if target in seen:
                raise FetchError(
                    ErrorKind.TOO_MANY_REDIRECTS, f"redirect loop: {current} → {target}", attempts=attempts_total
                )
            if len(chain) > limit:
                raise FetchError(
                    ErrorKind.TOO_MANY_REDIRECTS,
                    f"more than {limit} redirects, last {current} → {target}",
                    attempts=attempts_total,
                )
            if redirect_check is not None:
                reason = await redirect_check(target)
                if reason is not None:
                    result.stopped_redirect = (target, reason)
                    break
            seen.add(target)
            current = target
        result.url = url
        result.redirects = chain
        result.attempts = attempts_total
        return result

    async def _fetch_with_retries(self, url: str, gate: Gate, body_limit: int | None) -> FetchResult:
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.http.retries + 1),
            wait=wait_exponential_jitter(
                multiplier=self.http.retry_backoff, jitter=self.http.retry_backoff, max=self.http.retry_backoff_max
            ),
            retry=retry_if_exception(_is_transient),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    result = await self._fetch_once(url, gate, body_limit)
                    result.attempts = attempts
                    return result
        except _Retryable as exc:
            suffix = f" after {attempts} attempts" if attempts > 1 else ""
            raise FetchError(exc.kind, exc.message + suffix, attempts=attempts, status=exc.status) from exc
        except FetchError as exc:
            exc.attempts = attempts
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def _fetch_once(self, url: str, gate: Gate, body_limit: int | None) -> FetchResult:
        async with gate.request(url):
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.http.total_timeout):
                    response = await self.client.send(
                        self.client.build_request("GET", url), stream=True, follow_redirects=False
                    )
                    try:
                        if response.status_code in REDIRECT_STATUSES:
                            body = b""
                        elif body_limit is not None:
                            body = await _read_prefix(response, body_limit)
                        else:
                            body = await self._read_body(response)
                    finally:
                        await response.aclose()
            except TimeoutError:
                self._observe(url, None, time.monotonic() - started)
                raise _Retryable(
                    ErrorKind.TIMEOUT, f"no complete response within total_timeout {self.http.total_timeout:g}s"
                ) from None
            except httpx.HTTPError as exc:
                self._observe(url, None, time.monotonic() - started)
                raise translate_httpx_error(exc) from exc
            elapsed = time.monotonic() - started
        status = response.status_code
        self._observe(url, status, elapsed)
        if status in RETRY_STATUSES:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None and retry_after > self._max_retry_after:
                if self._feedback is not None and status in THROTTLE_STATUSES:
                    self._feedback.retry_after(url, None, status)  # no waiting, but a 429 still backs off
                raise FetchError(
                    ErrorKind.RETRY_AFTER_TOO_LONG,
                    f"HTTP {status} with Retry-After {retry_after:.0f}s,"
                    f" above max_retry_after {self._max_retry_after:g}s",
                )
            if self._feedback is not None and status in THROTTLE_STATUSES:
                self._feedback.retry_after(url, retry_after, status)
            raise _Retryable(ErrorKind.HTTP_STATUS, f"HTTP {status}", status)
        return FetchResult(
            url=url,
            final_url=url,
            status=status,
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw],
            body=body,
            http_version=response.http_version,
            elapsed=elapsed,
        )

    def _observe(self, url: str, status: int | None, elapsed: float) -> None:
        if self._feedback is not None:
            self._feedback.observe_url(url, status, elapsed)

    async def _read_body(self, response: httpx.Response) -> bytes:
        """Stream the decoded body, stopping at max_body_bytes (so a gzip bomb is cut off too)."""
        cap = self.http.max_body_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise FetchError(
                ErrorKind.TOO_LARGE, f"Content-Length {int(declared):,} bytes is above max_body_bytes {cap:,}"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in _decoded(response):
            size += len(chunk)
            if size > cap:
                raise FetchError(ErrorKind.TOO_LARGE, f"body exceeded max_body_bytes {cap:,} while streaming")
            chunks.append(chunk)
        return b"".join(chunks)


async def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    """The first `limit` decoded body bytes; the rest is never read."""
    chunks: list[bytes] = []
    size = 0
    async with contextlib.aclosing(_decoded(response)) as stream:
        async for chunk in stream:
            chunks.append(chunk[: limit - size])
            size += len(chunks[-1])
            if size >= limit:
                break
    return b"".join(chunks)


async def _decoded(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    async for chunk in response.aiter_bytes():
        yield chunk


def translate_httpx_error(exc: httpx.HTTPError) -> FetchError:
    """The one place httpx (and, behind it, aiohttp) exceptions become our error kinds."""
    cause = _root_cause(exc)
    text = str(exc) or type(exc).__name__
    if isinstance(cause, ssl.SSLError) or "CERTIFICATE" in text.upper() or "SSL" in text.upper():
        return FetchError(ErrorKind.TLS, f"TLS failure: {text}")
    aiohttp_kind = _aiohttp_kind(cause)
    if aiohttp_kind is not None:
        kind, detail = aiohttp_kind
        return _Retryable(kind, detail) if kind in _TRANSIENT else FetchError(kind, detail)
    if isinstance(exc, httpx.TimeoutException):
        return _Retryable(ErrorKind.TIMEOUT, f"{type(exc).__name__}: {text}")
    if isinstance(exc, httpx.ConnectError):
        return _Retryable(ErrorKind.CONNECT, f"connection failed: {text}")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return _Retryable(ErrorKind.PROTOCOL, f"{type(exc).__name__}: {text}")
    if isinstance(exc, httpx.DecodingError):
        return FetchError(ErrorKind.PROTOCOL, f"undecodable body: {text}")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return FetchError(ErrorKind.BAD_REDIRECT, f"unsupported URL scheme: {text}")
    return FetchError(ErrorKind.OTHER, f"{type(exc).__name__}: {text}")


_TRANSIENT = frozenset({ErrorKind.TIMEOUT, ErrorKind.CONNECT, ErrorKind.PROTOCOL})


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def _aiohttp_kind(cause: BaseException) -> tuple[ErrorKind, str] | None:
    """httpx-aiohttp maps every connection error to ConnectTimeout; look at the real cause."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        return None
    text = str(cause) or type(cause).__name__
    if isinstance(cause, aiohttp.ClientSSLError):
        return ErrorKind.TLS, f"TLS failure: {text}"
    if isinstance(cause, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return ErrorKind.TIMEOUT, f"timeout: {text}"
    if isinstance(cause, aiohttp.ClientConnectorError):
        return ErrorKind.CONNECT, f"connection failed: {text}"
    if isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
        return ErrorKind.PROTOCOL, f"connection broken: {text}"
    if isinstance(cause, aiohttp.ClientResponseError):
        return ErrorKind.PROTOCOL, f"malformed response: {text}"
    if isinstance(cause, aiohttp.ClientError):
        return ErrorKind.PROTOCOL, f"{type(cause).__name__}: {text}"
    return None
