"""TOML config → frozen, validated dataclasses; every error names the file and the key."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, cast, get_args, get_origin, get_type_hints

from crawler.errors import ConfigError


def _spec(default: Any, *, lo: float | None = None, hi: float | None = None, doc: str = "") -> Any:
    """A dataclass field whose metadata carries its allowed range and its one-line meaning."""
    meta = {"lo": lo, "hi": hi, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True, kw_only=True)
class CrawlConfig:
    seeds: tuple[str, ...] = _spec((), doc="start URLs, depth 0")
    allowed_hosts: tuple[str, ...] = _spec(
        (), doc='hosts in scope; empty = the seeds\' hosts; "*.x.com" for subdomains'
    )
    include: tuple[str, ...] = _spec((), doc="regexes; if any are given, a URL must match one")
    exclude: tuple[str, ...] = _spec((), doc="regexes; a URL matching any is skipped")
    max_pages: int = _spec(1000, lo=0, doc="pages to fetch in all; 0 = no limit")
    max_depth: int = _spec(10, lo=0, doc="link hops from a seed; seeds are depth 0")
    max_pages_per_host: int = _spec(0, lo=0, doc="pages to fetch per host; 0 = no limit")
    max_url_length: int = _spec(2048, lo=16, doc="longer URLs are skipped (trap guard)")
    max_repeated_segments: int = _spec(3, lo=1, doc="a path segment may appear at most this often (trap guard)")
    max_links_per_page: int = _spec(5000, lo=1, doc="links kept from one page; the rest are dropped")
    parse_workers: int = _spec(
        1, lo=0, hi=64, doc="processes that parse HTML beside the crawl's event loop; 0 = parse in it"
    )
    sitemaps: bool = _spec(True, doc="read the sitemaps robots.txt names, and seeds that answer with one")


@dataclass(frozen=True, slots=True, kw_only=True)
class PolitenessConfig:
    user_agent: str = _spec("crawler/0.1 (+https://example.org/contact)", doc="sent with every request")
    obey_robots: bool = _spec(True, doc="fetch and obey robots.txt")
    concurrency: int = _spec(32, lo=1, hi=10_000, doc="global cap on in-flight requests")
    per_host_concurrency: int = _spec(2, lo=1, hi=1000, doc="in-flight requests to one host:port")
    delay: float = _spec(1.0, lo=0.0, hi=3600.0, doc="minimum seconds between request starts to one host")
    max_crawl_delay: float = _spec(30.0, lo=0.0, hi=3600.0, doc="cap on a robots.txt Crawl-delay")
    adaptive: bool = _spec(True, doc="raise a host's delay when it answers slowly")
    max_delay: float = _spec(60.0, lo=0.0, hi=3600.0, doc="ceiling of the adaptive delay and of the 429 back-off")
    max_retry_after: float = _spec(600.0, lo=0.0, doc="longest Retry-After honoured; longer is an error")
    follow_nofollow: bool = _spec(False, doc="queue links marked rel=nofollow, meta or X-Robots-Tag nofollow")
    robots_retry_interval: float = _spec(60.0, lo=0.0, doc="seconds before retrying an unreachable robots.txt")
    robots_max_attempts: int = _spec(
        3, lo=1, hi=100, doc="robots.txt fetches (each with http.retries) before an unreachable host's URLs fail"
    )
    robots_ttl: float = _spec(86400.0, lo=0.0, hi=86400.0, doc="seconds a robots.txt is trusted (RFC 9309: ≤ 24 h)")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    http2: bool = _spec(True, doc="offer HTTP/2 (ALPN) to https hosts")
    max_redirects: int = _spec(10, lo=0, hi=100, doc="redirect hops followed per URL")
    connect_timeout: float = _spec(10.0, lo=0.001, doc="seconds to establish a connection")
    read_timeout: float = _spec(30.0, lo=0.001, doc="seconds to wait for each read")
    write_timeout: float = _spec(10.0, lo=0.001, doc="seconds to wait for each write")
    pool_timeout: float = _spec(10.0, lo=0.001, doc="seconds to wait for a free connection")
    total_timeout: float = _spec(60.0, lo=0.001, doc="deadline for one request, body included")
    max_body_bytes: int = _spec(5_000_000, lo=1, doc="bodies (decompressed) above this are cut off: too_large")
    retries: int = _spec(3, lo=0, hi=20, doc="extra attempts for transient failures")
    retry_backoff: float = _spec(1.0, lo=0.0, doc="first retry wait in seconds; doubles, with jitter")
    retry_backoff_max: float = _spec(60.0, lo=0.0, doc="ceiling of one retry wait")
    ca_bundle: Path | None = _spec(None, doc="PEM file of CA certificates to trust besides the system's")
    proxy: str | None = _spec(None, doc="http://[user:password@]host:port proxy for every request")
    trust_env: bool = _spec(True, doc="without proxy: honour HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY")


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    path: Path = _spec(Path("data/crawl.db"), doc="SQLite database; relative to the config file's folder")
    url: str | None = _spec(None, doc="postgresql:// URL (libpq conventions) instead of path")
    store_bodies: bool = _spec(True, doc="keep response bodies in pages.body")
    keep_history: bool = _spec(True, doc="a recrawl keeps the bodies of replaced versions in page_history")
    lease_seconds: float = _spec(
        60.0, lo=1.0, hi=3600.0, doc="PostgreSQL: seconds a dead crawler's hosts stay blocked; ≥ politeness.max_delay"
    )
    max_hold_seconds: float = _spec(
        60.0, lo=1.0, hi=86400.0, doc="PostgreSQL: seconds a crawler keeps a host before letting others take it"
    )

    @property
    def target(self) -> Path | str:
        """The database the crawl uses: the PostgreSQL URL if one is set, else the SQLite path."""
        return self.url if self.url is not None else self.path


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    politeness: PolitenessConfig = field(default_factory=PolitenessConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    source: str = "<defaults>"

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections or single keys replaced: `replace(politeness={"delay": 0})`."""
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            if isinstance(value, dict):
                value = dataclasses.replace(getattr(self, name), **value)
            changes[name] = value
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, type] = {
    "crawl": CrawlConfig,
    "politeness": PolitenessConfig,
    "http": HttpConfig,
    "storage": StorageConfig,
}


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file; raises ConfigError naming the file and key."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, None, "file not found") from None
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"invalid TOML: {exc}") from None
    return config_from_dict(data, source=source, base_dir=path.parent)


