"""The shared AsyncClient: redirects hop by hop, retries, streamed bodies with limits; httpx errors → FetchError."""

from __future__ import annotations

import asyncio
import email.utils
import re
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from crawler.config import HttpConfig
from crawler.errors import ErrorKind, FetchError
from crawler.http.transport import H1Transport, ResponseError
from crawler.urls import join_url

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
THROTTLE_STATUSES = frozenset({429, 503})
# Only what _Inflater can undo with a bounded output; httpx would also offer br/zstd when installed.
ACCEPT_ENCODING = "gzip, deflate"
_PIECE = 64 * 1024  # the most one zlib call may inflate, so a bomb is undone a piece at a time


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
    """Our HTTP/1.1 transport for plain http (the fast path), httpx's own transport (h2 via ALPN) for https."""
    # verify=True uses certifi's bundle; ca_bundle adds trust in a private CA instead, read
    # here so that a bad bundle fails the start rather than every https page.
    verify: ssl.SSLContext | bool = True
    if http.ca_bundle is not None:
        verify = ssl.create_default_context(cafile=str(http.ca_bundle))
    return SchemeRouter(
        plain=H1Transport(limits=limits),
        tls=lambda: httpx.AsyncHTTPTransport(http2=http.http2, limits=limits, retries=0, verify=verify),
    )


# A URL in the form normalize_url and join_url produce: a plain authority, then a path and
# query of characters httpx's parser leaves as they are (its path-safe set holds all of
# them, "%" included), so parsing such a URL could only split it.
_PLAIN_URL = re.compile(
    r"(https?://[A-Za-z0-9._\-]+(?::[0-9]+)?)(/[A-Za-z0-9._~!$&'()*+,;=:@/%\-]*)(?:\?([A-Za-z0-9._~!$&'()*+,;=:@/?%\-]*))?"
)
_ORIGINS: dict[str, Any] = {}  # "scheme://authority" → httpx's parse of it, to copy per URL
_MAX_ORIGINS = 4096
_MAX_URL_LENGTH = 65536  # httpx refuses longer URLs; the slow path raises its error


def request_url(url: str) -> httpx.URL:
    """httpx.URL(url), without httpx's per-character validation when url is already in normal form.

    httpx parses a URL in pure Python (~40 µs); ours come from normalize_url/join_url, so only
    the authority needs httpx's parse (lowercasing, default port, IP checks), once per origin.
    Relies on httpx's private URL._uri_reference (a ParseResult): _fast_urls_work() checks
    that at import, falling back to plain parsing, and tests/test_fetch.py fails loudly.
    """
    m = _PLAIN_URL.fullmatch(url) if _FAST_URLS and len(url) <= _MAX_URL_LENGTH else None
    if m is None or "/." in m.group(2):  # dot segments are httpx's to remove
        return httpx.URL(url)
    origin = m.group(1)
    base = _ORIGINS.get(origin)
    if base is None:
        base = httpx.URL(origin)._uri_reference
        if len(_ORIGINS) >= _MAX_ORIGINS:
            _ORIGINS.clear()
        _ORIGINS[origin] = base
    fast = object.__new__(httpx.URL)
    fast._uri_reference = base._replace(path=m.group(2), query=m.group(3))
    return fast


def _fast_urls_work() -> bool:
    """Whether httpx.URL still keeps its parse as a ParseResult request_url can copy."""
    probe = "http://example.com:8080/a/b%2F?c=d"
    try:
        ref = httpx.URL(probe)._uri_reference
        copied = object.__new__(httpx.URL)
        copied._uri_reference = ref._replace(path="/a/b%2F", query="c=d")
        return bool(copied == httpx.URL(probe) and str(copied) == probe and copied.raw_path == b"/a/b%2F?c=d")
    except Exception:  # pragma: no cover - only after an httpx upgrade
        return False


_FAST_URLS = _fast_urls_work()


