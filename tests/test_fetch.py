"""The fetch layer against respx mocks: one-URL fetches, redirects hop by hop, retries, limits, error kinds."""

from __future__ import annotations

import gzip
import ssl
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpcore
import httpx
import pytest
import respx

from crawler.config import HttpConfig
from crawler.errors import ErrorKind, FetchError, SkipReason
from crawler.http.client import SchemeRouter
from crawler.http.conventions import ON_SENT
from crawler.http.decoding import PIECE, decode, inflaters
from crawler.http.errors import translate_httpx_error
from crawler.http.fetcher import Fetcher, parse_retry_after
from crawler.http.redirects import RedirectDecision, StoppedRedirect, follow_redirects
from tests.support.faults import bomb_body


class RecordingGate:
    """A gate that lets everything through and remembers each request it let start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    @asynccontextmanager
    async def request(self, url: str) -> AsyncIterator[None]:
        self.started.append(url)
        yield


class RecordingFeedback:
    def __init__(self) -> None:
        self.observed: list[tuple[str, int | None]] = []
        self.retry_afters: list[tuple[str, float | None, int]] = []

    def observe_url(self, url: str, status: int | None, latency: float) -> None:
        self.observed.append((url, status))

    def retry_after(self, url: str, seconds: float | None, status: int) -> None:
        self.retry_afters.append((url, seconds, status))


async def no_sleep(seconds: float) -> None:
    return None


def make_fetcher(feedback: RecordingFeedback | None = None, **http: object) -> Fetcher:
    settings = {"retries": 2, "max_redirects": 3, **http}
    return Fetcher(
        HttpConfig(**settings),  # type: ignore[arg-type]
        "crawler-test/0.1",
        concurrency=4,
        transport=httpx.AsyncHTTPTransport(),  # respx patches httpx's transport layer
        feedback=feedback,
        sleep=no_sleep,
    )


@respx.mock
async def test_follows_redirects_hop_by_hop_through_the_gate() -> None:
    respx.get("http://a.test/old").mock(return_value=httpx.Response(301, headers={"Location": "/mid"}))
    respx.get("http://a.test/mid").mock(return_value=httpx.Response(302, headers={"Location": "http://b.test/new"}))
    respx.get("http://b.test/new").mock(
        return_value=httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<p>hi</p>")
    )
    gate = RecordingGate()
    fetcher = make_fetcher()
    result = await follow_redirects(fetcher, "http://a.test/old", gate)
    await fetcher.aclose()
    assert gate.started == ["http://a.test/old", "http://a.test/mid", "http://b.test/new"]
    assert result.final_url == "http://b.test/new"
    assert result.status == 200
    assert result.body == b"<p>hi</p>"
    assert [hop["status"] for hop in result.redirects] == [301, 302]
    assert result.redirects[0]["location"] == "http://a.test/mid"


@respx.mock
async def test_redirect_loop_and_long_chain_are_too_many_redirects() -> None:
    respx.get("http://a.test/x").mock(return_value=httpx.Response(301, headers={"Location": "/y"}))
    respx.get("http://a.test/y").mock(return_value=httpx.Response(301, headers={"Location": "/x"}))
    for i in range(10):
        respx.get(f"http://a.test/c{i}").mock(return_value=httpx.Response(302, headers={"Location": f"/c{i + 1}"}))
    fetcher = make_fetcher()
    with pytest.raises(FetchError) as loop:
        await follow_redirects(fetcher, "http://a.test/x", RecordingGate())
    assert loop.value.kind is ErrorKind.TOO_MANY_REDIRECTS
    assert "loop" in loop.value.message
    with pytest.raises(FetchError) as chain:
        await follow_redirects(fetcher, "http://a.test/c0", RecordingGate())
    assert chain.value.kind is ErrorKind.TOO_MANY_REDIRECTS
    assert "more than 3 redirects" in chain.value.message
    await fetcher.aclose()


@respx.mock
async def test_redirect_to_non_http_scheme_is_refused() -> None:
    respx.get("http://a.test/r").mock(return_value=httpx.Response(302, headers={"Location": "ftp://a.test/f"}))
    fetcher = make_fetcher()
    with pytest.raises(FetchError) as info:
        await follow_redirects(fetcher, "http://a.test/r", RecordingGate())
    await fetcher.aclose()
    assert info.value.kind is ErrorKind.BAD_REDIRECT


class OffSiteAndHeld:
    """A redirect policy: off.test is skipped, held.test is held, the rest followed; remembers each target."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def decide(self, target: str) -> RedirectDecision:
        self.asked.append(target)
        if "off.test" in target:
            return RedirectDecision.skip(SkipReason.OFF_SITE)
        if "held.test" in target:
            return RedirectDecision.hold()
        return RedirectDecision.follow()


