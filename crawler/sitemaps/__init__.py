"""Sitemaps: reading sitemap documents (parse.py) and feeding what they list to the crawl (reader.py)."""