class SchemeRouter(httpx.AsyncBaseTransport):
    """Sends http:// requests through one transport and https:// through another, made on the
    first https:// request: loading the CA bundle for its TLS context takes ~0.1 s of every
    start, wasted on a plain-http crawl."""

    def __init__(self, *, plain: httpx.AsyncBaseTransport, tls: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._plain = plain
        self._make_tls = tls
        self._tls: httpx.AsyncBaseTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            return await self._plain.handle_async_request(request)
        if self._tls is None:
            self._tls = self._make_tls()
        return await self._tls.handle_async_request(request)

    async def aclose(self) -> None:
        await self._plain.aclose()
        if self._tls is not None:
            await self._tls.aclose()


class _SetCookiesOnly(httpx.Cookies):
    """A cookie jar that skips httpx's per-response cookie parsing when nothing sets a cookie.

    That parsing builds urllib request/response shims for every response and was a fifth of
    the fetch path's CPU; crawled pages rarely set cookies."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


_BODILESS = frozenset({"GET", "HEAD"})


class CrawlClient(httpx.AsyncClient):
    """The crawl's one AsyncClient: httpx's own, with a cheaper cookie jar, leaving redirects
    to Fetcher.fetch entirely.

    httpx builds the next request of every redirect even when it will not follow it, and a
    Location such as `javascript:alert(1)` makes that raise InvalidURL, losing the response
    before fetch() could record a bad_redirect.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._jar = _SetCookiesOnly()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: httpx._types.CookieTypes) -> None:
        self._jar = _SetCookiesOnly(cookies)

    def build_request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Request:
        """httpx's build_request; a bodiless request with nothing to merge is built in one pass.

        httpx builds the headers four times over (client copy, merge, Request, Host prepended)
        and re-wraps the URL; for the crawl's plain GETs the result is just the client's
        headers after a Host header, which is what this builds, once.
        """
        if (
            kwargs
            or method not in _BODILESS
            or not isinstance(url, httpx.URL)
            or url.is_relative_url
            or self.params
            or self._jar
            or "host" in self.headers
        ):
            return super().build_request(method, url, **kwargs)
        headers = httpx.Headers([(b"Host", url.netloc), *self.headers.raw])
        request = httpx.Request(
            method, url, headers=headers, extensions={"timeout": self.timeout.as_dict()}, stream=httpx.ByteStream(b"")
        )
        request.read()  # as httpx does for a request built with content: .content is b""
        return request

    def _build_redirect_request(self, request: httpx.Request, response: httpx.Response) -> httpx.Request:
        return request  # only stored as response.next_request, which nothing reads


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
            follow_redirects=False,  # fetch() follows hop by hop
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
        max_redirects: int | None = None,
        redirect_check: RedirectCheck | None = None,
        truncate_at: int | None = None,
    ) -> FetchResult:
        """GET url following redirects; each hop and each retry takes its own turn at the gate.

        truncate_at: keep that many body bytes and drop the rest instead of failing too_large
        (robots.txt, of which RFC 9309 asks us to parse the first 500 KiB, whatever its size).
        """
        limit = self.http.max_redirects if max_redirects is None else max_redirects
        chain: list[dict[str, object]] = []
        seen = {url}
        current = url
        attempts_total = 0
        while True:
            result = await self._fetch_with_retries(current, gate, truncate_at)
            attempts_total += result.attempts
            if result.status not in REDIRECT_STATUSES:
                break
            location = next(iter(result.header_values("location")), None)
            target = join_url(current, _utf8_header(location)) if location else None
            if target is None:
                raise FetchError(
                    ErrorKind.BAD_REDIRECT, _bad_location(result.status, current, location), attempts=attempts_total
                )
            chain.append({"url": current, "status": result.status, "location": target})
            if target in seen:
                hops = " → ".join([*(str(hop["url"]) for hop in chain), target])
                raise FetchError(ErrorKind.TOO_MANY_REDIRECTS, f"redirect loop: {_clip(hops)}", attempts=attempts_total)
            if len(chain) > limit:
                raise FetchError(
                    ErrorKind.TOO_MANY_REDIRECTS,
                    f"more than {limit} redirects, last {_clip(current)} → {_clip(target)}",
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

    async def _fetch_with_retries(self, url: str, gate: Gate, truncate_at: int | None) -> FetchResult:
        # Most first attempts succeed: make them without tenacity's machinery, and only
        # hand a failure to tenacity, which replays it as its own attempt 1 and so keeps
        # its attempt numbers, waits and stop decisions exactly as if it had made it.
        try:
            return await self._fetch_once(url, gate, truncate_at)
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
                    result = await self._fetch_once(url, gate, truncate_at)
                    result.attempts = attempts
                    return result
        except _Retryable as exc:
            suffix = f" after {attempts} attempts" if attempts > 1 else ""
            raise FetchError(exc.kind, exc.message + suffix, attempts=attempts, status=exc.status) from exc
        except FetchError as exc:
            exc.attempts = attempts
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def _fetch_once(self, url: str, gate: Gate, truncate_at: int | None) -> FetchResult:
        async with gate.request(url):
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.http.total_timeout):
                    response = await self.client.send(
                        self.client.build_request("GET", request_url(url)), stream=True, follow_redirects=False
                    )
                    try:
                        redirect = response.status_code in REDIRECT_STATUSES
                        body = b"" if redirect else await self._read_body(response, truncate_at)
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

    async def _read_body(self, response: httpx.Response, truncate_at: int | None = None) -> bytes:
        """Stream and decode the body ourselves, stopping at max_body_bytes of decoded bytes.

        httpx's decoders inflate each network chunk in one call: 16 KiB of a gzip bomb becomes
        16 MB, and a stacked `gzip, gzip` bomb of 10 KB becomes gigabytes before any cap can
        look.  _Inflater never produces more than _PIECE bytes per call instead.
        """
        cap = self.http.max_body_bytes if truncate_at is None else truncate_at
        declared = response.headers.get("content-length")
        # isascii: "²" and other Unicode digits pass isdigit() but not int().
        if (
            truncate_at is None
            and declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > cap
        ):
            raise FetchError(
                ErrorKind.TOO_LARGE, f"Content-Length {int(declared):,} bytes is above max_body_bytes {cap:,}"
            )
        layers = _inflaters(response.headers.get_list("content-encoding", split_commas=True))
        chunks: list[bytes] = []
        size = 0
        try:
            async for raw in response.aiter_raw():
                for piece in _decode(layers, raw):
                    size += len(piece)
                    if size > cap:
                        if truncate_at is not None:
                            chunks.append(piece[: len(piece) - (size - cap)])
                            return b"".join(chunks)
                        what = "decompressed body" if layers else "body"
                        raise FetchError(ErrorKind.TOO_LARGE, f"{what} exceeded max_body_bytes {cap:,} while streaming")
                    chunks.append(piece)
        except BaseException:
            # The exception's traceback keeps this frame alive in a reference cycle, which only
            # the cyclic GC frees, and it counts objects, not bytes: let go of the body now.
            chunks.clear()
            raise
        return b"".join(chunks)


