"""The `crawler` command: parses arguments, calls the library, turns CrawlerError into exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from crawler import query
from crawler.config import Config, config_from_dict, load_config
from crawler.engine import Crawl, CrawlSummary, Outcome
from crawler.errors import CrawlerError, NothingToResume
from crawler.progress import ProgressDisplay, format_summary
from crawler.store import writer_lock

EXIT_INTERRUPTED = 130
DEFAULT_CONFIG = "config.toml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except CrawlerError as exc:
        print(f"crawler: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crawler", description="A polite asynchronous web crawler.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crawl = sub.add_parser("crawl", help="run (or continue) the crawl a config file describes")
    crawl.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="TOML config (default: ./config.toml)")
    crawl.add_argument("--fresh", action="store_true", help="move the existing database aside and start over")
    _output_flags(crawl)
    crawl.set_defaults(handler=_cmd_crawl)

    resume = sub.add_parser("resume", help="continue an interrupted crawl; exit 1 if there is none")
    resume.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="TOML config (default: ./config.toml)")
    _output_flags(resume)
    resume.set_defaults(handler=_cmd_resume)

    demo = sub.add_parser("demo", help="crawl the bundled demo site on 127.0.0.1 (offline, seconds)")
    demo.add_argument("--db", type=Path, default=Path("data/demo.db"), help="database (default: data/demo.db)")
    _output_flags(demo)
    demo.set_defaults(handler=_cmd_demo)

    q = sub.add_parser("query", help="ask questions of a crawl database")
    qsub = q.add_subparsers(dest="query_command", required=True, metavar="QUERY")
    stats = qsub.add_parser("stats", help="counts by state, status, host, type, error kind, depth")
    _db_flags(stats)
    stats.set_defaults(handler=_cmd_stats)
    return parser


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display or summary")
    p.add_argument("-v", "--verbose", action="store_true", help="log one line per fetch")


def _db_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--db", type=Path, help="crawl database")
    group.add_argument("-c", "--config", type=Path, help="use this config's storage.path (default ./config.toml)")


def db_path_from(args: argparse.Namespace) -> Path:
    if args.db is not None:
        return Path(args.db)
    return load_config(args.config or DEFAULT_CONFIG).storage.path


# ---- crawl, resume, demo --------------------------------------------------------------------


def _cmd_crawl(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.fresh:
        moved = move_aside(config.storage.path)
        if moved is not None and not args.quiet:
            print(f"previous database moved to {moved}", file=sys.stderr)
    return _run(config, args, require_resume=False)


def _cmd_resume(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not config.storage.path.exists():
        raise NothingToResume(f"no database at {config.storage.path}: nothing to resume")
    return _run(config, args, require_resume=True)


def _run(config: Config, args: argparse.Namespace, *, require_resume: bool) -> int:
    summary = run_crawl(config, quiet=args.quiet, require_resume=require_resume)
    if not args.quiet:
        print(format_summary(summary))
    if summary.outcome is Outcome.INTERRUPTED:
        # Shown even with --quiet: like an error, it says what to do next.
        print(f"interrupted: continue with `crawler resume {args.config}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def run_crawl(config: Config, *, quiet: bool, require_resume: bool = False) -> CrawlSummary:
    """Run a crawl on a fresh event loop (uvloop when installed), stopping cleanly on SIGINT/SIGTERM."""
    with ProgressDisplay(quiet=quiet) as display:
        crawl = Crawl(config, on_progress=display, on_message=display.message)

        async def main() -> CrawlSummary:
            _install_signal_handlers(crawl.request_stop, display.message)
            return await crawl.run(require_resume=require_resume)

        return _event_loop_runner(main)


def _install_signal_handlers(stop: Callable[[], None], say: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    state = {"signals": 0}

    def on_signal() -> None:
        state["signals"] += 1
        if state["signals"] == 1:
            say("stopping: finishing in-flight requests (Ctrl-C again to quit at once; both are resumable)")
            stop()
        else:
            # Every commit is one SQLite transaction, so quitting here loses at most the open batch.
            os._exit(EXIT_INTERRUPTED)

    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available off Unix or outside the main thread; Ctrl-C then raises KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)


def _event_loop_runner(main: Callable[[], object]) -> CrawlSummary:
    try:
        import uvloop

        return uvloop.run(main())  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        return asyncio.run(main())  # type: ignore[arg-type]


def move_aside(path: Path, *, now: datetime | None = None) -> Path | None:
    """Keep an old database (and its WAL files) next to it under a timestamped name."""
    if not path.exists():
        return None
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while any(Path(str(target) + suffix).exists() for suffix in ("", "-wal", "-shm")):
        n += 1  # never overwrite an earlier copy moved aside within the same second
        target = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
    with writer_lock(path):  # never move a database from under a running crawl
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                shutil.move(src, Path(str(target) + suffix))
    return target


def _cmd_demo(args: argparse.Namespace) -> int:
    from crawler.demo import build_demo_site
    from crawler.localsite import SiteServer

    db: Path = args.db
    move_aside(db)
    with SiteServer(build_demo_site()) as server:
        config = demo_config(server.url, db)
        if not args.quiet:
            print(f"demo site serving at {server.url}; crawling it into {db}")
        summary = run_crawl(config, quiet=args.quiet)
    if not args.quiet:
        print(format_summary(summary))
        print()
        print(_format_stats(query.stats(query.connect_readonly(db))))
        print()
        print("try next:")
        print(f"  crawler query stats --db {db}")
        print(f'  sqlite3 {db} "SELECT status, count(*) FROM pages GROUP BY status"')
        print(f"  sqlite3 {db} \"SELECT url, reason FROM urls WHERE state = 'skipped' LIMIT 5\"")
    return 0 if summary.outcome is not Outcome.INTERRUPTED else EXIT_INTERRUPTED


def demo_config(base_url: str, db: Path) -> Config:
    """Settings for a local server: no delay, generous concurrency, a short timeout."""
    return config_from_dict(
        {
            "crawl": {"seeds": [base_url + "/"], "max_pages": 0, "max_depth": 20},
            "politeness": {
                "user_agent": "crawler-demo/0.1 (+https://example.org/contact)",
                "concurrency": 16,
                "per_host_concurrency": 8,
                "delay": 0.0,
                "adaptive": False,
            },
            "http": {"total_timeout": 10.0, "retries": 1, "retry_backoff": 0.05},
            "storage": {"path": str(db)},
        },
        source="<demo>",
    )


# ---- queries ------------------------------------------------------------------------------------


def _cmd_stats(args: argparse.Namespace) -> int:
    conn = query.connect_readonly(db_path_from(args))
    print(_format_stats(query.stats(conn)))
    return 0


def _format_stats(s: query.Stats) -> str:
    def block(title: str, pairs: Mapping[Any, int]) -> list[str]:
        if not pairs:
            return [f"{title}: none"]
        return [f"{title}:"] + [f"  {key!s:<32} {value:>10,}" for key, value in pairs.items()]

    lines = [f"pages stored: {s.pages:,} ({s.bytes:,} bytes)", f"still queued: {s.queued:,}"]
    lines += block("urls by state", s.urls_by_state)
    lines += block("pages by status", s.pages_by_status_class)
    lines += block("pages by host", s.pages_by_host)
    lines += block("content types", s.content_types)
    lines += block("errors by kind", s.errors_by_kind)
    lines += block("skipped by reason", s.skipped_by_reason)
    lines += block("pages by depth", s.depths)
    for run in s.runs:
        seconds = run["seconds"] or 0.0
        rate = run["pages"] / seconds if seconds else 0.0
        lines.append(
            f"run {run['id']}: {run['started_at']} → {run['finished_at'] or '(running or killed)'}"
            f" · {run['outcome']} · {run['pages']:,} pages · {seconds:,.1f}s · {rate:,.1f} pages/s"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
