"""The `crawler query …` and `crawler export` commands: arguments → crawler.query.Results → formatted output."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawler.config import load_config
from crawler.errors import UsageError
from crawler.formats import EXPORT_FORMATS, FORMATS, write_rows
from crawler.recrawl import CHANGES
from crawler.store.backend import is_postgres_url

if TYPE_CHECKING:
    from crawler.filters import PageFilter
    from crawler.query import Results, Stats

# The query and export modules are imported by the commands that use them, so that `crawler crawl`
# (which imports this module for its parsers) starts without them.

DEFAULT_CONFIG = "config.toml"
DEFAULT_LIMIT = 100
SEARCH_LIMIT = 20
# The columns a table shows; jsonl and csv carry every field of the row.
PAGE_TABLE = ("status", "depth", "bytes", "elapsed_ms", "content_type", "url", "title", "canonical")
ERROR_TABLE = ("kind", "attempts", "at", "url", "message")


def add_commands(sub: Any) -> None:
    """Register `query` (with its subcommands) and `export` on the top-level subparsers."""
    q = sub.add_parser("query", help="ask questions of a crawl database (read-only; safe during a crawl)")
    qsub = q.add_subparsers(dest="query_command", required=True, metavar="QUERY")

    stats = qsub.add_parser("stats", help="counts by state, status, host, type, error kind, depth; runs and speed")
    _common(stats, listing=False)
    stats.set_defaults(handler=_cmd_stats)

    pages = qsub.add_parser("pages", help="fetched pages, filtered")
    _page_filters(pages)
    _common(pages)
    pages.set_defaults(handler=_cmd_pages)

    errors = qsub.add_parser("errors", help="URLs that could not be fetched, and why")
    errors.add_argument("--kind", help="only this error kind (timeout, connect, http_status, …)")
    _common(errors)
    errors.set_defaults(handler=_cmd_errors)

    changes = qsub.add_parser("changes", help="what a recrawl pass found at each URL (default: the latest pass)")
    changes.add_argument("--run", type=_limit, metavar="N", help="the pass started by run N")
    changes.add_argument("--change", choices=CHANGES, help="only new, changed, unchanged or gone")
    _common(changes)
    changes.set_defaults(handler=_cmd_changes)

    links = qsub.add_parser("links", help="links out of a page and into it")
    links.add_argument("url", metavar="URL", help="the page (its asked or final URL)")
    links.add_argument("--direction", choices=("in", "out", "both"), default="both", help="default: both")
    _common(links)
    links.set_defaults(handler=_cmd_links)

    search = qsub.add_parser("search", help="full-text search over titles and visible text, best match first")
    search.add_argument(
        "words", nargs="+", metavar="WORDS", help='words that must all appear; "quoted words" as a phrase'
    )
    search.add_argument(
        "--fts", action="store_true", help="WORDS is an FTS5 query (OR, NOT, NEAR, title:word); PostgreSQL: a tsquery"
    )
    _common(search, limit=SEARCH_LIMIT)
    search.set_defaults(handler=_cmd_search)

    sql = qsub.add_parser("sql", help="run one read-only SQL statement and print the rows")
    sql.add_argument("statement", metavar="STATEMENT", help='e.g. "SELECT status, count(*) FROM pages GROUP BY 1"')
    _common(sql)
    sql.set_defaults(handler=_cmd_sql)

    exp = sub.add_parser("export", help="write the stored pages as JSON Lines, CSV or WARC 1.1")
    exp.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="jsonl, csv or warc")
    exp.add_argument("-o", "--output", required=True, metavar="FILE", help="output file ('-' = stdout)")
    _page_filters(exp)
    exp.add_argument("--limit", type=_limit, default=0, metavar="N", help="at most N pages (default 0 = all)")
    db_flags(exp)
    exp.set_defaults(handler=_cmd_export)


def db_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--db", type=_db_target, help="crawl database: a SQLite file or a postgresql:// URL")
    group.add_argument(
        "-c", "--config", type=Path, help="use this config's storage.path or storage.url (default ./config.toml)"
    )


def _common(p: argparse.ArgumentParser, *, listing: bool = True, limit: int = DEFAULT_LIMIT) -> None:
    p.add_argument("--format", choices=FORMATS, default="table", help="table (default), jsonl or csv")
    if listing:
        p.add_argument(
            "--limit", type=_limit, default=limit, metavar="N", help=f"at most N rows (default {limit}; 0 = all)"
        )
    db_flags(p)


def _page_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", help="an HTTP status (200) or a class (4xx)")
    p.add_argument("--host", help="host, any port (example.com), or host:port")
    p.add_argument("--content-type", help="media type (text/html) or family (image/*)")
    p.add_argument("--depth", help="link depth from the seeds (seeds are 0)")
    p.add_argument(
        "--since", help="fetched at or after: ISO-8601 (UTC unless an offset is given) or an age: 30m, 2h, 7d"
    )
    p.add_argument(
        "--url-like", metavar="PATTERN", help="SQL LIKE pattern on the URL (%% wildcard); without %% a substring"
    )


def _limit(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _db_target(text: str) -> Path | str:
    return text if is_postgres_url(text) else Path(text)


def db_path_from(args: argparse.Namespace) -> Path | str:
    """The database --db or the config names: a SQLite path, or a postgresql:// URL."""
    if args.db is not None:
        return _db_target(str(args.db))
    return load_config(args.config or DEFAULT_CONFIG).storage.target


