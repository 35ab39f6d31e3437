"""Proxies: which proxy a URL goes through (http.proxy, or HTTP_PROXY/HTTPS_PROXY/ALL_PROXY/NO_PROXY), and ProxyError.

    rules = ProxyRules.from_config(http, os.environ)
    rules.for_url(httpx.URL("https://example.com/"))  # -> httpx.URL("http://proxy:3128") or None

The environment is read the way curl, httpx and Scrapy read it: lowercase names before
uppercase ones, ALL_PROXY for a scheme without its own variable, NO_PROXY as a comma-separated
list of hosts, domain suffixes, `*`, host:port pairs, IP addresses and CIDR networks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from crawler.errors import ConfigError

if TYPE_CHECKING:
    from crawler.config import HttpConfig

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_MEMO = 4096
_PASSWORD = re.compile(r"(://[^/@:]*:)[^/]*@")


class ProxyError(httpx.ProxyError):
    """The proxy could not be reached or would not carry the request; the text names the proxy, never its password."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the proxy's own answer (407, 502 to a CONNECT, ...), when there was one


async def connect_answer(proxy: httpx.URL, target: str, timeout: float) -> str | None:
    """What proxy answers a CONNECT to target ("host:port") with, as "502 Bad Gateway", or None when
    it cannot be told or was a 2xx: asked again after a tunnel failed, whose answer hyper does not keep."""
    credentials = basic_credentials(proxy)
    request = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
        target.encode("ascii"),
        target.encode("ascii"),
        b"Proxy-Authorization: %s\r\n" % credentials if credentials else b"",
    )
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port or 80)
            try:
                writer.write(request)
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError, UnicodeError):
        return None
    version, _, answer = line.decode("latin-1").strip().partition(" ")
    code = answer[:3]
    if not version.startswith("HTTP/") or not code.isdigit() or code.startswith("2"):
        return None
    return answer


def proxy_problem(url: str) -> str | None:
    """Why url is not a usable proxy URL (http://[user:pass@]host[:port]), or None when it is."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        return "not a URL"
    if parts.scheme.lower() != "http":
        return "must be an http:// proxy URL (https:// and socks proxies are not supported)"
    if not parts.hostname:
        return "names no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be http://[user:password@]host[:port], with no path"
    return None


def shown(url: str) -> str:
    """A proxy URL as it may appear in messages: the password masked."""
    return _PASSWORD.sub(r"\1***@", url)


def basic_credentials(proxy: httpx.URL) -> bytes | None:
    """The Proxy-Authorization value for the proxy URL's user and password, or None without them."""
    if not proxy.username and not proxy.password:
        return None
    pair = f"{proxy.username}:{proxy.password}".encode()  # httpx has percent-decoded them
    return b"Basic " + base64.b64encode(pair)


@dataclass(frozen=True, slots=True)
class _Bypass:
    """One NO_PROXY entry."""

    domain: str | None = None  # matches this host and its subdomains
    port: int | None = None  # with domain: only this port
    network: _Network | None = None  # matches IP-literal hosts inside it

    def matches(self, host: str, port: int) -> bool:
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        assert self.domain is not None
        if self.port is not None and self.port != port:
            return False
        return host == self.domain or host.endswith("." + self.domain)


def parse_no_proxy(value: str) -> tuple[bool, tuple[_Bypass, ...]]:
    """NO_PROXY's entries: (whether everything bypasses, the entries)."""
    entries: list[_Bypass] = []
    for raw in value.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True, ()
        try:  # an IP address or a network: 10.0.0.0/8, ::1, [::1]
            entries.append(_Bypass(network=ipaddress.ip_network(entry.strip("[]"), strict=False)))
            continue
        except ValueError:
            pass
        host, port = entry, None
        if entry.startswith("["):  # [v6]:port; ports are not checked for IP entries
            with contextlib.suppress(ValueError):
                entries.append(_Bypass(network=ipaddress.ip_network(entry[1:].partition("]")[0])))
            continue
        if entry.count(":") == 1:
            host, _, port_text = entry.partition(":")
            port = _port(port_text)
        host = host.lstrip("*").lstrip(".").rstrip(".")  # "*.example.com", ".example.com": the domain and below
        if host:
            try:
                entries.append(_Bypass(network=ipaddress.ip_network(host)))
            except ValueError:
                entries.append(_Bypass(domain=host, port=port))
    return False, tuple(entries)


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(the variable's name as set, its value): the lowercase spelling first, as curl reads them."""
    for spelled in (name.lower(), name.upper()):
        # Under CGI, HTTP_PROXY can come from a request's Proxy: header (httpoxy); urllib ignores it there too.
        if spelled == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
            continue
        value = environ.get(spelled, "").strip()
        if value:
            return spelled, value
    return None


class ProxyRules:
    """Which proxy, if any, a URL goes through; answers are remembered per scheme, host and port."""

    def __init__(
        self,
        *,
        http: httpx.URL | None = None,
        https: httpx.URL | None = None,
        bypass_all: bool = False,
        bypass: tuple[_Bypass, ...] = (),
    ) -> None:
        self.http = http
        self.https = https
        self._bypass_all = bypass_all
        self._bypass = bypass
        self._memo: dict[tuple[str, str, int], httpx.URL | None] = {}

    @classmethod
    def from_config(cls, http: HttpConfig, environ: Mapping[str, str] = os.environ) -> ProxyRules:
        """http.proxy for every URL; else, if http.trust_env, the environment's variables; else none.

        Raises ConfigError naming the variable when the environment names a proxy this crawler cannot use.
        """
        if http.proxy is not None:
            proxy = httpx.URL(http.proxy)
            return cls(http=proxy, https=proxy)
        if not http.trust_env:
            return cls()
        found: dict[str, httpx.URL | None] = {}
        for scheme in ("http", "https"):
            named = _env(environ, f"{scheme}_proxy") or _env(environ, "all_proxy")
            if named is None:
                found[scheme] = None
                continue
            name, value = named
            if "://" not in value:  # curl and httpx take "host:port" as an http:// proxy
                value = "http://" + value
            problem = proxy_problem(value)
            if problem is not None:
                raise ConfigError("environment", name, f"{problem}: {shown(value)!r}")
            found[scheme] = httpx.URL(value)
        no_proxy = _env(environ, "no_proxy")
        bypass_all, bypass = parse_no_proxy(no_proxy[1]) if no_proxy else (False, ())
        return cls(http=found["http"], https=found["https"], bypass_all=bypass_all, bypass=bypass)

    @property
    def any(self) -> bool:
        """Whether any URL could go through a proxy."""
        return not self._bypass_all and (self.http is not None or self.https is not None)

    def for_url(self, url: httpx.URL) -> httpx.URL | None:
        """The proxy url goes through, or None to connect directly."""
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        try:
            return self._memo[key]
        except KeyError:
            pass
        proxy = self.https if key[0] == "https" else self.http if key[0] == "http" else None
        if proxy is not None and self._bypassed(key[1], key[2]):
            proxy = None
        if len(self._memo) >= _MAX_MEMO:
            self._memo.clear()
        self._memo[key] = proxy
        return proxy

    def _bypassed(self, host: str, port: int) -> bool:
        if self._bypass_all:
            return True
        host = host.lower().rstrip(".")
        return any(entry.matches(host, port) for entry in self._bypass)
