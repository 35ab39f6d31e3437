"""crawler: a polite asynchronous web crawler with crash-proof resume and queryable results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crawler.query import Results, open_results

__all__ = ["Results", "__version__", "open_results"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use: the parser's child processes import crawler.parse alone, without
    # the query layer (sqlite3 and the store), which would cost them start-up time and memory.
    if name in ("Results", "open_results"):
        from crawler import query

        return getattr(query, name)
    raise AttributeError(f"module 'crawler' has no attribute {name!r}")
