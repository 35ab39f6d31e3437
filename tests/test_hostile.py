"""The hostile web against fault-injecting local servers: every fault ends in a stored page or an
`errors` row with a clear kind and message, what a trap rule skipped is recorded with its reason,
and the crawl goes on to store the healthy pages around the fault."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from crawler.engine import Outcome
from tests.crawlkit import closed_port, crawl, make_config, rows, stored_paths
from tests.support.faults import empty_reply, gzip_bomb, raw_bytes, reset_mid_body, trickle
from tests.support.localsite import SiteServer
from tests.support.site import HTML, Request, Response, Site, html_page, response_head

Serve = Callable[[Site], SiteServer]


def errors_by_path(db: Path, base: str) -> dict[str, tuple[str, str, int]]:
    """path → (kind, message, attempts) of every `errors` row under base."""
    found = rows(db, "SELECT url, kind, message, attempts FROM errors")
    return {url.removeprefix(base): (kind, message, attempts) for url, kind, message, attempts in found}


def skipped(db: Path) -> dict[str, str]:
    return dict(rows(db, "SELECT url, reason FROM urls WHERE state = 'skipped'"))


def hub(paths: list[str], *, title: str = "Hub") -> str:
    """A home page linking to every fault, and to /ok, which must be stored whatever happens."""
    return html_page(title, [*paths, "/ok"])


def hangs_after_head(headers: list[tuple[str, str]]) -> Callable[[Request, asyncio.StreamWriter], object]:
    """A raw handler that sends only a response head, then waits until the client goes away."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> int:
        writer.write(response_head(200, headers))
        await writer.drain()
        await asyncio.Event().wait()  # cancelled when the server stops
        return 200

    return handler


