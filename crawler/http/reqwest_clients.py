"""Which pyreqwest client carries an https request: one per proxy, or one per host pinned to an address.

pyreqwest has no resolver hook (hyper looks a name up for every new connection), so each host
gets a client of its own whose ClientBuilder.resolve() pins the name to one address: the
crawl's DnsCache answers once per host per TTL, and when it gives several addresses a
happy-eyeballs race (resolver.open_socket) picks the one that answers. TLS still runs against
the host name (SNI, certificate check, ALPN), since only the address lookup is replaced.
A request through a proxy goes to that proxy's client, and the proxy resolves the site.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import httpx

from crawler.http.proxies import ProxyRules
from crawler.http.resolver import DnsCache, is_ip, open_socket

DEFAULT_MAX_CLIENTS = 1024


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


@dataclass(frozen=True, slots=True)
class Pin:
    """A host name resolved to one address, for connections to port."""

    host: str
    address: str
    port: int


@dataclass(slots=True)
class _Entry(Generic[C]):
    client: C
    address: str | None  # None: the shared client of IP-literal hosts
    valid_until: float  # until then the DNS cache's addresses need not be looked at again


class PinnedClients(Generic[C]):
    """A client per (host, port), pinned to an address of the host's; at most max_clients of them,
    the least recently used closed first.

    make(pin) builds a client (make(None): the one shared by IP-literal hosts, which need no pin).
    When the host's addresses expire from the DNS cache, its client is kept if its address is
    still among the new ones, and replaced if not.

    A client replaced or evicted is let go rather than closed: close() would fail the requests
    still waiting on it for their response, while a client let go finishes them and closes its
    connections with its last reference. aclose() closes the clients still held.
    """

    def __init__(
        self,
        make: Callable[[Pin | None], C],
        dns: DnsCache,
        *,
        happy_eyeballs_delay: float,
        connect_timeout: float,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self._make = make
        self._dns = dns
        self._happy_eyeballs_delay = happy_eyeballs_delay
        self._connect_timeout = connect_timeout
        self._max_clients = max_clients
        self._entries: collections.OrderedDict[tuple[str, int], _Entry[C]] = collections.OrderedDict()
        self._pending: dict[tuple[str, int], asyncio.Future[C]] = {}
        self._shared: C | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def dns(self) -> DnsCache:
        return self._dns

    def pinned(self, host: str, port: int) -> str | None:
        """The address host's client connects to (None: no client yet, or an IP-literal host)."""
        entry = self._entries.get((host, port))
        return entry.address if entry is not None else None

    def ready(self, host: str, port: int) -> C | None:
        """host's client if nothing needs looking up (the common case, without a coroutine), else None."""
        key = (host, port)
        entry = self._entries.get(key)
        if entry is None or self._dns.clock() >= entry.valid_until:
            return None
        self._entries.move_to_end(key)
        return entry.client

    async def client_for(self, host: str, port: int) -> C:
        """host's client; may look host up and race its addresses (concurrent callers share the work).

        Raises httpx.ConnectError or httpx.ConnectTimeout when the name does not resolve or no address answers.
        """
        client = self.ready(host, port)
        if client is not None:
            return client
        key = (host, port)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(self._refresh(host, port))
            pending.add_done_callback(_consume)
        return await asyncio.shield(pending)  # one waiter's cancellation leaves the work to the others

    async def _refresh(self, host: str, port: int) -> C:
        key = (host, port)
        try:
            if is_ip(host):
                if self._shared is None:
                    self._shared = self._make(None)
                return self._store(key, _Entry(self._shared, None, float("inf")))
            try:
                addresses, valid_until = await self._dns.lookup_until(host)
            except OSError as exc:
                raise _connect_failure(exc, host, port) from exc
            entry = self._entries.get(key)
            if entry is not None and entry.address in addresses:
                entry.valid_until = valid_until
                self._entries.move_to_end(key)
                return entry.client
            address = await self._race(host, port, addresses)
            client = self._make(Pin(host, address, port))
            return self._store(key, _Entry(client, address, valid_until))
        finally:
            del self._pending[key]

    async def _race(self, host: str, port: int, addresses: tuple[str, ...]) -> str:
        """The address to pin: the only one, or the first to accept a connection (RFC 8305)."""
        if len(addresses) == 1:
            return addresses[0]
        try:
            async with asyncio.timeout(self._connect_timeout):
                sock = await open_socket(self._dns, host, port, happy_eyeballs_delay=self._happy_eyeballs_delay)
        except (OSError, TimeoutError) as exc:
            raise _connect_failure(exc, host, port, self._connect_timeout) from exc
        try:
            return str(sock.getpeername()[0])
        finally:
            sock.close()  # only the winning address was wanted: the client makes its own connections

    def _store(self, key: tuple[str, int], entry: _Entry[C]) -> C:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_clients:
            self._entries.popitem(last=False)
        return entry.client

    async def aclose(self) -> None:
        clients = {entry.client for entry in self._entries.values()}
        if self._shared is not None:
            clients.add(self._shared)
        self._entries.clear()
        self._shared = None
        for client in clients:
            await client.close()