class _Inflater:
    """Undoes one gzip or deflate layer of a Content-Encoding, at most _PIECE bytes per zlib call."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._gzip = coding != "deflate"
        self._z: zlib._Decompress | None = None  # made once the first two bytes are known
        self._members = 0
        self._head = b""  # bytes held back until two are known
        self._ended = False  # bytes after the last gzip member are ignored, as browsers do

    def feed(self, data: bytes) -> Iterator[bytes]:
        data = self._head + data
        self._head = b""
        while not self._ended:
            if self._z is None:
                if len(data) < 2:
                    self._head = data
                    return
                self._z = self._start(data)
                if self._z is None:
                    self._ended = True
                    return
            try:
                out = self._z.decompress(data, _PIECE)
            except zlib.error as exc:
                raise FetchError(ErrorKind.PROTOCOL, f"undecodable {self.coding} body: {exc}") from None
            data = self._z.unconsumed_tail
            if out:
                yield out
            if self._z.eof:
                data = self._z.unused_data  # perhaps another gzip member
                self._z = None
                self._ended = not self._gzip
            elif not data and len(out) < _PIECE:
                return  # all input used and no output held back

    def _start(self, head: bytes) -> zlib._Decompress | None:
        """A decompressor for the stream starting with head; None for trailing junk after gzip members."""
        self._members += 1
        if self._gzip:
            if self._members > 1 and not head.startswith(b"\x1f\x8b"):
                return None
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" means zlib-wrapped (RFC 9110), but servers also send raw deflate: sniff the header.
        zlib_header = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)


# Registered codings we cannot undo: the body would be stored compressed, so it is an error.
_UNSUPPORTED_CODINGS = frozenset({"br", "zstd", "compress", "x-compress", "dcb", "dcz"})


def _inflaters(codings: list[str]) -> list[_Inflater]:
    """Decoders for a Content-Encoding list, in the order to apply them (last applied, first undone).

    Junk values (`utf-8`, `none`, `binary` are all seen in the wild) are ignored, as httpx and
    browsers do; a real coding we do not support is an error.
    """
    layers = []
    for coding in reversed(codings):
        name = coding.strip().lower()
        if name in ("gzip", "x-gzip", "deflate"):
            layers.append(_Inflater(name))
        elif name in _UNSUPPORTED_CODINGS:
            raise FetchError(
                ErrorKind.PROTOCOL, f"unsupported Content-Encoding {coding.strip()!r} (we accept gzip, deflate)"
            )
    return layers


def _decode(layers: list[_Inflater], data: bytes, level: int = 0) -> Iterator[bytes]:
    if level == len(layers):
        if data:
            yield data
        return
    for piece in layers[level].feed(data):
        yield from _decode(layers, piece, level + 1)


def _utf8_header(value: str) -> str:
    """httpx decodes header bytes as latin-1; servers (and browsers) mean UTF-8 in a Location."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _bad_location(status: int, url: str, location: str | None) -> str:
    if not location:
        return f"HTTP {status} from {_clip(url)} without a Location header"
    scheme, colon, _ = location.partition(":")
    if colon and scheme.isascii() and scheme.isalpha() and scheme.lower() not in ("http", "https"):
        return f"HTTP {status} from {_clip(url)} to a non-http(s) URL: {_clip(location)!r}"
    return f"HTTP {status} from {_clip(url)} with an unusable Location: {_clip(location)!r}"


