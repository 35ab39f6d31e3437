"""The protocol matrix: real servers (nginx, hypercorn, aiohttp, http.server, raw bytes) through the crawl's client.

Each case runs through the crawl's own stack (Fetcher over build_transport, for http and https,
or a whole crawl) and must end as a stored page or a clear error, never a hang: every request is
bounded by asyncio.wait_for. Cases are parametrized `<server>-<scheme>`; tests assert behaviour
(status, body, error kind and words), not the engine under the client.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from crawler.config import HttpConfig
from crawler.errors import ErrorKind, FetchError
from crawler.http.decoding import ACCEPT_ENCODING
from crawler.http.fetcher import Fetcher, FetchResult
from crawler.http.redirects import follow_redirects
from tests.crawlkit import crawl, make_config, rows
from tests.support.matrix_servers import (
    ETAG,
    PAGE,
    Endpoints,
    LoopThread,
    StdlibServer,
    Tls,
    dropped_unanswered,
    make_tls,
    start_aiohttp,
    start_hypercorn,
    start_raw,
)
from tests.support.nginx import Nginx, nginx_or_skip

DEADLINE = 10.0  # seconds any one case may take before it counts as a hang

# The words that name each failure, whichever engine is under the client: ours for plain http,
# then httpcore's and hyper's phrasings. A new engine may add its own, never drop the kind.
CUT_SHORT = re.compile(r"body cut short|without sending complete message body|incomplete|closed before", re.I)
H2_HEADER_REFUSED = re.compile(r"http2 error")
HEAD_TOO_BIG = re.compile(r"headers above|receive buffer too long|header.*(larger|too (big|large|long)|size)", re.I)


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def matrix_tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("matrix-tls"))


@pytest.fixture(scope="session")
def server_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def raw_server(server_loop: LoopThread, matrix_tls: Tls) -> Iterator[Endpoints]:
    endpoints, stop = server_loop.run(start_raw(matrix_tls))
    yield endpoints
    server_loop.run(stop())


@pytest.fixture(scope="session")
def hypercorn_server(server_loop: LoopThread, matrix_tls: Tls) -> Iterator[Endpoints]:
    endpoints, stop = server_loop.run(start_hypercorn(matrix_tls))
    yield endpoints
    server_loop.run(stop())


@pytest.fixture(scope="session")
def aiohttp_server(server_loop: LoopThread, matrix_tls: Tls) -> Iterator[Endpoints]:
    endpoints, stop = server_loop.run(start_aiohttp(matrix_tls))
    yield endpoints
    server_loop.run(stop())


@pytest.fixture(scope="session")
def httpserver_server() -> Iterator[Endpoints]:
    server = StdlibServer()
    yield server.endpoints
    server.stop()


@pytest.fixture(scope="session")
def nginx_server(tmp_path_factory: pytest.TempPathFactory, matrix_tls: Tls) -> Iterator[Endpoints]:
    nginx = Nginx(nginx_or_skip(), tmp_path_factory.mktemp("nginx"), matrix_tls).start()
    yield nginx.endpoints
    nginx.stop()


@dataclass(frozen=True, slots=True)
class Target:
    """One column of the matrix: a server, a scheme, and the CA the client trusts."""

    base: str
    ca_bundle: Path

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def target(request: pytest.FixtureRequest, matrix_tls: Tls) -> Target:
    """`<server>-<scheme>` (the parametrized id) -> that server's base URL for that scheme."""
    server, scheme = str(request.param).rsplit("-", 1)
    endpoints: Endpoints = request.getfixturevalue(f"{server}_server")
    base = endpoints.https if scheme == "https" else endpoints.http
    assert base, f"{server} serves no {scheme}"
    return Target(base, matrix_tls.ca_pem)


