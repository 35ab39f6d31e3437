"""robots.txt: parsing and matching (rules), the per-origin cache, and the crawl's policy."""

from crawler.robots.cache import RobotsCache
from crawler.robots.rules import MAX_ROBOTS_BYTES, RobotsResponse, RobotsRules, product_token

__all__ = ["MAX_ROBOTS_BYTES", "RobotsCache", "RobotsResponse", "RobotsRules", "product_token"]
