"""Fetching one URL through the crawl's one client: retries, streamed bodies with limits, server feedback."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from crawler.config import HttpConfig
from crawler.errors import ErrorKind, FetchError
from crawler.http.client import CrawlClient, build_transport
from crawler.http.conventions import SendReports
from crawler.http.decoding import ACCEPT_ENCODING, decode, inflaters
from crawler.http.errors import Retryable, translate_httpx_error

if TYPE_CHECKING:
    from crawler.http.redirects import StoppedRedirect

Headers = list[tuple[str, str]]  # request headers as (name, value) pairs

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Bodies never read: a redirect's is of no use, and a 304 has none (RFC 9110), so a recrawl
# skips the body machinery for each of its unchanged pages.
UNREAD_STATUSES = REDIRECT_STATUSES | {304}
THROTTLE_STATUSES = frozenset({429, 503})


class Gate(Protocol):
    """What the fetcher needs from politeness: a turn for each request, and feedback.

    request's context may give what the request's writes are reported to (None: no need).
    """

    def request(self, url: str) -> AbstractAsyncContextManager[SendReports | None]: ...


class Feedback(Protocol):
    def observe_url(self, url: str, status: int | None, latency: float) -> None: ...
    def retry_after(self, url: str, seconds: float | None, status: int) -> None: ...


@dataclass(slots=True)
class FetchResult:
    """The response to one URL: one hop, or the last of a redirect chain (see follow_redirects)."""

    url: str
    final_url: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str
    elapsed: float  # seconds for the final hop, body included
    redirects: list[dict[str, object]] = field(default_factory=list)
    attempts: int = 1
    stopped_redirect: StoppedRedirect | None = None  # a redirect the policy did not let us follow

    @property
    def content_type(self) -> str | None:
        for name, value in self.headers:
            if name == "content-type":
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, Retryable)


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
        self.client = CrawlClient(
            http2=http.http2,
            follow_redirects=False,  # follow_redirects() walks the hops
            max_redirects=http.max_redirects,
            timeout=httpx.Timeout(
                connect=http.connect_timeout, read=http.read_timeout, write=http.write_timeout, pool=http.pool_timeout
            ),
            limits=limits,
            headers={
                "User-Agent": user_agent,
                "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
                "Accept-Encoding": ACCEPT_ENCODING,
            },
            transport=transport if transport is not None else build_transport(http, limits),
        )
        self._feedback = feedback
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        # The retry policy is stateless, so it is built once rather than on every hop.
        self._stop = stop_after_attempt(http.retries + 1)
        self._wait = wait_exponential_jitter(
            multiplier=http.retry_backoff, jitter=http.retry_backoff, max=http.retry_backoff_max
        )
        self._retry = retry_if_exception(_is_transient)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(
        self,
        url: str,
        gate: Gate,
        *,
        truncate_at: int | None = None,
        max_body: int | None = None,
        headers: Headers | None = None,
    ) -> FetchResult:
        """GET one URL, with retries, each taking its own turn at the gate; a 3xx is returned as it is.

        truncate_at: keep that many body bytes and drop the rest instead of failing too_large
        (robots.txt, of which RFC 9309 asks us to parse the first 500 KiB, whatever its size).
        max_body: the decoded body's limit instead of http.max_body_bytes (sitemaps, whose protocol sets its own).
        headers: sent on top of the client's (a recrawl's If-None-Match, If-Modified-Since).
        """
        return await self._fetch_with_retries(url, gate, truncate_at, max_body, headers)

    async def _fetch_with_retries(
        self, url: str, gate: Gate, truncate_at: int | None, max_body: int | None, headers: Headers | None
    ) -> FetchResult:
        # Most first attempts succeed: make them without tenacity's machinery, and only
        # hand a failure to tenacity, which replays it as its own attempt 1 and so keeps
        # its attempt numbers, waits and stop decisions exactly as if it had made it.
        try:
            return await self._fetch_once(url, gate, truncate_at, max_body, headers)
        except FetchError as exc:
            first: FetchError | None = exc
        attempts = 1
        retrying = AsyncRetrying(stop=self._stop, wait=self._wait, retry=self._retry, sleep=self._sleep, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    if first is not None:
                        failed, first = first, None
                        raise failed
                    attempts += 1
                    result = await self._fetch_once(url, gate, truncate_at, max_body, headers)
                    result.attempts = attempts
                    return result
        except Retryable as exc:
            suffix = f" after {attempts} attempts" if attempts > 1 else ""
            raise FetchError(exc.kind, exc.message + suffix, attempts=attempts, status=exc.status) from exc
        except FetchError as exc:
            exc.attempts = attempts
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def _fetch_once(
        self, url: str, gate: Gate, truncate_at: int | None, max_body: int | None, headers: Headers | None
    ) -> FetchResult:
        async with gate.request(url) as reports:
            if reports is not None and not self.client.reports_sent:
                reports.sent()  # the transport will not say when it writes: count from the turn
                reports = None
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.http.total_timeout):
                    response = await self.client.open(url, headers, reports)
                    try:
                        unread = response.status_code in UNREAD_STATUSES
                        body = b"" if unread else await self._read_body(response, truncate_at, max_body)
                    finally:
                        await response.aclose()
            except TimeoutError:
                self._observe(url, None, time.monotonic() - started)
                raise Retryable(
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
            too_long = retry_after is not None and retry_after > self._max_retry_after
            if self._feedback is not None and status in THROTTLE_STATUSES:
                # Too long to wait out: no pause, but a 429 still backs the host off.
                self._feedback.retry_after(url, None if too_long else retry_after, status)
            if too_long:
                raise FetchError(
                    ErrorKind.RETRY_AFTER_TOO_LONG,
                    f"HTTP {status} with Retry-After {retry_after:.0f}s,"
                    f" above max_retry_after {self._max_retry_after:g}s",
                )
            raise Retryable(ErrorKind.HTTP_STATUS, f"HTTP {status}", status)
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

    async def _read_body(
        self, response: httpx.Response, truncate_at: int | None = None, max_body: int | None = None
    ) -> bytes:
        """Stream and decode the body ourselves, stopping at max_body_bytes of decoded bytes.

        httpx's decoders inflate each network chunk in one call, so one chunk of a gzip bomb (or
        of a stacked `gzip, gzip` one) becomes a huge buffer before any cap can look.  Inflater
        never produces more than PIECE bytes per call instead.
        """
        cap = truncate_at or max_body or self.http.max_body_bytes
        limit = "max_body_bytes" if max_body is None else "the limit"
        declared = response.headers.get("content-length")
        # isascii: "²" and other Unicode digits pass isdigit() but not int().
        if (
            truncate_at is None
            and declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > cap
        ):
            raise FetchError(ErrorKind.TOO_LARGE, f"Content-Length {int(declared):,} bytes is above {limit} {cap:,}")
        layers = inflaters(response.headers.get_list("content-encoding", split_commas=True))
        chunks: list[bytes] = []
        size = 0
        try:
            async for raw in response.aiter_raw():
                for piece in decode(layers, raw):
                    size += len(piece)
                    if size > cap:
                        if truncate_at is not None:
                            chunks.append(piece[: len(piece) - (size - cap)])
                            return b"".join(chunks)
                        what = "decompressed body" if layers else "body"
                        raise FetchError(ErrorKind.TOO_LARGE, f"{what} exceeded {limit} {cap:,} while streaming")
                    chunks.append(piece)
        except BaseException:
            # The exception's traceback keeps this frame alive in a reference cycle, which only
            # the cyclic GC frees, and it counts objects, not bytes: let go of the body now.
            chunks.clear()
            raise
        return b"".join(chunks)
