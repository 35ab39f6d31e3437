"""crawler/http/transport.py against local servers: a proper httpx.Response, keep-alive reuse, pool
limits, flow control, and each failure as the httpx error translate_httpx_error words for an error row."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from crawler.errors import ErrorKind
from crawler.http.conventions import BEFORE_RESEND, MAX_HEAD_BYTES, ON_SENT, ResponseError
from crawler.http.errors import translate_httpx_error
from crawler.http.resolver import DnsCache
from crawler.http.transport import H1Transport
from tests.crawlkit import closed_port
from tests.support.faults import empty_reply, raw_bytes, reset_mid_body
from tests.support.localsite import SiteServer
from tests.support.site import Request, Site

Serve = Callable[[Site], SiteServer]


def make_client(max_connections: int = 2, **kwargs: object) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(
        transport=H1Transport(limits=limits),
        headers={"User-Agent": "transport-test/1"},
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as client:
        yield client


async def test_a_response_keeps_status_headers_body_and_version(site_server: Serve, client: httpx.AsyncClient) -> None:
    site = Site().page("/p?q=1", body=b"<p>hello</p>", headers=[("X-Twice", "a"), ("X-Twice", "b")])
    server = site_server(site)
    response = await client.send(client.build_request("GET", server.url_for("/p?q=1")), stream=True)
    try:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    assert response.status_code == 200
    assert response.reason_phrase == "OK"
    assert response.http_version == "HTTP/1.1"
    assert response.headers.get_list("x-twice") == ["a", "b"]  # repeated headers stay apart
    assert (b"Content-Type", b"text/html; charset=utf-8") in response.headers.raw  # the server's spelling
    assert body == b"<p>hello</p>"
    record = server.requests[-1]
    assert (record.method, record.path) == ("GET", "/p?q=1")
    assert record.headers["user-agent"] == "transport-test/1"
    assert record.headers["host"] == server.host_key


async def test_requests_reuse_one_kept_alive_connection(site_server: Serve) -> None:
    server = site_server(Site().page("/a").page("/b"))
    seen: set[int] = set()
    async with make_client(max_connections=1) as client:
        transport = client._transport
        assert isinstance(transport, H1Transport)
        for path in ("/a", "/b", "/a"):
            assert (await client.get(server.url_for(path))).status_code == 200
            seen.update(map(id, transport._conns))
    assert len(seen) == 1  # one connection carried all three
    assert server.count("/a") == 2


async def test_a_chunked_body_and_a_body_ended_by_close_both_arrive_whole(
    site_server: Serve, client: httpx.AsyncClient
) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end"
    server = site_server(Site().raw("/chunked", raw_bytes(chunked)).raw("/close", raw_bytes(until_close)))
    assert (await client.get(server.url_for("/chunked"))).content == b"hello world"
    response = await client.get(server.url_for("/close"))
    assert response.http_version == "HTTP/1.0"
    assert response.content == b"to the end"


async def test_an_interim_100_continue_is_skipped(site_server: Serve, client: httpx.AsyncClient) -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    server = site_server(Site().raw("/interim", raw_bytes(data)))
    response = await client.get(server.url_for("/interim"))
    assert (response.status_code, response.content) == (201, b"ok")


async def test_a_second_answer_to_one_request_is_dropped_with_its_connection(
    site_server: Serve, client: httpx.AsyncClient
) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"
    server = site_server(Site().raw("/twice", raw_bytes(data)).page("/next", body=b"next"))
    response = await client.get(server.url_for("/twice"))
    assert (response.status_code, response.content) == (200, b"ok")
    transport = client._transport
    assert isinstance(transport, H1Transport)
    assert not any(transport._idle.values())  # that connection carries nothing more
    assert (await client.get(server.url_for("/next"))).content == b"next"


async def test_a_refused_connection_is_a_connect_error_naming_the_address(client: httpx.AsyncClient) -> None:
    port = closed_port()
    with pytest.raises(httpx.ConnectError) as info:
        await client.get(f"http://127.0.0.1:{port}/")
    error = translate_httpx_error(info.value)
    assert error.kind is ErrorKind.CONNECT
    assert error.message == f"connection failed: Connection refused (127.0.0.1:{port})"


async def test_a_body_cut_short_says_how_much_arrived(site_server: Serve, client: httpx.AsyncClient) -> None:
    server = site_server(Site().raw("/cut", reset_mid_body(declared=100_000, sent=1000)))
    response = await client.send(client.build_request("GET", server.url_for("/cut")), stream=True)
    with pytest.raises(ResponseError) as info:
        async for _ in response.aiter_raw():
            pass
    await response.aclose()
    error = translate_httpx_error(info.value)
    assert error.kind is ErrorKind.PROTOCOL
    assert error.message == "body cut short: received 1,000 of 100,000 bytes; connection reset by peer"


async def test_no_answer_on_a_new_connection_is_a_broken_connection(
    site_server: Serve, client: httpx.AsyncClient
) -> None:
    server = site_server(Site().raw("/empty", empty_reply()))
    with pytest.raises(ResponseError) as info:
        await client.get(server.url_for("/empty"))
    assert translate_httpx_error(info.value).message == (
        "connection broken: the server closed the connection without a response"
    )
    assert server.wait_for(lambda: server.count("/empty") == 1)  # a fresh connection is not retried


async def test_a_kept_alive_connection_the_server_dropped_is_replaced_once() -> None:
    """The server keeps the first connection alive, then drops it on the next request unanswered
    (an idle timeout racing the request): the request goes again on a new connection, after the
    BEFORE_RESEND extension (politeness's new turn for it), and each write is reported."""
    answered: list[int] = []
    connections = 0
    events: list[str] = []

    async def before_resend() -> None:
        events.append(f"before resend, {connections} connection(s)")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mine = connections
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if mine == 1 and answered:  # the first connection's second request: drop it
                    break
                answered.append(mine)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with make_client(max_connections=1) as client:
            first = await client.get(f"http://127.0.0.1:{port}/one")
            request = client.build_request("GET", f"http://127.0.0.1:{port}/two")
            request.extensions[ON_SENT] = lambda: events.append("sent")
            request.extensions[BEFORE_RESEND] = before_resend
            second = await client.send(request)
    finally:
        listener.close()
        await listener.wait_closed()
    assert (first.content, second.content) == (b"ok", b"ok")
    assert answered == [1, 2]  # the second answer came on a second connection
    assert connections == 2
    assert events == ["sent", "before resend, 1 connection(s)", "sent"]


async def test_a_request_s_send_is_reported_once_its_head_is_written(site_server: Serve) -> None:
    # Politeness counts a host's gap from this report (the ON_SENT request extension).
    server = site_server(Site().page("/p", body=b"ok"))
    reported: list[int] = []
    async with make_client() as client:
        assert getattr(client._transport, "reports_sent", False)
        request = client.build_request("GET", server.url_for("/p"))
        request.extensions[ON_SENT] = lambda: reported.append(0)
        response = await client.send(request)
        refused = client.build_request("GET", f"http://127.0.0.1:{closed_port()}/")
        refused.extensions[ON_SENT] = lambda: reported.append(-1)
        with pytest.raises(httpx.ConnectError):
            await client.send(refused)
    assert response.content == b"ok"
    assert reported == [0]  # once; never for a request that was not written


async def test_a_read_timeout_is_httpx_s_not_a_bare_timeout_error(site_server: Serve) -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()  # cancelled when the server stops

    server = site_server(Site().raw("/silent", silent))
    async with make_client(max_connections=1, timeout=httpx.Timeout(5.0, read=0.05)) as client:
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.get(server.url_for("/silent"))
    # Fetcher reads a bare TimeoutError as its own total_timeout; this must not look like one.
    assert not isinstance(info.value, TimeoutError)
    error = translate_httpx_error(info.value)
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message == "ReadTimeout: nothing received for 0.05s"


async def test_a_malformed_status_line_is_a_malformed_response(site_server: Serve, client: httpx.AsyncClient) -> None:
    server = site_server(Site().raw("/junk", raw_bytes(b"HTTP/1.1 2x0 Whatever\r\n\r\n")))
    with pytest.raises(ResponseError) as info:
        await client.get(server.url_for("/junk"))
    assert translate_httpx_error(info.value).message.startswith("malformed response: ")


async def test_an_endless_response_head_is_refused(site_server: Serve, client: httpx.AsyncClient) -> None:
    async def endless(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(MAX_HEAD_BYTES // 1000 + 10):
            writer.write(b"X-Pad: " + b"p" * 990 + b"\r\n")
            await writer.drain()
        await asyncio.Event().wait()

    server = site_server(Site().raw("/endless", endless))
    with pytest.raises(ResponseError) as info:
        await client.get(server.url_for("/endless"))
    assert str(info.value) == f"malformed response: status line and headers above {MAX_HEAD_BYTES:,} bytes"


async def test_the_pool_never_opens_more_than_max_connections(site_server: Serve) -> None:
    server = site_server(Site(default_latency=0.02).page("/a").page("/b").page("/c"))
    async with make_client(max_connections=2) as client:
        transport = client._transport
        assert isinstance(transport, H1Transport)
        most = 0

        async def get(path: str) -> int:
            nonlocal most
            response = await client.get(server.url_for(path))
            most = max(most, transport._open)
            return response.status_code

        statuses = await asyncio.gather(*(get(p) for p in ("/a", "/b", "/c") * 4))
    assert statuses == [200] * 12
    assert most <= 2
    assert server.max_in_flight <= 2


async def test_with_every_connection_busy_a_request_waits_then_times_out_on_the_pool(site_server: Serve) -> None:
    slow, other = site_server(Site().page("/", latency=0.5)), site_server(Site().page("/"))
    async with make_client(max_connections=1, timeout=httpx.Timeout(5.0, pool=0.05)) as client:
        busy = asyncio.create_task(client.get(slow.url_for("/")))
        assert await asyncio.to_thread(slow.wait_for, lambda: slow.in_flight == 1)  # it holds the only connection
        with pytest.raises(httpx.PoolTimeout):
            await client.get(other.url_for("/"))
        assert (await busy).status_code == 200
        assert (await client.get(other.url_for("/"))).status_code == 200  # room again once it is done
    assert other.count("/") == 1


async def test_a_connection_to_another_origin_evicts_an_idle_one_at_the_limit(site_server: Serve) -> None:
    one, two = site_server(Site().page("/")), site_server(Site().page("/"))
    async with make_client(max_connections=1) as client:
        transport = client._transport
        assert isinstance(transport, H1Transport)
        assert (await client.get(one.url_for("/"))).status_code == 200
        assert (await client.get(two.url_for("/"))).status_code == 200  # no pool timeout: the idle one went
        assert transport._open == 1


async def test_a_body_the_reader_does_not_take_pauses_the_socket(site_server: Serve) -> None:
    big = b"x" * (4 * 1024 * 1024)
    server = site_server(Site().page("/big", body=big, content_type="application/octet-stream"))
    async with make_client(max_connections=1) as client:
        response = await client.send(client.build_request("GET", server.url_for("/big")), stream=True)
        try:
            transport = client._transport
            assert isinstance(transport, H1Transport)
            (conn,) = transport._conns
            # Unread, the body stops being read from the socket near the high-water mark.
            for _ in range(100):
                if conn._paused:
                    break
                await conn.wait(5.0)
            assert conn._paused
            assert conn._buffered < 2 * 1024 * 1024
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
    assert body == big


# ---- new connections: the DNS cache and happy eyeballs (RFC 8305) -------------------------


class Resolver:
    """An injected resolver: every host name resolves to `addresses`; calls are counted."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.calls = 0

    async def __call__(self, host: str) -> list[str]:
        self.calls += 1
        return self.addresses


def transport_with(resolver: Resolver, *, keep_alive: bool = True, **kwargs: object) -> H1Transport:
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8 if keep_alive else 0)
    dns = DnsCache(resolver, **kwargs)  # type: ignore[arg-type]
    return H1Transport(limits=limits, dns=dns)


@contextlib.contextmanager
def unanswering_listener(port: int) -> Iterator[str]:
    """127.0.0.3:port accepts no new connection and answers no SYN: its one-place backlog is full."""
    address = "127.0.0.3"
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind((address, port))
        listener.listen(0)
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((address, port))
            fillers.append(filler)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect((address, port))
            pytest.skip("this kernel answers connections beyond a full backlog")
        except TimeoutError:
            pass
        finally:
            probe.close()
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_an_address_that_never_answers_costs_one_happy_eyeballs_delay_not_a_connect_timeout(
    site_server: Serve,
) -> None:
    server = site_server(Site().page("/"))
    with unanswering_listener(server.port) as dead:
        resolver = Resolver(dead, "127.0.0.1")
        transport = H1Transport(
            limits=httpx.Limits(max_connections=2), dns=DnsCache(resolver), happy_eyeballs_delay=0.1
        )
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0)) as client:
            started = time.monotonic()
            response = await client.get(f"http://two-addresses.test:{server.port}/")
            elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 2.5  # the dead address is left behind after 0.1 s, far from the 5 s connect timeout
    assert server.requests[-1].headers["host"] == f"two-addresses.test:{server.port}"


async def test_a_refused_address_hands_over_to_the_next_at_once(site_server: Serve) -> None:
    server = site_server(Site().page("/"))
    resolver = Resolver("127.0.0.2", "127.0.0.1")  # nothing listens on 127.0.0.2: refused
    transport = H1Transport(limits=httpx.Limits(max_connections=2), dns=DnsCache(resolver), happy_eyeballs_delay=3.0)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10.0)) as client:
        started = time.monotonic()
        response = await client.get(f"http://refused-first.test:{server.port}/")
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 2.0  # not the 3 s delay: a failed attempt starts the next one


async def test_every_address_failing_is_one_connect_error_naming_the_host(site_server: Serve) -> None:
    port = closed_port()
    transport = transport_with(Resolver("127.0.0.2", "127.0.0.1"))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://nowhere.test:{port}/")
    error = translate_httpx_error(info.value)
    assert error.kind is ErrorKind.CONNECT
    assert error.message == f"connection failed: Connection refused (nowhere.test:{port})"


async def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    async def no_such_name(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    transport = H1Transport(limits=httpx.Limits(max_connections=2), dns=DnsCache(no_such_name))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get("http://nx.test/")
    error = translate_httpx_error(info.value)
    assert (error.kind, error.message) == (
        ErrorKind.CONNECT,
        "connection failed: Name or service not known (nx.test:80)",
    )


async def test_new_connections_resolve_once_per_ttl(site_server: Serve) -> None:
    server = site_server(Site().page("/"))
    resolver, now = Resolver("127.0.0.1"), [0.0]
    transport = transport_with(resolver, keep_alive=False, ttl=60.0, clock=lambda: now[0])
    async with httpx.AsyncClient(transport=transport) as client:
        url = f"http://cached.test:{server.port}/"
        for _ in range(3):  # no keep-alive: three connections
            assert (await client.get(url)).status_code == 200
        assert resolver.calls == 1
        assert await asyncio.gather(*(client.get(url) for _ in range(4)))  # four at once share the answer
        assert resolver.calls == 1
        now[0] = 60.0
        assert (await client.get(url)).status_code == 200
        assert resolver.calls == 2
    assert len(server.requests) == 8
