"""HTTP/2 end to end: a real local TLS server speaking h2 (hypercorn + a trustme CA)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from crawler.config import HttpConfig
from crawler.engine import Outcome
from crawler.errors import ErrorKind, FetchError
from crawler.http.fetcher import Fetcher
from tests.crawlkit import crawl, make_config, rows

PAGES = {
    "/": b'<html><title>h2 home</title><a href="/a">a</a> <a href="/b">b</a></html>',
    "/a": b"<html><title>page a</title><a href='/'>home</a></html>",
    "/b": b"<html><title>page b</title></html>",
    "/robots.txt": b"User-agent: *\nDisallow: /private\n",
}
GZIPPED = b"<html><title>zipped</title>" + b"<p>words</p>" * 2000 + b"</html>"
BIG = b"x" * 3_000_000  # far above the body limit the tests set


class _NoGate:
    """Politeness left out: every request may start at once."""

    @contextlib.asynccontextmanager
    async def request(self, url: str) -> AsyncIterator[None]:
        yield


async def site(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """A tiny ASGI site that records the HTTP version each request arrived with."""
    if scope["type"] != "http":
        return
    seen_versions.append(scope["http_version"])
    seen_headers.append([(k.lower(), v) for k, v in scope["headers"]])
    path = scope["path"]
    if path == "/gzip":
        head = [(b"content-type", b"text/html"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": gzip.compress(GZIPPED)})
        return
    if path == "/big":  # no Content-Length: only the streamed count can stop it
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        for start in range(0, len(BIG), 65536):
            await send({"type": "http.response.body", "body": BIG[start : start + 65536], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path.startswith("/sized/"):  # that many bytes in pieces of 10,000, without Content-Length
        size = int(path.removeprefix("/sized/"))
        sized = bytes(i % 251 for i in range(size))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for start in range(0, size, 10_000):
            await send({"type": "http.response.body", "body": sized[start : start + 10_000], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/moved":
        await send({"type": "http.response.start", "status": 301, "headers": [(b"location", b"/a")]})
        await send({"type": "http.response.body", "body": b""})
        return
    body = PAGES.get(path)
    status = 200 if body is not None else 404
    ctype = b"text/plain" if path == "/robots.txt" else b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
    await send({"type": "http.response.body", "body": body or b"not found"})


seen_versions: list[str] = []
seen_headers: list[list[tuple[bytes, bytes]]] = []


@pytest.fixture
def h2_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve `site` over TLS with ALPN h2 on a port the OS picked; yields (base URL, CA file)."""
    yield from _serve(tmp_path, ["h2", "http/1.1"])