@respx.mock
async def test_a_redirect_policy_can_stop_the_chain_with_a_skip_or_a_hold() -> None:
    respx.get("http://a.test/r").mock(return_value=httpx.Response(301, headers={"Location": "/s"}))
    respx.get("http://a.test/s").mock(return_value=httpx.Response(302, headers={"Location": "http://off.test/"}))
    respx.get("http://a.test/h").mock(return_value=httpx.Response(307, headers={"Location": "http://held.test/"}))
    fetcher = make_fetcher()
    policy = OffSiteAndHeld()
    skipped = await follow_redirects(fetcher, "http://a.test/r", RecordingGate(), policy=policy)
    held = await follow_redirects(fetcher, "http://a.test/h", RecordingGate(), policy=policy)
    await fetcher.aclose()
    assert policy.asked == ["http://a.test/s", "http://off.test/", "http://held.test/"]
    assert (skipped.status, skipped.url, skipped.final_url) == (302, "http://a.test/r", "http://a.test/s")
    assert [hop["url"] for hop in skipped.redirects] == ["http://a.test/r", "http://a.test/s"]
    assert skipped.stopped_redirect == StoppedRedirect("http://off.test/", SkipReason.OFF_SITE, held=False)
    assert held.status == 307
    assert held.stopped_redirect == StoppedRedirect("http://held.test/", None, held=True)


@respx.mock
async def test_the_fetcher_alone_returns_a_redirect_as_it_is() -> None:
    route = respx.get("http://a.test/r").mock(return_value=httpx.Response(302, headers={"Location": "/elsewhere"}))
    gate = RecordingGate()
    fetcher = make_fetcher()
    result = await fetcher.fetch("http://a.test/r", gate)
    await fetcher.aclose()
    assert gate.started == ["http://a.test/r"]
    assert route.call_count == 1
    assert (result.status, result.final_url, result.body) == (302, "http://a.test/r", b"")
    assert result.header_values("location") == ["/elsewhere"]
    assert result.redirects == [] and result.stopped_redirect is None


@respx.mock
async def test_5xx_is_retried_then_reported_with_attempts() -> None:
    route = respx.get("http://a.test/flaky").mock(return_value=httpx.Response(503))
    fetcher = make_fetcher()
    gate = RecordingGate()
    with pytest.raises(FetchError) as info:
        await fetcher.fetch("http://a.test/flaky", gate)
    await fetcher.aclose()
    assert route.call_count == 3  # retries = 2 extra attempts
    assert len(gate.started) == 3  # each retry takes its own turn at the gate
    assert info.value.kind is ErrorKind.HTTP_STATUS
    assert info.value.attempts == 3
    assert info.value.status == 503
    assert info.value.message == "HTTP 503 after 3 attempts"


class RecordingSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@respx.mock
async def test_retries_after_a_first_attempt_made_outside_tenacity_keep_its_numbers_and_waits() -> None:
    # The first attempt runs without tenacity; its failure is replayed as tenacity's attempt 1,
    # so the waits are those of attempts 1 and 2: backoff·2⁰ and backoff·2¹, plus jitter < backoff.
    route = respx.get("http://a.test/down").mock(return_value=httpx.Response(502))
    sleep = RecordingSleep()
    fetcher = Fetcher(
        HttpConfig(retries=2, retry_backoff=1.0, retry_backoff_max=60.0),
        "crawler-test/0.1",
        concurrency=1,
        transport=httpx.AsyncHTTPTransport(),
        sleep=sleep,
    )
    gate = RecordingGate()
    with pytest.raises(FetchError) as info:
        await fetcher.fetch("http://a.test/down", gate)
    await fetcher.aclose()
    assert route.call_count == 3
    assert len(gate.started) == 3
    assert len(sleep.waits) == 2
    assert 1.0 <= sleep.waits[0] <= 2.0
    assert 2.0 <= sleep.waits[1] <= 3.0
    assert (info.value.attempts, info.value.message) == (3, "HTTP 502 after 3 attempts")


@respx.mock
async def test_without_retries_a_transient_failure_is_reported_after_one_attempt() -> None:
    route = respx.get("http://a.test/busy").mock(return_value=httpx.Response(503))
    fetcher = make_fetcher(retries=0)
    with pytest.raises(FetchError) as info:
        await fetcher.fetch("http://a.test/busy", RecordingGate())
    await fetcher.aclose()
    assert route.call_count == 1
    assert (info.value.kind, info.value.attempts, info.value.message) == (ErrorKind.HTTP_STATUS, 1, "HTTP 503")
    assert type(info.value) is FetchError  # the retryable subclass never leaves the fetcher


