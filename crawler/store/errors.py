"""What a sqlite3 or OS error means to a user: the StoreError that SqliteConnection raises for it."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from crawler.errors import StoreError


def translate(exc: BaseException, path: Path) -> StoreError:
    """The StoreError that tells a user what went wrong with the database at path."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None  # extended codes keep the primary in the low byte
    os_errno = exc.errno if isinstance(exc, OSError) else None
    if primary == sqlite3.SQLITE_NOTADB or "file is not a database" in text or "file is encrypted" in text:
        return StoreError(f"{path} is not a SQLite database (choose another storage.path or move the file)")
    if primary == sqlite3.SQLITE_READONLY or os_errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreError(
            f"{path} is read-only ({text}); the file and its folder must be writable,"
            " since SQLite keeps -wal and -shm files next to it"
        )
    if primary == sqlite3.SQLITE_FULL or os_errno in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text:
        return StoreError(
            f"the disk holding {path} is full; free space and resume the crawl (what was stored is intact)"
        )
    if primary == sqlite3.SQLITE_CANTOPEN or "unable to open" in text:
        return StoreError(f"cannot open {path}: {text}")
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return StoreError(f"{path} is locked by another process: {text}")
    return StoreError(f"database error on {path}: {text}")