def config_from_dict(data: dict[str, Any], *, source: str = "<dict>", base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative storage paths resolve against base_dir."""
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(source, f"[{name}]", f"unknown section (expected one of: {', '.join(SECTIONS)})")
    built: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(source, f"[{name}]", "must be a table")
        built[name] = _build_section(cls, name, section, source)
    config = Config(**built, source=source)
    _check_whole(config, source)
    storage = data.get("storage", {})
    if "path" in storage and "url" in storage:
        raise ConfigError(source, "storage.url", "set storage.path (SQLite) or storage.url (PostgreSQL), not both")
    storage_path = config.storage.path
    if base_dir is not None and not storage_path.is_absolute():
        config = config.replace(storage={"path": base_dir / storage_path})
    ca_bundle = config.http.ca_bundle
    if ca_bundle is not None:
        if base_dir is not None and not ca_bundle.is_absolute():
            ca_bundle = base_dir / ca_bundle
            config = config.replace(http={"ca_bundle": ca_bundle})
        if not ca_bundle.is_file():
            raise ConfigError(source, "http.ca_bundle", f"no such file: {ca_bundle}")
    return config


def _build_section(cls: type, name: str, section: dict[str, Any], source: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in section.items():
        where = f"{name}.{key}"
        if key not in known:
            raise ConfigError(source, where, f"unknown key (known keys: {', '.join(known)})")
        f = known[key]
        values[key] = _coerce(value, hints[key], where, source, f.metadata.get("lo"), f.metadata.get("hi"))
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str, source: str, lo: float | None, hi: float | None) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(source, where, f"must be {expected}, got {value!r}")

    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int or hint is float:
        ok_types: tuple[type, ...] = (int,) if hint is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_types):
            raise bad("an integer" if hint is int else "a number")
        number = float(cast(float, value))
        if lo is not None and number < lo:
            raise bad(f"≥ {lo:g}")
        if hi is not None and number > hi:
            raise bad(f"≤ {hi:g}")
        return int(cast(int, value)) if hint is int else number
    if hint is str:
        if not isinstance(value, str) or not value.strip():
            raise bad("a non-empty string")
        return value
    if get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint):
        inner = next(arg for arg in get_args(hint) if arg is not type(None))
        return _coerce(value, inner, where, source, lo, hi)  # TOML has no null: a value is given
    if hint is Path:
        if not isinstance(value, str) or not value.strip():
            raise bad("a path string")
        return Path(value).expanduser()
    if get_origin(hint) is tuple and get_args(hint)[0] is str:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    raise AssertionError(f"unsupported config type {hint!r} for {where}")  # pragma: no cover


def _check_whole(config: Config, source: str) -> None:
    """Rules that span keys or need more than a type check."""
    from crawler.urls import normalize_url  # urls is pure; imported late to keep config import-light

    crawl = config.crawl
    if not crawl.seeds:
        raise ConfigError(source, "crawl.seeds", "must list at least one http(s) URL")
    for seed in crawl.seeds:
        if normalize_url(seed) is None:
            raise ConfigError(source, "crawl.seeds", f"not an absolute http(s) URL: {seed!r}")
    for key in ("include", "exclude"):
        for pattern in getattr(crawl, key):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(source, f"crawl.{key}", f"invalid regex {pattern!r}: {exc}") from None
    for host in crawl.allowed_hosts:
        bare = host.removeprefix("*.")
        if not bare or "/" in bare or (":" in bare.strip("[]") and not bare.startswith("[")):
            raise ConfigError(source, "crawl.allowed_hosts", f"not a host name: {host!r} (no scheme, path or port)")
    if config.http.proxy is not None:
        from crawler.http.proxies import proxy_problem, shown  # imported late: only a config naming a proxy needs it

        problem = proxy_problem(config.http.proxy)
        if problem is not None:
            raise ConfigError(source, "http.proxy", f"{problem}, got {shown(config.http.proxy)!r}")
    url = config.storage.url
    if url is not None:
        from crawler.store.backend import is_postgres_url  # psycopg-free: only the scheme is checked here

        if not is_postgres_url(url):
            raise ConfigError(source, "storage.url", f"must be a postgresql:// URL, got {url.split(':', 1)[0]!r}…")
    pol = config.politeness
    if url is not None and config.storage.lease_seconds < pol.max_delay:
        # A dead holder's host is free again after lease_seconds: no sooner than its delay allows.
        raise ConfigError(
            source, "storage.lease_seconds", f"must be ≥ politeness.max_delay ({pol.max_delay:g}) with storage.url"
        )
    if pol.max_delay < pol.delay:
        raise ConfigError(source, "politeness.max_delay", f"must be ≥ politeness.delay ({pol.delay:g})")
    if pol.per_host_concurrency > pol.concurrency:
        raise ConfigError(
            source, "politeness.per_host_concurrency", f"must be ≤ politeness.concurrency ({pol.concurrency})"
        )
