"""HTTP/2 end to end: a real local TLS server speaking h2 (hypercorn + a trustme CA)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from crawler.engine import Outcome
from tests.crawlkit import crawl, make_config, rows

PAGES = {
    "/": b'<html><title>h2 home</title><a href="/a">a</a> <a href="/b">b</a></html>',
    "/a": b"<html><title>page a</title><a href='/'>home</a></html>",
    "/b": b"<html><title>page b</title></html>",
    "/robots.txt": b"User-agent: *\nDisallow: /private\n",
}


async def site(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """A tiny ASGI site that records the HTTP version each request arrived with."""
    if scope["type"] != "http":
        return
    seen_versions.append(scope["http_version"])
    body = PAGES.get(scope["path"])
    status = 200 if body is not None else 404
    ctype = b"text/plain" if scope["path"] == "/robots.txt" else b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
    await send({"type": "http.response.body", "body": body or b"not found"})


seen_versions: list[str] = []


@pytest.fixture
def h2_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve `site` over TLS with ALPN h2 on a port the OS picked; yields (base URL, CA file)."""
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
    config.alpn_protocols = ["h2", "http/1.1"]
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