def endless_body(chunk: int = 64 * 1024) -> Callable[[Request, asyncio.StreamWriter], object]:
    """A close-delimited body (no Content-Length) that never ends."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> int:
        writer.write(response_head(200, [("Content-Type", HTML), ("Connection", "close")]))
        block = b"<p>" + b"x" * chunk + b"</p>"
        while True:
            writer.write(block)
            await writer.drain()

    return handler


# --------------------------------------------------------------------------- size and time limits


async def test_bodies_above_max_body_bytes_are_cut_off_or_refused(site_server: Serve, tmp_path: Path) -> None:
    site = (
        Site()
        .page("/", body=hub(["/endless", "/declared-huge"]))
        .page("/ok")
        .raw("/endless", endless_body())
        # The head promises 10 GB and no body byte ever follows: reading it would hang until the
        # deadline, so a too_large error proves the refusal came before the body was read.
        .raw("/declared-huge", hangs_after_head([("Content-Type", HTML), ("Content-Length", "10000000000")]))
    )
    server = site_server(site)
    db = tmp_path / "c.db"
    summary = await crawl(make_config(db, [server.url + "/"], http={"max_body_bytes": 100_000, "total_timeout": 30.0}))

    assert summary.outcome is Outcome.FINISHED
    assert errors_by_path(db, server.url) == {
        "/endless": ("too_large", "body exceeded max_body_bytes 100,000 while streaming", 1),
        "/declared-huge": ("too_large", "Content-Length 10,000,000,000 bytes is above max_body_bytes 100,000", 1),
    }
    assert stored_paths(db, server.url) == {"/", "/ok"}


@pytest.mark.parametrize(
    "encodings",
    [("gzip",), ("deflate",), ("gzip", "gzip"), ("deflate", "gzip")],
    ids=["gzip", "deflate", "gzip-of-gzip", "gzip-of-deflate"],
)
async def test_compression_bombs_are_cut_off_at_the_decompressed_limit(
    site_server: Serve, tmp_path: Path, encodings: tuple[str, ...]
) -> None:
    inflated = 1 << 30  # 1 GiB from ~1 MB, or from ~3 KB when stacked
    site = Site().page("/", body=hub(["/bomb"])).page("/ok").raw("/bomb", gzip_bomb(inflated, encodings=encodings))
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"]))  # the default max_body_bytes: 5 MB

    assert errors_by_path(db, server.url) == {
        "/bomb": ("too_large", "decompressed body exceeded max_body_bytes 5,000,000 while streaming", 1)
    }
    assert stored_paths(db, server.url) == {"/", "/ok"}


async def test_a_trickling_server_hits_our_total_deadline(site_server: Serve, tmp_path: Path) -> None:
    site = Site().page("/", body=hub(["/trickle"])).page("/ok").raw("/trickle", trickle(1000, 1.0))
    server = site_server(site)
    db = tmp_path / "c.db"
    # A byte arrives every second, well within read_timeout: only the total deadline can stop it.
    await crawl(make_config(db, [server.url + "/"], http={"total_timeout": 0.5, "read_timeout": 10.0, "retries": 1}))

    assert errors_by_path(db, server.url) == {
        "/trickle": ("timeout", "no complete response within total_timeout 0.5s after 2 attempts", 2)
    }
    assert server.wait_for(lambda: server.count("/trickle") == 2)
    assert stored_paths(db, server.url) == {"/", "/ok"}


# --------------------------------------------------------------------------- redirects


async def test_redirect_faults_are_recorded_and_every_page_keeps_its_chain(site_server: Serve, tmp_path: Path) -> None:
    faults = ["/loop-a", "/chain-0", "/to-ftp", "/to-js", "/no-location", "/two-hops", "/utf8-location"]
    site = (
        Site()
        .page("/", body=hub(faults))
        .page("/ok")
        .redirect("/loop-a", "/loop-b")
        .redirect("/loop-b", "/loop-a")
        .redirect("/to-ftp", "ftp://127.0.0.1/file")
        .redirect("/to-js", "javascript:alert(1)")
        .page("/no-location", status=302, body="")
        .redirect("/two-hops", "/hop", status=302)
        .redirect("/hop", "/landing", status=307)
        .page("/landing", title="Landed")
        # Location in raw UTF-8, as real servers send it; browsers read it as UTF-8.
        .raw("/utf8-location", raw_bytes(response_head(302, [("Location", "/café"), ("Content-Length", "0")])))
        .page("/caf%C3%A9", title="Café")
    )
    for i in range(6):
        site.redirect(f"/chain-{i}", f"/chain-{i + 1}")
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"], http={"max_redirects": 3}))

    u = server.url
    assert errors_by_path(db, u) == {
        "/loop-a": ("too_many_redirects", f"redirect loop: {u}/loop-a → {u}/loop-b → {u}/loop-a", 2),
        "/chain-0": ("too_many_redirects", f"more than 3 redirects, last {u}/chain-3 → {u}/chain-4", 4),
        "/to-ftp": ("bad_redirect", f"HTTP 301 from {u}/to-ftp to a non-http(s) URL: 'ftp://127.0.0.1/file'", 1),
        "/to-js": ("bad_redirect", f"HTTP 301 from {u}/to-js to a non-http(s) URL: 'javascript:alert(1)'", 1),
        "/no-location": ("bad_redirect", f"HTTP 302 from {u}/no-location without a Location header", 1),
    }
    pages = {
        url.removeprefix(u): (final, json.loads(chain))
        for url, final, chain in rows(db, "SELECT url, final_url, redirects FROM pages")
    }
    assert pages["/two-hops"] == (
        f"{u}/landing",
        [
            {"url": f"{u}/two-hops", "status": 302, "location": f"{u}/hop"},
            {"url": f"{u}/hop", "status": 307, "location": f"{u}/landing"},
        ],
    )
    assert pages["/utf8-location"][0] == f"{u}/caf%C3%A9"
    assert pages["/ok"] == (f"{u}/ok", [])  # no redirect: an empty chain, never NULL
    assert rows(db, "SELECT title FROM pages WHERE url = ?", (u + "/two-hops",)) == [("Landed",)]


# --------------------------------------------------------------------------- connection faults


async def test_resets_empty_replies_and_garbled_responses_are_retried_then_recorded(
    site_server: Serve, tmp_path: Path
) -> None:
    site = (
        Site()
        .page("/", body=hub(["/reset", "/empty", "/garbled", "/short"]))
        .page("/ok")
        .raw("/reset", reset_mid_body(declared=100_000, sent=1000))
        .raw("/empty", empty_reply())
        .raw("/garbled", raw_bytes(b"HTTX/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"))
        .raw("/short", raw_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"))
    )
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"], http={"retries": 1}))

    errors = errors_by_path(db, server.url)
    assert set(errors) == {"/reset", "/empty", "/garbled", "/short"}
    assert {kind for kind, _, _ in errors.values()} == {"protocol"}
    assert {attempts for _, _, attempts in errors.values()} == {2}  # each was retried once
    assert errors["/reset"][1] == (
        "body cut short: received 1,000 of 100,000 bytes; connection reset by peer after 2 attempts"
    )
    assert errors["/empty"][1] == (
        "connection broken: the server closed the connection without a response after 2 attempts"
    )
    assert errors["/garbled"][1] == (
        "malformed response: Expected HTTP/, RTSP/ or ICE/ in b'HTTX/1.1 200 OK' after 2 attempts"
    )
    assert errors["/short"][1] == "body cut short: received 9 of 100 bytes after 2 attempts"
    for path in errors:
        # The transport sends a request again when a reused keep-alive connection drops
        # unanswered, so a server may see more requests than our attempts; never fewer.
        assert server.wait_for(lambda path=path: server.count(path) >= 2)
    assert stored_paths(db, server.url) == {"/", "/ok"}


async def test_a_refused_connection_is_retried_then_recorded(site_server: Serve, tmp_path: Path) -> None:
    port = closed_port()
    dead = f"http://127.0.0.1:{port}"
    server = site_server(Site().page("/", body=hub([dead + "/gone"])).page("/ok"))
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"], politeness={"obey_robots": False}, http={"retries": 1}))

    assert errors_by_path(db, dead) == {
        "/gone": ("connect", f"connection failed: Connection refused (127.0.0.1:{port}) after 2 attempts", 2)
    }
    assert stored_paths(db, server.url) == {"/", "/ok"}


async def test_an_unreachable_robots_txt_fails_the_hosts_urls_and_the_crawl_ends(
    site_server: Serve, tmp_path: Path
) -> None:
    port = closed_port()
    dead = f"http://127.0.0.1:{port}"
    server = site_server(Site().page("/", body=hub([dead + "/a", dead + "/b"])).page("/ok"))
    db = tmp_path / "c.db"
    config = make_config(
        db,
        [server.url + "/"],
        politeness={"robots_retry_interval": 0.05, "robots_max_attempts": 2},
        http={"retries": 1},
    )
    summary = await crawl(config)

    # RFC 9309: stay out while robots.txt is unreachable; after the last try the URLs fail, and say why.
    assert summary.outcome is Outcome.FINISHED
    message = (
        f"not fetched: {dead}/robots.txt was unreachable 2 times:"
        f" connection failed: Connection refused (127.0.0.1:{port}) after 2 attempts"
    )
    assert errors_by_path(db, dead) == {"/a": ("connect", message, 2), "/b": ("connect", message, 2)}
    assert rows(db, "SELECT count(*) FROM robots WHERE origin = ?", (dead,)) == [(1,)]
    assert stored_paths(db, server.url) == {"/", "/ok"}


async def test_a_robots_txt_that_always_answers_503_ends_in_errors_not_an_endless_wait(
    site_server: Serve, tmp_path: Path
) -> None:
    busy = site_server(Site().robots("", status=503).page("/a"))
    server = site_server(Site().page("/", body=hub([busy.url + "/a"])).page("/ok"))
    db = tmp_path / "c.db"
    config = make_config(
        db,
        [server.url + "/"],
        politeness={"robots_retry_interval": 0.05, "robots_max_attempts": 3},
        http={"retries": 1},
    )
    await crawl(config)

    assert errors_by_path(db, busy.url) == {
        "/a": (
            "http_status",
            f"not fetched: {busy.url}/robots.txt was unreachable 3 times: HTTP 503 after 2 attempts",
            2,
        )
    }
    assert busy.count("/robots.txt") == 6 and busy.count("/a") == 0  # 3 fetches of 2 attempts; the page never
    assert stored_paths(db, server.url) == {"/", "/ok"}


async def test_a_huge_or_bombed_robots_txt_is_read_up_to_500_kib(site_server: Serve, tmp_path: Path) -> None:
    huge = "User-agent: *\nDisallow: /private\n" + "# padding\n" * 1_000_000  # 10 MB
    bombed = site_server(Site().raw("/robots.txt", gzip_bomb(1 << 30, content_type="text/plain")).page("/b"))
    site = Site().robots(huge).page("/", body=hub(["/private", bombed.url + "/b"])).page("/ok").page("/private")
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"], http={"max_body_bytes": 1_000_000}))

    # RFC 9309 §2.5: parse at least 500 KiB and ignore the rest; neither size is an error.
    assert rows(db, "SELECT count(*) FROM errors") == [(0,)]
    assert stored_paths(db, server.url) == {"/", "/ok"}
    assert skipped(db) == {server.url + "/private": "robots"}
    assert stored_paths(db, bombed.url) == {"/b"}


@pytest.fixture(scope="module")
def untrusted_tls() -> ssl.SSLContext:
    """A server context whose certificate comes from a CA the crawler has never heard of."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_tls_failures_are_recorded_with_the_reason(
    site_server: Serve, tmp_path: Path, untrusted_tls: ssl.SSLContext
) -> None:
    async def plain_http_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # What nginx does when TLS arrives on a plain-http port: answer in clear text, close.
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    not_tls_server = await asyncio.start_server(plain_http_answer, "127.0.0.1", 0)
    not_tls = f"https://127.0.0.1:{not_tls_server.sockets[0].getsockname()[1]}/page"
    try:
        with SiteServer(Site().page("/secret"), ssl=untrusted_tls) as tls:
            plain = site_server(Site().page("/", body=hub([tls.url + "/secret", not_tls])).page("/ok"))
            db = tmp_path / "c.db"
            await crawl(make_config(db, [plain.url + "/"], politeness={"obey_robots": False}))
            assert tls.requests == []  # no request got past the handshake
    finally:
        not_tls_server.close()
        await not_tls_server.wait_closed()

    errors = {
        url: (kind, message, attempts)
        for url, kind, message, attempts in rows(db, "SELECT url, kind, message, attempts FROM errors")
    }
    assert set(errors) == {tls.url + "/secret", not_tls}
    kind, message, attempts = errors[tls.url + "/secret"]
    assert (kind, attempts) == ("tls", 1)  # a certificate does not fix itself: no retry
    assert message == "TLS failure: invalid peer certificate: UnknownIssuer"  # rustls' words, under pyreqwest
    kind, message, attempts = errors[not_tls]
    assert (kind, attempts) == ("tls", 1)
    assert message == "TLS failure: received corrupt message of type InvalidContentType"  # a plain-http answer
    assert stored_paths(db, plain.url) == {"/", "/ok"}