class HttpsClients(Generic[C]):
    """The client for each https URL: its proxy's (ProxyRules decides), else its host's pinned one.

    through(proxy) builds a proxy's client, once per proxy.
    """

    def __init__(
        self,
        pinned: PinnedClients[C] | None,
        *,
        proxies: ProxyRules | None = None,
        through: Callable[[httpx.URL], C] | None = None,
        single: C | None = None,
    ) -> None:
        self.pinned = pinned
        self._proxies = proxies if proxies is not None and proxies.any and through is not None else None
        self._through = through
        self._proxied: dict[httpx.URL, C] = {}
        self._single = single
        self.dns = pinned.dns if pinned is not None else DnsCache()  # where the hosts' addresses are looked up

    @classmethod
    def single(cls, client: C) -> HttpsClients[C]:
        """One client for every request: no pinning, no proxy."""
        return cls(None, single=client)

    def proxy_for(self, url: httpx.URL) -> httpx.URL | None:
        return self._proxies.for_url(url) if self._proxies is not None else None

    def ready(self, url: httpx.URL) -> C | None:
        """url's client if it can be told without waiting (the common case, without a coroutine), else None."""
        if self._single is not None:
            return self._single
        if self._proxies is not None:
            proxy = self._proxies.for_url(url)
            if proxy is not None:
                return self._proxied.get(proxy)
        assert self.pinned is not None
        return self.pinned.ready(url.raw_host.decode("ascii"), url.port or 443)

    async def client_for(self, url: httpx.URL) -> C:
        """url's client; raises httpx.ConnectError or httpx.ConnectTimeout as PinnedClients.client_for does."""
        if self._single is not None:
            return self._single
        proxy = self.proxy_for(url)
        if proxy is not None:
            client = self._proxied.get(proxy)
            if client is None:
                assert self._through is not None
                client = self._proxied[proxy] = self._through(proxy)
            return client
        assert self.pinned is not None
        return await self.pinned.client_for(url.raw_host.decode("ascii"), url.port or 443)

    async def aclose(self) -> None:
        if self.pinned is not None:
            await self.pinned.aclose()
        closing = [*self._proxied.values(), *([self._single] if self._single is not None else [])]
        self._proxied, self._single = {}, None
        for client in closing:
            await client.close()


def _connect_failure(exc: BaseException, host: str, port: int, timeout: float | None = None) -> httpx.TransportError:
    """A failed lookup or race as the httpx exception the crawl's error kinds come from (as transport.py words it)."""
    where = f"{host}:{port}"
    if isinstance(exc, TimeoutError):
        return httpx.ConnectTimeout(f"no connection to {where} within {timeout:g}s")
    if isinstance(exc, socket.gaierror):
        return httpx.ConnectError(f"{exc.strerror or exc} ({where})")
    assert isinstance(exc, OSError)
    reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else (exc.strerror or str(exc))
    return httpx.ConnectError(f"{reason} ({where})")


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
