"""robots.txt's redirects on a shared crawl: into a host this crawler holds, borrows, or reads the record of."""

from __future__ import annotations

from typing import Protocol

from crawler.config import PolitenessConfig
from crawler.errors import ErrorKind
from crawler.http.redirects import RedirectDecision
from crawler.robots.rules import RobotsResponse, RobotsRules
from crawler.store import HostLeasing
from crawler.store.records import RobotsRecord, seconds_since
from crawler.urls import host_key, origin


class RecordLookup(Protocol):
    """Where robots.txt records are read (the store)."""

    async def stored_robots(self, origin: str) -> RobotsRecord | None: ...


def recorded_answer(record: RobotsRecord) -> RobotsResponse:
    """The answer a robots.txt record was, aged as it is now."""
    too_many = record.error_kind == ErrorKind.TOO_MANY_REDIRECTS.value
    return RobotsResponse(
        record.status, record.body, record.error, too_many_redirects=too_many, age=seconds_since(record.fetched_at)
    )


class RobotsHops:
    """Where one crawler among several on a shared database may follow its robots.txt redirects.

    RFC 9309 has robots.txt's redirects followed, but a hop into a host this crawler does not
    lease may be another crawler's to send to. A hop from A's robots.txt into host B:
    - to B's /robots.txt while B's record in the store is within its lifetime: that record is the
      answer (A's rules are B's, until B's record expires), and nothing is sent to B. This is
      looked up first, also when this crawler holds B: the fleet fetches B's once per lifetime;
    - otherwise, when this crawler holds B, the hop is followed;
    - otherwise, when nobody holds B: B's lease is borrowed for the fetch (the request goes under
      B's politeness, handed over from its row) and released with its politeness right after;
    - otherwise another crawler holds B: the fetch stops at the hop, and robots.txt counts as
      unavailable for now (the policy holds A's URLs, asks again after robots_retry_interval,
      when B's holder has likely recorded B's robots.txt, and gives up after
      robots_max_attempts, as for any unreachable robots.txt).
    A borrowed host is used by this crawler's robots.txt fetches only, which share it (the last
    one releases it); a page's redirect into it is handed over as into any host not leased here.
    """

    def __init__(self, config: PolitenessConfig, leases: HostLeasing, records: RecordLookup) -> None:
        self._config = config
        self._leases = leases
        self._records = records
        self._borrowed: dict[str, int] = {}  # host → robots.txt fetches of this crawler using its borrowed lease

    def borrows(self, host: str) -> bool:
        """Whether this crawler holds host only for robots.txt fetches."""
        return host in self._borrowed

    def policy(self) -> HopPolicy:
        """The redirect policy of one robots.txt fetch; `end` it once the fetch is over."""
        return HopPolicy(self)

    async def end(self, policy: HopPolicy) -> None:
        """The fetch is over: release the hosts it borrowed that no other fetch still uses."""
        done: list[str] = []
        for host in policy.borrowed:
            left = self._borrowed[host] - 1
            if left:
                self._borrowed[host] = left
            else:
                del self._borrowed[host]
                done.append(host)
        policy.borrowed.clear()
        if done:
            await self._leases.release(done)

    async def _fresh_record(self, url: str) -> RobotsRecord | None:
        """The store's record of the robots.txt at url, when url is one and it is within its lifetime."""
        site = origin(url)
        if url != site + "/robots.txt":
            return None
        record = await self._records.stored_robots(site)
        if record is None:
            return None
        answer = recorded_answer(record)
        rules = RobotsRules.from_response(answer, self._config.user_agent, fetched_at=0.0)
        lifetime = self._config.robots_retry_interval if rules.unavailable else self._config.robots_ttl
        return record if answer.age < lifetime else None

    def _join(self, host: str, policy: HopPolicy) -> bool:
        """Use a host another of this crawler's robots.txt fetches borrowed, if one did."""
        if host not in self._borrowed:
            return False
        if host not in policy.borrowed:
            self._borrowed[host] += 1
            policy.borrowed.append(host)
        return True

    async def decide(self, target: str, policy: HopPolicy) -> RedirectDecision:
        """Whether `policy`'s fetch follows its redirect to target (see the class's docstring)."""
        # The record first, even of a host this crawler holds: the fleet fetches robots.txt once per TTL.
        record = await self._fresh_record(target)
        if record is not None:
            policy.record = record
            return RedirectDecision.hold()
        host = host_key(target)
        if self._join(host, policy) or host in self._leases.held:
            return RedirectDecision.follow()
        if await self._leases.take_if_free(host):
            self._borrowed[host] = 1
            policy.borrowed.append(host)
            return RedirectDecision.follow()
        # Not free: this crawler may have come to hold it meanwhile (a fetch of ours, or its frontier).
        if self._join(host, policy) or host in self._leases.held:
            return RedirectDecision.follow()
        return RedirectDecision.hold()


class HopPolicy:
    """The redirect policy of one robots.txt fetch on a shared crawl (see RobotsHops).

    A stopped hop has `record` set when the target's record is the answer; otherwise its host
    is held by another crawler.
    """

    def __init__(self, hops: RobotsHops) -> None:
        self._hops = hops
        self.borrowed: list[str] = []  # hosts whose borrowed lease this fetch uses
        self.record: RobotsRecord | None = None

    async def decide(self, target: str) -> RedirectDecision:
        return await self._hops.decide(target, self)
