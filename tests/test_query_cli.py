"""`crawler query …` end to end: exact output and exit codes of crawler.cli.main against a real crawl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crawler.cli import main
from tests.crawlkit import rows
from tests.harbour import STORED, Harbour


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def h(harbour: Harbour) -> Harbour:
    # Table widths below are written for a five-digit port, as every Linux ephemeral port is.
    assert len(harbour.base) == len("http://127.0.0.1:12345")
    return harbour


def timing(h: Harbour, path: str) -> tuple[str, float]:
    ((at, ms),) = rows(h.db, "SELECT fetched_at, elapsed_ms FROM pages WHERE url = ?", (h.url(path),))
    return at, ms


def test_pages_as_csv_and_jsonl_carry_every_field(capsys: pytest.CaptureFixture[str], h: Harbour) -> None:
    b = h.base
    lines = ["url,final_url,status,content_type,title,depth,fetched_at,elapsed_ms,http_version,bytes,canonical"]
    for path, (final, status, ctype, title, body) in STORED.items():
        at, ms = timing(h, path)
        ctype_cell = f'"{ctype}"' if "," in ctype else ctype
        depth = 0 if path == "/" else 1
        row = f"{b}{path},{b}{final},{status},{ctype_cell},{title or ''},{depth},{at},{ms},HTTP/1.1,{len(body)},"
        lines.append(row)
    assert run(capsys, "query", "pages", "--db", str(h.db), "--format", "csv") == (0, "\n".join(lines) + "\n", "")

    at, ms = timing(h, "/old")
    code, out, err = run(capsys, "query", "pages", "--db", str(h.db), "--format", "jsonl", "--url-like", "/old")
    assert (code, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == [
        {
            "url": f"{b}/old",
            "final_url": f"{b}/new",
            "status": 200,
            "content_type": "text/html; charset=utf-8",
            "title": "New arrivals",
            "depth": 1,
            "fetched_at": at,
            "elapsed_ms": ms,
            "http_version": "HTTP/1.1",
            "bytes": len(STORED["/old"][4]),
            "canonical": None,
        }
    ]


def test_pages_table_with_filters_and_the_limit_note(capsys: pytest.CaptureFixture[str], h: Harbour) -> None:
    b = h.base
    _, ms = timing(h, "/missing")
    assert run(capsys, "query", "pages", "--db", str(h.db), "--status", "4xx") == (
        0,
        "status  depth  bytes  elapsed_ms  content_type              url                             title  canonical\n"
        "------  -----  -----  ----------  ------------------------  ------------------------------  -----  ---------\n"
        f"   404      1     11  {ms:>10.2f}  text/html; charset=utf-8  {b}/missing\n",
        "",
    )
    _, ms_home = timing(h, "/")
    _, ms_cat = timing(h, "/catalogue")
    assert run(capsys, "query", "pages", "--db", str(h.db), "--content-type", "text/html", "--limit", "2") == (
        0,
        "status  depth  bytes  elapsed_ms  content_type              url                               title"
        "          canonical\n"
        "------  -----  -----  ----------  ------------------------  --------------------------------  -------------"
        "  ---------\n"
        f"   200      0    518  {ms_home:>10.2f}  text/html; charset=utf-8  {b + '/':<32}  Harbour Books\n"
        f"   200      1    372  {ms_cat:>10.2f}  text/html; charset=utf-8  {b}/catalogue  Catalogue\n",
        "crawler: showing the first 2 rows; --limit N shows more, --limit 0 all\n",
    )
    assert run(capsys, "query", "pages", "--db", str(h.db), "--since", "2999-01-01") == (0, "(no rows)\n", "")


def test_errors_table_and_kind_filter(capsys: pytest.CaptureFixture[str], h: Harbour) -> None:
    ((at,),) = rows(h.db, "SELECT at FROM errors")
    table = (
        "kind         attempts  at                        url                          message\n"
        "-----------  --------  ------------------------  ---------------------------  -------------------------\n"
        f"http_status         2  {at}  {h.base}/down  HTTP 500 after 2 attempts\n"
    )
    assert run(capsys, "query", "errors", "--db", str(h.db)) == (0, table, "")
    assert run(capsys, "query", "errors", "--db", str(h.db), "--kind", "http_status") == (0, table, "")
    assert run(capsys, "query", "errors", "--db", str(h.db), "--kind", "timeout", "--format", "csv") == (
        0,
        "url,kind,message,attempts,at\n",
        "",
    )


def test_links_table(capsys: pytest.CaptureFixture[str], h: Harbour) -> None:
    b = h.base
    assert run(capsys, "query", "links", f"{b}/lighthouse", "--db", str(h.db)) == (
        0,
        "direction  from_url                           to_url                             nofollow  to_state"
        "  to_status\n"
        "---------  ---------------------------------  ---------------------------------  --------  --------"
        "  ---------\n"
        f"out        {b}/lighthouse  {b}/catalogue   no        done            200\n"
        f"in         {b}/            {b}/lighthouse  no        done            200\n"
        f"in         {b}/catalogue   {b}/lighthouse  no        done            200\n",
        "",
    )
    assert run(capsys, "query", "links", f"{b}/", "--direction", "in", "--format", "csv", "--db", str(h.db)) == (
        0,
        "direction,from_url,to_url,nofollow,to_state,to_status\n"
        f"in,{b}/catalogue,{b}/,false,done,200\n"
        f"in,{b}/old,{b}/,false,done,200\n",
        "",
    )


def test_search_table(capsys: pytest.CaptureFixture[str], h: Harbour) -> None:
    b = h.base
    assert run(capsys, "query", "search", "lighthouse", "keeper", "--db", str(h.db)) == (
        0,
        "url                                title              score  snippet\n"
        "---------------------------------  -----------------  -----  "
        "----------------------------------------------------------------------\n"
        f"{b}/lighthouse  Lighthouse Keeper   1.15  "
        "[Lighthouse] [Keeper] A memoir of thirty winters on the rock. /catalo…\n"
        f"{b}/catalogue   Catalogue           0.73  "
        "Catalogue The [lighthouse] [keeper] kept a diary. Every [lighthouse] …\n",
        "",
    )
    code, out, err = run(capsys, "query", "search", "--fts", "title:catalogue", "--format", "jsonl", "--db", str(h.db))
    assert (code, err) == (0, "")
    assert [json.loads(line)["url"] for line in out.splitlines()] == [f"{b}/catalogue"]


def test_sql_in_every_format_and_a_refused_write(capsys: pytest.CaptureFixture[str], h: Harbour) -> None:
    statement = "SELECT status, count(*) AS n FROM pages GROUP BY status ORDER BY status"
    db = ("--db", str(h.db))
    assert run(capsys, "query", "sql", statement, *db) == (0, "status  n\n------  -\n   200  6\n   404  1\n", "")
    assert run(capsys, "query", "sql", statement, "--format", "csv", *db) == (0, "status,n\n200,6\n404,1\n", "")
    assert run(capsys, "query", "sql", statement, "--format", "jsonl", *db) == (
        0,
        '{"status": 200, "n": 6}\n{"status": 404, "n": 1}\n',
        "",
    )
    # BLOBs: a placeholder in tables, base64 in jsonl and csv.
    blob = "SELECT body FROM pages WHERE url LIKE '%.pdf'"
    assert run(capsys, "query", "sql", blob, *db) == (0, "body\n---------------\n<blob 23 bytes>\n", "")
    assert run(capsys, "query", "sql", blob, "--format", "jsonl", *db) == (
        0,
        '{"body": "JVBERi0xLjQgaGFyYm91ciByZXBvcnQ="}\n',
        "",
    )
    assert run(capsys, "query", "sql", "DELETE FROM pages", *db) == (
        2,
        "",
        "crawler: error: refused: `query sql` only reads (SELECT, WITH, read-only PRAGMA);"
        " this statement needs: delete pages\n",
    )
    assert rows(h.db, "SELECT count(*) FROM pages") == [(7,)]


def test_stats_table(capsys: pytest.CaptureFixture[str], h: Harbour) -> None:
    ((started, finished),) = rows(h.db, "SELECT started_at, finished_at FROM runs")
    size = sum(len(s[4]) for s in STORED.values())
    code, out, err = run(capsys, "query", "stats", "--db", str(h.db))
    host = h.base.removeprefix("http://")
    head, run_line = out.rsplit("\n", 2)[0], out.rsplit("\n", 2)[1]
    assert (code, err) == (0, "")
    assert head == "\n".join(
        [
            f"pages stored: 7 ({size:,} bytes)",
            "still queued: 0",
            "exact duplicates: 0 bodies at 0 URLs",
            "urls by state:",
            "  done                                      7",
            "  failed                                    1",
            "  skipped                                   3",
            "pages by status:",
            "  2xx                                       6",
            "  4xx                                       1",
            "pages by host:",
            f"  {host:<32}          7",
            "content types:",
            "  text/html                                 6",
            "  application/pdf                           1",
            "errors by kind:",
            "  http_status                               1",
            "skipped by reason:",
            "  nofollow                                  1",
            "  off_site                                  1",
            "  robots                                    1",
            "pages by depth:",
            "  0                                         1",
            "  1                                         6",
        ]
    )
    assert run_line.startswith(f"run 1: {started} → {finished} · finished · 7 pages · ")
    assert run_line.endswith(" pages/s")
    code, out, _ = run(capsys, "query", "stats", "--db", str(h.db), "--format", "csv")
    assert out.splitlines()[:6] == [
        "section,key,value",
        "total,pages,7",
        f"total,bytes,{size}",
        "total,queued,0",
        "total,unindexed,0",
        "urls by state,done,7",
    ]
    code, out, _ = run(capsys, "query", "stats", "--db", str(h.db), "--format", "jsonl")
    data = json.loads(out)
    assert (data["pages"], data["errors_by_kind"], data["depths"]) == (7, {"http_status": 1}, {"0": 1, "1": 6})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["query", "errors", "--kind", "bogus"], "unknown error kind 'bogus'; the kinds are: timeout, connect"),
        (["query", "pages", "--status", "2yy"], "status '2yy' is neither an HTTP status like 200 nor a class like 4xx"),
        (["query", "pages", "--since", "last week"], "since 'last week' is neither an ISO-8601 time"),
        (["query", "sql", "SELEC 1"], 'invalid SQL: near "SELEC": syntax error'),
        (["query", "search", "--fts", "NEAR("], "invalid search 'NEAR(': fts5: syntax error"),
        (["query", "links", "http://nowhere.test/"], "http://nowhere.test/ is not in "),
        (["export", "--format", "csv", "-o", "/nonexistent-dir/out.csv"], "cannot write /nonexistent-dir/out.csv"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], h: Harbour, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv, "--db", str(h.db))
    assert (code, out) == (2, "")
    assert err.startswith(f"crawler: error: {message}")


def test_missing_database_and_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    assert run(capsys, "query", "pages", "--db", str(missing)) == (
        2,
        "",
        f"crawler: error: no database at {missing} (run a crawl first, or pass --db / -c)\n",
    )
    config = tmp_path / "absent.toml"
    assert run(capsys, "query", "stats", "-c", str(config)) == (2, "", f"crawler: error: {config}: file not found\n")


def test_argparse_rejects_bad_limits_and_formats(capsys: pytest.CaptureFixture[str], h: Harbour) -> None:
    for argv in (["--limit", "-3"], ["--limit", "many"], ["--format", "xml"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["query", "pages", "--db", str(h.db), *argv])
        assert exit_info.value.code == 2
        assert "crawler query pages: error: argument" in capsys.readouterr().err


def test_config_flag_and_default_config_locate_the_database(
    capsys: pytest.CaptureFixture[str], h: Harbour, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[crawl]\nseeds = ["{h.base}/"]\n\n[storage]\npath = "{h.db}"\n')
    expected = (0, "status,n\n200,6\n404,1\n", "")
    statement = "SELECT status, count(*) AS n FROM pages GROUP BY 1"
    assert run(capsys, "query", "sql", statement, "-c", str(config), "--format", "csv") == expected
    monkeypatch.chdir(tmp_path)  # ./config.toml is the default
    assert run(capsys, "query", "sql", statement, "--format", "csv") == expected
