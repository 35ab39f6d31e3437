"""Following redirects hop by hop, each target first put to a redirect policy.

Redirects are followed inside the one lease of the URL that started them, rather than put
back into the frontier as new requests (as Scrapy and the 500-lines crawler do): that keeps
one page row per URL with its final_url and the chain of hops, detects a loop within one
fetch, and still gives each hop its own politeness turn at its own host, through the gate.

The exception is a crawler among several on one database: a hop into a host it does not lease
may be another crawler's to send to, so the policy stops there and the target is queued as a
URL of its own, fetched by whoever holds its host, under that holder's politeness.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from crawler.errors import ErrorKind, FetchError, SkipReason
from crawler.http.fetcher import REDIRECT_STATUSES, Fetcher, FetchResult, Gate, Headers
from crawler.urls import join_url


class RedirectAction(Enum):
    FOLLOW = "follow"
    SKIP = "skip"  # the target is out of scope or disallowed: recorded as skipped
    HOLD = "hold"  # the target's robots.txt is unavailable: queued, to be fetched once it answers
    HAND_OVER = "hand_over"  # the target's host is not this crawler's (it holds no lease on it): queued


@dataclass(frozen=True, slots=True)
class RedirectDecision:
    """What a redirect policy says about one target."""

    action: RedirectAction
    reason: SkipReason | None = None  # why a skipped target is skipped

    @classmethod
    def follow(cls) -> RedirectDecision:
        return _FOLLOW

    @classmethod
    def skip(cls, reason: SkipReason) -> RedirectDecision:
        return cls(RedirectAction.SKIP, reason)

    @classmethod
    def hold(cls) -> RedirectDecision:
        return _HOLD

    @classmethod
    def hand_over(cls) -> RedirectDecision:
        return _HAND_OVER


_FOLLOW = RedirectDecision(RedirectAction.FOLLOW)
_HOLD = RedirectDecision(RedirectAction.HOLD)
_HAND_OVER = RedirectDecision(RedirectAction.HAND_OVER)


class RedirectPolicy(Protocol):
    """Decides, for each redirect target, whether the fetch follows it."""

    async def decide(self, target: str) -> RedirectDecision: ...


@dataclass(frozen=True, slots=True)
class StoppedRedirect:
    """A redirect the policy did not let the fetch follow."""

    target: str
    reason: SkipReason | None  # why the target is skipped; None when it is queued
    held: bool = False  # queued rather than skipped: its robots.txt is unavailable, or its host is not ours
    handed_over: bool = False  # queued because another crawler may hold its host (see the module's docstring)


async def follow_redirects(
    fetcher: Fetcher,
    url: str,
    gate: Gate,
    *,
    policy: RedirectPolicy | None = None,
    max_redirects: int | None = None,
    truncate_at: int | None = None,
    max_body: int | None = None,
    headers: Headers | None = None,
) -> FetchResult:
    """GET url following redirects; each hop and each retry takes its own turn at the gate.

    Without a policy every redirect within max_redirects (the config's by default) is followed.
    truncate_at, max_body and headers are passed on to each hop's fetch (see Fetcher.fetch).
    """
    limit = fetcher.http.max_redirects if max_redirects is None else max_redirects
    chain: list[dict[str, object]] = []
    seen = {url}
    current = url
    attempts_total = 0
    while True:
        result = await fetcher.fetch(current, gate, truncate_at=truncate_at, max_body=max_body, headers=headers)
        attempts_total += result.attempts
        if result.status not in REDIRECT_STATUSES:
            break
        location = next(iter(result.header_values("location")), None)
        target = join_url(current, _utf8_header(location)) if location else None
        if target is None:
            raise FetchError(
                ErrorKind.BAD_REDIRECT, _bad_location(result.status, current, location), attempts=attempts_total
            )
        chain.append({"url": current, "status": result.status, "location": target})
        if target in seen:
            hops = " → ".join([*(str(hop["url"]) for hop in chain), target])
            raise FetchError(ErrorKind.TOO_MANY_REDIRECTS, f"redirect loop: {_clip(hops)}", attempts=attempts_total)
        if len(chain) > limit:
            raise FetchError(
                ErrorKind.TOO_MANY_REDIRECTS,
                f"more than {limit} redirects, last {_clip(current)} → {_clip(target)}",
                attempts=attempts_total,
            )
        if policy is not None:
            decision = await policy.decide(target)
            if decision.action is not RedirectAction.FOLLOW:
                handed_over = decision.action is RedirectAction.HAND_OVER
                held = handed_over or decision.action is RedirectAction.HOLD
                result.stopped_redirect = StoppedRedirect(target, decision.reason, held=held, handed_over=handed_over)
                break
        seen.add(target)
        current = target
    result.url = url
    result.redirects = chain
    result.attempts = attempts_total
    return result


def _utf8_header(value: str) -> str:
    """httpx decodes header bytes as latin-1; servers (and browsers) mean UTF-8 in a Location."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _bad_location(status: int, url: str, location: str | None) -> str:
    if not location:
        return f"HTTP {status} from {_clip(url)} without a Location header"
    scheme, colon, _ = location.partition(":")
    if colon and scheme.isascii() and scheme.isalpha() and scheme.lower() not in ("http", "https"):
        return f"HTTP {status} from {_clip(url)} to a non-http(s) URL: {_clip(location)!r}"
    return f"HTTP {status} from {_clip(url)} with an unusable Location: {_clip(location)!r}"


def _clip(text: str, limit: int = 300) -> str:
    """Keep messages readable when a hostile server sends a megabyte-long URL."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} chars)"
