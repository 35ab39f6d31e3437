"""Tests for the local test site: HTTP behaviour, recording, faults, generated sites."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme

from tests.support.faults import (
    bomb_body,
    deflate_bomb_body,
    empty_reply,
    gzip_bomb,
    gzip_bomb_body,
    raw_bytes,
    reset_mid_body,
    retry_after,
    trickle,
)
from tests.support.localsite import SiteServer
from tests.support.site import Request, Response, Site, build_site
from tests.support.walk import parse_page, walk

Serve = Callable[[Site], SiteServer]
ROOT = Path(__file__).resolve().parent.parent


def get(
    server: SiteServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- basics


def test_page_renders_title_and_links(site_server: Serve) -> None:
    server = site_server(Site().page("/", title="Home & away", links=["/a", "/b?x=1&y=2", "https://example.org/"]))
    resp, body = get(server, "/")
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "text/html; charset=utf-8"
    assert resp.getheader("Content-Length") == str(len(body))
    assert resp.getheader("Server") == "localsite"
    assert resp.getheader("Date", "").endswith("GMT")
    page = parse_page(body)
    assert page.title == "Home & away"
    assert page.hrefs == ["/a", "/b?x=1&y=2", "https://example.org/"]


def test_custom_page_head_and_query_match(site_server: Serve) -> None:
    site = Site().page("/data?v=2", body=b"a,b\n", status=203, content_type="text/csv", headers={"X-Test": "1"})
    server = site_server(site)
    resp, body = get(server, "/data?v=2")
    assert (resp.status, body, resp.getheader("Content-Type")) == (203, b"a,b\n", "text/csv")
    assert resp.getheader("X-Test") == "1"
    resp, body = get(server, "/data?v=2", method="HEAD")
    assert (resp.status, body, resp.getheader("Content-Length")) == (203, b"", "4")
    assert get(server, "/data")[0].status == 404  # the query is part of the key
    assert get(server, "/data?v=2", method="POST")[0].status == 405


def test_redirect_404_and_robots(site_server: Serve) -> None:
    site = Site().redirect("/old", "/new", status=308)
    server = site_server(site)
    resp, _ = get(server, "/old")
    assert (resp.status, resp.getheader("Location")) == (308, "/new")
    resp, body = get(server, "/nowhere")
    assert resp.status == 404 and b"404" in body
    assert get(server, "/robots.txt")[0].status == 404  # no robots() call → 404
    site.robots("User-agent: *\nDisallow: /x\n")  # routes may change while served
    resp, body = get(server, "/robots.txt")
    assert (resp.status, body) == (200, b"User-agent: *\nDisallow: /x\n")
    assert resp.getheader("Content-Type", "").startswith("text/plain")


def test_keep_alive_and_connection_close(site_server: Serve) -> None:
    server = site_server(Site().page("/a").page("/b"))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.connect()
    sock = conn.sock
    for path in ["/a", "/b", "/missing", "/a"]:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert conn.sock is sock and not resp.will_close  # same socket throughout
    conn.request("GET", "/b", headers={"Connection": "close"})
    resp = conn.getresponse()
    resp.read()
    assert resp.getheader("Connection") == "close" and resp.will_close
    conn.close()
    assert server.paths() == ["/a", "/b", "/missing", "/a", "/b"]
    assert [r.status for r in server.requests] == [200, 200, 404, 200, 200]


def read_all(port: int, raw: bytes) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        return sock.makefile("rb").read()


def test_pipelining_connection_close_and_http10(site_server: Serve) -> None:
    server = site_server(Site().page("/a", body="A").page("/b", body="B"))
    data = read_all(server.port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.endswith(b"Connection: close\r\n\r\nB")
    assert read_all(server.port, b"GET /a HTTP/1.0\r\n\r\n").endswith(b"A")  # 1.0 closes by default


@pytest.mark.parametrize(
    "raw",
    [
        b"NONSENSE\r\n\r\n",
        b"GET /x HTTP/9.9\r\n\r\n",
        b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET x HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_request_is_400(site_server: Serve, raw: bytes) -> None:
    server = site_server(Site().page("/x"))
    assert read_all(server.port, raw).startswith(b"HTTP/1.1 400 ")
    assert server.requests[-1].status == 400


# --------------------------------------------------------------------------- recording


def test_recording_concurrency_and_latency(site_server: Serve) -> None:
    arrived = 0
    everyone_here = asyncio.Event()  # binds to the server's loop on first use

    async def rendezvous(request: Request) -> Response:
        # all three requests are held until the third arrives: overlap by construction
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            everyone_here.set()
        await everyone_here.wait()
        return Response(200, None, "ok")

    site = Site().handler("/slow", rendezvous).page("/late", latency=0.2)
    server = site_server(site)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(get(server, "/slow")[0].status)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert statuses == [200, 200, 200]
    assert sorted(r.in_flight_at_start for r in server.requests) == [1, 2, 3]
    assert server.max_in_flight == 3 and server.in_flight == 0
    assert server.count("/slow") == 3

    server.clear()
    t0 = time.monotonic()
    get(server, "/late", headers={"User-Agent": "probe/1"})
    assert time.monotonic() - t0 >= 0.2
    (record,) = server.requests
    assert record.duration >= 0.2 and record.headers["user-agent"] == "probe/1"
    assert (record.path, record.method, record.status, record.in_flight_at_start) == ("/late", "GET", 200, 1)
    assert server.max_in_flight == 1


def test_wait_for(site_server: Serve) -> None:
    server = site_server(Site().page("/a", latency=0.1))
    assert not server.wait_for(lambda: server.count("/a") > 0, timeout=0.05)
    client = threading.Thread(target=get, args=(server, "/a"))
    client.start()
    assert server.wait_for(lambda: server.in_flight == 1, timeout=5)  # arrived, not yet answered
    assert server.wait_for(lambda: server.count("/a") == 1, timeout=5)
    client.join(5)
    assert server.in_flight == 0


def test_dynamic_retry_after(site_server: Serve) -> None:
    site = Site().handler("/busy", retry_after(7, times=2, then=Response(200, {"X-Done": "yes"}, "done")))
    server = site_server(site)
    first, second, third = (get(server, "/busy") for _ in range(3))
    assert (first[0].status, first[0].getheader("Retry-After")) == (429, "7")
    assert second[0].status == 429
    assert (third[0].status, third[1], third[0].getheader("X-Done")) == (200, b"done", "yes")
    assert [r.status for r in server.requests] == [429, 429, 200]


# --------------------------------------------------------------------------- faults


def test_reset_mid_body(site_server: Serve) -> None:
    server = site_server(Site().raw("/reset", reset_mid_body(declared=100_000, sent=1000)))
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        get(server, "/reset")
    # on a raw socket: the partial body arrives, then an RST rather than a clean EOF
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Content-Length: 100000" in head and len(body) == 1000
    assert server.wait_for(lambda: server.count("/reset") == 2, timeout=5)
    assert server.requests[-1].status == 200


def test_empty_reply_and_raw_bytes(site_server: Serve) -> None:
    server = site_server(Site().raw("/empty", empty_reply()).raw("/junk", raw_bytes(b"HTTP/1.1 OK\r\n\r\n")))
    with pytest.raises(http.client.RemoteDisconnected):
        get(server, "/empty")
    with pytest.raises(http.client.BadStatusLine):
        get(server, "/junk")


def test_trickle(site_server: Serve) -> None:
    server = site_server(Site().raw("/slow", trickle(300, 1500)))
    t0 = time.monotonic()
    _, body = get(server, "/slow")
    elapsed = time.monotonic() - t0
    assert body == b"." * 300 and 0.15 <= elapsed < 2
    assert server.wait_for(lambda: server.count("/slow") == 1, timeout=5)  # raw routes record on return
    (record,) = server.requests
    assert record.duration >= 0.15 and record.status == 200


def test_gzip_bomb_inflates_to_stated_size(site_server: Serve) -> None:
    assert gzip.decompress(gzip_bomb_body(3_000_123)) == bytes(3_000_123)  # exact, incl. CRC and size
    inflated = 64 * 1024 * 1024 + 17
    server = site_server(Site().raw("/bomb", gzip_bomb(inflated)))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/bomb")
    resp = conn.getresponse()
    assert resp.getheader("Content-Encoding") == "gzip"
    compressed = int(resp.getheader("Content-Length", "0"))
    assert compressed < inflated // 500
    # inflate as a client should: bounded output per step, never the whole thing at once
    inflater = zlib.decompressobj(wbits=31)
    total, zeros = 0, bytes(1 << 20)
    while chunk := resp.read(16384):
        data = inflater.decompress(chunk, 1 << 20)
        while data:
            assert data == zeros[: len(data)]
            total += len(data)
            data = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
    total += len(inflater.flush())
    conn.close()
    assert inflater.eof and total == inflated


def test_deflate_and_stacked_bombs_inflate_to_stated_size() -> None:
    assert zlib.decompress(deflate_bomb_body(3_000_123)) == bytes(3_000_123)  # exact, incl. Adler-32
    stacked = bomb_body(2_000_001, ("deflate", "gzip"))
    assert zlib.decompress(gzip.decompress(stacked)) == bytes(2_000_001)
    assert len(bomb_body(1 << 30, ("gzip", "gzip"))) < 10_000  # 1 GiB behind a few KB


def test_prefix_routes_answer_a_whole_space_and_exact_routes_win(site_server: Serve) -> None:
    def echo(request: Request) -> Response:
        return Response(200, [("Content-Type", "text/plain")], f"prefix {request.path}")

    site = Site().prefix("/cal?", echo).prefix("/cal?month=1", lambda r: Response(200, None, "longer"))
    server = site_server(site.page("/cal?month=0", body="exact"))
    assert get(server, "/cal?month=5")[1] == b"prefix /cal?month=5"
    assert get(server, "/cal?month=12")[1] == b"longer"
    assert get(server, "/cal?month=0")[1] == b"exact"
    assert get(server, "/other")[0].status == 404


def test_serves_https_with_a_given_certificate() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with SiteServer(Site().page("/", title="Secure"), ssl=server_context) as server:
        assert server.url == f"https://127.0.0.1:{server.port}"
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5, context=client_context)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert (resp.status, parse_page(resp.read()).title) == (200, "Secure")
        conn.close()
        assert server.paths() == ["/"]


# --------------------------------------------------------------------------- lifecycle


def test_stop_closes_connections_and_joins() -> None:
    before = threading.active_count()
    server = SiteServer(Site().page("/")).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().read()
    assert conn.sock is not None
    server.stop()  # the keep-alive connection above is still open
    assert conn.sock.recv(1) == b""  # … and now closed by the server
    conn.close()
    assert threading.active_count() == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)
    server.stop()  # idempotent
    assert server.host_key == f"127.0.0.1:{server.port}" and server.url == f"http://127.0.0.1:{server.port}"


def test_cli_serves_in_a_subprocess() -> None:
    argv = [sys.executable, "-m", "tests.support.localsite", "--pages", "5", "--links", "2"]
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            parts = urlsplit(proc.stdout.readline().strip())
            assert parts.scheme == "http" and parts.hostname == "127.0.0.1"
            conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=5)
            conn.request("GET", "/p/4")
            resp = conn.getresponse()
            assert resp.status == 200 and b'href="/"' in resp.read()
            conn.close()
        finally:
            proc.terminate()
        assert proc.wait(5) == 0  # SIGTERM → clean shutdown


# --------------------------------------------------------------------------- sites


def test_build_site_is_deterministic_and_reachable(site_server: Serve) -> None:
    site = build_site(200, links_per_page=4, seed=3, page_bytes=2000)
    server = site_server(site)
    found = walk(server.port)
    assert set(found["pages"]) == {"/"} | {f"/p/{i}" for i in range(1, 200)}
    assert server.max_in_flight == 1
    _, body = get(server, "/p/7")
    assert 1900 <= len(body) <= 2100
    hrefs = parse_page(body).hrefs
    assert len(hrefs) == len(set(hrefs)) == 4 and hrefs[0] == "/p/8" and "/p/7" not in hrefs
    again = SiteServer(build_site(200, links_per_page=4, seed=3, page_bytes=2000))
    with again:
        assert get(again, "/p/7")[1] == body
        assert get(again, "/p/199")[1].count(b'href="/"') >= 1  # the chain wraps round
    other = build_site(200, links_per_page=4, seed=4).response("/p/7")
    assert other is not None and isinstance(other.body, bytes) and parse_page(other.body).hrefs != hrefs
