"""Reaching a host: a bounded DNS cache over an injected resolver (one lookup per host per TTL, shared
by concurrent connects), and racing the addresses it gives (happy eyeballs, RFC 8305)."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohappyeyeballs

# A resolver: a host name → its addresses as text ("192.0.2.1", "2001:db8::1"), in the order to try them.
Resolve = Callable[[str], Awaitable[Sequence[str]]]
# What socket.getaddrinfo returns and aiohappyeyeballs.start_connection takes.
AddrInfo = tuple[int, int, int, str, tuple[str, int] | tuple[str, int, int, int]]

DEFAULT_TTL = 60.0
DEFAULT_MAX_HOSTS = 4096


async def system_resolve(host: str) -> list[str]:
    """The system's resolver (getaddrinfo in asyncio's thread pool), each address once, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def addr_infos(addresses: Sequence[str], port: int) -> list[AddrInfo]:
    """getaddrinfo-style entries for connecting to each address at port."""
    infos: list[AddrInfo] = []
    for address in addresses:
        if ":" in address:
            infos.append((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0)))
        else:
            infos.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port)))
    return infos


async def open_socket(dns: DnsCache, host: str, port: int, *, happy_eyeballs_delay: float) -> socket.socket:
    """A socket connected to host:port: its addresses looked up (cached), then raced, interleaving families."""
    addresses = await dns.lookup(host)
    return await aiohappyeyeballs.start_connection(
        addr_infos(addresses, port), happy_eyeballs_delay=happy_eyeballs_delay, interleave=1
    )


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DnsCache:
    """Addresses per host, kept for ttl seconds, at most max_hosts of them (the least recently used goes first).

    Lookups of one host that overlap share one call to the resolver; a failed lookup is not kept.
    """

    def __init__(
        self,
        resolve: Resolve = system_resolve,
        *,
        ttl: float = DEFAULT_TTL,
        max_hosts: int = DEFAULT_MAX_HOSTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        self._ttl = ttl
        self._max_hosts = max_hosts
        self.clock = clock
        self._entries: collections.OrderedDict[str, tuple[float, tuple[str, ...]]] = collections.OrderedDict()
        self._pending: dict[str, asyncio.Future[tuple[tuple[str, ...], float]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(self, host: str) -> tuple[str, ...]:
        """host's addresses; an IP address is its own. Raises what the resolver raises (socket.gaierror)."""
        return (await self.lookup_until(host))[0]

    async def lookup_until(self, host: str) -> tuple[tuple[str, ...], float]:
        """host's addresses and the clock time until which the cache keeps them (an IP address: forever)."""
        if is_ip(host):
            return (host,), float("inf")
        entry = self._entries.get(host)
        if entry is not None:
            expires, addresses = entry
            if self.clock() < expires:
                self._entries.move_to_end(host)
                return addresses, expires
            del self._entries[host]
        pending = self._pending.get(host)
        if pending is None:
            pending = self._pending[host] = asyncio.ensure_future(self._fetch(host))
            # A lookup nobody awaits any more must not log "exception never retrieved".
            pending.add_done_callback(_consume)
        return await asyncio.shield(pending)  # one waiter's cancellation leaves the lookup to the others

    async def _fetch(self, host: str) -> tuple[tuple[str, ...], float]:
        try:
            addresses = tuple(await self._resolve(host))
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            expires = self.clock() + self._ttl
            self._entries[host] = (expires, addresses)
            while len(self._entries) > self._max_hosts:
                self._entries.popitem(last=False)
            return addresses, expires
        finally:
            del self._pending[host]


def _consume(future: asyncio.Future[tuple[tuple[str, ...], float]]) -> None:
    if not future.cancelled():
        future.exception()
