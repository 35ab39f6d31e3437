"""`crawler demo` end to end: the bundled site crawled into a fresh database, run after run."""

from __future__ import annotations

from pathlib import Path

import pytest

from crawler.cli import main
from crawler.demo import DEMO_EXPECTED
from tests.crawlkit import rows


def test_demo_crawls_the_bundled_site_and_a_rerun_starts_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "demo.db"
    for _ in range(2):
        assert main(["demo", "--db", str(db)]) == 0
        out = capsys.readouterr().out
        assert "crawl finished:" in out
        assert "try next:" in out
        # Every reachable HTML page, plus three rows: the redirect under its own URL (with the
        # final URL beside it), the PDF and the 404. /private/ pages are skipped by robots.txt.
        assert rows(db, "SELECT count(*) FROM pages") == [(DEMO_EXPECTED["pages"] + 3,)]
        assert rows(db, "SELECT count(*) FROM urls WHERE reason = 'robots'") == [(DEMO_EXPECTED["disallowed"],)]
        assert rows(db, "SELECT count(*) FROM pages WHERE status = 404") == [(DEMO_EXPECTED["not_found"],)]
        assert rows(db, "SELECT count(*) FROM runs") == [(1,)]  # the rerun did not resume
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["demo.db"]