@respx.mock
async def test_a_lasting_failure_on_the_first_attempt_is_not_retried() -> None:
    route = respx.get("http://a.test/huge").mock(
        return_value=httpx.Response(200, headers={"Content-Length": "999999999"}, content=b"x")
    )
    sleep = RecordingSleep()
    fetcher = Fetcher(
        HttpConfig(retries=2), "crawler-test/0.1", concurrency=1, transport=httpx.AsyncHTTPTransport(), sleep=sleep
    )
    with pytest.raises(FetchError) as info:
        await fetcher.fetch("http://a.test/huge", RecordingGate())
    await fetcher.aclose()
    assert route.call_count == 1
    assert sleep.waits == []
    assert (info.value.kind, info.value.attempts) == (ErrorKind.TOO_LARGE, 1)


@respx.mock
async def test_transient_failure_then_success() -> None:
    route = respx.get("http://a.test/p")
    route.side_effect = [httpx.ConnectError("refused"), httpx.Response(200, content=b"ok")]
    fetcher = make_fetcher()
    gate = RecordingGate()
    result = await fetcher.fetch("http://a.test/p", gate)
    await fetcher.aclose()
    assert result.status == 200
    assert result.attempts == 2
    assert len(gate.started) == 2


@respx.mock
async def test_404_is_a_response_not_an_error() -> None:
    route = respx.get("http://a.test/missing").mock(return_value=httpx.Response(404, content=b"no"))
    fetcher = make_fetcher()
    result = await fetcher.fetch("http://a.test/missing", RecordingGate())
    await fetcher.aclose()
    assert result.status == 404
    assert route.call_count == 1


@respx.mock
async def test_429_reports_retry_after_to_politeness_and_too_long_is_an_error() -> None:
    feedback = RecordingFeedback()
    respx.get("http://a.test/busy").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200, content=b"ok")]
    )
    respx.get("http://a.test/away").mock(return_value=httpx.Response(503, headers={"Retry-After": "86400"}))
    fetcher = make_fetcher(feedback)
    result = await fetcher.fetch("http://a.test/busy", RecordingGate())
    assert result.status == 200
    assert feedback.retry_afters == [("http://a.test/busy", 2.0, 429)]
    with pytest.raises(FetchError) as info:
        await fetcher.fetch("http://a.test/away", RecordingGate())
    await fetcher.aclose()
    assert info.value.kind is ErrorKind.RETRY_AFTER_TOO_LONG


@respx.mock
async def test_declared_content_length_above_limit_is_refused_before_reading() -> None:
    respx.get("http://a.test/big").mock(
        return_value=httpx.Response(200, headers={"Content-Length": "999999"}, content=b"x" * 999_999)
    )
    fetcher = make_fetcher(max_body_bytes=1000)
    with pytest.raises(FetchError) as info:
        await fetcher.fetch("http://a.test/big", RecordingGate())
    await fetcher.aclose()
    assert info.value.kind is ErrorKind.TOO_LARGE
    assert "Content-Length 999,999" in info.value.message


@respx.mock
async def test_timeouts_and_protocol_errors_map_to_kinds() -> None:
    respx.get("http://a.test/slow").mock(side_effect=httpx.ReadTimeout("slow"))
    respx.get("http://a.test/reset").mock(side_effect=httpx.RemoteProtocolError("peer closed"))
    fetcher = make_fetcher(retries=0)
    with pytest.raises(FetchError) as slow:
        await fetcher.fetch("http://a.test/slow", RecordingGate())
    with pytest.raises(FetchError) as reset:
        await fetcher.fetch("http://a.test/reset", RecordingGate())
    await fetcher.aclose()
    assert slow.value.kind is ErrorKind.TIMEOUT
    assert reset.value.kind is ErrorKind.PROTOCOL


@respx.mock
async def test_sends_an_honest_user_agent() -> None:
    route = respx.get("http://a.test/").mock(return_value=httpx.Response(200))
    fetcher = make_fetcher()
    await fetcher.fetch("http://a.test/", RecordingGate())
    await fetcher.aclose()
    assert route.calls.last.request.headers["user-agent"] == "crawler-test/0.1"


