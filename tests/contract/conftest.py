"""The contract suite's fixtures: every test runs against SQLite (a file under tmp_path) and PostgreSQL (pg_url)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crawler.store import Backend, Store, is_postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where the store lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "c.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(target: Path | str) -> AsyncIterator[Backend]:
    opened = await Store.open(target)
    yield opened
    await opened.close()


async def sql(store: Any, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one SQL statement through the store's own connection; `?` placeholders work on both."""
    if is_postgres_url(store.location):
        text = text.replace("?", "%s")
    return [tuple(row) for row in await store.fetchall(text, params)]
