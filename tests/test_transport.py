"""crawler/transport.py against a local server: a proper httpx.Response, and aiohttp errors mapped
so translate_httpx_error gives the kinds and messages it gave behind httpx-aiohttp."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import httpx
import pytest

from crawler.errors import ErrorKind
from crawler.fetch import translate_httpx_error
from crawler.localsite import Request, Site, SiteServer, raw_bytes, reset_mid_body
from crawler.transport import AiohttpTransport, map_aiohttp_error

Serve = Callable[[Site], SiteServer]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=2))
    async with httpx.AsyncClient(transport=transport, headers={"User-Agent": "transport-test/1"}) as client:
        yield client


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


async def test_an_http_1_0_answer_says_so(site_server: Serve, client: httpx.AsyncClient) -> None:
    site = Site().raw("/old", raw_bytes(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"))
    server = site_server(site)
    response = await client.get(server.url_for("/old"))
    assert response.http_version == "HTTP/1.0"
    assert response.content == b"hi"


async def test_a_refused_connection_is_a_connect_error_with_the_real_cause(client: httpx.AsyncClient) -> None:
    port = closed_port()
    # ConnectTimeout, as httpx-aiohttp had it: ClientConnectorError is a ClientConnectionError
    # too, and ConnectError is no subclass of ConnectTimeout; translate looks at the cause.
    with pytest.raises(httpx.ConnectTimeout) as info:
        await client.get(f"http://127.0.0.1:{port}/")
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)
    error = translate_httpx_error(info.value)
    assert error.kind is ErrorKind.CONNECT
    assert error.message == f"connection failed: Connection refused (127.0.0.1:{port})"


async def test_a_body_cut_short_is_a_read_error(site_server: Serve, client: httpx.AsyncClient) -> None:
    server = site_server(Site().raw("/cut", reset_mid_body(declared=100_000, sent=1000)))
    response = await client.send(client.build_request("GET", server.url_for("/cut")), stream=True)
    with pytest.raises(httpx.ReadError) as info:
        async for _ in response.aiter_raw():
            pass
    await response.aclose()
    assert isinstance(info.value.__cause__, aiohttp.ClientPayloadError)
    error = translate_httpx_error(info.value)
    assert error.kind is ErrorKind.PROTOCOL
    assert error.message.startswith("body cut short: ")


async def test_a_read_timeout_is_httpx_s_not_a_bare_timeout_error(site_server: Serve) -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()  # cancelled when the server stops

    server = site_server(Site().raw("/silent", silent))
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, read=0.05)) as client:
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.get(server.url_for("/silent"))
    # Fetcher reads a bare TimeoutError as its own total_timeout; this must not look like one.
    assert not isinstance(info.value, TimeoutError)
    error = translate_httpx_error(info.value)
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message.startswith("timeout: ")


async def test_a_malformed_status_line_comes_through_as_aiohttp_s_error(
    site_server: Serve, client: httpx.AsyncClient
) -> None:
    server = site_server(Site().raw("/junk", raw_bytes(b"HTTP/1.1 2x0 Whatever\r\n\r\n")))
    with pytest.raises(aiohttp.ClientResponseError) as info:
        await client.get(server.url_for("/junk"))
    assert translate_httpx_error(info.value).message.startswith("malformed response: ")


def test_aiohttp_errors_map_to_the_most_specific_httpx_error() -> None:
    cases: list[tuple[BaseException, type[httpx.HTTPError] | None]] = [
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
        (aiohttp.ServerDisconnectedError(), httpx.ConnectTimeout),
        (aiohttp.ClientPayloadError("cut"), httpx.ReadError),
        (aiohttp.InvalidUrlClientError("x"), httpx.UnsupportedProtocol),
        (aiohttp.ClientOSError(104, "reset"), httpx.ConnectTimeout),
        (ValueError("not aiohttp's"), None),
    ]
    for exc, expected in cases:
        mapped = map_aiohttp_error(exc)
        assert (type(mapped) if mapped is not None else None) is expected, exc
        if mapped is not None:
            assert str(mapped) == str(exc)
