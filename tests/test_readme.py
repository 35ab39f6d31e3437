"""The README documents every config key and its default, every CLI command, error kind and skip reason."""

from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, fields
from pathlib import Path

from crawler.cli import _parser
from crawler.config import SECTIONS
from crawler.errors import ErrorKind, SkipReason

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section_table(section: str) -> str:
    start = README.index(f"### `[{section}]`")
    end = README.find("\n### ", start + 1)
    return README[start : end if end != -1 else len(README)]


def test_every_config_key_has_a_row_in_its_section_table() -> None:
    for name, cls in SECTIONS.items():
        table = _section_table(name)
        for field in fields(cls):
            assert f"| `{field.name}` |" in table, f"README lacks [{name}] {field.name}"


def _commands(parser: argparse.ArgumentParser, prefix: str = "crawler") -> list[str]:
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix} {name}")
                found += nested or [f"{prefix} {name}"]
    return found


def test_every_cli_command_is_documented() -> None:
    commands = _commands(_parser())
    assert "crawler query stats" in commands
    for command in commands:
        assert f"`{command}" in README, f"README lacks {command}"


def test_readme_opens_with_the_two_newcomer_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    assert blocks[0].endswith("pip install -e . && crawler demo")
    assert blocks[1].endswith('pip install -e ".[test]" && pytest')


def test_ci_runs_the_readme_install_and_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m venv" in ci
    assert 'pip install -e ".[test]"' in ci
    assert re.search(r"^pytest$", ci, flags=re.M)
    assert '"$status" -eq 5' in ci


def test_readme_stays_user_documentation_under_40_kb() -> None:
    size = len(README.encode("utf-8"))
    assert size < 40_000, f"README.md is {size:,} bytes; method and figures belong in bench/README.md"


def test_architecture_and_bench_docs_exist() -> None:
    assert (ROOT / "docs" / "ARCHITECTURE.md").is_file()
    assert (ROOT / "bench" / "README.md").is_file()
    assert "docs/ARCHITECTURE.md" in README
    assert "bench/README.md" in README


def test_every_config_default_in_the_readme_matches_the_code() -> None:
    for name, cls in SECTIONS.items():
        table = _section_table(name)
        for field in fields(cls):
            if field.default is MISSING or field.default in ((), None):
                continue  # lists, required and optional keys have no literal default to compare
            default = field.default
            shown = f'"{default}"' if isinstance(default, str | Path) else str(default).lower()
            row = next(line for line in table.splitlines() if line.startswith(f"| `{field.name}` |"))
            assert f"| `{shown}` |" in row, f"README's [{name}] {field.name} default is not `{shown}`"


def test_error_kinds_and_skip_reasons_are_documented() -> None:
    for kind in ErrorKind:
        assert f"| `{kind}` |" in README, f"README lacks error kind {kind}"
    for reason in SkipReason:
        assert f"| `{reason}` |" in README, f"README lacks skip reason {reason}"
