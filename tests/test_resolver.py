"""crawler/http/resolver.py: DnsCache over an injected resolver and clock (TTL, bounds, shared lookups, failures)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest

from crawler.http.resolver import DnsCache, addr_infos, system_resolve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Resolver:
    """Answers from a table, counting calls per host; `gate` holds every answer until set."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, host: str) -> Sequence[str]:
        self.calls.append(host)
        if self.gate is not None:
            await self.gate.wait()
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


async def test_one_lookup_per_host_per_ttl() -> None:
    resolver, clock = Resolver({"a.test": ["127.0.0.2", "::1"]}), Clock()
    cache = DnsCache(resolver, ttl=60.0, clock=clock)
    assert await cache.lookup("a.test") == ("127.0.0.2", "::1")
    clock.now += 59.9
    assert await cache.lookup("a.test") == ("127.0.0.2", "::1")
    assert resolver.calls == ["a.test"]
    clock.now += 0.1
    resolver.table["a.test"] = ["127.0.0.3"]
    assert await cache.lookup("a.test") == ("127.0.0.3",)
    assert resolver.calls == ["a.test", "a.test"]


async def test_the_cache_holds_at_most_max_hosts_dropping_the_least_recently_used() -> None:
    resolver = Resolver({f"h{i}.test": [f"127.0.0.{i + 1}"] for i in range(4)})
    cache = DnsCache(resolver, max_hosts=2, clock=Clock())
    await cache.lookup("h0.test")
    await cache.lookup("h1.test")
    await cache.lookup("h0.test")  # h0 used again: h1 is now the least recently used
    await cache.lookup("h2.test")
    assert len(cache) == 2
    resolver.calls.clear()
    await cache.lookup("h0.test")
    await cache.lookup("h2.test")
    assert resolver.calls == []
    await cache.lookup("h1.test")
    assert resolver.calls == ["h1.test"]
    assert len(cache) == 2


async def test_overlapping_lookups_of_one_host_share_one_call() -> None:
    resolver = Resolver({"a.test": ["127.0.0.2"]})
    resolver.gate = asyncio.Event()
    cache = DnsCache(resolver, clock=Clock())
    waiting = [asyncio.create_task(cache.lookup("a.test")) for _ in range(5)]
    await asyncio.sleep(0)
    resolver.gate.set()
    assert await asyncio.gather(*waiting) == [("127.0.0.2",)] * 5
    assert resolver.calls == ["a.test"]


async def test_one_waiter_cancelled_leaves_the_lookup_to_the_others() -> None:
    resolver = Resolver({"a.test": ["127.0.0.2"]})
    resolver.gate = asyncio.Event()
    cache = DnsCache(resolver, clock=Clock())
    first = asyncio.create_task(cache.lookup("a.test"))
    second = asyncio.create_task(cache.lookup("a.test"))
    await asyncio.sleep(0)
    first.cancel()
    resolver.gate.set()
    assert await second == ("127.0.0.2",)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert resolver.calls == ["a.test"]


async def test_a_failed_lookup_is_raised_and_not_kept() -> None:
    resolver = Resolver({})
    cache = DnsCache(resolver, clock=Clock())
    for _ in range(2):
        with pytest.raises(socket.gaierror):
            await cache.lookup("nx.test")
    assert resolver.calls == ["nx.test", "nx.test"]
    assert len(cache) == 0


async def test_an_empty_answer_is_a_name_error() -> None:
    cache = DnsCache(Resolver({"empty.test": []}), clock=Clock())
    with pytest.raises(socket.gaierror):
        await cache.lookup("empty.test")


async def test_an_ip_address_is_its_own_answer_without_a_lookup() -> None:
    resolver = Resolver({})
    cache = DnsCache(resolver, clock=Clock())
    assert await cache.lookup("127.0.0.1") == ("127.0.0.1",)
    assert await cache.lookup("::1") == ("::1",)
    assert resolver.calls == []


async def test_the_system_resolver_finds_localhost_on_loopback() -> None:
    found = await system_resolve("localhost")
    assert found and set(found) <= {"127.0.0.1", "::1"}
    assert len(found) == len(set(found))


def test_addr_infos_pick_the_family_of_each_address() -> None:
    assert addr_infos(["127.0.0.1", "::1"], 8080) == [
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 8080)),
        (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", 8080, 0, 0)),
    ]
