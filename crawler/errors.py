"""The crawler's exception tree and the error kinds and skip reasons it stores.

    CrawlerError                 base of everything this package raises on purpose
    ├── ConfigError              a bad config file; names the file and the key (exit 2)
    ├── UsageError               bad command-line input: unknown filter, bad SQL (exit 2)
    ├── StoreError               the database cannot be opened or written (exit 3)
    ├── NothingToResume          `crawler resume` found no unfinished crawl (exit 1)
    ├── FetchError               one URL could not be fetched; carries a `kind` from
    │                            ErrorKind and ends as a row in `errors`, never in the CLI
    └── ParseError               a fetched page could not be parsed (its parser process
                                 died on it); a row of kind `parse` in `errors`

Third-party exceptions are translated at one boundary each: httpx in `fetch`,
sqlite in `store`.  The CLI turns every CrawlerError into a message and an exit code.
"""

from __future__ import annotations

from enum import StrEnum


class CrawlerError(Exception):
    """Base class of every error the crawler raises deliberately."""

    exit_code = 1


class ConfigError(CrawlerError):
    """The config file is missing, not TOML, or has a bad key or value."""

    exit_code = 2

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


class UsageError(CrawlerError):
    """The user asked for something that cannot be answered as asked."""

    exit_code = 2


class StoreError(CrawlerError):
    """The database cannot be opened, read or written."""

    exit_code = 3


class NothingToResume(CrawlerError):
    """`crawler resume` was asked to continue a crawl that does not exist or is finished."""

    exit_code = 1


class ErrorKind(StrEnum):
    """Why a URL ended in `errors`; stored as text in `errors.kind`.  The README lists these."""

    TIMEOUT = "timeout"  # connect/read/write/pool timeout, or the total deadline (total_timeout)
    CONNECT = "connect"  # refused, DNS failure, unreachable
    TLS = "tls"  # certificate or handshake failure; not retried
    PROXY = "proxy"  # the proxy refused the connection, asked for credentials (407) or refused a CONNECT tunnel
    PROTOCOL = "protocol"  # reset mid-body, empty reply, malformed response, undecodable or unknown encoding
    HTTP_STATUS = "http_status"  # 429/5xx still failing after retries
    TOO_MANY_REDIRECTS = "too_many_redirects"  # loop, or chain longer than max_redirects
    BAD_REDIRECT = "bad_redirect"  # Location missing, malformed or not http(s)
    TOO_LARGE = "too_large"  # body (decompressed) above max_body_bytes
    RETRY_AFTER_TOO_LONG = "retry_after_too_long"  # server asked for a pause above max_retry_after
    PARSE = "parse"  # the page could not be parsed: its parser process died on it, or the parser failed
    SITEMAP = "sitemap"  # a sitemap that cannot be read: not one, malformed, a DTD (XML bomb), over a limit
    OTHER = "other"  # anything unexpected, e.g. an internal error; the message holds the detail


class SkipReason(StrEnum):
    """Why a discovered URL was not fetched; stored as text in `urls.reason`.  The README lists these."""

    ROBOTS = "robots"  # disallowed by robots.txt
    OFF_SITE = "off_site"  # host not in allowed_hosts
    EXCLUDED = "excluded"  # matched an exclude regex
    NOT_INCLUDED = "not_included"  # include regexes given and none matched
    DEPTH = "depth"  # deeper than max_depth
    URL_TOO_LONG = "url_too_long"  # longer than max_url_length (trap guard)
    REPEATED_SEGMENTS = "repeated_segments"  # a path segment repeats more than max_repeated_segments (trap guard)
    HOST_LIMIT = "host_limit"  # host already has max_pages_per_host pages (trap guard)
    NOFOLLOW = "nofollow"  # only ever linked with nofollow; a followed link to it queues it
    REDIRECT_SEEN = "redirect_seen"  # reserved: a redirect led to a URL crawled on its own (not produced today)


class FetchError(CrawlerError):
    """A URL could not be fetched; the engine records it in `errors` and goes on."""

    def __init__(self, kind: ErrorKind, message: str, *, attempts: int = 1, status: int | None = None) -> None:
        self.kind = kind
        self.message = message
        self.attempts = attempts
        self.status = status  # the last HTTP status, when there was one
        super().__init__(f"{kind}: {message}")


class ParseError(CrawlerError):
    """A fetched page could not be parsed; the engine records it in `errors` (kind parse) and goes on."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)
