"""RobotsPolicy against respx mocks: robots.txt fetched under the caller's gate, verdicts, misses and giving up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
import pytest
import respx

from crawler.config import HttpConfig, PolitenessConfig
from crawler.errors import ErrorKind
from crawler.http.fetcher import Fetcher
from crawler.politeness import Politeness
from crawler.robots.policy import RobotsAccess, RobotsPolicy


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
    def __init__(self) -> None:
        self.rows: list[tuple[str, int | None, str | None]] = []

    def add_robots(
        self, origin: str, status: int | None, crawl_delay: float | None, sitemaps: Sequence[str], note: str | None
    ) -> None:
        self.rows.append((origin, status, note))


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
