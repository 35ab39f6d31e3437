"""The backend contract: what the crawl uses of its database, which SQLite and PostgreSQL both implement."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from crawler.politeness import HostState
from crawler.store.batch import Batch
from crawler.store.records import NewUrl, PageRecord, QueuedUrl, RobotsRecord, SitemapRecord

POSTGRES_SCHEMES = ("postgresql://", "postgres://")  # libpq takes both


def is_postgres_url(target: str | Path) -> bool:
    """Whether a storage target names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


class HostLeasing(Protocol):
    """Host leases, for a backend several crawlers share (crawler/store/pg/leases.py); SQLite has none."""

    lease_seconds: float
    fencing: bool
    state_of: Callable[[str], HostState]  # a held host's politeness, handed over with it
    restore: Callable[[str, HostState], None]  # applies a taken host's handed-over politeness
    claim_left: int
    other_runs: int  # other runs still running, at the last renewal or commit
    others_held: int  # the hosts they hold, as each last said
    others_least: int  # the fewest hosts one of them holds
    hungry: bool  # whether another run found no host to take lately, at the last renewal or commit
    held: dict[str, int]  # host → lease token, for the hosts this run holds now

    @property
    def free_hosts(self) -> bool:
        """Whether a host nobody holds has URLs left, as far as this run knows."""
        ...

    def fair_share(self) -> int:
        """Hosts with work per running run, rounded up."""
        ...

    async def ensure_hosts(self) -> None: ...

    async def take(self, k: int, passed: Iterable[str] = ()) -> list[str]: ...

    async def work_due_in(self, *, idle: bool = False) -> float | None: ...

    async def renew(self) -> set[str]: ...

    def take_lost(self) -> set[str]: ...

    async def release(self, hosts: Iterable[str]) -> None: ...

    async def open_budget(self, max_pages: int, fetched: int) -> None: ...

    async def claim(self, pages: int) -> tuple[int, int]: ...

    async def give_back(self, pages: int) -> None: ...

    async def take_if_free(self, host: str) -> bool: ...


class Backend(Protocol):
    """One open crawl database, as the engine, frontier, pipeline, writer, resume, robots policy,
    sitemap reader and recrawl use it. Writes go into `batch` and commit together in `flush`."""

    batch: Batch
    run_id: int | None  # this run's `runs` row, once start_run made it
    pass_id: int | None  # the recrawl pass this run belongs to (see begin_pass)

    @property
    def leases(self) -> HostLeasing | None:
        """Host leases once start_run made the run (a backend several crawlers share); SQLite: None."""
        ...

    @property
    def location(self) -> str:
        """The database as messages name it: a file path, or a URL without its password."""
        ...

    async def close(self) -> None: ...

    # ---- crawl identity and runs ------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def start_run(self, config_json: str, kind: str = "crawl") -> int: ...

    async def finish_run(self, outcome: str, pages: int) -> None: ...

    async def mark_killed_runs(self) -> int:
        """Runs still marked running ended without a word (kill -9, power loss)."""
        ...

    # ---- frontier reads ---------------------------------------------------------------------

    async def state_counts(self) -> dict[str, int]: ...

    async def queued_for_host(self, host: str, after_id: int, limit: int) -> list[QueuedUrl]:
        """Up to `limit` queued URLs of host with ids above `after_id`, in id order (in a recrawl
        pass, each stored page with the version it holds)."""
        ...

    async def queued_hosts(self, after: str, limit: int) -> list[str]:
        """Up to `limit` hosts with queued rows whose names sort after `after`, in name order."""
        ...

    async def fetched_for_host(self, host: str) -> int:
        """Pages fetched (done or failed) from host, in this run and earlier ones; sitemaps are no pages."""
        ...

    async def stored_robots(self, origin: str) -> RobotsRecord | None:
        """The last robots.txt fetch committed for origin (`scheme://host[:port]`), by this crawl's
        earlier runs or, on a shared database, by any crawler; None when none was recorded (or
        one was before the rows kept what rebuilds the rules)."""
        ...

    async def sitemaps_settled(self) -> int:
        """Sitemap documents read or failed."""
        ...

    async def urls_in_state(
        self, state: str, reasons: Sequence[str] | None, after_id: int, limit: int
    ) -> list[tuple[int, str, int, str | None]]:
        """(id, url, depth, reason) of rows in `state` (with one of `reasons`), in id order, a chunk at a time."""
        ...

    # ---- bulk state changes (resume) ----------------------------------------------------------

    async def requeue_in_flight(self) -> int: ...

    async def requeue_skipped(self, reason: str) -> int: ...

    async def set_states(self, changes: Sequence[tuple[str, str | None, int]]) -> None:
        """(state, reason, id) changes committed at once, outside the crawl's batches."""
        ...

    # ---- recrawl passes -----------------------------------------------------------------------

    async def open_pass(self) -> int | None: ...

    async def start_pass(self, pass_id: int, seen_before: str | None) -> int: ...

    def begin_pass(self, pass_id: int, *, keep_history: bool) -> None: ...

    async def end_pass(self) -> None: ...

    async def revisits_queued(self) -> int: ...

    # ---- the batch ------------------------------------------------------------------------------

    def add_urls(self, urls: Iterable[NewUrl]) -> None: ...

    def add_page(self, page: PageRecord, links: Iterable[tuple[str, bool]]) -> None: ...

    def add_listed_urls(self, urls: Iterable[NewUrl]) -> None: ...

    def add_sitemap(self, sitemap: SitemapRecord) -> None: ...

    def replace_page(self, page: PageRecord, links: Iterable[tuple[str, bool]], change: str) -> None: ...

    def confirm_page(self, url_id: int, status: int, etag: str | None, last_modified: str | None) -> None: ...

    def add_change(self, url_id: int, change: str, status: int | None, at: str) -> None: ...

    def add_error(self, url_id: int | None, url: str, kind: str, message: str, attempts: int) -> None: ...

    def set_state(self, url_id: int, state: str, reason: str | None = None) -> None: ...

    def skip_queued_of_host(self, host: str, reason: str) -> None: ...

    def add_robots(self, record: RobotsRecord) -> None:
        """One robots.txt fetch; the origin's row takes its place when the batch commits."""
        ...

    async def flush(self) -> list[QueuedUrl]:
        """Commit the pending batch in one transaction; returns the newly queued URLs in id order."""
        ...

    # ---- full-text search backlog -----------------------------------------------------------------

    async def pending_index(self) -> int:
        """Pages stored but not yet in the full-text index."""
        ...

    async def index_pending(self, limit: int) -> int:
        """Index up to `limit` pending pages in one transaction; returns how many."""
        ...
