"""The crawl's httpx client: CrawlClient, and the scheme router over our two transports."""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Callable, Mapping
from http.cookiejar import CookieJar
from typing import Any

import httpx
from pyreqwest.client import Client

from crawler.config import HttpConfig
from crawler.http.conventions import BEFORE_RESEND, HAPPY_EYEBALLS_DELAY, ON_SENT, SendReports
from crawler.http.proxies import ProxyRules
from crawler.http.reqwest import ReqwestTransport, build_client
from crawler.http.reqwest_clients import HttpsClients, Pin, PinnedClients
from crawler.http.resolver import DnsCache
from crawler.http.transport import H1Transport


def build_transport(
    http: HttpConfig,
    limits: httpx.Limits,
    *,
    environ: Mapping[str, str] = os.environ,
    dns: DnsCache | None = None,
    happy_eyeballs_delay: float = HAPPY_EYEBALLS_DELAY,
) -> httpx.AsyncBaseTransport:
    """Our HTTP/1.1 transport for plain http (the fast path), pyreqwest (HTTP/2 by ALPN) for https.

    environ: where HTTP_PROXY and the like are read, unless http.proxy names the proxy or http.trust_env is off.
    dns: the DNS cache both schemes look hosts up in (one is made when none is given).
    """
    if http.ca_bundle is not None:
        # Read here so that a bad bundle fails the start rather than every https page.
        ssl.create_default_context(cafile=str(http.ca_bundle))
    proxies = ProxyRules.from_config(http, environ)
    dns = dns if dns is not None else DnsCache()
    max_connections = limits.max_connections

    def tls() -> httpx.AsyncBaseTransport:
        def pinned(pin: Pin | None) -> Client:
            return build_client(http, max_connections=max_connections, pin=pin)

        def through(proxy: httpx.URL) -> Client:
            return build_client(http, max_connections=max_connections, proxy=proxy)

        clients = PinnedClients(
            pinned, dns, happy_eyeballs_delay=happy_eyeballs_delay, connect_timeout=http.connect_timeout
        )
        return ReqwestTransport(HttpsClients(clients, proxies=proxies, through=through), http)

    return SchemeRouter(
        plain=H1Transport(limits=limits, proxies=proxies, dns=dns, happy_eyeballs_delay=happy_eyeballs_delay),
        tls=tls,
    )