# --------------------------------------------------------------------------- encoding and HTML


async def test_wrong_missing_or_undecodable_charsets_still_store_the_page_and_its_links(
    site_server: Serve, tmp_path: Path
) -> None:
    def page(title: bytes, n: int, prolog: bytes = b"") -> bytes:
        return prolog + b"<html><head>" + title + b"</head><body><a href='/next-%d'>next</a></body></html>" % n

    cases: dict[str, tuple[str, bytes, str]] = {
        # path: (Content-Type, body, the title we must decode)
        "/wrong-header": (
            "text/html; charset=utf-8",
            page(b"<title>Caf\xe9</title>", 1),  # latin-1 bytes under a UTF-8 label
            "Caf\ufffd",
        ),
        "/meta-only": (
            "text/html",
            page(b'<meta charset="windows-1251"><title>\xcf\xf0\xe8\xe2\xe5\xf2</title>', 2),
            "Привет",
        ),
        "/header-beats-meta": (
            "text/html; charset=iso-8859-1",
            page('<meta charset="utf-8"><title>é</title>'.encode(), 3),
            "Ã©",
        ),
        "/bom": (
            "text/html",  # no charset anywhere but the UTF-16 byte order mark
            "\ufeff<html><head><title>ünï</title></head><body><a href='/next-4'>n</a></body></html>".encode(
                "utf-16-le"
            ),
            "ünï",
        ),
        "/unknown-label": (
            "text/html; charset=x-no-such-thing",
            page("<title>naïve</title>".encode(), 5),
            "naïve",
        ),
        "/garbage-bytes": ("text/html", page(b"<title>ok\xff\xfe\x80</title>", 6), "ok\ufffd\ufffd\ufffd"),
    }
    site = Site().page("/", body=hub(list(cases))).page("/ok")
    for path, (content_type, body, _) in cases.items():
        site.page(path, body=body, content_type=content_type)
    for n in range(1, 7):
        site.page(f"/next-{n}")
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"]))

    titles = dict(rows(db, "SELECT url, title FROM pages"))
    assert {path: titles[server.url + path] for path in cases} == {path: title for path, (_, _, title) in cases.items()}
    assert {f"/next-{n}" for n in range(1, 7)} <= stored_paths(db, server.url)
    assert rows(db, "SELECT count(*) FROM errors") == [(0,)]


