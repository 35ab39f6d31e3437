"""Schema migrations: each step runs in its own transaction and records the version it reached."""

from __future__ import annotations

import sqlite3

from crawler.store.records import body_hash
from crawler.store.schema import MIGRATIONS
from crawler.urls import host_key


def migrate(db: sqlite3.Connection, target: int) -> None:
    """Migrate the schema to version `target` from the one before it (inside the caller's transaction).

    The new version is recorded in PRAGMA user_version in the same transaction, so a step
    is either done and recorded or not done at all.
    """
    db.create_function("crawler_host_key", 1, _host_key_or_blank, deterministic=True)
    db.create_function("crawler_body_hash", 1, body_hash_or_null, deterministic=True)
    for statement in split_sql(MIGRATIONS[target - 1]):
        db.execute(statement)
    db.execute(f"PRAGMA user_version = {target}")


def _host_key_or_blank(url: str) -> str:
    """host_key for SQL (the schema 3 migration); '' for a URL it cannot parse, never an error."""
    try:
        return host_key(url)
    except ValueError:
        return ""


def body_hash_or_null(body: bytes | None) -> str | None:
    """body_hash for SQL (the schema 4 migration); NULL for a page stored without its body."""
    return None if body is None else body_hash(body)


def split_sql(script: str) -> list[str]:
    """Statements of a migration; a trigger body's inner semicolons do not end its statement."""
    statements: list[str] = []
    current = ""
    for part in script.split(";"):
        current += part + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \n;"):
        statements.append(current.strip())
    return statements
