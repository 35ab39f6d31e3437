"""The one psycopg connection of a PostgreSQL store: calls in order, and the one boundary where
psycopg errors become StoreError."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from crawler.errors import StoreError

try:
    import psycopg
    from psycopg.adapt import Dumper
except ImportError:  # pragma: no cover - the postgres extra is not installed
    psycopg = None  # type: ignore[assignment]
    Dumper = object  # type: ignore[assignment,misc]

_T = TypeVar("_T")
Conn = Any  # psycopg.AsyncConnection[tuple[Any, ...]]; Any keeps psycopg out of the signatures

CONNECT_TIMEOUT = 10  # seconds, unless the URL sets connect_timeout
TSVECTOR_OID = 3614  # PostgreSQL's built-in tsvector type
# How the crawl's session writes. synchronous_commit off: a commit returns before its WAL is on
# disk. A crawler killed in any way loses nothing by it (the WAL is the server's); a crash of the
# server's machine may lose the last fraction of a second of commits, whole and in commit order,
# so the database stays consistent and those pages are fetched again on resume, as a killed
# crawler's uncommitted batch is. lz4 (where the server has it) compresses bodies and texts for
# a fraction of pglz's CPU.
SESSION_SETTINGS = ("SET synchronous_commit = off", "SET default_toast_compression = lz4")


class TsvectorDumper(Dumper):
    """Writes a tsvector already in PostgreSQL's binary form (crawler/store/pg/tsvector.py) as it is."""

    format = psycopg.pq.Format.BINARY if psycopg is not None else 1
    oid = TSVECTOR_OID

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


def shown(url: str) -> str:
    """The URL as messages show it: never its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


class PgConnection:
    """One psycopg async connection in autocommit, used by one call at a time in the order of the calls.

    A flush is one call: a frontier read waits for the commit rather than reading inside the
    open transaction, as with SQLite's single thread.
    """

    def __init__(self, conn: Conn, location: str) -> None:
        self._conn = conn
        self._turn = asyncio.Lock()  # FIFO: calls run in the order they were made
        self._closed = False
        self.location = location

    @classmethod
    async def open(cls, url: str) -> PgConnection:
        """Connect (libpq: PGPASSWORD, ~/.pgpass, PGSERVICE and URL parameters apply)."""
        location = shown(url)
        if psycopg is None:
            raise StoreError(
                f"storage {location} needs psycopg: pip install -e '.[postgres]' (or pip install 'psycopg[binary]')"
            )
        options: dict[str, Any] = {
            "autocommit": True,
            "application_name": f"crawler {socket.gethostname()}:{os.getpid()}",
        }
        if "connect_timeout" not in url:
            options["connect_timeout"] = CONNECT_TIMEOUT
        with _store_errors(location, connecting=True):
            conn = await psycopg.AsyncConnection.connect(url, **options)
        conn.adapters.register_dumper(None, TsvectorDumper)  # for COPY columns typed tsvector only
        for setting in SESSION_SETTINGS:
            # A server built without lz4 keeps pglz; anything else it refuses is no reason not to crawl.
            with contextlib.suppress(psycopg.Error):
                await conn.execute(setting)
        return cls(conn, location)

    async def run(self, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        """await fn(conn) on its turn; it runs to its end even if the caller is cancelled meanwhile."""
        task = asyncio.ensure_future(self._call(fn))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_drop_outcome)
            raise

    async def _call(self, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        async with self._turn:
            if self._closed:
                raise StoreError(f"{self.location} is closed")
            with _store_errors(self.location):
                return await fn(self._conn)

    async def transaction(self, work: Callable[[Conn], Awaitable[_T]]) -> _T:
        """await work(conn) inside one transaction: committed if it returns, rolled back if it raises."""

        async def in_transaction(conn: Conn) -> _T:
            async with conn.transaction():
                return await work(conn)

        return await self.run(in_transaction)

    async def close(self) -> None:
        """Close the connection, after the call under way."""
        if self._closed:
            return
        async with self._turn:
            self._closed = True
            with _store_errors(self.location):
                await self._conn.close()


def _drop_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome nobody waits for any more, so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


@contextlib.contextmanager
def _store_errors(location: str, *, connecting: bool = False) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, location, connecting=connecting) from exc
    except OSError as exc:
        raise StoreError(f"cannot reach {location}: {exc}") from exc


def translate(exc: BaseException, location: str, *, connecting: bool = False) -> StoreError:
    """The StoreError that tells a user what went wrong with the PostgreSQL database at location."""
    text = " ".join(str(exc).split())
    if connecting or (isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None):
        hint = ""
        if "password" in text or "authentication" in text:
            hint = " (the password comes from PGPASSWORD or ~/.pgpass, never from the config file)"
        return StoreError(f"cannot connect to {location}: {text}{hint}")
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate.startswith("53"):  # insufficient resources: disk full, out of memory, too many connections
        return StoreError(f"{location} is out of resources ({text}); what was stored is intact")
    return StoreError(f"database error on {location}: {text}")
