"""The crawl's httpx client: CrawlClient, the scheme router over our transports, and fast request URLs."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from typing import Any

import httpx

from crawler.config import HttpConfig
from crawler.http.transport import H1Transport


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

    httpx parses a URL character by character in pure Python; ours come from normalize_url/join_url, so only
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
    first https:// request: loading the CA bundle for its TLS context slows every start, which
    a plain-http crawl need not pay for."""

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

    That parsing builds urllib request/response shims for every response, a large part of the
    fetch path's work, while crawled pages rarely set cookies."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


_BODILESS = frozenset({"GET", "HEAD"})


class CrawlClient(httpx.AsyncClient):
    """The crawl's one AsyncClient: httpx's own, with a cheaper cookie jar, leaving redirects
    to follow_redirects entirely.

    httpx builds the next request of every redirect even when it will not follow it, and a
    Location such as `javascript:alert(1)` makes that raise InvalidURL, losing the response
    before follow_redirects could record a bad_redirect.
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
        headers after a Host header, which is what this builds, once. `headers` given as a
        list of (name, value) pairs (none of the client's names) are appended to them.
        """
        extra: Any = kwargs.pop("headers", None) if set(kwargs) == {"headers"} else None
        if (
            kwargs
            or not isinstance(extra, list | None)
            or method not in _BODILESS
            or not isinstance(url, httpx.URL)
            or url.is_relative_url
            or self.params
            or self._jar
            or "host" in self.headers
        ):
            if extra is not None:
                kwargs["headers"] = extra
            return super().build_request(method, url, **kwargs)
        raw = [(b"Host", url.netloc), *self.headers.raw]
        if extra:  # (name, value) pairs sent on top of the client's, as a recrawl's validators are
            raw += [(name.encode("ascii"), value.encode("latin-1")) for name, value in extra]
        headers = httpx.Headers(raw)
        request = httpx.Request(
            method, url, headers=headers, extensions={"timeout": self.timeout.as_dict()}, stream=httpx.ByteStream(b"")
        )
        request.read()  # as httpx does for a request built with content: .content is b""
        return request

    def _build_redirect_request(self, request: httpx.Request, response: httpx.Response) -> httpx.Request:
        return request  # only stored as response.next_request, which nothing reads
