"""Typed rows the read side answers with: one frozen dataclass per kind of answer."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Page:
    """One fetched page (a row of `pages`); `bytes` is the body size after decompression."""

    url: str
    final_url: str
    status: int
    content_type: str | None
    title: str | None
    depth: int
    fetched_at: str
    elapsed_ms: float
    http_version: str | None
    bytes: int
    canonical: str | None  # <link rel=canonical>, absolute


@dataclass(frozen=True, slots=True)
class StoredPage(Page):
    """Everything stored about one page, for exports."""

    noindex: bool
    redirects: list[dict[str, Any]]  # hops before final_url: {"url", "status", "location"}
    headers: list[tuple[str, str]]  # response headers of final_url, names lowercased
    text: str | None
    body: builtins.bytes | None
    user_agent: str | None  # of the run that fetched it, for the WARC request record


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """A URL that could not be fetched (a row of `errors`)."""

    url: str
    kind: str
    message: str
    attempts: int
    at: str


@dataclass(frozen=True, slots=True)
class LinkRow:
    """A link between two URLs; to_state/to_status tell what became of its target."""

    direction: str  # "out" of the asked page, or "in" to it
    from_url: str
    to_url: str
    nofollow: bool
    to_state: str | None  # urls.state of the target ('skipped' with reason nofollow if never followed)
    to_status: int | None  # HTTP status of the target, once fetched


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A full-text match; a higher score is a better match (it is -bm25)."""

    url: str
    title: str | None
    score: float
    snippet: str


@dataclass(frozen=True, slots=True)
class ChangeRow:
    """What a recrawl pass found at one URL (a row of `changes`)."""

    url: str
    change: str  # new, changed, unchanged or gone
    status: int | None
    fetched_at: str
    run: int  # the pass: runs.id of the run that started it


@dataclass(frozen=True, slots=True)
class PassCounts:
    """A recrawl pass's URLs by change."""

    run: int
    new: int
    changed: int
    unchanged: int
    gone: int


@dataclass(frozen=True, slots=True)
class SqlResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Run:
    """One `crawler crawl`, `resume` or `recrawl` run (a row of `runs`)."""

    id: int
    started_at: str
    finished_at: str | None  # None while running, or if the process was killed
    outcome: str
    pages: int
    seconds: float
    kind: str = "crawl"  # or "recrawl": a run of a recrawl pass

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Stats:
    """What a crawl database holds, in numbers."""

    urls_by_state: dict[str, int]
    pages_by_status_class: dict[str, int]
    pages_by_host: dict[str, int]
    content_types: dict[str, int]
    errors_by_kind: dict[str, int]
    skipped_by_reason: dict[str, int]
    depths: dict[int, int]
    pages: int
    bytes: int
    unindexed: int  # pages not yet in the full-text index
    runs: list[Run] = field(default_factory=list)
    # sitemap documents "read" and "failed", the "urls listed" in them, the "urls from sitemaps" (found there first)
    sitemaps: dict[str, int] = field(default_factory=dict)
    duplicate_groups: int = 0  # bodies (2xx, not empty) stored at more than one URL
    duplicate_urls: int = 0  # the URLs of those groups
    passes: list[PassCounts] = field(default_factory=list)  # recrawl passes, oldest first

    @property
    def queued(self) -> int:
        return self.urls_by_state.get("queued", 0) + self.urls_by_state.get("in_flight", 0)

    @property
    def seconds(self) -> float:
        return sum(run.seconds for run in self.runs)

    @property
    def pages_per_second(self) -> float:
        seconds = self.seconds
        return sum(run.pages for run in self.runs) / seconds if seconds > 0 else 0.0
