"""crawler: a polite asynchronous web crawler with crash-proof resume and queryable results."""

from crawler.query import Results, open_results

__all__ = ["Results", "__version__", "open_results"]
__version__ = "0.1.0"