def over(*targets: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("target", targets, indirect=True)


PYTHON_SERVERS = ("hypercorn-http", "hypercorn-https", "aiohttp-http", "aiohttp-https", "httpserver-http")
EVERY_SERVER = ("nginx-http", "nginx-https", *PYTHON_SERVERS, "raw-http", "raw-https")


# --------------------------------------------------------------------------- the client


class OpenGate:
    """Politeness out of the way: every request may start at once."""

    @asynccontextmanager
    async def request(self, url: str) -> AsyncIterator[None]:
        yield


@asynccontextmanager
async def crawl_fetcher(target: Target) -> AsyncIterator[Fetcher]:
    """The crawl's Fetcher over the real transports (build_transport), trusting the matrix CA."""
    http = HttpConfig(
        retries=1, retry_backoff=0.01, retry_backoff_max=0.05, total_timeout=5.0, ca_bundle=target.ca_bundle
    )
    fetcher = Fetcher(http, "crawler-matrix/0.1", concurrency=4)
    try:
        yield fetcher
    finally:
        await fetcher.aclose()


async def get(fetcher: Fetcher, url: str) -> FetchResult:
    return await asyncio.wait_for(fetcher.fetch(url, OpenGate()), DEADLINE)


async def get_one(target: Target, path: str) -> FetchResult:
    async with crawl_fetcher(target) as fetcher:
        return await get(fetcher, target.url(path))


async def fetch_error(target: Target, path: str) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await get_one(target, path)
    return caught.value


# --------------------------------------------------------------------------- the cases


@over("nginx-http", "nginx-https", "hypercorn-http", "hypercorn-https", "raw-http", "raw-https")
async def test_chunked_body_with_trailers_is_stored(target: Target) -> None:
    result = await get_one(target, "/chunked-trailers")
    assert (result.status, result.body) == (200, PAGE)


@over("raw-http", "raw-https", "httpserver-http", "hypercorn-https")
async def test_interim_responses_before_the_answer_are_skipped(target: Target) -> None:
    """100 Continue and 103 Early Hints (hypercorn: 103 over HTTP/2) come and go; the 200 is what is stored."""
    result = await get_one(target, "/interim")
    assert (result.status, result.body) == (200, PAGE)
    assert result.header_values("link") == []  # the hint's header stays with the hint


@over(*EVERY_SERVER)
async def test_no_content_is_stored_without_a_body(target: Target) -> None:
    async with crawl_fetcher(target) as fetcher:
        result = await get(fetcher, target.url("/no-content"))
        after = await get(fetcher, target.url("/page"))  # the bodiless answer did not desync the connection
    assert (result.status, result.body) == (204, b"")
    assert (after.status, after.body) == (200, PAGE)


@over(*EVERY_SERVER)
async def test_not_modified_is_stored_without_a_body(target: Target) -> None:
    async with crawl_fetcher(target) as fetcher:
        result = await get(fetcher, target.url("/not-modified"))
        after = await get(fetcher, target.url("/page"))
    assert (result.status, result.body) == (304, b"")
    assert result.header_values("etag") == [ETAG]
    assert (after.status, after.body) == (200, PAGE)


@over(*EVERY_SERVER)
async def test_head_answer_has_headers_and_no_body(target: Target) -> None:
    """The crawl only GETs; HEAD goes through its client directly, and the next GET still works."""
    async with crawl_fetcher(target) as fetcher:
        client = fetcher.client
        head = await asyncio.wait_for(client.send(client.build_request("HEAD", target.url("/page"))), DEADLINE)
        after = await get(fetcher, target.url("/page"))
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers.get("content-length") == str(len(PAGE))
    assert (after.status, after.body) == (200, PAGE)


@over("raw-http", "raw-https", "httpserver-http")
async def test_http10_body_ending_at_connection_close_is_stored(target: Target) -> None:
    result = await get_one(target, "/close-delimited")
    assert (result.status, result.body) == (200, PAGE)


@pytest.mark.parametrize(
    "target",
    ["raw-http", "raw-https", "hypercorn-http", "hypercorn-https"],
    indirect=True,
)
async def test_content_length_longer_than_the_body_is_a_protocol_error(target: Target) -> None:
    error = await fetch_error(target, "/short-body")
    assert error.kind is ErrorKind.PROTOCOL
    assert CUT_SHORT.search(error.message), error.message


@pytest.mark.parametrize(
    ("target", "path"),
    [
        pytest.param("raw-http", "/drop-after", id="raw-http-closed-after-the-answer"),
        pytest.param("raw-https", "/drop-after", id="raw-https-closed-after-the-answer"),
        pytest.param("httpserver-http", "/drop-after", id="httpserver-http-closed-after-the-answer"),
        pytest.param("raw-http", "/drop-next", id="raw-http-closed-on-the-next-request"),
        pytest.param("raw-https", "/drop-next", id="raw-https-closed-on-the-next-request"),
    ],
    indirect=["target"],
)
async def test_dropped_keepalive_connection_does_not_fail_the_next_request(target: Target, path: str) -> None:
    """A connection that looked kept alive is closed (after the answer, or on the next request unanswered):
    the next GET is sent again on a new connection and succeeds."""
    dropped_before = dropped_unanswered.get(path, 0)
    async with crawl_fetcher(target) as fetcher:
        first = await get(fetcher, target.url(path))
        second = await get(fetcher, target.url("/page"))
    assert (first.status, first.body) == (200, PAGE)
    assert (second.status, second.body) == (200, PAGE)
    if path == "/drop-next":  # the second GET did go out on the kept-alive connection, and was dropped
        assert dropped_unanswered[path] == dropped_before + 1


@pytest.mark.parametrize("target", ["raw-http", "raw-https"], indirect=True)
async def test_several_dropped_keepalive_connections_do_not_fail_a_get_without_retries(target: Target) -> None:
    """Three kept-alive connections that each drop their next request: a GET, with no retries of the
    fetcher's own, still gets its answer (the transport sends a safe request again when its connection
    turns out dropped before any answer)."""
    http = HttpConfig(retries=0, total_timeout=5.0, ca_bundle=target.ca_bundle)
    fetcher = Fetcher(http, "crawler-matrix/0.1", concurrency=4)
    try:
        openers = await asyncio.gather(*(get(fetcher, target.url("/drop-next")) for _ in range(3)))
        assert [r.status for r in openers] == [200, 200, 200]
        dropped_before = dropped_unanswered.get("/drop-next", 0)
        answer = await get(fetcher, target.url("/page"))
    finally:
        await fetcher.aclose()
    assert (answer.status, answer.body) == (200, PAGE)
    assert dropped_unanswered["/drop-next"] > dropped_before  # it did meet a dropped connection first


ENCODED_CASES = [
    ("nginx-http", "/gzip"),
    ("nginx-https", "/gzip"),
    *(
        (f"{server}-{scheme}", path)
        for server in ("aiohttp", "hypercorn", "raw")
        for scheme in ("http", "https")
        for path in ("/gzip", "/deflate", "/deflate-raw")
    ),
    ("httpserver-http", "/deflate-raw"),
]


@pytest.mark.parametrize(
    ("target", "path"),
    [pytest.param(t, p, id=f"{t}-{p.strip('/')}") for t, p in ENCODED_CASES],
    indirect=["target"],
)
async def test_compressed_body_is_stored_decoded(target: Target, path: str) -> None:
    """gzip, deflate as RFC 9110 means it (zlib) and deflate as some servers send it (raw)."""
    result = await get_one(target, path)
    assert (result.status, result.body) == (200, PAGE)


@over(*EVERY_SERVER)
async def test_offered_codings_are_gzip_and_deflate_not_brotli(target: Target) -> None:
    """What the server sees offered: only the codings decoding.py can undo with a bounded output."""
    result = await get_one(target, "/accept-encoding")
    offered = {token.split(";")[0].strip() for token in result.body.decode().split(",")}
    assert offered == {"gzip", "deflate"} == {token.strip() for token in ACCEPT_ENCODING.split(",")}


@over("hypercorn-http", "hypercorn-https", "aiohttp-http", "aiohttp-https", "raw-http", "raw-https")
async def test_brotli_body_sent_anyway_is_a_clear_error(target: Target) -> None:
    """br is not offered; a server that sends it anyway gets an error, not a page of compressed bytes."""
    error = await fetch_error(target, "/br")
    assert error.kind is ErrorKind.PROTOCOL
    assert "unsupported Content-Encoding 'br'" in error.message


@pytest.mark.parametrize(
    ("target", "refusal"),
    [
        ("nginx-http", HEAD_TOO_BIG),
        # Over HTTP/2 the header block is refused, and hyper names it only as an HTTP/2 error.
        ("nginx-https", H2_HEADER_REFUSED),
        ("hypercorn-http", HEAD_TOO_BIG),
        ("hypercorn-https", H2_HEADER_REFUSED),
        ("aiohttp-http", HEAD_TOO_BIG),
        ("aiohttp-https", HEAD_TOO_BIG),
        ("httpserver-http", HEAD_TOO_BIG),
        ("raw-http", HEAD_TOO_BIG),
        ("raw-https", HEAD_TOO_BIG),
    ],
    indirect=["target"],
)
async def test_oversized_header_is_a_clear_error(target: Target, refusal: re.Pattern[str]) -> None:
    """A 100 KiB header value: refused, not buffered without bound and not a hang."""
    error = await fetch_error(target, "/big-header")
    assert error.kind is ErrorKind.PROTOCOL
    assert refusal.search(error.message), error.message


@pytest.mark.parametrize(
    ("target", "path"),
    [
        pytest.param(target, path, id=f"{target}-{path.strip('/')}")
        for target in ("raw-http", "raw-https")
        for path in ("/location-utf8", "/location-latin1")
    ],
    indirect=["target"],
)
async def test_a_non_ascii_location_is_followed_percent_encoded(target: Target, path: str) -> None:
    """A Location of raw UTF-8 or Latin-1 bytes (pyreqwest hands out no such header on https: read again as bytes)."""
    async with crawl_fetcher(target) as fetcher:
        result = await asyncio.wait_for(follow_redirects(fetcher, target.url(path), OpenGate()), DEADLINE)
    assert (result.status, result.body) == (200, PAGE)
    assert [(hop["status"], hop["location"]) for hop in result.redirects] == [(302, target.url("/caf%C3%A9"))]


# --------------------------------------------------------------------------- a whole crawl

# What a crawl of each server's cases stores: a page's status, or an error row's kind
# (/big-header is left to test_oversized_header_is_a_clear_error).
STORED_PAGES: dict[str, int | ErrorKind] = {
    "/page": 200,
    "/chunked-trailers": 200,
    "/no-content": 204,
    "/not-modified": 304,
    "/gzip": 200,
}
CRAWL_OUTCOMES: dict[str, dict[str, int | ErrorKind]] = {
    "nginx": STORED_PAGES,
    "hypercorn": {
        **STORED_PAGES,
        "/interim": 200,
        "/short-body": ErrorKind.PROTOCOL,
        "/deflate": 200,
        "/deflate-raw": 200,
        "/br": ErrorKind.PROTOCOL,
    },
    "raw": {
        **STORED_PAGES,
        "/interim": 200,
        "/close-delimited": 200,
        "/short-body": ErrorKind.PROTOCOL,
        "/drop-after": 200,
        "/drop-next": 200,
        "/deflate": 200,
        "/deflate-raw": 200,
        "/br": ErrorKind.PROTOCOL,
    },
}


@pytest.mark.parametrize(
    "target",
    [
        "nginx-http",
        "nginx-https",
        "hypercorn-http",
        "hypercorn-https",
        "raw-http",
        "raw-https",
    ],
    indirect=True,
)
async def test_every_case_ends_as_a_stored_page_or_an_error_row(
    target: Target, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """All of a server's cases crawled at once, concurrently, over the crawl's shared connections."""
    expected = CRAWL_OUTCOMES[request.node.callspec.id.rsplit("-", 1)[0]]
    db = tmp_path / "matrix.db"
    config = make_config(
        db,
        [target.url(path) for path in expected],
        crawl={"parse_workers": 0, "sitemaps": False},
        http={"ca_bundle": str(target.ca_bundle)},
    )
    await asyncio.wait_for(crawl(config), DEADLINE)
    pages = {url: (status, body) for url, status, body in rows(db, "SELECT url, status, body FROM pages")}
    errors = {url: kind for url, kind in rows(db, "SELECT url, kind FROM errors")}
    outcomes: dict[str, int | ErrorKind] = {}
    for path in expected:
        url = target.url(path)
        if url in pages:
            outcomes[path] = pages[url][0]
        elif url in errors:
            outcomes[path] = ErrorKind(errors[url])
    assert outcomes == expected
    for path, outcome in expected.items():
        if outcome == 200:
            assert pages[target.url(path)][1] == PAGE, path