async def test_malformed_html_still_yields_its_links(site_server: Serve, tmp_path: Path) -> None:
    soup = (
        b"<html><head><title>Broken</title><body><div><p><b><i>unclosed"  # no </head>, nothing closed
        b"<a href='/m1'>one<table><tr><td><a href=/m2>two</td></div></span></table>"
        b"<<<>>></p></p></p><a href=\"/m3\" <a href='/ignored'>three"
        b"<!-- unterminated comment <a href='/in-comment'> -->"
        b"<a href='/m4'>four<a href='/m5'>five</body></html><a href='/m6'>after the end"
    )
    site = Site().page("/", body=hub(["/soup"])).page("/ok").page("/soup", body=soup)
    for n in range(1, 7):
        site.page(f"/m{n}")
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"]))

    assert {f"/m{n}" for n in range(1, 7)} <= stored_paths(db, server.url)
    assert "/in-comment" not in stored_paths(db, server.url)
    assert rows(db, "SELECT title FROM pages WHERE url = ?", (server.url + "/soup",)) == [("Broken",)]


# --------------------------------------------------------------------------- links and URLs


async def test_weird_hrefs_are_skipped_or_normalised_never_fatal(site_server: Serve, tmp_path: Path) -> None:
    long_path = "/" + "x" * 3000
    hrefs = [
        "http://[::1",
        "http://exa mple.com/",
        "/with space",
        "javascript:void(0)",
        "mailto:someone@example.com",
        "tel:+123456",
        "data:text/html,<a href='/x'>",
        "   ",
        "#only-a-fragment",
        "//",
        long_path,
        "http://bücher.example/",
        "http://xn--bcher-kva.example/",  # the same host spelled in punycode
        "/caf\u00e9?q=\u00fc",
        "/ok#frag",
    ]
    site = (
        Site().page("/", body=html_page("Weird", hrefs)).page("/ok").page("/with%20space").page("/caf%C3%A9?q=%C3%BC")
    )
    server = site_server(site)
    db = tmp_path / "c.db"
    summary = await crawl(make_config(db, [server.url + "/"]))

    u = server.url
    assert summary.outcome is Outcome.FINISHED
    links = {to for (to,) in rows(db, "SELECT to_url FROM link_urls")}
    assert links == {
        f"{u}/",  # "#only-a-fragment" is the page itself
        f"{u}/with%20space",
        f"{u}{long_path}",
        "http://xn--bcher-kva.example/",  # IDN → punycode, so either spelling dedupes
        f"{u}/caf%C3%A9?q=%C3%BC",
        f"{u}/ok",
    }
    assert skipped(db) == {f"{u}{long_path}": "url_too_long", "http://xn--bcher-kva.example/": "off_site"}
    assert stored_paths(db, u) == {"/", "/ok", "/with%20space", "/caf%C3%A9?q=%C3%BC"}
    assert rows(db, "SELECT count(*) FROM errors") == [(0,)]


