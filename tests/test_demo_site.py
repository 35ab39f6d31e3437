"""The demo site and its server: what a robots-obeying walk finds, HTTP basics, the same bytes on every build."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

from crawler.demo import DEMO_EXPECTED, DemoServer, build_demo_site
from tests.support.walk import walk


def get(server: DemoServer, path: str, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def test_demo_site_matches_expected() -> None:
    with DemoServer() as server:
        found = walk(server.port)
        assert {k: len(v) for k, v in found.items()} == DEMO_EXPECTED
        assert set(found["disallowed"]) == {"/private/staff/", "/private/accounts/", "/private/drafts/"}
        assert set(found["redirects"]) == {"/old-catalogue"}
        resp, body = get(server, "/files/brochure.pdf")
        assert resp.getheader("Content-Type") == "application/pdf" and body.startswith(b"%PDF-")
        # real-looking text for full-text search
        book = next(p for p in found["pages"] if p.count("/") == 3 and p.startswith("/catalogue/"))
        text = get(server, book)[1].decode()
        assert "In stock" in text and text.count("<p>") >= 4
    assert build_demo_site().pages == server.site.pages  # the same bytes on every build


def test_demo_server_answers_redirects_404s_and_heads() -> None:
    with DemoServer() as server:
        resp, body = get(server, "/old-catalogue")
        assert (resp.status, resp.getheader("Location")) == (301, "/catalogue/")
        resp, body = get(server, "/nowhere")
        assert resp.status == 404 and b"No page at /nowhere" in body
        resp, body = get(server, "/", method="HEAD")
        assert resp.status == 200 and body == b""
        assert resp.getheader("Content-Length") == str(len(server.site.get("/").body))
        assert resp.getheader("Content-Type") == "text/html; charset=utf-8"
        resp, body = get(server, "/robots.txt")
        assert body == b"User-agent: *\nDisallow: /private/\n"


def test_demo_server_keeps_connections_alive_and_stops() -> None:
    before = threading.active_count()
    with DemoServer() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read()
        sock = conn.sock
        conn.request("GET", "/about/")  # the same connection
        assert conn.getresponse().status == 200 and conn.sock is sock
        conn.close()
        port = server.port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    assert threading.active_count() <= before + 1  # at most the closed connection's thread, on its way out