def _open(args: argparse.Namespace) -> Results:
    from crawler.query import open_results

    return open_results(db_path_from(args))


def _filter(args: argparse.Namespace) -> PageFilter:
    from crawler.filters import PageFilter

    return PageFilter.build(
        status=args.status,
        host=args.host,
        content_type=args.content_type,
        depth=args.depth,
        since=args.since,
        url_like=args.url_like,
    )


# ---- listings -------------------------------------------------------------------------------


def _print_rows(
    args: argparse.Namespace,
    fields: Sequence[str],
    rows: Iterable[Any],
    table: Sequence[str] | None = None,
    values: Callable[[Any], Sequence[Any]] | None = None,
) -> None:
    """Print up to --limit rows; rows beyond the limit are counted as one "more" note on stderr."""
    columns = table if (table is not None and args.format == "table") else fields
    pick = values or (lambda row: [getattr(row, name) for name in columns])
    limit = args.limit or None
    iterator = iter(rows)
    shown = islice(iterator, limit) if limit else iterator
    write_rows(sys.stdout, args.format, columns, (pick(row) for row in shown))
    if limit and next(iterator, None) is not None:
        print(
            f"crawler: showing the first {_count(limit, 'row')}; --limit N shows more, --limit 0 all", file=sys.stderr
        )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _fields(row_type: type) -> list[str]:
    return [f.name for f in dataclasses.fields(row_type)]


def _more(limit: int) -> int | None:
    """Ask the database for one row beyond the limit, to tell whether there are more."""
    return limit + 1 if limit else None


def _cmd_pages(args: argparse.Namespace) -> int:
    from crawler.query import Page

    with _open(args) as results:
        rows = results.iter_pages(_filter(args), limit=_more(args.limit))
        _print_rows(args, _fields(Page), rows, PAGE_TABLE)
    return 0


def _cmd_errors(args: argparse.Namespace) -> int:
    from crawler.query import ErrorRow

    with _open(args) as results:
        _print_rows(args, _fields(ErrorRow), results.errors(kind=args.kind, limit=_more(args.limit)), ERROR_TABLE)
    return 0


def _cmd_changes(args: argparse.Namespace) -> int:
    from crawler.query import ChangeRow

    with _open(args) as results:
        rows = results.changes(run=args.run, change=args.change, limit=_more(args.limit))
        _print_rows(args, _fields(ChangeRow), rows)
    return 0


