"""crawler: a polite asynchronous web crawler with crash-proof resume and queryable results."""

__version__ = "0.1.0"
