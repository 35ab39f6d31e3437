"""Reconciling a stored crawl with the config it continues under: scope, changed limits, URLs left in flight."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from crawler.config import Config
from crawler.errors import ConfigError, NothingToResume, SkipReason
from crawler.store import Backend
from crawler.urls import Scope

RECHECK_CHUNK = 5000  # rows re-judged per transaction when a limit changed

# Limits that Scope.skip_reason applies, with the reason a URL gets when it breaks them.
_URL_LIMITS = {
    "max_depth": SkipReason.DEPTH,
    "max_url_length": SkipReason.URL_TOO_LONG,
    "max_repeated_segments": SkipReason.REPEATED_SEGMENTS,
}


@dataclass(frozen=True, slots=True)
class ResumeInfo:
    done: int
    queued: int
    in_flight: int

    def describe(self) -> str:
        return f"resuming: {self.done:,} done, {self.queued:,} queued, {self.in_flight:,} were in flight"


@dataclass(frozen=True, slots=True)
class StoredCrawl:
    """What the database holds as a run starts."""

    resumed: ResumeInfo | None  # None for a database no crawl has used yet
    fetched: int  # done + failed: what max_pages counts, across runs
    queued: int


async def prepare(
    store: Backend, config: Config, scope: Scope, *, require_resume: bool, say: Callable[[str], None]
) -> StoredCrawl:
    """Check the stored crawl against config, apply changed limits, requeue in-flight URLs.

    Raises ConfigError when the scope differs (nothing is changed then) and NothingToResume
    when `require_resume` finds nothing left to do.
    """
    stored_scope = await store.get_meta("scope")
    if stored_scope is None:
        if require_resume:
            raise NothingToResume(f"{store.location} holds no crawl: nothing to resume")
        await store.set_meta("scope", json.dumps(_scope(config), sort_keys=True))
        await store.set_meta("limits", json.dumps(_limits(config), sort_keys=True))
        return StoredCrawl(None, 0, 0)
    _check_scope(config, store, json.loads(stored_scope))
    await _apply_limits(store, config, scope, say)
    in_flight = await store.requeue_in_flight()
    await store.mark_killed_runs()
    counts = await store.state_counts()
    fetched = counts["done"] + counts["failed"] - await store.sitemaps_settled()  # sitemaps are no pages
    info = ResumeInfo(done=counts["done"], queued=counts["queued"], in_flight=in_flight)
    max_pages = config.crawl.max_pages
    if require_resume and not info.queued:
        raise NothingToResume(f"{store.location} holds no unfinished crawl ({info.done:,} done): nothing to resume")
    if max_pages and fetched >= max_pages and info.queued:
        message = (
            f"crawl.max_pages = {max_pages:,} is reached ({fetched:,} pages fetched) and {info.queued:,} URLs"
            f" are waiting: raise crawl.max_pages in {config.source} to continue"
        )
        if require_resume:
            raise NothingToResume(message)
        say(message)
    elif info.queued:
        say(info.describe())
    return StoredCrawl(info, fetched, info.queued)


def _scope(config: Config) -> dict[str, list[str]]:
    """The settings that decide which URLs belong to the crawl; order and repeats do not matter."""
    crawl = config.crawl
    return {
        "allowed_hosts": sorted({host.lower() for host in crawl.allowed_hosts}),
        "include": sorted(set(crawl.include)),
        "exclude": sorted(set(crawl.exclude)),
    }


def _check_scope(config: Config, store: Backend, stored: dict[str, list[str]]) -> None:
    """A different scope would mix two crawls in one database: refuse, naming the key."""
    new = _scope(config)
    for key, value in new.items():
        old = sorted(set(stored.get(key, [])))
        if key == "allowed_hosts":
            old = sorted({host.lower() for host in old})
        if old != value:
            raise ConfigError(
                config.source,
                f"crawl.{key}",
                f"is {value!r} but the crawl stored in {store.location} used {old!r}; a crawl keeps its scope."
                f" Restore the old value, or start over with `crawler crawl --fresh` (the old database is kept)",
            )


def _limits(config: Config) -> dict[str, int]:
    crawl = config.crawl
    return {key: getattr(crawl, key) for key in (*_URL_LIMITS, "max_pages_per_host")}


async def _apply_limits(store: Backend, config: Config, scope: Scope, say: Callable[[str], None]) -> None:
    """Limits may change between runs; URLs they skipped or queued are judged again.

    A raised limit queues what it skipped (depth, URL length, repeated segments: re-judged
    by the whole scope; host_limit: all, and the frontier skips again where the host is
    still full). A lowered URL limit re-judges what is queued. Each chunk commits on its
    own and judging is idempotent, so a kill halfway only means judging again next time;
    the new limits are recorded last.
    """
    new = _limits(config)
    raw = await store.get_meta("limits")
    old: dict[str, int] = json.loads(raw) if raw is not None else new
    if old == new:
        if raw is None:
            await store.set_meta("limits", json.dumps(new, sort_keys=True))
        return
    raised = [reason for key, reason in _URL_LIMITS.items() if new[key] > old.get(key, new[key])]
    lowered = any(new[key] < old.get(key, new[key]) for key in _URL_LIMITS)
    queued = skipped = 0
    if raised:
        q, s = await _rejudge(store, scope, "skipped", [str(r) for r in raised])
        queued, skipped = queued + q, skipped + s
    if lowered:
        q, s = await _rejudge(store, scope, "queued", None)
        queued, skipped = queued + q, skipped + s
    old_host, new_host = old.get("max_pages_per_host", 0), new["max_pages_per_host"]
    if old_host and (not new_host or new_host > old_host):
        queued += await store.requeue_skipped(SkipReason.HOST_LIMIT)
    changed = ", ".join(f"crawl.{key} {old.get(key)} → {new[key]}" for key in new if old.get(key) != new[key])
    say(f"limits changed ({changed}): {queued:,} URLs queued again, {skipped:,} queued URLs now skipped")
    await store.set_meta("limits", json.dumps(new, sort_keys=True))


async def _rejudge(store: Backend, scope: Scope, state: str, reasons: list[str] | None) -> tuple[int, int]:
    """Apply the current scope to rows in `state` (with one of `reasons`); returns (queued, skipped)."""
    queued = skipped = 0
    after = 0
    while rows := await store.urls_in_state(state, reasons, after, RECHECK_CHUNK):
        changes: list[tuple[str, str | None, int]] = []
        for url_id, url, depth, old_reason in rows:
            reason = scope.skip_reason(url, depth)
            if reason is None and state == "skipped":
                changes.append(("queued", None, url_id))
                queued += 1
            elif reason is not None and reason != old_reason:
                changes.append(("skipped", str(reason), url_id))
                skipped += state == "queued"
        await store.set_states(changes)
        after = rows[-1][0]
    return queued, skipped
