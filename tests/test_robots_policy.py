"""RobotsPolicy against respx mocks: robots.txt fetched under the caller's gate, verdicts, misses and giving up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import pytest
import respx

from crawler.config import HttpConfig, PolitenessConfig
from crawler.errors import ErrorKind
from crawler.http.fetcher import Fetcher
from crawler.politeness import Politeness
from crawler.robots.policy import RobotsAccess, RobotsPolicy
from crawler.store import RobotsRecord, utc_now


class Gate:
    """A worker's gate stand-in: lets every request through and remembers them."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.let_go_calls = 0

    @asynccontextmanager
    async def request(self, url: str) -> AsyncIterator[None]:
        self.started.append(url)
        yield

    def let_go(self) -> None:
        self.let_go_calls += 1


class Log:
    """The store's robots part: records every fetch, and answers lookups from what was committed."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int | None, str | None]] = []
        self.records: dict[str, RobotsRecord] = {}
        self.lookups: list[str] = []

    def add_robots(self, record: RobotsRecord) -> None:
        self.rows.append((record.origin, record.status, record.note))
        self.records[record.origin] = replace(record, fetched_at=record.fetched_at or utc_now())

    async def stored_robots(self, origin: str) -> RobotsRecord | None:
        self.lookups.append(origin)
        return self.records.get(origin)


def make_policy(log: Log, **politeness: object) -> tuple[RobotsPolicy, Fetcher]:
    config = PolitenessConfig(**politeness)  # type: ignore[arg-type]
    fetcher = Fetcher(HttpConfig(retries=0), config.user_agent, concurrency=4, transport=httpx.AsyncHTTPTransport())
    return RobotsPolicy(config, fetcher, Politeness(config), log), fetcher


@respx.mock
async def test_robots_txt_is_fetched_once_under_the_gate_passed_in() -> None:
    respx.get("http://a.test/robots.txt").mock(
        return_value=httpx.Response(200, text="User-agent: *\nDisallow: /private\n")
    )
    log = Log()
    policy, fetcher = make_policy(log)
    first, second = Gate(), Gate()
    assert (await policy.verdict("http://a.test/page", first)).access is RobotsAccess.ALLOWED
    assert (await policy.verdict("http://a.test/private/x", second)).access is RobotsAccess.DISALLOWED
    await fetcher.aclose()
    assert first.started == ["http://a.test/robots.txt"]
    assert second.started == []  # cached
    assert log.rows == [("http://a.test", 200, "200, 1 rule for *")]


@respx.mock
async def test_an_unreachable_robots_txt_holds_then_gives_up_after_robots_max_attempts() -> None:
    route = respx.get("http://a.test/robots.txt").mock(return_value=httpx.Response(503))
    log = Log()
    policy, fetcher = make_policy(log, robots_max_attempts=2, robots_retry_interval=0.0)
    gate = Gate()
    assert (await policy.verdict("http://a.test/p", gate)).access is RobotsAccess.HOLD
    given_up = await policy.verdict("http://a.test/p", gate)  # the second fetch is the last try
    again = await policy.verdict("http://a.test/q", gate)  # no third fetch
    await fetcher.aclose()
    assert route.call_count == 2
    assert len(log.rows) == 2
    for verdict in (given_up, again):
        assert verdict.access is RobotsAccess.GIVEN_UP
        assert verdict.failure is not None
        assert verdict.failure.kind is ErrorKind.HTTP_STATUS
        assert verdict.failure.message == "not fetched: http://a.test/robots.txt was unreachable 2 times: HTTP 503"
        assert verdict.failure.attempts == 1


@respx.mock
async def test_a_robots_txt_that_answers_again_resets_the_misses() -> None:
    route = respx.get("http://a.test/robots.txt")
    route.side_effect = [httpx.Response(503), httpx.Response(404), httpx.Response(503)]
    log = Log()
    policy, fetcher = make_policy(log, robots_max_attempts=2, robots_retry_interval=0.0, robots_ttl=0.0)
    gate = Gate()
    accesses = [(await policy.verdict("http://a.test/p", gate)).access for _ in range(3)]
    await fetcher.aclose()
    assert accesses == [RobotsAccess.HOLD, RobotsAccess.ALLOWED, RobotsAccess.HOLD]


@pytest.mark.parametrize("start", [0.0, 5.0])
@respx.mock
async def test_an_unreachable_robots_txt_holds_its_host_until_the_retry_on_the_crawls_clock(start: float) -> None:
    """Right after boot the monotonic clock is small: the hold still lasts robots_retry_interval on that clock."""
    respx.get("http://a.test/robots.txt").mock(return_value=httpx.Response(503))
    now = [start]
    config = PolitenessConfig(robots_retry_interval=30.0)
    politeness = Politeness(config, clock=lambda: now[0])
    fetcher = Fetcher(HttpConfig(retries=0), config.user_agent, concurrency=4, transport=httpx.AsyncHTTPTransport())
    policy = RobotsPolicy(config, fetcher, politeness, Log())
    assert (await policy.verdict("http://a.test/p", Gate())).access is RobotsAccess.HOLD
    now[0] += 10.0
    policy.hold_host("a.test:80", "http://a.test/p")
    await fetcher.aclose()
    assert politeness.slot("a.test:80").paused_until == start + 30.0  # the cached answer expires then


# ---- records shared through the store: another crawler (or a resumed run) uses them ---------------


def make_shared(log: Log, now: list[float], **politeness: object) -> tuple[RobotsPolicy, Politeness, Fetcher]:
    """A second crawler's policy on the same store, with its own clock."""
    config = PolitenessConfig(**politeness)  # type: ignore[arg-type]
    pol = Politeness(config, clock=lambda: now[0])
    fetcher = Fetcher(HttpConfig(retries=0), config.user_agent, concurrency=4, transport=httpx.AsyncHTTPTransport())
    return RobotsPolicy(config, fetcher, pol, log), pol, fetcher