def _clip(text: str, limit: int = 300) -> str:
    """Keep messages readable when a hostile server sends a megabyte-long URL."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} chars)"


def translate_httpx_error(exc: BaseException) -> FetchError:
    """The one place httpx exceptions (crawler.http.transport raises httpx's too) become our error kinds."""
    chain = _causes(exc)
    text = _one_line(str(exc)) or type(exc).__name__
    for cause in chain:
        if isinstance(cause, ssl.SSLError):
            reason = _one_line(str(cause)) or type(cause).__name__
            return FetchError(ErrorKind.TLS, f"TLS failure: {reason}")
    if isinstance(exc, ResponseError):  # its text says it all: "body cut short: ...", "malformed response: ..."
        return _Retryable(ErrorKind.PROTOCOL, text)
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


def _causes(exc: BaseException) -> list[BaseException]:
    """exc and what lies behind it, outermost first.

    httpcore raises its ConnectError `from None` with the ssl error as its argument, so
    the suppressed context and exception arguments count too.
    """
    chain = [exc]
    for current in chain:  # grows while it is walked
        behind = [current.__cause__, current.__context__, *current.args[:1]]
        chain.extend(e for e in behind if isinstance(e, BaseException) and all(e is not c for c in chain))
        if len(chain) > 20:  # pragma: no cover - a pathological chain
            break
    return chain


def _one_line(text: str) -> str:
    """Some error texts span lines (a parser pointing at the bad byte with a caret); keep the words."""
    lines = (line.strip() for line in text.splitlines())
    return " ".join(line for line in lines if line and set(line) != {"^"})
