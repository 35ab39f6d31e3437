"""The program's start: the entry freezes the CLI's imports, and `crawler crawl` loads no query, export or
status module (each command imports its own when it runs; every parser, so `crawler --help`, stays whole)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LATER = ("crawler.export", "crawler.query", "crawler.filters", "crawler.status", "crawler.demo")


def test_the_cli_module_loads_no_query_export_or_status_module() -> None:
    code = f"import json, sys, crawler.cli;print(json.dumps(sorted(m for m in sys.modules if m.startswith({LATER!r}))))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_every_command_is_still_listed_with_its_choices() -> None:
    from crawler.cli import _parser
    from crawler.formats import EXPORT_FORMATS

    text = _parser().format_help()
    for command in ("crawl", "resume", "recrawl", "demo", "query", "export", "status"):
        assert command in text
    export_parser = _parser()._subparsers._group_actions[0].choices["export"]  # type: ignore[union-attr]
    formats = next(a for a in export_parser._actions if "--format" in a.option_strings)
    assert tuple(formats.choices) == EXPORT_FORMATS == ("jsonl", "csv", "warc")


def test_the_parse_worker_loads_neither_asyncio_nor_the_store() -> None:
    code = (
        "import json, sys, crawler.parseworker;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'sqlite3', 'httpx')"
        " or m.startswith(('crawler.store', 'crawler.engine')))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_the_entry_freezes_the_imports_and_runs_the_cli_with_the_collector_on() -> None:
    code = (
        "import gc, crawler.cli, crawler.__main__ as entry\n"
        "crawler.cli.run = lambda: print(gc.isenabled(), gc.get_freeze_count() > 0) or 3\n"
        "raise SystemExit(entry.main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert (done.returncode, done.stdout.split()) == (3, ["True", "True"])