@respx.mock
async def test_a_recorded_robots_txt_is_used_by_another_crawler_without_fetching() -> None:
    route = respx.get("http://a.test/robots.txt").mock(
        return_value=httpx.Response(200, text="User-agent: *\nDisallow: /private\nCrawl-delay: 2\n")
    )
    log = Log()
    first, fetcher = make_policy(log)
    assert (await first.verdict("http://a.test/page", Gate())).access is RobotsAccess.ALLOWED
    second, pol, other = make_shared(log, [3.0])
    gate = Gate()
    assert (await second.verdict("http://a.test/private/x", gate)).access is RobotsAccess.DISALLOWED
    assert (await second.verdict("http://a.test/page", gate)).access is RobotsAccess.ALLOWED
    await fetcher.aclose()
    await other.aclose()
    assert route.call_count == 1
    assert gate.started == []
    assert log.lookups == ["http://a.test", "http://a.test"]  # one each; the second then has it in its cache
    assert pol.slot("a.test:80").crawl_delay == 2.0
    assert log.rows == [("http://a.test", 200, "200, 1 rule for *, crawl-delay 2")]  # recorded once


@respx.mock
async def test_a_record_older_than_robots_ttl_is_fetched_again() -> None:
    route = respx.get("http://a.test/robots.txt").mock(return_value=httpx.Response(200, text="User-agent: *\n"))
    log = Log()
    first, fetcher = make_policy(log, robots_ttl=3600.0)
    await first.verdict("http://a.test/page", Gate())
    log.records["http://a.test"] = replace(log.records["http://a.test"], fetched_at="2001-01-01T00:00:00.000Z")
    second, _, other = make_shared(log, [0.0], robots_ttl=3600.0)
    gate = Gate()
    assert (await second.verdict("http://a.test/page", gate)).access is RobotsAccess.ALLOWED
    await fetcher.aclose()
    await other.aclose()
    assert route.call_count == 2
    assert gate.started == ["http://a.test/robots.txt"]


