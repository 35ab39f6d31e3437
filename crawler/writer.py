"""The batch writer: commits the store's batch on a cadence, and holds workers back while it is behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from crawler.frontier import Frontier
from crawler.store import Backend

FLUSH_INTERVAL = 0.25  # seconds between commits while pages keep coming
# Uncommitted rows (each page's body and text among them) stay in memory, so a batch commits
# early rather than grow large.
FLUSH_ROWS = 2000  # commit early once a batch holds this many rows
MAX_PENDING_ROWS = 2 * FLUSH_ROWS  # workers wait for the writer beyond this (bounds memory)
INDEX_BULK = 500  # pages per indexing transaction for a backlog left at the end of a run


class BatchWriter:
    """Flushes store.batch in one transaction every FLUSH_INTERVAL, or sooner when asked or full;
    later when the frontier says the batch can wait (Frontier.commit_can_wait).

    A flush also tells the frontier which completions it committed and which URLs it queued.
    """

    def __init__(self, store: Backend, frontier: Frontier) -> None:
        self._store = store
        self._frontier = frontier
        self._wanted = asyncio.Event()
        self._committed = asyncio.Condition()  # notified after every flush
        self._running = True
        self._failed = False
        self.urls_queued = 0  # URLs the flushes queued (seeds and discoveries)

    def want_flush(self) -> None:
        """Commit now rather than at the next interval."""
        self._wanted.set()

    def rows_added(self) -> None:
        """A worker added rows to the batch: a full batch is committed now."""
        if len(self._store.batch) >= FLUSH_ROWS:
            self._wanted.set()

    async def run(self) -> None:
        """Flush until stop(); a failed flush ends it (and the crawl) with its exception."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), timeout=FLUSH_INTERVAL)
            asked = self._wanted.is_set()
            self._wanted.clear()
            if not asked and self._frontier.commit_can_wait(loop.time() - last):
                continue
            await self.flush()
            last = loop.time()
            async with self._committed:
                self._committed.notify_all()

    def stop(self) -> None:
        """End run() after the flush it may be in, rather than cancel it mid-transaction."""
        self._running = False
        self._wanted.set()

    async def wait_for_room(self) -> None:
        """Backpressure: while the writer is behind (SQLite slower than the fetching), take no new
        work, so uncommitted rows (all held in memory) stay bounded."""
        if len(self._store.batch) < MAX_PENDING_ROWS:
            return
        self._wanted.set()
        async with self._committed:
            await self._committed.wait_for(lambda: len(self._store.batch) < MAX_PENDING_ROWS or self._failed)

    async def flush(self) -> None:
        # No await between these two: the batch store.flush swaps out holds exactly these completions.
        completions = self._frontier.take_completions()
        try:
            rows = await self._store.flush()
        except Exception:
            # The writer is gone, whatever broke it: no worker may wait for it any longer.
            self._failed = True
            self._frontier.close()
            async with self._committed:
                self._committed.notify_all()
            raise
        self.urls_queued += len(rows)
        self._frontier.committed(completions, rows)

    async def index_backlog(self, say: Callable[[str], None]) -> None:
        """Bring the full-text index up to date; each chunk commits, so stopping here loses nothing."""
        pending = await self._store.pending_index()
        if pending > INDEX_BULK:
            say(f"indexing {pending:,} pages for full-text search")
        while pending > 0 and await self._store.index_pending(INDEX_BULK) == INDEX_BULK:
            pending -= INDEX_BULK
