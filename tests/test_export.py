"""`crawler export`: WARC 1.1 that warcio reads back, and JSON Lines / CSV of every stored column but the body."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from warcio.archiveiterator import ArchiveIterator

from crawler.cli import main
from tests.crawlkit import rows
from tests.harbour import STORED, USER_AGENT, Harbour


def export(capsys: pytest.CaptureFixture[str], h: Harbour, *argv: str) -> tuple[int, str]:
    code = main(["export", "--db", str(h.db), *argv])
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


def stored(h: Harbour) -> dict[str, dict[str, Any]]:
    """The pages table as sqlite3 reads it, by URL, with JSON columns decoded."""
    conn_rows = rows(
        h.db,
        "SELECT url, final_url, status, content_type, title, depth, fetched_at, elapsed_ms, http_version, bytes,"
        " noindex, redirects, headers, text FROM pages ORDER BY url",
    )
    names = ["url", "final_url", "status", "content_type", "title", "depth", "fetched_at", "elapsed_ms",
             "http_version", "bytes", "noindex"]  # fmt: skip
    result = {}
    for row in conn_rows:
        record = dict(zip(names, row[:11], strict=True))
        record.update(noindex=bool(record["noindex"]), redirects=json.loads(row[11]), headers=json.loads(row[12]))
        record["text"] = row[13]
        result[record["url"]] = record
    return result


def test_warc_export_reads_back_with_archiveiterator(
    capsys: pytest.CaptureFixture[str], harbour: Harbour, tmp_path: Path
) -> None:
    h = harbour
    target = tmp_path / "harbour.warc.gz"
    assert export(capsys, h, "--format", "warc", "-o", str(target)) == (
        0,
        f"crawler: exported 6 pages to {target};"
        " left out 1 page without a stored body (noindex, or store_bodies off)\n",
    )
    with target.open("rb") as stream:
        records = []
        for record in ArchiveIterator(stream, check_digests=True):
            body = record.content_stream().read()
            assert record.digest_checker.passed is True, record.digest_checker.problems
            records.append((record, body))
    assert not target.with_name("harbour.warc.gz.partial").exists()

    info, info_body = records[0]
    assert (info.rec_type, info.rec_headers.protocol) == ("warcinfo", "WARC/1.1")
    assert b"software: crawler/0.1.0 (warcio)" in info_body
    pairs = records[1:]
    assert [r.rec_type for r, _ in pairs] == ["response", "request"] * 6

    db = stored(h)
    by_url = {row["final_url"]: row for row in db.values()}
    exported = []
    for (response, body), (request, _) in zip(pairs[::2], pairs[1::2], strict=True):
        uri = response.rec_headers.get_header("WARC-Target-URI")
        page = by_url[uri]
        asked = page["url"].removeprefix(h.base)
        exported.append(asked)
        assert body == STORED[asked][4]
        assert response.rec_headers.protocol == "WARC/1.1"
        assert response.rec_headers.get_header("WARC-Date") == page["fetched_at"]
        assert response.http_headers.get_statuscode() == str(page["status"])
        assert response.http_headers.protocol == "HTTP/1.1"
        # Stored headers travel as they are; Content-Length describes the stored (decoded) body.
        assert response.http_headers.headers == [
            *[(name, value) for name, value in page["headers"] if name != "content-length"],
            ("content-length", str(len(body))),
        ]
        assert request.rec_headers.get_header("WARC-Target-URI") == uri
        assert request.rec_headers.get_header("WARC-Concurrent-To") == response.rec_headers.get_header("WARC-Record-ID")
        path = uri.removeprefix(h.base)
        assert request.http_headers.protocol == "GET"
        assert request.http_headers.statusline == f"{path} HTTP/1.1"
        assert request.http_headers.headers == [("Host", h.base.removeprefix("http://")), ("User-Agent", USER_AGENT)]
    assert sorted(exported) == sorted(set(STORED) - {"/quiet"})  # noindex: no body stored, none exported

    plain = tmp_path / "harbour.warc"
    assert export(capsys, h, "--format", "warc", "-o", str(plain), "--status", "404")[0] == 0
    assert plain.read_bytes().startswith(b"WARC/1.1\r\n")  # .warc: not gzipped
    with plain.open("rb") as stream:
        uris = [
            r.rec_headers.get_header("WARC-Target-URI") for r in ArchiveIterator(stream) if r.rec_type != "warcinfo"
        ]
    assert uris == [h.url("/missing")] * 2


def test_jsonl_export_carries_every_stored_column_but_the_body(
    capsys: pytest.CaptureFixture[str], harbour: Harbour, tmp_path: Path
) -> None:
    h = harbour
    target = tmp_path / "pages.jsonl"
    assert export(capsys, h, "--format", "jsonl", "-o", str(target)) == (
        0,
        f"crawler: exported 7 pages to {target}\n",
    )
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert lines == list(stored(h).values())
    by_path = {line["url"].removeprefix(h.base): line for line in lines}
    assert by_path["/lighthouse"]["text"] == "Lighthouse Keeper A memoir of thirty winters on the rock. /catalogue"
    assert by_path["/old"]["redirects"] == [{"url": h.url("/old"), "status": 301, "location": h.url("/new")}]
    assert (by_path["/quiet"]["noindex"], by_path["/quiet"]["text"]) == (True, None)
    assert ["content-type", "application/pdf"] in by_path["/report.pdf"]["headers"]


def test_csv_export_and_filters(capsys: pytest.CaptureFixture[str], harbour: Harbour, tmp_path: Path) -> None:
    h = harbour
    target = tmp_path / "pages.csv"
    target.write_text("an older export\n")
    assert (
        export(capsys, h, "--format", "csv", "-o", str(target), "--status", "2xx", "--depth", "1", "--limit", "2")[0]
        == 0
    )
    with target.open(newline="") as f:
        read = list(csv.DictReader(f))
    expected = [stored(h)[h.url("/catalogue")], stored(h)[h.url("/lighthouse")]]

    def as_csv(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, dict)):
            return json.dumps(value, ensure_ascii=False)
        return str(value)

    assert read == [{key: as_csv(value) for key, value in row.items()} for row in expected]


def test_export_to_stdout(capsys: pytest.CaptureFixture[str], harbour: Harbour) -> None:
    assert main(["export", "--db", str(harbour.db), "--format", "jsonl", "-o", "-", "--url-like", "light"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["url"] for line in out.splitlines()] == [harbour.url("/lighthouse")]
    assert err == "crawler: exported 1 page to -\n"


def test_export_into_a_folder_is_refused(capsys: pytest.CaptureFixture[str], harbour: Harbour, tmp_path: Path) -> None:
    assert export(capsys, harbour, "--format", "csv", "-o", str(tmp_path)) == (
        2,
        f"crawler: error: -o {tmp_path} is a folder; give a file name\n",
    )
    assert list(tmp_path.iterdir()) == []
