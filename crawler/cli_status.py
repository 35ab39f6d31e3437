"""The `crawler status` command: renders crawler.status snapshots, live on a terminal, once otherwise."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crawler.cli_query import db_flags, db_path_from
from crawler.formats import write_table

if TYPE_CHECKING:  # rich is slow to import: loaded only for the live display on a terminal
    from rich.console import Console

    # Imported by the command, not by every other command's start-up (this module registers its parser).
    from crawler.status import CrawlStatus

STATUS_FORMATS = ("table", "jsonl")
REFRESH_SECONDS = 1.0


def add_command(sub: Any) -> None:
    """Register `status` on the top-level subparsers."""
    p = sub.add_parser(
        "status", help="the crawl at a glance: processes, the hosts they hold, counts, rate (live on a terminal)"
    )
    p.add_argument("--format", choices=STATUS_FORMATS, default="table", help="table (default) or jsonl")
    db_flags(p)
    p.set_defaults(handler=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    from crawler.status import open_status

    with open_status(db_path_from(args)) as source:
        if args.format == "jsonl":
            print(json.dumps(status_record(source.snapshot()), ensure_ascii=False))
        elif sys.stdout.isatty():
            from rich.console import Console

            return watch(source.snapshot, Console())
        else:
            print(format_status(source.snapshot()))
    return 0


def watch(
    read: Callable[[], CrawlStatus],
    console: Console,
    *,
    every: float = REFRESH_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show a fresh snapshot every `every` seconds until Ctrl-C, which ends it normally (exit 0)."""
    from rich.live import Live
    from rich.text import Text

    try:
        with Live(Text(format_status(read())), console=console, auto_refresh=False) as live:
            while True:
                sleep(every)
                live.update(Text(format_status(read())), refresh=True)
    except KeyboardInterrupt:
        return 0


def status_record(s: CrawlStatus) -> dict[str, Any]:
    """The snapshot as one JSON object: every field, and each process's state."""
    data = dataclasses.asdict(s)
    for process, record in zip(s.processes, data["processes"], strict=True):
        record["state"] = process.state
    return data


def format_status(s: CrawlStatus) -> str:
    lines = [
        f"crawl {s.database} at {s.at}",
        f"urls: {s.fetched:,} fetched · {s.queued:,} queued · {s.in_flight:,} in flight · {s.failed:,} failed"
        f" · {s.skipped:,} skipped · {s.errors:,} errors",
        f"rate: {s.recent_pages_per_second:,.1f} pages/s over the last {s.recent_seconds:g}s",
    ]
    if s.processes:
        lines.append("processes:")
        lines.append(
            _table(
                ("run", "kind", "pid", "state", "started_at", "pages", "pages/s", "hosts"),
                [
                    (p.run, p.kind, p.pid, p.state, p.started_at, p.pages, p.pages_per_second, len(p.hosts))
                    for p in s.processes
                ],
            )
        )
        held = [(p.run, h.host, h.in_flight) for p in s.processes for h in p.hosts]
        if held:
            lines.append("hosts held:")
            lines.append(_table(("run", "host", "in_flight"), held))
    else:
        lines.append("processes: none (no crawl is running)")
    if (run := s.last_run) is not None and not any(p.run == run.id for p in s.processes):
        lines.append(
            f"last run: {run.id} ({run.kind}) · {run.outcome} · {run.started_at} → {run.finished_at or '?'}"
            f" · {run.pages:,} pages · {run.seconds:,.1f}s · {run.pages_per_second:,.1f} pages/s"
        )
    return "\n".join(lines)


def _table(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    out = io.StringIO()
    write_table(out, columns, rows)
    return "\n".join("  " + line for line in out.getvalue().rstrip("\n").splitlines())