@pytest.mark.parametrize(
    ("answer", "access"),
    [
        (httpx.Response(404), RobotsAccess.ALLOWED),  # RFC 9309 §2.3.1.3: unavailable, allow all
        (httpx.Response(301, headers={"location": "/robots.txt"}), RobotsAccess.ALLOWED),  # a loop: allow all
    ],
)
@respx.mock
async def test_an_allow_all_outcome_carries_over(answer: httpx.Response, access: RobotsAccess) -> None:
    route = respx.get("http://a.test/robots.txt").mock(return_value=answer)
    log = Log()
    first, fetcher = make_policy(log)
    assert (await first.verdict("http://a.test/x", Gate())).access is access
    second, _, other = make_shared(log, [0.0])
    assert (await second.verdict("http://a.test/x", Gate())).access is access
    await fetcher.aclose()
    await other.aclose()
    assert route.call_count == 1


@respx.mock
async def test_an_unreachable_robots_txt_holds_another_crawler_until_the_retry_and_the_misses_add_up() -> None:
    route = respx.get("http://a.test/robots.txt").mock(return_value=httpx.Response(503))
    log = Log()
    first, fetcher = make_policy(log, robots_max_attempts=2, robots_retry_interval=30.0)
    assert (await first.verdict("http://a.test/p", Gate())).access is RobotsAccess.HOLD
    assert log.records["http://a.test"].misses == 1
    assert (log.records["http://a.test"].error_kind, log.records["http://a.test"].error) == ("http_status", "HTTP 503")

    now = [5.0]
    second, pol, other = make_shared(log, now, robots_max_attempts=2, robots_retry_interval=30.0)
    gate = Gate()
    assert (await second.verdict("http://a.test/p", gate)).access is RobotsAccess.HOLD  # disallow all, no fetch
    assert gate.started == []
    second.hold_host("a.test:80", "http://a.test/p")
    # The record is a moment old: the hold ends within the first crawler's retry interval, not a new one.
    assert 5.0 + 29.0 < pol.slot("a.test:80").paused_until <= 5.0 + 30.0

    # Past the retry time the second crawler fetches; its miss is the record's second in a row: the last.
    log.records["http://a.test"] = replace(log.records["http://a.test"], fetched_at="2001-01-01T00:00:00.000Z")
    now[0] += 31.0
    verdict = await second.verdict("http://a.test/p", gate)
    await fetcher.aclose()
    await other.aclose()
    assert route.call_count == 2
    assert verdict.access is RobotsAccess.GIVEN_UP
    assert verdict.failure is not None
    assert verdict.failure.message == "not fetched: http://a.test/robots.txt was unreachable 2 times: HTTP 503"
    assert log.records["http://a.test"].misses == 2


@respx.mock
async def test_a_given_up_record_gives_up_at_once_and_an_answer_clears_the_misses() -> None:
    route = respx.get("http://a.test/robots.txt")
    route.side_effect = [httpx.ConnectError("refused"), httpx.Response(200, text="User-agent: *\n")]
    log = Log()
    first, fetcher = make_policy(log, robots_max_attempts=1)
    assert (await first.verdict("http://a.test/p", Gate())).access is RobotsAccess.GIVEN_UP
    record = log.records["http://a.test"]
    assert (record.status, record.misses, record.error_kind) == (None, 1, "connect")

    second, _, other = make_shared(log, [0.0], robots_max_attempts=1)
    verdict = await second.verdict("http://a.test/p", Gate())
    assert verdict.access is RobotsAccess.GIVEN_UP  # within the retry interval: nothing fetched
    assert verdict.failure is not None and verdict.failure.kind is ErrorKind.CONNECT
    assert route.call_count == 1

    # A third crawler, once the record is stale, fetches again and gets an answer: the streak ends.
    log.records["http://a.test"] = replace(record, fetched_at="2001-01-01T00:00:00.000Z")
    third, _, another = make_shared(log, [0.0], robots_max_attempts=1)
    assert (await third.verdict("http://a.test/p", Gate())).access is RobotsAccess.ALLOWED
    await fetcher.aclose()
    await other.aclose()
    await another.aclose()
    assert log.records["http://a.test"].misses == 0
