"""The Python API over a real crawl database: open_results(...).pages/errors/links/search/sql/stats."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import crawler
from crawler.errors import StoreError, UsageError
from crawler.filters import parse_since
from crawler.query import ErrorRow, LinkRow, Page, Results, Run, SqlResult, fts_query
from tests.crawlkit import rows
from tests.harbour import STORED, Harbour


def expected_pages(h: Harbour, *paths: str) -> list[Page]:
    """The Page rows of the given asked paths (all, if none), as the crawl must have stored them."""
    timing = {url: (at, ms) for url, at, ms in rows(h.db, "SELECT url, fetched_at, elapsed_ms FROM pages")}
    return [
        Page(h.url(path), h.url(final), status, ctype, title, 0 if path == "/" else 1, *timing[h.url(path)],
             "HTTP/1.1", len(body), None)
        for path, (final, status, ctype, title, body) in STORED.items()
        if not paths or path in paths
    ]  # fmt: skip


@pytest.fixture
def results(harbour: Harbour) -> Iterator[Results]:
    with crawler.open_results(harbour.db) as opened:
        yield opened


def test_pages_lists_every_stored_page_in_url_order(harbour: Harbour, results: Results) -> None:
    assert results.pages() == expected_pages(harbour)
    assert results.pages(limit=2) == expected_pages(harbour, "/", "/catalogue")


def test_page_filters_status_host_type_depth_and_url(harbour: Harbour, results: Results) -> None:
    h = harbour
    html_ok = expected_pages(h, "/", "/catalogue", "/lighthouse", "/old", "/quiet")
    assert results.pages(status="4xx") == results.pages(status=404) == expected_pages(h, "/missing")
    assert results.pages(status="2XX") == results.pages(status="200") == [p for p in results.pages() if p.status == 200]
    assert results.pages(status="5xx") == []
    assert results.pages(host="127.0.0.1") == results.pages(host=h.base.removeprefix("http://")) == results.pages()
    assert results.pages(host="127.0.0.1:1") == results.pages(host="elsewhere.test") == []
    assert results.pages(content_type="application/pdf") == expected_pages(h, "/report.pdf")
    assert results.pages(content_type="application/*") == expected_pages(h, "/report.pdf")
    assert (
        results.pages(content_type="TEXT/HTML")
        == results.pages(content_type="text/")
        == expected_pages(h, "/", "/catalogue", "/lighthouse", "/missing", "/old", "/quiet")
    )
    assert results.pages(depth=0) == expected_pages(h, "/")
    assert results.pages(url_like="light") == expected_pages(h, "/lighthouse")
    assert results.pages(url_like="%/c%") == expected_pages(h, "/catalogue")
    assert results.pages(url_like="%.PDF") == expected_pages(h, "/report.pdf")  # LIKE ignores ASCII case
    assert results.pages(status="2xx", depth="1", content_type="text/html") == html_ok[1:]


def test_page_filter_since(harbour: Harbour, results: Results) -> None:
    times = sorted(at for (at,) in rows(harbour.db, "SELECT fetched_at FROM pages"))
    assert results.pages(since=times[0]) == results.pages(since="1h") == results.pages()
    assert [p.fetched_at for p in results.pages(since=times[-1])] == [at for at in times if at == times[-1]]
    assert results.pages(since="2999-01-01") == []


def test_since_accepts_iso_times_and_ages() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2024-05-01") == "2024-05-01T00:00:00.000Z"
    assert parse_since("2024-05-01T14:00+02:00") == "2024-05-01T12:00:00.000Z"
    assert parse_since("2024-05-01 08:30:15Z") == "2024-05-01T08:30:15.000Z"
    assert parse_since("90m", now=now) == "2024-05-01T10:30:00.000Z"
    assert parse_since("2d", now=now) == "2024-04-29T12:00:00.000Z"
    assert parse_since(datetime(2024, 1, 2, 3, 4, 5), now=now) == "2024-01-02T03:04:05.000Z"


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"status": "abc"}, "status 'abc' is neither an HTTP status like 200 nor a class like 4xx"),
        ({"status": "600"}, "status '600' is neither"),
        ({"status": "6xx"}, "status '6xx' is neither"),
        ({"depth": "-1"}, "depth '-1' is not a whole number >= 0"),
        ({"since": "yesterday"}, "since 'yesterday' is neither an ISO-8601 time"),
        ({"host": " "}, "the host filter is empty"),
        ({"colour": "red"}, "unexpected keyword argument 'colour'"),
    ],
)
def test_bad_page_filters_are_named(results: Results, filters: dict[str, str], message: str) -> None:
    with pytest.raises((UsageError, TypeError), match=message):
        results.pages(**filters)


def test_errors_and_the_kind_filter(harbour: Harbour, results: Results) -> None:
    ((at,),) = rows(harbour.db, "SELECT at FROM errors")
    down = ErrorRow(harbour.url("/down"), "http_status", "HTTP 500 after 2 attempts", 2, at)
    assert results.errors() == results.errors(kind="http_status") == [down]
    assert results.errors(kind="timeout") == []
    with pytest.raises(UsageError, match=r"unknown error kind 'bogus'; the kinds are: timeout, connect, tls, "):
        results.errors(kind="bogus")


def test_links_out_of_and_into_a_page(harbour: Harbour, results: Results) -> None:
    u = harbour.url
    out = [
        LinkRow("out", u("/"), u("/catalogue"), False, "done", 200),
        LinkRow("out", u("/"), u("/down"), False, "failed", None),
        LinkRow("out", u("/"), u("/lighthouse"), False, "done", 200),
        LinkRow("out", u("/"), u("/login"), True, "skipped", None),  # nofollow: never queued
        LinkRow("out", u("/"), u("/missing"), False, "done", 404),
        LinkRow("out", u("/"), u("/old"), False, "done", 200),
        LinkRow("out", u("/"), u("/private/x"), False, "skipped", None),
        LinkRow("out", u("/"), u("/quiet"), False, "done", 200),
        LinkRow("out", u("/"), u("/report.pdf"), False, "done", 200),
        LinkRow("out", u("/"), "http://elsewhere.test/", False, "skipped", None),
    ]
    into = [
        LinkRow("in", u("/catalogue"), u("/"), False, "done", 200),
        LinkRow("in", u("/old"), u("/"), False, "done", 200),  # from the page /old redirected to
    ]
    assert results.links(u("/")) == out + into
    assert results.links(u("/"), direction="out") == out
    assert results.links(u("/"), direction="in", limit=1) == into[:1]
    # The final URL of a redirect finds the links stored under the asked URL.
    assert results.links(u("/new"), direction="out") == [LinkRow("out", u("/old"), u("/"), False, "done", 200)]
    # Input is normalised like crawled URLs: scheme case and fragments do not matter.
    assert results.links("HTTP" + u("/lighthouse#top").removeprefix("http")) == [
        LinkRow("out", u("/lighthouse"), u("/catalogue"), False, "done", 200),
        LinkRow("in", u("/"), u("/lighthouse"), False, "done", 200),
        LinkRow("in", u("/catalogue"), u("/lighthouse"), False, "done", 200),
    ]


def test_links_of_an_unknown_url_or_direction_are_usage_errors(harbour: Harbour, results: Results) -> None:
    with pytest.raises(UsageError, match=r"http://127\.0\.0\.1:\d+/nowhere is not in .*harbour\.db"):
        results.links(harbour.url("/nowhere"))
    with pytest.raises(UsageError, match="direction must be in, out or both, not 'sideways'"):
        results.links(harbour.url("/"), direction="sideways")  # type: ignore[arg-type]


def test_search_ranks_an_exact_title_hit_first(harbour: Harbour, results: Results) -> None:
    hits = results.search("lighthouse keeper")
    # /catalogue says "lighthouse keeper" three times in its text; /lighthouse has it as its title.
    assert [hit.url for hit in hits] == [harbour.url("/lighthouse"), harbour.url("/catalogue")]
    assert hits[0].score > hits[1].score > 0
    assert hits[0].title == "Lighthouse Keeper"
    assert hits[0].snippet == "[Lighthouse] [Keeper] A memoir of thirty winters on the rock. /catalogue"
    assert hits[1].snippet == "Catalogue The [lighthouse] [keeper] kept a diary. Every [lighthouse] [keeper] on this…"
    assert results.search("lighthouse keeper", limit=1) == hits[:1]


def test_search_phrases_prefixes_and_fts5_syntax(harbour: Harbour, results: Results) -> None:
    def urls(query: str, **kwargs: bool) -> list[str]:
        return [hit.url.removeprefix(harbour.base) for hit in results.search(query, **kwargs)]

    assert urls('"keeper kept"') == ["/catalogue"]
    assert urls('"keeper diary"') == []  # both words are there, but not as a phrase
    assert urls("memo*") == ["/lighthouse"]
    assert urls("memoir diary") == []  # every word must appear
    assert urls("title:catalogue", syntax=True) == ["/catalogue"]
    assert sorted(urls("memoir OR diary", syntax=True)) == ["/catalogue", "/lighthouse"]
    assert urls("Fresh printer") == ["/old"]  # the redirected page is found under its asked URL


def test_search_leaves_out_noindex_pages_scripts_and_nothing_is_pending(results: Results) -> None:
    assert results.search("whispered") == []  # text of the noindex page
    assert results.search("quiet room") == []  # its title
    assert results.search("scripted") == []  # inside <script>
    assert results.unindexed() == 0


def test_bad_searches_are_usage_errors(results: Results) -> None:
    with pytest.raises(UsageError, match="the search is empty"):
        results.search('  "" ')
    with pytest.raises(UsageError, match=r"invalid search 'AND OR': fts5: syntax error"):
        results.search("AND OR", syntax=True)


def test_fts_query_quotes_words_and_keeps_phrases_and_prefixes() -> None:
    assert fts_query('privacy "cookie policy" pol* "open') == '"privacy" "cookie policy" "pol"* "open"'
    assert fts_query('say "hi" a"b *') == '"say" "hi" "a""b" "*"'


def test_sql_reads(results: Results) -> None:
    assert results.sql("SELECT status, count(*) AS n FROM pages GROUP BY status ORDER BY status") == SqlResult(
        ["status", "n"], [(200, 6), (404, 1)]
    )
    assert len(results.sql("SELECT id FROM urls", limit=3).rows) == 3
    assert results.sql("SELECT rowid FROM pages_fts WHERE pages_fts MATCH 'memoir'").rows == [(3,)]
    assert results.sql("PRAGMA table_info(errors)").rows[1][1] == "url_id"


@pytest.mark.parametrize(
    ("statement", "needs"),
    [
        ("DELETE FROM pages", "delete pages"),
        ("UPDATE urls SET state = 'queued'", "update urls"),
        ("DROP TABLE links", "delete sqlite_master"),
        ("PRAGMA query_only = 0", "pragma query_only"),
        ("ATTACH 'other.db' AS o", "attach other.db"),
        ("CREATE TEMP TABLE t (x)", "insert sqlite_temp_master"),
        ("INSERT INTO pages_fts (pages_fts) VALUES ('optimize')", "insert pages_fts"),
    ],
)
def test_sql_refuses_writes_and_changes_nothing(harbour: Harbour, results: Results, statement: str, needs: str) -> None:
    before = rows(harbour.db, "SELECT count(*) FROM pages")
    with pytest.raises(UsageError, match=rf"refused: `query sql` only reads .*this statement needs: {needs}"):
        results.sql(statement)
    assert rows(harbour.db, "SELECT count(*) FROM pages") == before
    assert not Path("other.db").exists()
    assert results.sql("SELECT count(*) FROM pages").rows == [(7,)]  # the connection is still usable


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("SELEC 1", 'invalid SQL: near "SELEC": syntax error'),
        ("SELECT 1; SELECT 2", "invalid SQL: You can only execute one statement at a time"),
        ("SELECT nope FROM pages", "invalid SQL: no such column: nope"),
        (" ; ", "the SQL statement is empty"),
    ],
)
def test_sql_reports_invalid_statements(results: Results, statement: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        results.sql(statement)


def test_stats(harbour: Harbour, results: Results) -> None:
    stats = results.stats()
    ((started, finished),) = rows(harbour.db, "SELECT started_at, finished_at FROM runs")
    assert stats.urls_by_state == {"done": 7, "failed": 1, "skipped": 3}
    assert stats.queued == 0
    assert stats.pages_by_status_class == {"2xx": 6, "4xx": 1}
    assert stats.pages_by_host == {harbour.base.removeprefix("http://"): 7}
    assert stats.content_types == {"text/html": 6, "application/pdf": 1}
    assert stats.errors_by_kind == {"http_status": 1}
    assert stats.skipped_by_reason == {"nofollow": 1, "off_site": 1, "robots": 1}
    assert stats.depths == {0: 1, 1: 6}
    assert (stats.pages, stats.bytes, stats.unindexed) == (7, sum(len(s[4]) for s in STORED.values()), 0)
    seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    assert stats.runs == [Run(1, started, finished, "finished", 7, pytest.approx(seconds, abs=0.002))]
    assert stats.pages_per_second == pytest.approx(7 / stats.runs[0].seconds)


def test_views_for_generic_sqlite_tools(harbour: Harbour) -> None:
    links = rows(
        harbour.db,
        "SELECT to_url, nofollow, to_state, to_status FROM link_urls WHERE from_url = ? ORDER BY to_url LIMIT 4",
        (harbour.url("/"),),
    )
    assert links == [
        (harbour.url("/catalogue"), 0, "done", 200),
        (harbour.url("/down"), 0, "failed", None),
        (harbour.url("/lighthouse"), 0, "done", 200),
        (harbour.url("/login"), 1, "skipped", None),
    ]
    overview = rows(harbour.db, "SELECT url, host, status, title FROM page_overview ORDER BY url LIMIT 2")
    host = harbour.base.removeprefix("http://")
    assert overview == [
        (harbour.url("/"), host, 200, "Harbour Books"),
        (harbour.url("/catalogue"), host, 200, "Catalogue"),
    ]


def test_opening_a_missing_file_or_a_non_database(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no database at .*nothing\.db \(run a crawl first, or pass --db / -c\)"):
        crawler.open_results(tmp_path / "nothing.db")
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database, just notes\n" * 100)
    with pytest.raises(StoreError, match=r"notes\.txt is not a crawl database"):
        crawler.open_results(junk)
