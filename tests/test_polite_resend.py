"""Politeness of a request written twice, checked against when each write reached a raw server.

A kept-alive connection the server dropped sends the same request again on a new connection,
and a non-ASCII Location on https is read again over a connection of rawhead's: each second
write must take a turn of its host, as a new request would.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest

from tests.crawlkit import crawl, make_config, rows
from tests.support.matrix_servers import Tls, listening_socket, make_tls

DELAY = 0.1
TOL = 0.05  # a few ms of sending and scheduling on a busy machine, as in test_polite_crawl.py
PAGES = [f"/p{i}" for i in range(6)]
CAFE = "/café".encode()


def _answer(target: str) -> bytes:
    if target == "/robots.txt":
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    if target == "/location-utf8":  # bytes pyreqwest cannot hand over: rawhead reads the head again
        return b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % CAFE
    links = "".join(f'<a href="{path}">{path}</a>' for path in [*PAGES, "/location-utf8"]) if target == "/" else ""
    body = f"<!doctype html><title>{target}</title><body>{links}</body>".encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class RecordingServer:
    """A raw HTTP/1.1 server on 127.0.0.1 that notes when each request head arrives.

    drop_kept_alive: each connection answers its first request only; the next is read, then the
    connection closed unanswered (a server's idle timeout racing the request), so the client
    must send it again on a new connection.
    """

    def __init__(self, *, drop_kept_alive: bool) -> None:
        self.drop_kept_alive = drop_kept_alive
        self.arrivals: list[tuple[float, str]] = []
        self.dropped = 0

    @asynccontextmanager
    async def serving(self, tls: ssl.SSLContext | None) -> AsyncIterator[str]:
        sock = listening_socket()
        server = await asyncio.start_server(self._connection, sock=sock, ssl=tls)
        try:
            yield f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                self.arrivals.append((time.monotonic(), target))
                if answered and self.drop_kept_alive:
                    self.dropped += 1
                    return
                writer.write(_answer(target))
                await writer.drain()
                answered = True
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    def assert_gaps(self, delay: float) -> None:
        """Every two request heads the server read at least `delay` apart."""
        for (a, path_a), (b, path_b) in itertools.pairwise(sorted(self.arrivals)):
            assert b - a >= delay - TOL, f"{path_a} → {path_b} only {b - a:.3f}s apart (delay {delay})"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("resend-tls"))


async def crawl_site(server: RecordingServer, scheme: str, tls: Tls, db: Path) -> None:
    context = tls.server_context(["http/1.1"]) if scheme == "https" else None
    async with server.serving(context) as base:
        config = make_config(
            db,
            [base + "/"],
            crawl={"allowed_hosts": ["127.0.0.1"], "sitemaps": False, "parse_workers": 0},
            politeness={"delay": DELAY, "per_host_concurrency": 2},
            http={"ca_bundle": str(tls.ca_pem)},
        )
        await asyncio.wait_for(crawl(config), 30.0)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_request_sent_again_after_a_dropped_connection_waits_its_turn(
    scheme: str, tls: Tls, tmp_path: Path
) -> None:
    server = RecordingServer(drop_kept_alive=True)
    db = tmp_path / "c.db"
    await crawl_site(server, scheme, tls, db)

    assert server.dropped > 0  # requests did go out twice
    stored = {url.rsplit("/", 1)[-1] for (url,) in rows(db, "SELECT url FROM pages WHERE status = 200")}
    assert {page.strip("/") for page in PAGES} <= stored
    server.assert_gaps(DELAY)


async def test_a_non_ascii_location_read_again_waits_its_turn(tls: Tls, tmp_path: Path) -> None:
    server = RecordingServer(drop_kept_alive=False)
    db = tmp_path / "c.db"
    await crawl_site(server, "https", tls, db)

    assert [path for _, path in server.arrivals].count("/location-utf8") == 2  # pyreqwest's, then rawhead's
    assert "/caf%C3%A9" in [path for _, path in server.arrivals]
    server.assert_gaps(DELAY)
