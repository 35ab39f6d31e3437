"""Story helpers for crawl tests: build a config around local servers, run a crawl, read the store."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from typing import Any

from crawler.config import Config, config_from_dict
from crawler.engine import Crawl, CrawlSummary


def make_config(db: Path | str, seeds: list[str], **sections: dict[str, Any]) -> Config:
    """A config for local servers: no delay, quick retries; sections override single keys.

    db is a SQLite file, or a postgresql:// URL (storage.url)."""
    data: dict[str, dict[str, Any]] = {
        "crawl": {"seeds": seeds, "max_pages": 0},
        "politeness": {
            "user_agent": "crawler-test/0.1 (+https://example.org/tests)",
            "delay": 0.0,
            "adaptive": False,
            "concurrency": 8,
            "per_host_concurrency": 4,
        },
        "http": {"retries": 1, "retry_backoff": 0.01, "retry_backoff_max": 0.05, "total_timeout": 5.0},
        "storage": {"url": db} if isinstance(db, str) else {"path": str(db)},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data, source="<test>")


async def crawl(config: Config, **kwargs: Any) -> CrawlSummary:
    return await Crawl(config, **kwargs).run()


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def stored_paths(db: Path, base: str) -> set[str]:
    """Paths of every stored page under base (the requested URL, not the final one)."""
    return {url.removeprefix(base) for (url,) in rows(db, "SELECT url FROM pages") if url.startswith(base)}


def closed_port() -> int:
    """A port nothing listens on: bound by us, then closed (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
