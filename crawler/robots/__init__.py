"""robots.txt: parsing and matching (rules), the per-origin cache, and the crawl's policy.

RobotsPolicy is imported from crawler.robots.policy: it brings in the fetcher and the store,
which the parsing and the cache do not need.
"""

from crawler.robots.cache import RobotsCache
from crawler.robots.rules import MAX_ROBOTS_BYTES, RobotsResponse, RobotsRules, product_token

__all__ = ["MAX_ROBOTS_BYTES", "RobotsCache", "RobotsResponse", "RobotsRules", "product_token"]
