"""`crawler demo`'s parts: the bundled bookshop site, its local server, and the crawl settings that suit it."""

from __future__ import annotations

from pathlib import Path

from crawler.config import Config, config_from_dict
from crawler.demo.server import DemoServer
from crawler.demo.site import DEMO_EXPECTED, SHOP_NAME, DemoSite, Page, build_demo_site

__all__ = [
    "DEMO_EXPECTED",
    "SHOP_NAME",
    "DemoServer",
    "DemoSite",
    "Page",
    "build_demo_site",
    "demo_config",
    "discard_database",
    "next_steps",
]


def demo_config(base_url: str, db: Path) -> Config:
    """Settings for a local server: no delay, generous concurrency, a short timeout."""
    return config_from_dict(
        {
            "crawl": {"seeds": [base_url + "/"], "max_pages": 0, "max_depth": 20},
            "politeness": {
                "user_agent": "crawler-demo/0.1 (+https://example.org/contact)",
                "concurrency": 16,
                "per_host_concurrency": 8,
                "delay": 0.0,
                "adaptive": False,
            },
            "http": {"total_timeout": 10.0, "retries": 1, "retry_backoff": 0.05},
            "storage": {"path": str(db)},
        },
        source="<demo>",
    )


def discard_database(db: Path) -> None:
    """Remove a demo database and its WAL files: each demo starts from an empty one, leaving no backups."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def next_steps(db: Path) -> list[str]:
    """Commands worth trying on the demo's database."""
    return [
        f"crawler query pages --db {db} --status 4xx",
        f'crawler query search --db {db} "old quay"',
        f"crawler query sql --db {db} \"SELECT url, reason FROM urls WHERE state = 'skipped' LIMIT 5\"",
        f"crawler export --db {db} --format warc -o {db.with_suffix('.warc.gz')}",
    ]