class SendingGate:
    """A gate whose requests report their send into events."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    @asynccontextmanager
    async def request(self, url: str) -> AsyncIterator[SendingGate]:
        yield self

    def sent(self) -> None:
        self.events.append("sent")

    async def before_resend(self) -> None:
        self.events.append("turn again")


class ReportingTransport(httpx.AsyncBaseTransport):
    """Answers 200, reporting the send as our transports do."""

    reports_sent = True

    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.events.append("written")
        request.extensions[ON_SENT]()
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))


def recording_transport(events: list[str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        events.append("written")
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))

    return httpx.MockTransport(answer)


@pytest.mark.parametrize("through", ["itself", "a router"])
async def test_a_transport_that_does_not_report_sends_counts_its_request_sent_before_the_write(through: str) -> None:
    events: list[str] = []
    plain = recording_transport(events)
    transport = plain if through == "itself" else SchemeRouter(plain=plain, tls=lambda: plain)
    fetcher = Fetcher(HttpConfig(), "crawler-test/0.1", concurrency=1, transport=transport)
    try:
        await fetcher.fetch("http://a.test/", SendingGate(events))
        await fetcher.fetch("https://a.test/", SendingGate(events))
    finally:
        await fetcher.aclose()
    assert events == ["sent", "written"] * 2


async def test_a_transport_that_reports_sends_says_when_it_wrote() -> None:
    events: list[str] = []
    transport = ReportingTransport(events)
    fetcher = Fetcher(HttpConfig(), "crawler-test/0.1", concurrency=1, transport=transport)
    try:
        await fetcher.fetch("http://a.test/", SendingGate(events))
    finally:
        await fetcher.aclose()
    assert events == ["written", "sent"]


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --------------------------------------------------------------------------- Content-Encoding


def inflate_all(encodings: list[str], body: bytes, chunk: int) -> bytes:
    layers = inflaters(encodings)
    return b"".join(piece for i in range(0, len(body), chunk) for piece in decode(layers, body[i : i + chunk]))


@pytest.mark.parametrize("chunk", [1, 7, 16384, 10**9], ids=["1B", "7B", "16KiB", "whole"])
def test_inflating_gzip_and_deflate_agrees_with_zlib_at_any_chunking(chunk: int) -> None:
    text = b"<p>" + b"some text, not too repetitive: " + bytes(range(256)) * 50 + b"</p>"
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    second = b"<p>second member</p>"
    cases = [
        (["gzip"], gzip.compress(text), text),
        (["x-gzip"], gzip.compress(text), text),
        (["deflate"], zlib.compress(text), text),  # zlib-wrapped, as RFC 9110 says
        (["Deflate"], raw.compress(text) + raw.flush(), text),  # raw deflate, as many servers send it
        (["gzip", "identity"], gzip.compress(text), text),
        (["utf-8", "gzip", "none"], gzip.compress(text), text),  # junk labels are ignored
        (["deflate", "gzip"], gzip.compress(zlib.compress(text)), text),  # listed in the order applied
        (["gzip"], gzip.compress(text) + gzip.compress(second), text + second),  # two gzip members
    ]
    for encodings, body, expected in cases:
        assert inflate_all(encodings, body, chunk) == expected, encodings


def test_bytes_after_the_last_gzip_member_are_ignored_as_browsers_do() -> None:
    assert inflate_all(["gzip"], gzip.compress(b"<p>hi</p>") + b"\r\n junk", 3) == b"<p>hi</p>"


def test_a_stacked_bomb_is_inflated_a_piece_at_a_time() -> None:
    # ~2.5 KB that inflate to 2.5 MB of gzip that inflate to 1 GiB: fed as one chunk, the first
    # piece must come out after a bounded amount of work, and no piece may exceed PIECE.
    pieces = decode(inflaters(["gzip", "gzip"]), bomb_body(1 << 30, ("gzip", "gzip")))
    taken = [next(pieces) for _ in range(100)]
    assert all(0 < len(p) <= PIECE for p in taken)
    assert b"".join(taken) == bytes(sum(map(len, taken)))
    pieces.close()


def test_undecodable_or_unsupported_encodings_are_protocol_errors() -> None:
    with pytest.raises(FetchError) as bad:
        inflate_all(["gzip"], b"this is not gzip", 4)
    assert (bad.value.kind, bad.value.message) == (
        ErrorKind.PROTOCOL,
        "undecodable gzip body: Error -3 while decompressing data: incorrect header check",
    )
    with pytest.raises(FetchError) as unsupported:
        inflaters(["br"])
    assert (unsupported.value.kind, unsupported.value.message) == (
        ErrorKind.PROTOCOL,
        "unsupported Content-Encoding 'br' (we accept gzip, deflate)",
    )


@respx.mock
async def test_we_ask_only_for_encodings_we_can_bound() -> None:
    route = respx.get("http://a.test/").mock(return_value=httpx.Response(200))
    fetcher = make_fetcher()
    await fetcher.fetch("http://a.test/", RecordingGate())
    await fetcher.aclose()
    assert route.calls.last.request.headers["accept-encoding"] == "gzip, deflate"


@respx.mock
async def test_a_redirect_to_javascript_or_mailto_is_a_bad_redirect_not_a_crash() -> None:
    # httpx itself raises InvalidURL on such a Location while preparing a redirect it never follows.
    respx.get("http://a.test/js").mock(return_value=httpx.Response(302, headers={"Location": "javascript:x()"}))
    respx.get("http://a.test/mail").mock(return_value=httpx.Response(301, headers={"Location": "mailto:a@b.c"}))
    respx.get("http://a.test/junk").mock(return_value=httpx.Response(301, headers={"Location": "http://[::1"}))
    fetcher = make_fetcher()
    messages = []
    for path in ("/js", "/mail", "/junk"):
        with pytest.raises(FetchError) as info:
            await follow_redirects(fetcher, "http://a.test" + path, RecordingGate())
        assert info.value.kind is ErrorKind.BAD_REDIRECT
        messages.append(info.value.message)
    await fetcher.aclose()
    assert messages == [
        "HTTP 302 from http://a.test/js to a non-http(s) URL: 'javascript:x()'",
        "HTTP 301 from http://a.test/mail to a non-http(s) URL: 'mailto:a@b.c'",
        "HTTP 301 from http://a.test/junk with an unusable Location: 'http://[::1'",
    ]


def test_tls_errors_are_found_behind_httpcore_wrappers() -> None:
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    try:
        try:
            raise verify
        except ssl.SSLError as exc:
            raise httpcore.ConnectError(exc) from None  # what httpcore does
    except httpcore.ConnectError as exc:
        outer = httpx.ConnectError(str(exc))
        outer.__cause__ = exc
    error = translate_httpx_error(outer)
    assert error.kind is ErrorKind.TLS
    assert error.message == "TLS failure: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    assert type(error) is FetchError  # not the retryable subclass: a certificate does not fix itself


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "http://h.test/a?b=1"), ("HEAD", "https://h.test:8443/"), ("GET", "http://127.0.0.1:8080/p")],
)
def test_the_one_pass_build_request_builds_what_httpx_builds(method: str, url: str) -> None:
    fetcher = make_fetcher()
    client = fetcher.client
    fast = client.build_request(method, url)
    full = httpx.AsyncClient.build_request(client, method, httpx.URL(url))
    assert (fast.method, fast.url, fast.headers.raw, fast.extensions) == (
        full.method,
        full.url,
        full.headers.raw,
        full.extensions,
    )
    assert fast.content == full.content == b""
    assert type(fast.stream) is type(full.stream)


def test_build_request_with_anything_to_merge_is_httpx_s_own() -> None:
    fetcher = make_fetcher()
    client = fetcher.client
    client.cookies.set("session", "abc", domain="h.test")
    with_cookie = client.build_request("GET", "http://h.test/")
    assert with_cookie.headers["cookie"] == "session=abc"
    posted = client.build_request("POST", "http://h.test/form")
    assert posted.headers["content-length"] == "0"
    extra = client.build_request("GET", "http://h.test/", headers={"X-Extra": "1"})
    assert extra.headers["x-extra"] == "1"


@respx.mock
async def test_a_content_length_of_unicode_digits_is_ignored_not_a_crash() -> None:
    # httpx decodes header bytes as latin-1: b"\xb2" arrives as "²", which str.isdigit() accepts.
    respx.get("http://a.test/odd").mock(
        return_value=httpx.Response(200, headers=[(b"Content-Length", b"\xb2")], content=b"<p>fine</p>")
    )
    fetcher = make_fetcher(retries=0)
    result = await fetcher.fetch("http://a.test/odd", RecordingGate())
    await fetcher.aclose()
    assert (result.status, result.body) == (200, b"<p>fine</p>")


async def test_the_tls_transport_is_made_on_the_first_https_request_only() -> None:
    made: list[httpx.AsyncBaseTransport] = []

    def answer(name: str) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: httpx.Response(200, text=name))

    def make_tls() -> httpx.AsyncBaseTransport:
        made.append(answer("tls"))
        return made[-1]

    router = SchemeRouter(plain=answer("plain"), tls=make_tls)
    async with httpx.AsyncClient(transport=router) as client:
        assert (await client.get("http://a.test/")).text == "plain"
        assert made == []  # a plain-http crawl never loads a CA bundle
        assert [(await client.get(f"https://a.test/{i}")).text for i in range(2)] == ["tls", "tls"]
        assert len(made) == 1
