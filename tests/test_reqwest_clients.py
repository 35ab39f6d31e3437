"""crawler/http/reqwest_clients.py: https through pyreqwest with the crawl's DNS cache and happy eyeballs.

PinnedClients on its own over an injected resolver and clock (one lookup per host per TTL, a pin
kept or replaced when the addresses change, IP-literal hosts unpinned, bounded), then real
trustme TLS servers on 127.0.0.1 reached by a made-up name the injected resolver answers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import trustme

from crawler.config import HttpConfig
from crawler.errors import ErrorKind
from crawler.http.client import build_transport
from crawler.http.errors import translate_httpx_error
from crawler.http.reqwest import ReqwestTransport, build_client
from crawler.http.reqwest_clients import HttpsClients, Pin, PinnedClients
from crawler.http.resolver import DnsCache
from tests.crawlkit import closed_port
from tests.support.localsite import SiteServer
from tests.support.site import Request, Response, Site
from tests.test_resolver import Clock, Resolver
from tests.test_transport import unanswering_listener

DEADLINE = 20.0  # a hang guard only; connect_timeout below is longer, so a stall on a dead address fails it


class FakeClient:
    def __init__(self, pin: Pin | None) -> None:
        self.pin = pin
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class Made:
    """make(pin) for PinnedClients: records every client it builds."""

    def __init__(self) -> None:
        self.clients: list[FakeClient] = []

    def __call__(self, pin: Pin | None) -> FakeClient:
        self.clients.append(FakeClient(pin))
        return self.clients[-1]


def pinned_over(
    table: dict[str, Sequence[str]], **kwargs: object
) -> tuple[PinnedClients[FakeClient], Made, Resolver, Clock]:
    resolver, clock, made = Resolver(table), Clock(), Made()
    dns = DnsCache(resolver, ttl=60.0, clock=clock)
    clients = PinnedClients(made, dns, happy_eyeballs_delay=0.05, connect_timeout=5.0, **kwargs)  # type: ignore[arg-type]
    return clients, made, resolver, clock


# ---- PinnedClients: injected resolver and clock, single addresses (nothing to race) ---------


async def test_a_host_s_client_is_built_once_and_its_name_looked_up_once_per_ttl() -> None:
    clients, made, resolver, clock = pinned_over({"a.test": ["127.0.0.2"]})
    first = await clients.client_for("a.test", 443)
    assert all([await clients.client_for("a.test", 443) is first for _ in range(5)])
    assert clients.ready("a.test", 443) is first
    assert (resolver.calls, first.pin) == (["a.test"], Pin("a.test", "127.0.0.2", 443))
    clock.now += 60.0  # expired: looked up again, and the same address keeps the same client
    assert clients.ready("a.test", 443) is None
    assert await clients.client_for("a.test", 443) is first
    assert resolver.calls == ["a.test", "a.test"]
    assert len(made.clients) == 1


async def test_a_client_whose_address_is_gone_after_the_ttl_is_replaced() -> None:
    clients, _, resolver, clock = pinned_over({"a.test": ["127.0.0.2"]})
    old = await clients.client_for("a.test", 443)
    resolver.table["a.test"] = ["127.0.0.3", "127.0.0.2"]  # reordered, the pinned one still there: kept
    clock.now += 60.0
    assert await clients.client_for("a.test", 443) is old
    resolver.table["a.test"] = ["127.0.0.4"]
    clock.now += 60.0
    new = await clients.client_for("a.test", 443)
    assert new is not old
    assert new.pin == Pin("a.test", "127.0.0.4", 443)
    assert clients.pinned("a.test", 443) == "127.0.0.4"
    assert not old.closed  # let go, not closed: a request still waiting on it would fail


async def test_ip_literal_hosts_share_one_unpinned_client_and_are_not_looked_up() -> None:
    clients, _, resolver, _ = pinned_over({})
    one = await clients.client_for("127.0.0.1", 443)
    assert await clients.client_for("::1", 8443) is one
    assert (one.pin, resolver.calls, clients.pinned("127.0.0.1", 443)) == (None, [], None)


async def test_clients_are_bounded_least_recently_used_first_and_aclose_closes_those_held() -> None:
    clients, made, _, _ = pinned_over({"a.test": ["127.0.0.2"], "b.test": ["127.0.0.3"], "c.test": ["127.0.0.4"]},
                                      max_clients=2)  # fmt: skip
    a = await clients.client_for("a.test", 443)
    await clients.client_for("b.test", 443)
    assert await clients.client_for("a.test", 443) is a  # a is now the most recently used
    await clients.client_for("c.test", 443)
    assert len(clients) == 2
    assert (clients.pinned("a.test", 443), clients.pinned("b.test", 443)) == ("127.0.0.2", None)
    await clients.aclose()
    assert [client.closed for client in made.clients] == [True, False, True]  # b was let go when evicted


async def test_concurrent_requests_for_a_new_host_share_one_lookup_and_one_client() -> None:
    clients, made, resolver, _ = pinned_over({"a.test": ["127.0.0.2"]})
    resolver.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(clients.client_for("a.test", 443)) for _ in range(4)]
    await asyncio.sleep(0)
    resolver.gate.set()
    got = await asyncio.gather(*waiting)
    assert len({id(client) for client in got}) == 1
    assert (resolver.calls, len(made.clients)) == (["a.test"], 1)


async def test_a_name_that_does_not_resolve_or_whose_addresses_all_refuse_is_a_connect_error() -> None:
    port = closed_port()
    clients, made, _, _ = pinned_over({"refused.test": ["127.0.0.2", "127.0.0.1"]})
    with pytest.raises(httpx.ConnectError) as nx:
        await clients.client_for("nx.test", 443)
    with pytest.raises(httpx.ConnectError) as refused:
        await clients.client_for("refused.test", port)
    assert translate_httpx_error(nx.value).message == "connection failed: Name or service not known (nx.test:443)"
    error = translate_httpx_error(refused.value)
    assert (error.kind, error.message) == (
        ErrorKind.CONNECT,
        f"connection failed: Connection refused (refused.test:{port})",
    )
    assert made.clients == []  # a failed race pins nothing; the next request races again


# ---- real TLS servers on 127.0.0.1, reached by name ----------------------------------------


@pytest.fixture
def named_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context whose certificate names only pinned.test, and the CA's PEM file."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("pinned.test").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


def held_until(count: int) -> tuple[Site, list[str]]:
    """A site whose /held answers only once `count` requests are being served at once (HTTP/1.1:
    as many connections); the list records the Host header of every request."""
    hosts: list[str] = []
    arrived: list[asyncio.Event] = []

    async def held(request: Request) -> Response:
        if not arrived:
            arrived.append(asyncio.Event())
        hosts.append(request.header("host") or "")
        if len(hosts) >= count:
            arrived[0].set()
        await arrived[0].wait()
        return Response(200, [("Content-Type", "text/plain")], b"held")

    return Site().handler("/held", held).page("/page", body="page"), hosts


@pytest.fixture
def tls_server(named_tls: tuple[ssl.SSLContext, Path]) -> Iterator[tuple[SiteServer, list[str], Path]]:
    site, hosts = held_until(3)
    with SiteServer(site, ssl=named_tls[0]) as server:
        yield server, hosts, named_tls[1]


async def test_a_name_with_a_dead_address_first_is_pinned_to_the_live_one_and_looked_up_once(
    tls_server: tuple[SiteServer, list[str], Path],
) -> None:
    server, hosts, ca_file = tls_server
    http = HttpConfig(ca_bundle=ca_file, connect_timeout=60.0)
    with unanswering_listener(server.port) as dead:
        resolver = Resolver({"pinned.test": [dead, "127.0.0.1"]})  # the dead one is tried first, and never answers
        pinned = PinnedClients(
            lambda pin: build_client(http, max_connections=8, pin=pin),
            DnsCache(resolver),
            happy_eyeballs_delay=0.05,
            connect_timeout=http.connect_timeout,
        )
        transport = ReqwestTransport(HttpsClients(pinned), http)
        async with httpx.AsyncClient(transport=transport) as client:
            base = f"https://pinned.test:{server.port}"
            together = asyncio.gather(*(client.get(f"{base}/held") for _ in range(3)))  # three connections
            answers = await asyncio.wait_for(together, DEADLINE)
            answers += [await asyncio.wait_for(client.get(f"{base}/page"), DEADLINE) for _ in range(3)]
            address = pinned.pinned("pinned.test", server.port)
    assert [answer.status_code for answer in answers] == [200] * 6
    assert resolver.calls == ["pinned.test"]
    # Every connection hyper made went to the pinned address: the dead one was raced once, never dialled again.
    assert address == "127.0.0.1"
    # SNI, the certificate check (it names only pinned.test) and Host all used the name.
    assert hosts == [f"pinned.test:{server.port}"] * 3
    assert {answer.http_version for answer in answers} == {"HTTP/1.1"}


async def test_both_schemes_share_the_crawl_s_dns_cache(
    tls_server: tuple[SiteServer, list[str], Path],
) -> None:
    server, _, ca_file = tls_server
    with SiteServer(Site().page("/plain", body="plain")) as plain:
        resolver = Resolver({"pinned.test": ["127.0.0.1"]})
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        http = HttpConfig(ca_bundle=ca_file)
        transport = build_transport(http, limits, environ={}, dns=DnsCache(resolver))
        async with httpx.AsyncClient(transport=transport) as client:
            secure = await client.get(f"https://pinned.test:{server.port}/page")
            cleartext = await client.get(f"http://pinned.test:{plain.port}/plain")
    assert (secure.status_code, secure.text, cleartext.status_code, cleartext.text) == (200, "page", 200, "plain")
    assert resolver.calls == ["pinned.test"]
