"""The writer lock: one process at a time writes a crawl database."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from crawler.errors import StoreError


def lock_for_writing(path: Path) -> int | None:
    """One writer per database: two crawlers on one frontier would lease the same URLs.

    An flock on a side file (never on the database itself: closing another descriptor of
    the database would drop SQLite's own locks); the kernel releases it when the process
    dies, so a killed crawl never leaves a stale lock behind. Returns the descriptor that
    holds it, for `unlock`.
    """
    if fcntl is None:  # pragma: no cover - not on Windows
        return None
    fd = os.open(f"{path}-lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreError(f"{path} is in use by another crawler (pid {holder}); wait for it or stop it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold the database's writer lock for a moment (e.g. to move it aside); StoreError if a crawl has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = lock_for_writing(path)
    try:
        yield
    finally:
        unlock(fd)


def lock_holder(path: Path) -> int | None:
    """The pid the writer lock file names (the last process that took the lock), without taking it."""
    try:
        text = Path(f"{path}-lock").read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
