"""The read side on both backends: one site crawled (and recrawled) into SQLite and into PostgreSQL, then every
`crawler query` command, format and filter and every export compared; search, `sql` and `status` on PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from warcio.archiveiterator import ArchiveIterator

from crawler.cli import main
from crawler.status import open_status
from crawler.store import Store
from tests.harbour import LIGHTHOUSE, harbour_site
from tests.support.localsite import SiteServer
from tests.support.postgres import PostgresServer
from tests.support.site import html_page

# Values two crawls of one site cannot share: times, durations and rates, the Date header.
_VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), "<time>"),
    (re.compile(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT"), "<date>"),
    (re.compile(r"\d[\d,]*\.\d+"), "<float>"),
]


@dataclass(frozen=True)
class Crawled:
    lite: str  # the SQLite file
    pg: str  # the PostgreSQL URL
    base: str  # the site's URL


def config(folder: Path, seed: str, storage: str, name: str) -> str:
    path = folder / f"{name}.toml"
    path.write_text(
        f'[crawl]\nseeds = ["{seed}"]\nmax_pages = 0\n'
        # One request at a time: which page finds a URL first (its depth, its parent) must not depend on timing.
        '[politeness]\ndelay = 0.0\nadaptive = false\nuser_agent = "crawler-test/0.1"\n'
        "concurrency = 1\nper_host_concurrency = 1\n"
        f"[storage]\n{storage}\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def crawled(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crawled]:
    """harbour_site() with a sitemap, crawled then recrawled (one page changed) into each backend."""
    folder = tmp_path_factory.mktemp("results")
    site = harbour_site()
    with SiteServer(site) as server:
        base = server.url
        site.robots(f"User-agent: *\nDisallow: /private/\nSitemap: {base}/sitemap.xml\n")
        site.page(
            "/sitemap.xml",
            body='<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<url><loc>{base}/lighthouse</loc></url><url><loc>{base}/listed</loc></url></urlset>",
            content_type="application/xml",
        )
        site.page("/listed", body=html_page("Listed only", ["/"], ["Found through the sitemap, like a lantern."]))
        pg = pg_server.create_database()
        configs = [
            config(folder, base + "/", 'path = "lite.db"', "lite"),
            config(folder, base + "/", f'url = "{pg}"', "pg"),
        ]
        for path in configs:
            assert main(["crawl", "-q", path]) == 0
        site.page("/lighthouse", body=LIGHTHOUSE.replace("thirty winters", "forty winters"))
        for path in configs:
            assert main(["recrawl", "-q", path]) == 0
        yield Crawled(str(folder / "lite.db"), pg, base)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def steady(text: str, crawled: Crawled) -> list[str]:
    """Output as two crawls of one site can share it: volatile values masked, table padding ignored."""
    text = text.replace(crawled.pg, "<db>").replace(crawled.lite, "<db>")
    for pattern, mask in _VOLATILE:
        text = pattern.sub(mask, text)
    return [" ".join(line.split()) for line in text.splitlines() if not set(line) <= {"-", " "}]


def both(capsys: pytest.CaptureFixture[str], crawled: Crawled, *argv: str) -> tuple[Any, Any]:
    lite = run(capsys, *argv, "--db", crawled.lite)
    pg = run(capsys, *argv, "--db", crawled.pg)
    return (lite[0], steady(lite[1], crawled), steady(lite[2], crawled)), (
        pg[0],
        steady(pg[1], crawled),
        steady(pg[2], crawled),
    )


LISTINGS = [
    ["query", "stats"],
    ["query", "pages"],
    ["query", "pages", "--status", "2xx", "--content-type", "text/*", "--limit", "3"],
    ["query", "pages", "--host", "127.0.0.1", "--depth", "1", "--url-like", "LIGHT"],
    ["query", "pages", "--since", "2000-01-01", "--content-type", "application/pdf"],
    ["query", "pages", "--url-like", "%/old"],
    ["query", "errors"],
    ["query", "errors", "--kind", "http_status"],
    ["query", "errors", "--kind", "timeout"],
    ["query", "changes"],
    ["query", "changes", "--change", "changed"],
    ["query", "changes", "--run", "1"],
    ["query", "sql", "SELECT state, count(*) AS n FROM urls GROUP BY state ORDER BY state"],
    ["query", "sql", "SELECT url, status FROM pages ORDER BY url", "--limit", "2"],
]


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
@pytest.mark.parametrize("argv", LISTINGS, ids=lambda argv: " ".join(argv[1:]))
def test_every_query_answers_the_same_from_both_backends(
    capsys: pytest.CaptureFixture[str], crawled: Crawled, argv: list[str], fmt: str
) -> None:
    lite, pg = both(capsys, crawled, *argv, "--format", fmt)
    assert lite[0] == 0 and (lite[1] or fmt == "jsonl"), lite
    assert pg == lite


@pytest.mark.parametrize("direction", ["in", "out", "both"])
@pytest.mark.parametrize("path", ["/", "/old", "/new", "/lighthouse", "/login"])
def test_links_answer_the_same_from_both_backends(
    capsys: pytest.CaptureFixture[str], crawled: Crawled, path: str, direction: str
) -> None:
    lite, pg = both(capsys, crawled, "query", "links", crawled.base + path, "--direction", direction)
    assert lite[0] == 0
    assert pg == lite


def test_stats_carry_the_sitemaps_the_pass_and_the_runs_on_both(
    capsys: pytest.CaptureFixture[str], crawled: Crawled
) -> None:
    lite, pg = both(capsys, crawled, "query", "stats", "--format", "jsonl")
    assert pg == lite
    data = json.loads(run(capsys, "query", "stats", "--db", crawled.pg, "--format", "jsonl")[1])
    assert data["sitemaps"] == {"read": 1, "failed": 0, "urls listed": 2, "urls from sitemaps": 1}
    assert [(p["run"], p["changed"]) for p in data["passes"]] == [(2, 1)]
    assert [(r["id"], r["kind"], r["outcome"]) for r in data["runs"]] == [
        (1, "crawl", "finished"),
        (2, "recrawl", "finished"),
    ]
    assert data["unindexed"] == 0


def test_usage_errors_are_the_same_on_both(capsys: pytest.CaptureFixture[str], crawled: Crawled) -> None:
    for argv in (
        ["query", "links", crawled.base + "/nowhere"],
        ["query", "changes", "--run", "7"],
        ["query", "pages", "--status", "6xx"],
        ["query", "search", '""'],
    ):
        lite, pg = both(capsys, crawled, *argv)
        assert pg == lite, argv


def jsonl_export(capsys: pytest.CaptureFixture[str], db: str, fmt: str, *extra: str) -> list[dict[str, Any]]:
    code, out, err = run(capsys, "export", "--format", fmt, "-o", "-", "--db", db, *extra)
    assert code == 0, err
    records = (
        [json.loads(line) for line in out.splitlines()] if fmt == "jsonl" else list(csv.DictReader(io.StringIO(out)))
    )
    for record in records:
        record.pop("fetched_at")
        record.pop("elapsed_ms")
        headers = json.loads(record["headers"]) if fmt == "csv" else record["headers"]
        record["headers"] = [pair for pair in headers if pair[0] != "date"]
    return records


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_exports_are_the_same_from_both_backends(
    capsys: pytest.CaptureFixture[str], crawled: Crawled, fmt: str
) -> None:
    lite = jsonl_export(capsys, crawled.lite, fmt)
    assert len(lite) == 8 and any(r["text"] for r in lite)
    assert jsonl_export(capsys, crawled.pg, fmt) == lite
    some = jsonl_export(capsys, crawled.lite, fmt, "--status", "2xx", "--limit", "2")
    assert jsonl_export(capsys, crawled.pg, fmt, "--status", "2xx", "--limit", "2") == some


def warc_records(path: Path) -> list[tuple[Any, ...]]:
    with path.open("rb") as stream:
        return [
            (
                record.rec_type,
                record.rec_headers.get_header("WARC-Target-URI"),
                record.http_headers and record.http_headers.get_statuscode(),
                record.http_headers and record.http_headers.get_header("User-Agent"),
                record.content_stream().read() if record.rec_type != "warcinfo" else b"",
            )
            for record in ArchiveIterator(stream)
        ]


def test_warc_exports_carry_the_same_records(
    capsys: pytest.CaptureFixture[str], crawled: Crawled, tmp_path: Path
) -> None:
    for name, db in (("lite", crawled.lite), ("pg", crawled.pg)):
        code, _, err = run(capsys, "export", "--format", "warc", "-o", str(tmp_path / f"{name}.warc.gz"), "--db", db)
        assert code == 0 and "exported 7 pages" in err and "left out 1 page" in err, err
    lite = warc_records(tmp_path / "lite.warc.gz")
    assert len(lite) == 1 + 2 * 7
    assert ("request", crawled.base + "/report.pdf", "/report.pdf", "crawler-test/0.1", b"") in lite
    assert warc_records(tmp_path / "pg.warc.gz") == lite


# ---- search: the same pages, ranked and cut by each backend's own engine ------------------------------------------


def search(capsys: pytest.CaptureFixture[str], db: str, *words: str) -> list[dict[str, Any]]:
    code, out, err = run(capsys, "query", "search", *words, "--db", db, "--format", "jsonl")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize(
    "words", [("lighthouse", "keeper"), ('"lighthouse keeper"',), ("light*",), ("lantern",), ("LIGHTHOUSE", "diary")]
)
def test_search_finds_the_same_pages_on_both_with_the_title_ranked_first(
    capsys: pytest.CaptureFixture[str], crawled: Crawled, words: tuple[str, ...]
) -> None:
    lite = search(capsys, crawled.lite, *words)
    pg = search(capsys, crawled.pg, *words)
    assert lite and sorted(hit["url"] for hit in pg) == sorted(hit["url"] for hit in lite)
    if any("lighthouse" in word.lower() for word in words) and "diary" not in words:
        # The title weight: the page titled "Lighthouse Keeper" outranks the one that says it three times.
        assert pg[0]["url"] == lite[0]["url"] == crawled.base + "/lighthouse"
    assert [hit["score"] for hit in pg] == sorted((hit["score"] for hit in pg), reverse=True)
    assert all(hit["score"] > 0 for hit in pg)
    # ts_headline marks the matches as FTS5's snippet does.
    assert all(re.search(r"\[\w+\]", hit["snippet"]) for hit in pg), pg


def test_search_syntax_is_a_tsquery_on_postgresql(capsys: pytest.CaptureFixture[str], crawled: Crawled) -> None:
    found = search(capsys, crawled.pg, "--fts", "lighthouse & !keeper")
    assert [hit["url"] for hit in found] == [crawled.base + "/"]
    assert [hit["url"] for hit in search(capsys, crawled.pg, "--fts", "quay | lantern")] == [
        crawled.base + "/",
        crawled.base + "/listed",
    ]
    code, _, err = run(capsys, "query", "search", "--fts", "(((", "--db", crawled.pg)
    assert code == 2 and "invalid search '((('" in err
    # noindex pages are never searchable, on either backend.
    assert search(capsys, crawled.pg, "whispered") == search(capsys, crawled.lite, "whispered") == []


# ---- sql: reading only ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM pages",
        "UPDATE urls SET state = 'queued'",
        "CREATE TABLE x (a int)",
        "SELECT 1; DELETE FROM pages",
        "WITH gone AS (DELETE FROM pages RETURNING 1) SELECT count(*) FROM gone",
        "SELECT nextval('urls_id_seq')",
    ],
)
def test_sql_that_writes_exits_2_and_changes_nothing_on_postgresql(
    capsys: pytest.CaptureFixture[str], crawled: Crawled, statement: str
) -> None:
    code, out, err = run(capsys, "query", "sql", statement, "--db", crawled.pg)
    assert (code, out) == (2, "")
    assert err.startswith("crawler: error: refused: `query sql` only reads") or "invalid SQL" in err, err
    with psycopg.connect(crawled.pg) as conn:
        assert conn.execute("SELECT count(*) FROM pages").fetchone() == (8,)
        assert conn.execute("SELECT count(*) FROM urls WHERE state = 'queued'").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('x')").fetchone() == (None,)


def test_sql_values_are_written_as_sqlite_writes_them(capsys: pytest.CaptureFixture[str], crawled: Crawled) -> None:
    statement = "SELECT sum(bytes) AS total, avg(depth) AS depth, body FROM pages WHERE url LIKE '%.pdf' GROUP BY body"
    lite, pg = both(capsys, crawled, "query", "sql", statement, "--format", "jsonl")
    assert pg == lite
    code, _, err = run(capsys, "query", "sql", "SELEC 1", "--db", crawled.pg)
    assert code == 2 and "invalid SQL: syntax error" in err


# ---- status ----------------------------------------------------------------------------------------------------------


async def test_status_on_postgresql_names_the_running_process_its_hosts_then_shows_it_gone(pg_url: str) -> None:
    store = await Store.open(pg_url)
    try:
        run_id = await store.start_run("{}")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO urls (url, host, depth, state, discovered_at) VALUES"
                " ('http://a.test/1', 'a.test', 0, 'in_flight', 'x'),"
                " ('http://a.test/2', 'a.test', 0, 'in_flight', 'x'),"
                " ('http://b.test/1', 'b.test', 0, 'in_flight', 'x'), ('http://b.test/2', 'b.test', 0, 'queued', 'x')"
            )
            # The hosts this run leases (as LeasedFrontier takes them), and one another run leases.
            conn.execute(
                "INSERT INTO hosts (host, lease_owner, lease_token, lease_until) VALUES"
                " ('a.test', %(run)s, 1, now() + interval '1 minute'),"
                " ('b.test', %(run)s, 2, now() + interval '1 minute'),"
                " ('c.test', %(other)s, 3, now() + interval '1 minute')",
                {"run": run_id, "other": run_id + 1000},
            )
        with open_status(pg_url) as source:
            status = await asyncio.to_thread(source.snapshot)
        assert (status.backend, status.database) == ("postgresql", pg_url)
        assert (status.fetched, status.queued, status.in_flight) == (0, 1, 3)
        (process,) = status.processes
        assert (process.run, process.machine, process.pid, process.state) == (
            run_id,
            socket.gethostname(),
            os.getpid(),
            "running",
        )
        assert [(h.host, h.in_flight) for h in process.hosts] == [("a.test", 2), ("b.test", 1)]
    finally:
        await store.close()
    # Closed without finishing its run, as a killed process leaves it: once its heartbeat is
    # older than a lease, the run shows as gone.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE runs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (run_id,))
    with open_status(pg_url) as source:
        status = source.snapshot()
    assert [(p.run, p.state) for p in status.processes] == [(run_id, "gone")]
    assert status.last_run is not None and status.last_run.outcome == "running"


def test_status_command_on_postgresql(capsys: pytest.CaptureFixture[str], crawled: Crawled) -> None:
    lite, pg = both(capsys, crawled, "status")
    assert pg == lite
    code, out, err = run(capsys, "status", "--db", crawled.pg)
    assert (code, err) == (0, "")
    assert out.startswith(f"crawl {crawled.pg} at ")
    assert "urls: 9 fetched · 0 queued · 0 in flight · 1 failed · 3 skipped · 1 errors" in out
    assert "processes: none (no crawl is running)" in out and "last run: 2 (recrawl) · finished" in out
    record = json.loads(run(capsys, "status", "--db", crawled.pg, "--format", "jsonl")[1])
    assert (record["backend"], record["processes"], record["last_run"]["id"]) == ("postgresql", [], 2)