class SchemeRouter(httpx.AsyncBaseTransport):
    """Sends http:// requests through one transport and https:// through another, made on the
    first https:// request: its TLS client (root certificates, a Tokio runtime) slows every
    start, which a plain-http crawl need not pay for.
    """

    def __init__(self, *, plain: httpx.AsyncBaseTransport, tls: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._plain = plain
        # Requests go by origin and target (see CrawlClient) only if plain http's transport writes
        # targets; an https transport that does not gets the whole URL back from _whole_url.
        self.honours_target: bool = getattr(plain, "honours_target", False)
        self._plain_reports: bool = getattr(plain, "reports_sent", False)
        self._make_tls = tls
        self._tls: httpx.AsyncBaseTransport | None = None

    # Sends are reported: by the transport that carries the request, or here, as it is handed over.
    reports_sent = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            if not self._plain_reports:
                _report_sent(request)
            return await self._plain.handle_async_request(request)
        if self._tls is None:
            self._tls = self._make_tls()
        if not getattr(self._tls, "honours_target", False):
            request = _whole_url(request)
        if not getattr(self._tls, "reports_sent", False):
            _report_sent(request)
        return await self._tls.handle_async_request(request)

    async def aclose(self) -> None:
        await self._plain.aclose()
        if self._tls is not None:
            await self._tls.aclose()


def _report_sent(request: httpx.Request) -> None:
    request.extensions.pop(BEFORE_RESEND, None)
    on_sent = request.extensions.pop(ON_SENT, None)
    if on_sent is not None:
        on_sent()


def _whole_url(request: httpx.Request) -> httpx.Request:
    """The request with its page's whole URL, for a transport that does not write httpx's `target` extension."""
    target = request.extensions.pop("target", None)
    if target is not None:
        request.url = request.url.copy_with(raw_path=target)
    return request


class _SetCookiesOnly(httpx.Cookies):
    """A cookie jar that skips httpx's per-response cookie parsing when nothing sets a cookie.

    That parsing builds urllib request/response shims for every response, a large part of the
    fetch path's work, while crawled pages rarely set cookies."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            request = response.request
            target = request.extensions.get("target")
            if target is not None:  # sent by origin and target: a cookie's default path comes from the page's own URL
                page = httpx.Request(request.method, request.url.copy_with(raw_path=target), headers=request.headers)
                response = httpx.Response(response.status_code, headers=response.headers, request=page)
            super().extract_cookies(response)


_BODILESS = frozenset({"GET", "HEAD"})

# An http or https URL whose path and query httpx would leave exactly as they are: no userinfo,
# fragment or dot segment, and only characters that need no escaping. Such a URL is sent as its
# origin's URL (parsed once) and its target, the path and query, through httpx's `target`
# request extension, instead of being parsed whole on every request.
_SPLITTABLE = re.compile(
    r"(https?://[^/?#@\\\s]+)(/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*)?)"
)
_MAX_SPLIT_LENGTH = 8192  # far below httpx's own URL length limit, which a split URL would skip
_ORIGINS_KEPT = 4096
_httpx_log = logging.getLogger("httpx")


class _RedirectSeen(Exception):
    """Carries a redirect response out of httpx before httpx builds a request from its Location."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def _hand_back_redirects(response: httpx.Response) -> None:
    if response.has_redirect_location:
        raise _RedirectSeen(response)


class CrawlClient(httpx.AsyncClient):
    """The crawl's one AsyncClient: httpx's own, with a cheaper cookie jar, leaving redirects
    to follow_redirects entirely.

    httpx builds the next request of every redirect even when it will not follow it, and a
    Location such as `javascript:alert(1)` makes that raise InvalidURL, losing the response
    before follow_redirects could record a bad_redirect: a response hook hands the redirect
    back to `open` first.
    """

    def __init__(self, **kwargs: Any) -> None:
        hooks = kwargs.pop("event_hooks", None) or {}
        hooks = {**hooks, "response": [*hooks.get("response", []), _hand_back_redirects]}
        transport = kwargs.get("transport")
        super().__init__(event_hooks=hooks, **kwargs)
        self._jar = _SetCookiesOnly()
        # Whether requests may go as origin + target: the transport must write the target.
        self._splits = bool(getattr(transport, "honours_target", False))
        # Whether the transport calls a request's ON_SENT extension once the request is written.
        self.reports_sent = bool(getattr(transport, "reports_sent", False))
        self._origins: dict[str, httpx.URL] = {}

    async def open(
        self, url: str, headers: list[tuple[str, str]] | None = None, reports: SendReports | None = None
    ) -> httpx.Response:
        """GET url with the body left to stream; a redirect comes back as it is, its body closed unread.

        headers: (name, value) pairs sent on top of the client's; reports: told of each write of the
        request (when the transport reports_sent), through the ON_SENT and BEFORE_RESEND extensions."""
        request = self.build_request("GET", url, headers=headers) if headers else self.build_request("GET", url)
        if reports is not None:
            extensions = request.extensions
            extensions[ON_SENT] = reports.sent
            extensions[BEFORE_RESEND] = reports.before_resend
        try:
            return await self.send(request, stream=True, follow_redirects=False)
        except _RedirectSeen as seen:
            return seen.response

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: httpx.Cookies | CookieJar | dict[str, str] | list[tuple[str, str]]) -> None:
        self._jar = _SetCookiesOnly(cookies)

    def build_request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Request:
        """httpx's build_request; a bodiless request with nothing to merge is built in one pass.

        httpx builds the headers four times over (client copy, merge, Request, Host prepended)
        and re-wraps the URL; for the crawl's plain GETs the result is just the client's
        headers after a Host header, which is what this builds, once. `headers` given as a
        list of (name, value) pairs (none of the client's names) are appended to them.
        """
        extra: Any = kwargs.pop("headers", None) if set(kwargs) == {"headers"} else None
        one_pass = (
            not kwargs
            and isinstance(extra, list | None)
            and method in _BODILESS
            and not self.params
            and not self._jar
            and "host" not in self.headers
        )
        split = self._split(url) if one_pass and isinstance(url, str) else None
        if split is not None:
            url, target = split
        elif isinstance(url, str):
            url = httpx.URL(url)
        if not one_pass or url.is_relative_url:
            if extra is not None:
                kwargs["headers"] = extra
            return super().build_request(method, url, **kwargs)
        raw = [(b"Host", url.netloc), *self.headers.raw]
        if extra:  # (name, value) pairs sent on top of the client's, as a recrawl's validators are
            raw += [(name.encode("ascii"), value.encode("latin-1")) for name, value in extra]
        headers = httpx.Headers(raw)
        extensions: dict[str, Any] = {"timeout": self.timeout.as_dict()}
        if split is not None:
            extensions["target"] = target
        request = httpx.Request(method, url, headers=headers, extensions=extensions, stream=httpx.ByteStream(b""))
        request.read()  # as httpx does for a request built with content: .content is b""
        return request

    def _split(self, url: str) -> tuple[httpx.URL, bytes] | None:
        """(its origin's URL, its path and query) if url may be sent as origin and target, else None."""
        if not self._splits or len(url) > _MAX_SPLIT_LENGTH or _httpx_log.isEnabledFor(logging.INFO):
            return None  # httpx's log line names the request's URL: it must be the page's own
        match = _SPLITTABLE.fullmatch(url)
        if match is None:
            return None
        site, target = match.groups()
        if "/." in target:  # a dot segment, which httpx would remove
            return None
        origin = self._origins.get(site)
        if origin is None:
            if len(self._origins) >= _ORIGINS_KEPT:
                self._origins.clear()
            origin = self._origins[site] = httpx.URL(site + "/")
        return origin, target.encode("ascii")
