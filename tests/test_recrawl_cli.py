"""`crawler recrawl` and `crawler query changes` from the command line; duplicates, passes and canonical in the
query output."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.cli import main
from tests.crawlkit import rows
from tests.support.localsite import SiteServer
from tests.support.versioned import VersionedSite


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[VersionedSite, SiteServer, Path]]:
    site = VersionedSite()
    site.page("/", "Home", ("/a", "/b", "/copy1", "/copy2"))
    site.page("/a", "Apples", canonical="/a?canon=1")
    site.page("/b", "Bananas")
    # Two URLs with the same body (no validators): an exact duplicate.
    site.page("/copy1", "Same", etag=False, last_modified=False)
    site.site.handler("/copy2", lambda req: site.site.lookup("/copy1").fn(req))  # type: ignore[union-attr]
    with SiteServer(site.site) as server:
        config = tmp_path / "crawl.toml"
        config.write_text(
            "\n".join(
                [
                    "[crawl]",
                    f'seeds = ["{server.url}/"]',
                    "max_pages = 0",
                    "[politeness]",
                    "delay = 0.0",
                    "adaptive = false",
                    "[storage]",
                    'path = "crawl.db"',
                ]
            )
            + "\n"
        )
        yield site, server, config


def test_recrawl_then_query_changes_in_every_format_and_filter(
    capsys: pytest.CaptureFixture[str], served: tuple[VersionedSite, SiteServer, Path]
) -> None:
    site, server, config = served
    db = str(config.parent / "crawl.db")
    assert run(capsys, "crawl", str(config), "-q")[0] == 0
    assert run(capsys, "query", "changes", "--db", db)[0] == 2  # no pass yet: a clear error, exit 2
    site.page("/b", "Bananas, ripe")
    site.page("/a", "Apples", ("/c",), canonical="/a?canon=1")
    site.page("/c", "Cherries")
    code, out, _ = run(capsys, "recrawl", str(config))
    assert code == 0
    assert "recrawl pass 2: new: 1, changed: 2, unchanged: 3, gone: 0" in out

    code, out, err = run(capsys, "query", "changes", "--db", db, "--format", "jsonl")
    assert (code, err) == (0, "")
    found = [json.loads(line) for line in out.splitlines()]
    assert [(r["url"].removeprefix(server.url), r["change"], r["status"], r["run"]) for r in found] == [
        ("/", "unchanged", 304, 2),
        ("/a", "changed", 200, 2),
        ("/b", "changed", 200, 2),
        ("/c", "new", 200, 2),
        ("/copy1", "unchanged", 200, 2),
        ("/copy2", "unchanged", 200, 2),
    ]
    assert all(r["fetched_at"].endswith("Z") for r in found)

    code, out, _ = run(capsys, "query", "changes", "-c", str(config), "--change", "changed", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["url"].removeprefix(server.url) for r in table] == ["/a", "/b"]
    assert list(table[0]) == ["url", "change", "status", "fetched_at", "run"]

    code, out, err = run(capsys, "query", "changes", "--db", db, "--run", "2", "--limit", "1")
    assert out.splitlines()[0].split() == ["url", "change", "status", "fetched_at", "run"]
    assert len(out.splitlines()) == 3 and "--limit" in err
    assert run(capsys, "query", "changes", "--db", db, "--run", "1")[1] == "(no rows)\n"
    with pytest.raises(SystemExit) as exited:
        run(capsys, "query", "changes", "--db", db, "--change", "moved")
    assert exited.value.code == 2

    code, out, _ = run(capsys, "query", "stats", "--db", db)
    assert "exact duplicates: 1 bodies at 2 URLs" in out
    assert "recrawl pass 2: 1 new · 2 changed · 3 unchanged · 0 gone" in out
    assert "run 2 (recrawl): " in out
    code, out, _ = run(capsys, "query", "stats", "--db", db, "--format", "jsonl")
    data = json.loads(out)
    assert (data["duplicate_groups"], data["duplicate_urls"]) == (1, 2)
    assert data["passes"] == [{"run": 2, "new": 1, "changed": 2, "unchanged": 3, "gone": 0}]
    code, out, _ = run(capsys, "query", "stats", "--db", db, "--format", "csv")
    assert "pass 2,changed,2" in out.splitlines() and "duplicates,urls,2" in out.splitlines()


def test_query_pages_shows_canonical_in_every_format(
    capsys: pytest.CaptureFixture[str], served: tuple[VersionedSite, SiteServer, Path]
) -> None:
    _, server, config = served
    db = str(config.parent / "crawl.db")
    run(capsys, "crawl", str(config), "-q")
    canon = server.url_for("/a?canon=1")
    _, out, _ = run(capsys, "query", "pages", "--db", db, "--url-like", "/a")
    assert out.splitlines()[0].split()[-1] == "canonical" and out.splitlines()[2].endswith(canon)
    _, out, _ = run(capsys, "query", "pages", "--db", db, "--url-like", "/a", "--format", "jsonl")
    assert json.loads(out)["canonical"] == canon
    _, out, _ = run(capsys, "query", "pages", "--db", db, "--url-like", "/a", "--format", "csv")
    assert next(csv.DictReader(io.StringIO(out)))["canonical"] == canon


@pytest.mark.parametrize("value", ["7", "7y", "-1d", "d", "1.5.2h", ""])
def test_older_than_must_be_a_duration(capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str) -> None:
    code, _, err = run(capsys, "recrawl", str(tmp_path / "none.toml"), f"--older-than={value}")
    assert code == 2
    assert "--older-than" in err and "like 90s, 30m, 12h or 7d" in err


def test_recrawl_without_a_database_has_nothing_to_do(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "crawl.toml"
    config.write_text('[crawl]\nseeds = ["http://127.0.0.1:9/"]\n[storage]\npath = "crawl.db"\n')
    code, _, err = run(capsys, "recrawl", str(config), "--older-than", "90s")
    assert code == 1 and "nothing to recrawl" in err
    assert not (tmp_path / "crawl.db").exists()


def test_resume_continues_an_interrupted_pass_under_its_id(
    capsys: pytest.CaptureFixture[str], served: tuple[VersionedSite, SiteServer, Path]
) -> None:
    """A pass left open (as Ctrl-C leaves it) is continued by `crawler resume`, keeping the pass's id."""
    _, _, config = served
    db = config.parent / "crawl.db"
    run(capsys, "crawl", str(config), "-q")
    import sqlite3

    conn = sqlite3.connect(db)
    with conn:  # what an interrupted pass 2 leaves: its meta key, and pages still queued
        conn.execute(
            "INSERT INTO runs (started_at, config, kind, outcome) VALUES ('x', '{}', 'recrawl', 'interrupted')"
        )
        conn.execute("INSERT INTO meta (key, value) VALUES ('recrawl_pass', '2')")
        conn.execute("UPDATE urls SET state = 'queued' WHERE id IN (SELECT url_id FROM pages)")
    conn.close()
    code, out, err = run(capsys, "resume", str(config))
    assert code == 0 and "continuing the unfinished recrawl pass 2" in out + err
    assert rows(db, "SELECT run_id, count(*) FROM changes GROUP BY run_id") == [(2, 5)]
    assert rows(db, "SELECT id, kind FROM runs") == [(1, "crawl"), (2, "recrawl"), (3, "recrawl")]
    assert rows(db, "SELECT count(*) FROM meta WHERE key = 'recrawl_pass'") == [(0,)]
