"""Where a bench's PostgreSQL time goes: pg_stat_statements per statement, and CPU per server process kind."""

from __future__ import annotations

import collections
import contextlib
import re
import threading
from dataclasses import dataclass, field

import psutil
import psycopg

# Server settings that load pg_stat_statements (Debian's postgresql-contrib files ship with the server).
SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "2000",
}
SAMPLE_EVERY = 0.2  # seconds between looks at the server's processes


def prepare(url: str) -> None:
    """Create the extension in the crawl's database and forget what earlier runs recorded."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")


def statements(url: str, top: int = 20) -> str:
    """The statements that took the most server time in the crawl's database, as a table."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT s.total_exec_time, s.calls, s.rows, s.query FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()"
            " ORDER BY s.total_exec_time DESC"
        ).fetchall()
    total = sum(r[0] for r in rows) or 1.0
    lines = [f"  server time in statements: {total / 1000:.2f} s", "    ms      %   calls     rows  statement"]
    for ms, calls, nrows, query in rows[:top]:
        text = re.sub(r"\s+", " ", query)[:150]
        lines.append(f"  {ms:7.0f} {100 * ms / total:5.1f} {calls:7d} {nrows:8d}  {text}")
    return "\n".join(lines)


@dataclass
class ProcessSampler:
    """Samples the postmaster's children's CPU by kind (backend, autovacuum, walwriter, …) while a run lasts.

    A process that exits between two samples loses only what it spent since the last one.
    """

    postmaster: int
    seen: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (kind, CPU seconds)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ProcessSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            top = psutil.Process(self.postmaster)
            while not self._stop.wait(SAMPLE_EVERY):
                for child in top.children():
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        times = child.cpu_times()
                        kind = _kind(" ".join(child.cmdline()))
                        self.seen[child.pid] = (kind, times.user + times.system)

    def by_kind(self, before: dict[int, float]) -> dict[str, float]:
        """CPU seconds per process kind, less what each process had spent before the run."""
        totals: dict[str, float] = collections.defaultdict(float)
        for pid, (kind, cpu) in self.seen.items():
            totals[kind] += cpu - before.get(pid, 0.0)
        return dict(totals)


def baseline(postmaster: int) -> dict[int, float]:
    """CPU seconds each live server process has spent so far."""
    spent: dict[int, float] = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(postmaster).children():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = child.cpu_times()
                spent[child.pid] = times.user + times.system
    return spent


def _kind(title: str) -> str:
    """'postgres: walwriter' -> walwriter; a client backend -> backend."""
    text = title.removeprefix("postgres: ")
    for kind in ("autovacuum worker", "autovacuum launcher", "walwriter", "checkpointer", "background writer",
                 "logical replication launcher", "stats collector"):  # fmt: skip
        if text.startswith(kind):
            return kind
    return "backend" if "(" in text or "idle" in text or "127.0.0.1" in text else text.split(" ")[0] or "other"