@pytest.fixture
def h1_only_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The same site over TLS from a server that offers only http/1.1 by ALPN."""
    yield from _serve(tmp_path, ["http/1.1"])


def _serve(tmp_path: Path, alpn: list[str]) -> Iterator[tuple[str, Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    config = HypercornConfig()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the listening socket
    config.certfile, config.keyfile = str(cert_file), str(key_file)
    config.alpn_protocols = alpn
    config.accesslog = config.errorlog = None

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()

    async def run() -> None:
        started.set()
        await serve(site, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    started.wait(5)
    seen_versions.clear()
    seen_headers.clear()
    try:
        yield f"https://127.0.0.1:{port}", ca_file
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


async def test_https_hosts_that_offer_h2_are_crawled_over_http2(h2_server: tuple[str, Path], tmp_path: Path) -> None:
    base, ca_file = h2_server
    db = tmp_path / "h2.db"
    summary = await crawl(make_config(db, [base + "/"], http={"http2": True, "ca_bundle": str(ca_file)}))

    assert summary.outcome is Outcome.FINISHED
    stored = dict(rows(db, "SELECT url, http_version FROM pages"))
    assert stored == {base + "/": "HTTP/2", base + "/a": "HTTP/2", base + "/b": "HTTP/2"}
    assert seen_versions and set(seen_versions) == {"2"}  # robots.txt too: every request was h2
    assert rows(db, "SELECT count(*) FROM errors") == [(0,)]


async def test_http2_off_falls_back_to_http11(h2_server: tuple[str, Path], tmp_path: Path) -> None:
    base, ca_file = h2_server
    db = tmp_path / "h1.db"
    await crawl(make_config(db, [base + "/"], http={"http2": False, "ca_bundle": str(ca_file)}))
    assert {v for (v,) in rows(db, "SELECT DISTINCT http_version FROM pages")} == {"HTTP/1.1"}
    assert set(seen_versions) == {"1.1"}


async def test_an_untrusted_certificate_is_a_tls_error(h2_server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = h2_server
    db = tmp_path / "untrusted.db"
    # No ca_bundle: the trustme CA is not trusted. robots.txt fails first, so keep its retries short.
    await crawl(make_config(db, [base + "/"], politeness={"robots_retry_interval": 0.05}))
    kinds = {kind for (kind,) in rows(db, "SELECT kind FROM errors")}
    assert kinds == {"tls"}
    assert rows(db, "SELECT count(*) FROM pages") == [(0,)]
    (message,) = {message for (message,) in rows(db, "SELECT message FROM errors")}
    assert message.endswith("TLS failure: invalid peer certificate: UnknownIssuer")
    assert seen_versions == []  # nothing got past the handshake


async def test_a_server_that_speaks_only_http11_over_tls_gives_http11(
    h1_only_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, ca_file = h1_only_server
    db = tmp_path / "h1only.db"
    summary = await crawl(make_config(db, [base + "/"], http={"ca_bundle": str(ca_file)}))  # http2 on by default
    assert summary.outcome is Outcome.FINISHED
    stored = dict(rows(db, "SELECT url, http_version FROM pages"))
    assert stored == {base + "/": "HTTP/1.1", base + "/a": "HTTP/1.1", base + "/b": "HTTP/1.1"}
    assert set(seen_versions) == {"1.1"}


def _fetcher(ca_file: Path | None, **http: Any) -> Fetcher:
    return Fetcher(HttpConfig(ca_bundle=ca_file, retries=0, **http), "crawler-test/0.1", concurrency=4)


@pytest.mark.parametrize("server", ["h2_server", "h1_only_server"])
async def test_bodies_either_side_of_what_pyreqwest_buffers_with_the_head_arrive_whole(
    server: str, request: pytest.FixtureRequest
) -> None:
    base, ca_file = request.getfixturevalue(server)
    fetcher = _fetcher(ca_file)
    sizes = [0, 1, 65_535, 65_536, 65_537, 200_000]
    try:
        bodies = [(await fetcher.fetch(f"{base}/sized/{size}", _NoGate())).body for size in sizes]
    finally:
        await fetcher.aclose()
    assert bodies == [bytes(i % 251 for i in range(size)) for size in sizes]


@pytest.mark.parametrize("server", ["h2_server", "h1_only_server"])
async def test_over_tls_the_body_arrives_raw_and_is_decoded_and_capped_by_us(
    server: str, request: pytest.FixtureRequest
) -> None:
    base, ca_file = request.getfixturevalue(server)
    fetcher = _fetcher(ca_file, max_body_bytes=1_000_000)
    try:
        zipped = await fetcher.fetch(base + "/gzip", _NoGate())
        assert zipped.body == GZIPPED  # decoded by crawler/http/decoding.py: the engine passed gzip through
        assert ("content-encoding", "gzip") in zipped.headers
        with pytest.raises(FetchError) as info:
            await fetcher.fetch(base + "/big", _NoGate())
        assert info.value.kind is ErrorKind.TOO_LARGE
        assert info.value.message == "body exceeded max_body_bytes 1,000,000 while streaming"
        moved = await fetcher.fetch(base + "/moved", _NoGate())  # a redirect comes back as it is
        assert (moved.status, moved.header_values("location"), moved.body) == (301, ["/a"], b"")
        again = await fetcher.fetch(base + "/a", _NoGate())  # the connection (or h2 stream) is usable after a cut
        assert again.status == 200
    finally:
        await fetcher.aclose()
    for headers in seen_headers:  # hyper writes the authority; httpx's Host is not sent a second time
        assert sum(name in (b"host", b":authority") for name, _ in headers) <= 1
        assert [v for k, v in headers if k == b"user-agent"] == [b"crawler-test/0.1"]
        assert [v for k, v in headers if k == b"accept-encoding"] == [b"gzip, deflate"]


async def test_connection_failures_over_https_are_connect_errors() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    fetcher = _fetcher(None)
    try:
        with pytest.raises(FetchError) as info:
            await fetcher.fetch(f"https://127.0.0.1:{port}/", _NoGate())
    finally:
        await fetcher.aclose()
    assert info.value.kind is ErrorKind.CONNECT
    assert info.value.message == (
        f"connection failed: tcp connect error: Connection refused (os error 111) (127.0.0.1:{port})"
    )
