"""The `crawler` command: parses arguments, calls the library, turns CrawlerError into exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from crawler.cli_query import DEFAULT_CONFIG, db_path_from, format_stats
from crawler.cli_query import add_commands as add_query_commands
from crawler.cli_status import add_command as add_status_command
from crawler.config import Config, load_config
from crawler.engine import Crawl, CrawlSummary, Outcome
from crawler.errors import CrawlerError, NothingToResume, UsageError
from crawler.http.eventloop import CrawlEventLoop
from crawler.progress import ProgressDisplay, format_summary
from crawler.recrawl import RecrawlRequest, parse_duration
from crawler.store import writer_lock

__all__ = ["DEFAULT_CONFIG", "db_path_from", "main", "run"]

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def run() -> int:
    """The `crawler` program: `main` on the command line, its objects then left out of the exit's collection."""
    code = main()
    # The interpreter's shutdown collects cyclic garbage by walking every object the imports
    # made; frozen objects are skipped, and what needs closing was closed by the commands.
    gc.freeze()
    return code


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
    except BrokenPipeError:
        # The reader went away (`crawler query pages | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


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

    recrawl = sub.add_parser(
        "recrawl", help="fetch the stored pages again with conditional requests; continues an unfinished pass"
    )
    recrawl.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="TOML config (default: ./config.toml)")
    recrawl.add_argument(
        "--older-than", metavar="DURATION", help="only pages last seen longer ago than this: 90s, 30m, 12h, 7d"
    )
    _output_flags(recrawl)
    recrawl.set_defaults(handler=_cmd_recrawl)

    demo = sub.add_parser("demo", help="crawl the bundled demo site on 127.0.0.1 (offline, seconds)")
    demo.add_argument("--db", type=Path, default=Path("data/demo.db"), help="database (default: data/demo.db)")
    _output_flags(demo)
    demo.set_defaults(handler=_cmd_demo)

    add_query_commands(sub)
    add_status_command(sub)
    return parser


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display or summary")
    p.add_argument("-v", "--verbose", action="store_true", help="log one line per fetch")


# ---- crawl, resume, demo --------------------------------------------------------------------


def _cmd_crawl(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.fresh and config.storage.url is not None:
        raise UsageError(
            "--fresh moves a SQLite file aside; with storage.url, drop and create the PostgreSQL database instead"
        )
    if args.fresh:
        moved = move_aside(config.storage.path)
        if moved is not None and not args.quiet:
            print(f"previous database moved to {moved}", file=sys.stderr)
    return _run(config, args, require_resume=False)


def _cmd_resume(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # A PostgreSQL database that holds no crawl is told by the crawl itself (resume.prepare).
    if config.storage.url is None and not config.storage.path.exists():
        raise NothingToResume(f"no database at {config.storage.path}: nothing to resume")
    return _run(config, args, require_resume=True)


def _cmd_recrawl(args: argparse.Namespace) -> int:
    older_than = None if args.older_than is None else parse_duration(args.older_than)
    config = load_config(args.config)
    if config.storage.url is None and not config.storage.path.exists():
        raise NothingToResume(f"no database at {config.storage.path}: nothing to recrawl")
    return _run(config, args, require_resume=False, recrawl=RecrawlRequest(older_than))


def _run(
    config: Config, args: argparse.Namespace, *, require_resume: bool, recrawl: RecrawlRequest | None = None
) -> int:
    summary = run_crawl(config, quiet=args.quiet, require_resume=require_resume, recrawl=recrawl)
    if not args.quiet:
        print(format_summary(summary))
    if summary.outcome is Outcome.INTERRUPTED:
        # Shown even with --quiet: like an error, it says what to do next.
        print(f"interrupted: continue with `crawler resume {args.config}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def run_crawl(
    config: Config, *, quiet: bool, require_resume: bool = False, recrawl: RecrawlRequest | None = None
) -> CrawlSummary:
    """Run a crawl (or a recrawl pass) on a fresh event loop, stopping cleanly on SIGINT/SIGTERM."""
    with ProgressDisplay(quiet=quiet) as display:
        crawl = Crawl(config, on_progress=display, on_message=display.message, recrawl=recrawl)

        async def main() -> CrawlSummary:
            _install_signal_handlers(crawl.request_stop, display.message)
            return await crawl.run(require_resume=require_resume)

        # asyncio's own loop (on the benchmarks uvloop was no faster and used more memory),
        # cheap to wake from pyreqwest's Tokio thread.
        with asyncio.Runner(loop_factory=CrawlEventLoop) as runner:
            return runner.run(main())


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
    # Imported here: its HTTP server modules are of no use to the other commands' start-up.
    from crawler.demo import DemoServer, demo_config, discard_database, next_steps
    from crawler.query import open_results

    db: Path = args.db
    discard_database(db)
    with DemoServer() as server:
        config = demo_config(server.url, db)
        if not args.quiet:
            print(f"demo site serving at {server.url}; crawling it into {db}")
        summary = run_crawl(config, quiet=args.quiet)
    if not args.quiet:
        print(format_summary(summary))
        print()
        with open_results(db) as results:
            print(format_stats(results.stats()))
        print()
        print("try next:")
        for command in next_steps(db):
            print(f"  {command}")
    return 0 if summary.outcome is not Outcome.INTERRUPTED else EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
