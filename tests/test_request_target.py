"""Requests sent as their origin's URL and httpx's `target` extension: what each side sees."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from crawler.config import HttpConfig
from crawler.http.client import SchemeRouter
from crawler.http.fetcher import Fetcher
from crawler.http.transport import H1Transport
from tests.support.localsite import SiteServer
from tests.support.site import Site

Serve = Callable[[Site], SiteServer]


def fetcher(transport: httpx.AsyncBaseTransport | None = None) -> Fetcher:
    return Fetcher(HttpConfig(), "crawler-test/0.1", concurrency=2, transport=transport)


def test_our_transport_gets_origin_and_target_and_others_the_whole_url() -> None:
    url = "http://h.test:8080/a/b.html?x=1&y=%41"
    ours = fetcher().client.build_request("GET", url)
    assert (str(ours.url), ours.extensions["target"]) == ("http://h.test:8080/", b"/a/b.html?x=1&y=%41")
    assert ours.headers["host"] == "h.test:8080"
    other = fetcher(httpx.MockTransport(lambda r: httpx.Response(200))).client.build_request("GET", url)
    assert str(other.url) == url and "target" not in other.extensions


def test_https_goes_as_origin_and_target_too() -> None:
    sent = fetcher().client.build_request("GET", "https://h.test/a/b.html?x=1")
    assert (str(sent.url), sent.extensions["target"]) == ("https://h.test/", b"/a/b.html?x=1")


async def test_an_https_transport_that_does_not_write_targets_gets_the_whole_url() -> None:
    seen: list[tuple[str, bool]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), "target" in request.extensions))
        return httpx.Response(200)

    router = SchemeRouter(plain=H1Transport(limits=httpx.Limits()), tls=lambda: httpx.MockTransport(answer))
    f = fetcher(router)
    try:
        assert f.client.build_request("GET", "https://h.test/a?b=1").extensions["target"] == b"/a?b=1"
        response = await f.client.open("https://h.test/a?b=1")
        await response.aclose()
    finally:
        await f.aclose()
    assert seen == [("https://h.test/a?b=1", False)]


@pytest.mark.parametrize(
    "url",
    [
        "http://h.test/a/./b",  # a dot segment httpx removes
        "http://h.test/a b",  # a character httpx escapes
        "http://h.test/caf\u00e9",
        "http://u:p@h.test/private",  # userinfo, which httpx turns into credentials
        "http://h.test/a#frag",
        "https://h.test/a/../b",
    ],
)
def test_a_url_httpx_would_rewrite_goes_whole_as_httpx_builds_it(url: str) -> None:
    client = fetcher().client
    sent = client.build_request("GET", url)
    assert "target" not in sent.extensions
    assert sent.url == httpx.URL(url)


def test_with_httpx_s_log_on_each_request_carries_its_own_url(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="httpx"):
        sent = fetcher().client.build_request("GET", "http://h.test/a?b=1")
    assert str(sent.url) == "http://h.test/a?b=1" and "target" not in sent.extensions


async def test_the_server_sees_each_page_s_path_and_query(site_server: Serve) -> None:
    server = site_server(Site().page("/a/b.html", title="B").page("/q", title="Q"))
    f = fetcher()
    try:
        first = await f.client.open(server.url_for("/a/b.html"))
        await first.aclose()
        second = await f.client.open(server.url_for("/q?x=1&y=%41"), [("If-None-Match", '"v1"')])
        await second.aclose()
    finally:
        await f.aclose()
    assert first.status_code == 200
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/a/b.html"), ("GET", "/q?x=1&y=%41")]
    assert server.requests[1].headers["if-none-match"] == '"v1"'


async def test_a_cookie_without_a_path_takes_the_page_s_directory(site_server: Serve) -> None:
    site = Site().page("/shop/cart/view", title="Cart", headers={"Set-Cookie": "session=abc"})
    server = site_server(site)
    f = fetcher()
    try:
        response = await f.client.open(server.url_for("/shop/cart/view"))
        await response.aclose()
    finally:
        await f.aclose()
    [cookie] = list(f.client.cookies.jar)
    assert (cookie.name, cookie.value, cookie.path) == ("session", "abc", "/shop/cart")
