"""A bounded memory of the URLs a crawl has already offered to the store."""

from __future__ import annotations


class RecentUrls:
    """A bounded memory of URLs already handed to the store, so popular links (navigation on
    every page) skip scope checks and an INSERT OR IGNORE each time they reappear.

    Only an optimisation: SQLite's UNIQUE(url) stays the source of truth, and a URL that fell
    out of memory is simply offered to it again. Two generations give LRU-like eviction at
    the cost of two set lookups."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._capacity = capacity
        self._young: set[str] = set()
        self._old: set[str] = set()

    def first_sight(self, url: str) -> bool:
        """True the first time url is seen (as far as memory reaches), False after."""
        if url in self._young:
            return False
        seen = url in self._old
        if len(self._young) >= self._capacity:
            self._old, self._young = self._young, set()
        self._young.add(url)
        return not seen