async def test_non_html_is_stored_with_metadata_and_not_parsed(site_server: Serve, tmp_path: Path) -> None:
    decoy = b"<html><a href='/must-not-follow'>x</a></html>"
    site = (
        Site()
        .page("/", body=hub(["/doc.pdf", "/pic.png", "/blob", "/untyped"]))
        .page("/ok")
        .page("/doc.pdf", body=b"%PDF-1.4 " + decoy, content_type="application/pdf")
        .page("/pic.png", body=b"\x89PNG\r\n\x1a\n" + decoy, content_type="image/png")
        .page("/blob", body=b"\x00\x01" + decoy, content_type="application/octet-stream")
        .raw("/untyped", raw_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(decoy) + decoy))
        .page("/must-not-follow")
    )
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"]))

    stored = {
        url.removeprefix(server.url): rest
        for url, *rest in rows(db, "SELECT url, status, content_type, bytes, title, text, body IS NOT NULL FROM pages")
    }
    assert stored["/doc.pdf"] == [200, "application/pdf", len(decoy) + 9, None, None, 1]
    assert stored["/pic.png"] == [200, "image/png", len(decoy) + 8, None, None, 1]
    assert stored["/blob"] == [200, "application/octet-stream", len(decoy) + 2, None, None, 1]
    assert stored["/untyped"] == [200, None, len(decoy), None, None, 1]
    assert "/must-not-follow" not in server.paths()
    assert rows(db, "SELECT count(*) FROM link_urls WHERE to_url LIKE '%must-not-follow'") == [(0,)]


