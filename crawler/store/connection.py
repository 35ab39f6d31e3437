"""A plain sqlite3 connection that lives in a thread of its own, called from the event loop.

A one-thread executor that we own is the public-API way to run a whole transaction in the
connection's thread as one call (aiosqlite offers that only through its private `_execute`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from crawler.store.errors import translate
from crawler.store.lock import lock_for_writing, unlock

_T = TypeVar("_T")


class SqliteConnection:
    """One sqlite3 connection, the thread that alone may use it, and (for a writer) the writer lock.

    Calls run one at a time in the order they were made. This class is the one boundary
    where sqlite3 and OS errors become StoreError.
    """

    def __init__(self, executor: ThreadPoolExecutor, db: sqlite3.Connection, path: Path, lock: int | None) -> None:
        self._executor = executor
        self._db = db
        self._lock = lock
        self._closed = False
        self.path = path

    @classmethod
    async def open(cls, path: Path, *, readonly: bool) -> SqliteConnection:
        """Connect to path (read-only, or as the one writer, holding the writer lock)."""
        lock: int | None = None
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        try:
            with _store_errors(path):
                if not readonly:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    lock = lock_for_writing(path)
                db = await _call(executor, partial(_connect, path, readonly=readonly))
        except BaseException:
            executor.shutdown(wait=True)
            unlock(lock)
            raise
        return cls(executor, db, path, lock)

    async def run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """fn(db) in the connection's thread; it runs to its end even if the caller is cancelled meanwhile."""
        with _store_errors(self.path):
            return await _call(self._executor, partial(fn, self._db))

    async def transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """work(db) inside one IMMEDIATE transaction, run whole in the connection's thread.

        One call into that thread instead of one per statement, since each call's answer
        waits for the busy event loop. Committed if work returns, rolled back if it raises;
        a commit is never cut short by the caller's cancellation.
        """
        return await self.run(partial(_in_transaction, work=work))

    async def close(self) -> None:
        """Close the connection, stop its thread and release the writer lock, also when closing fails."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.run(sqlite3.Connection.close)
        finally:
            self._executor.shutdown(wait=True)
            unlock(self._lock)
            self._lock = None


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def _in_transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


async def _call(executor: ThreadPoolExecutor, fn: Callable[[], _T]) -> _T:
    """fn() in the executor's thread; a cancelled caller stops waiting, the thread still finishes fn."""
    future = asyncio.get_running_loop().run_in_executor(executor, fn)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_drop_outcome)
        raise


def _drop_outcome(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome nobody waits for any more, so asyncio does not report it as lost."""
    if not future.cancelled():
        future.exception()


@contextlib.contextmanager
def _store_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise translate(exc, path) from exc