def _cmd_links(args: argparse.Namespace) -> int:
    from crawler.query import LinkRow

    with _open(args) as results:
        rows = results.links(args.url, direction=args.direction, limit=_more(args.limit))
        _print_rows(args, _fields(LinkRow), rows)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from crawler.query import SearchHit

    with _open(args) as results:
        hits = results.search(" ".join(args.words), limit=_more(args.limit), syntax=args.fts)
        _print_rows(args, _fields(SearchHit), hits)
        pending = results.unindexed()
    if pending:
        print(
            f"crawler: {_count(pending, 'page')} not searchable yet (stored before search existed, or by"
            " hand); the next `crawler resume` of this database indexes them",
            file=sys.stderr,
        )
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    with _open(args) as results:
        result = results.sql(args.statement, limit=_more(args.limit))
    _print_rows(args, result.columns, result.rows, values=lambda row: row)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from crawler.export import export, export_file

    where = _filter(args)
    with _open(args) as results:
        if args.output == "-":
            out = sys.stdout.buffer if args.format == "warc" else sys.stdout
            summary = export(results, args.format, out, where=where, limit=args.limit or None)
            out.flush()
        else:
            path = Path(args.output)
            if path.is_dir():
                raise UsageError(f"-o {path} is a folder; give a file name")
            summary = export_file(results, args.format, path, where=where, limit=args.limit or None)
    note = f"crawler: exported {_count(summary.pages, 'page')} to {args.output}"
    if summary.without_body:
        note += (
            f"; left out {_count(summary.without_body, 'page')} without a stored body (noindex, or store_bodies off)"
        )
    print(note, file=sys.stderr)
    return 0


# ---- stats ----------------------------------------------------------------------------------


def _cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as results:
        stats = results.stats()
    if args.format == "table":
        print(format_stats(stats))
    elif args.format == "jsonl":
        data = dataclasses.asdict(stats)
        data.update(queued=stats.queued, seconds=stats.seconds, pages_per_second=stats.pages_per_second)
        print(json.dumps(data, ensure_ascii=False))
    else:
        write_rows(sys.stdout, "csv", ("section", "key", "value"), _stats_rows(stats))
    return 0


def _stats_sections(s: Stats) -> dict[str, Mapping[Any, int]]:
    sections: dict[str, Mapping[Any, int]] = {
        "urls by state": s.urls_by_state,
        "pages by status": s.pages_by_status_class,
        "pages by host": s.pages_by_host,
        "content types": s.content_types,
        "errors by kind": s.errors_by_kind,
        "skipped by reason": s.skipped_by_reason,
        "pages by depth": s.depths,
    }
    if s.sitemaps:  # only crawls that met a sitemap
        sections["sitemaps"] = s.sitemaps
    return sections


def _stats_rows(s: Stats) -> Iterable[tuple[str, Any, Any]]:
    yield from [("total", "pages", s.pages), ("total", "bytes", s.bytes), ("total", "queued", s.queued)]
    yield ("total", "unindexed", s.unindexed)
    for section, pairs in _stats_sections(s).items():
        for key, value in pairs.items():
            yield section, key, value
    yield from [("duplicates", "groups", s.duplicate_groups), ("duplicates", "urls", s.duplicate_urls)]
    for run in s.runs:
        yield from [(f"run {run.id}", name, getattr(run, name)) for name in ("started_at", "finished_at", "outcome")]
        yield from [(f"run {run.id}", "pages", run.pages), (f"run {run.id}", "seconds", round(run.seconds, 3))]
        yield (f"run {run.id}", "kind", run.kind)
    for counts in s.passes:
        yield from [(f"pass {counts.run}", change, getattr(counts, change)) for change in CHANGES]


def format_stats(s: Stats) -> str:
    def block(title: str, pairs: Mapping[Any, int]) -> list[str]:
        if not pairs:
            return [f"{title}: none"]
        return [f"{title}:"] + [f"  {key!s:<32} {value:>10,}" for key, value in pairs.items()]

    lines = [f"pages stored: {s.pages:,} ({s.bytes:,} bytes)", f"still queued: {s.queued:,}"]
    if s.unindexed:
        lines.append(f"not yet searchable: {s.unindexed:,}")
    lines.append(f"exact duplicates: {s.duplicate_groups:,} bodies at {s.duplicate_urls:,} URLs")
    for title, pairs in _stats_sections(s).items():
        lines += block(title, pairs)
    for run in s.runs:
        kind = " (recrawl)" if run.kind == "recrawl" else ""
        lines.append(
            f"run {run.id}{kind}: {run.started_at} → {run.finished_at or '(running or killed)'}"
            f" · {run.outcome} · {run.pages:,} pages · {run.seconds:,.1f}s · {run.pages_per_second:,.1f} pages/s"
        )
    for counts in s.passes:
        found = " · ".join(f"{getattr(counts, change):,} {change}" for change in CHANGES)
        lines.append(f"recrawl pass {counts.run}: {found}")
    if len(s.runs) > 1:
        lines.append(f"all runs: {s.seconds:,.1f}s · {s.pages_per_second:,.1f} pages/s")
    return "\n".join(lines)