# --------------------------------------------------------------------------- spider traps


def calendar(request: Request) -> Response:
    """/cal?month=N links to the months around it, for ever."""
    month = int(request.path.rpartition("=")[2])
    links = [f"/cal?month={month + 1}", f"/cal?month={month - 1}", f"/cal?month={month + 12}"]
    return Response(200, [("Content-Type", HTML)], html_page(f"Month {month}", links))


async def test_an_endless_calendar_is_bounded_by_max_depth(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(Site().prefix("/cal?month=", calendar))
    db = tmp_path / "c.db"
    summary = await crawl(make_config(db, [server.url + "/cal?month=0"], crawl={"max_depth": 3}))

    assert summary.outcome is Outcome.FINISHED
    assert rows(db, "SELECT max(depth) FROM pages") == [(3,)]
    reasons = set(skipped(db).values())
    assert reasons == {"depth"}
    # Months reachable in ≤ 3 hops of +1, -1, +12 from 0: fetched, each exactly once.
    reachable = {a - b + 12 * c for a in range(4) for b in range(4) for c in range(4) if a + b + c <= 3}
    assert stored_paths(db, server.url) == {f"/cal?month={m}" for m in reachable}
    assert len(server.paths()) == len(set(server.paths()))


async def test_an_endless_calendar_is_bounded_by_max_pages_per_host(site_server: Serve, tmp_path: Path) -> None:
    trap = site_server(Site().prefix("/cal?month=", calendar))
    other = site_server(Site().page("/", body=hub([trap.url + "/cal?month=0"])).page("/ok"))
    db = tmp_path / "c.db"
    summary = await crawl(make_config(db, [other.url + "/"], crawl={"max_depth": 1000, "max_pages_per_host": 10}))

    assert summary.outcome is Outcome.FINISHED
    assert rows(db, "SELECT count(*) FROM pages WHERE url LIKE ?", (trap.url + "%",)) == [(10,)]
    assert set(skipped(db).values()) == {"host_limit"}
    assert rows(db, "SELECT count(*) FROM urls WHERE state = 'skipped' AND reason = 'host_limit'")[0][0] >= 2
    assert stored_paths(db, other.url) == {"/", "/ok"}  # the other host is not limited by the trap


def deepening(request: Request) -> Response:
    """Every page links to "a/" and "b/" relative to itself: /t/a/ → /t/a/a/ → /t/a/b/a/ ..."""
    return Response(200, [("Content-Type", HTML)], html_page(request.path, ["a/", "b/"]))


async def test_ever_deepening_relative_paths_stop_at_repeated_segments(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(Site().prefix("/t/", deepening))
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/t/"], crawl={"max_depth": 1000, "max_repeated_segments": 2}))

    paths = stored_paths(db, server.url)
    # Every path of a/ and b/ segments where neither appears more than twice: 1 + 2 + 4 + 6 + 6.
    assert len(paths) == 19
    segments = [p.strip("/").split("/") for p in paths]
    assert all(s.count("a") <= 2 and s.count("b") <= 2 for s in segments)
    reasons = skipped(db)
    assert set(reasons.values()) == {"repeated_segments"}
    assert server.url + "/t/a/a/a/" in reasons


def growing(request: Request) -> Response:
    """Each page links to a URL one step longer than its own."""
    return Response(200, [("Content-Type", HTML)], html_page("grow", [request.path + "x" * 40]))


async def test_ever_longer_urls_stop_at_max_url_length(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(Site().prefix("/g?p=", growing))
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/g?p="], crawl={"max_depth": 1000, "max_url_length": 300}))

    assert max(len(url) for (url,) in rows(db, "SELECT url FROM pages")) <= 300
    reasons = skipped(db)
    assert len(reasons) == 1
    ((url, reason),) = reasons.items()
    assert (reason, len(url) > 300) == ("url_too_long", True)


async def test_session_ids_in_urls_do_not_multiply_pages(site_server: Serve, tmp_path: Path) -> None:
    visits = iter(range(10**9))

    def with_session(request: Request) -> Response:
        sid = f"{next(visits):032x}"  # a new session id in every link on every visit
        links = [f"/s/a;jsessionid={sid}", f"/s/b?PHPSESSID={sid}&view=full", f"/s/c?sid={sid}", "/s/d?sid=7"]
        return Response(200, [("Content-Type", HTML)], html_page(request.path, links))

    server = site_server(Site().prefix("/s/", with_session))
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/s/"], crawl={"max_depth": 1000}))

    # Session ids are dropped in normalisation (a short sid=7 is not a session token, so it stays).
    assert stored_paths(db, server.url) == {"/s/", "/s/a", "/s/b?view=full", "/s/c", "/s/d?sid=7"}
    assert len(server.paths()) == 6  # robots.txt and five pages, once each


# --------------------------------------------------------------------------- volume


async def test_a_page_with_100000_links_is_capped_at_max_links_per_page(site_server: Serve, tmp_path: Path) -> None:
    many = html_page("Many", [f"/l/{i}" for i in range(100_000)])
    site = Site().page("/", body=hub(["/many"])).page("/ok").page("/many", body=many)
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl(make_config(db, [server.url + "/"], crawl={"max_links_per_page": 1000, "max_depth": 1}))

    from_many = rows(db, "SELECT to_url FROM link_urls WHERE from_url = ?", (server.url + "/many",))
    assert {to for (to,) in from_many} == {f"{server.url}/l/{i}" for i in range(1000)}  # the first 1000, in order
    assert rows(db, "SELECT count(*), min(reason), max(reason) FROM urls WHERE url LIKE ?", (server.url + "/l/%",)) == [
        (1000, "depth", "depth")
    ]
    assert stored_paths(db, server.url) == {"/", "/ok", "/many"}
