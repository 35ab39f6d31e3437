"""URL normalisation, joining, host keys and scope/trap rules; pure functions."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin

from crawler.errors import SkipReason

if TYPE_CHECKING:  # config imports this module; only the type is needed here
    from crawler.config import CrawlConfig

try:  # IDNA 2008 + UTS 46 when available; the stdlib codec only knows IDNA 2003
    import idna as _idna_lib

    _HAVE_IDNA = True
except ImportError:  # pragma: no cover - idna ships with httpx
    _HAVE_IDNA = False

__all__ = ["Scope", "host_key", "join_url", "normalize_url", "origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443}

# RFC 3986 unreserved + sub-delims + ":@/?" may appear literally in a path or query;
# everything else (space, quotes, <>, {}, |, \, ^, `, [], controls, non-ASCII) is escaped.
# "%" is listed so one character class scans a whole part (far faster than an
# alternation per character); _BAD_ESCAPE then vets each "%" separately.
_SAFE = r"A-Za-z0-9\-._~!$&'()*+,;=:@/?%"
_SAFE_NO_Q = r"A-Za-z0-9\-._~!$&'()*+,;=:@/%"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-F]{2})")
_HOST_RE = r"[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)*"

# A URL this matches is already in normal form apart from escapes, dot segments and
# the port value, which normalize_url checks by hand; every crawled link comes here.
_FAST = re.compile(rf"(https?)://{_HOST_RE}(?::([1-9][0-9]{{0,4}}))?(/[{_SAFE_NO_Q}]*)(?:\?[{_SAFE}]+)?")
# RFC 3986 appendix B: scheme, authority, path, query; the fragment is discarded.
_SPLIT = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#.*)?", re.DOTALL)
_CLEAN_PART = re.compile(rf"[{_SAFE}]*")
_FIX_PART = re.compile(rf"%[0-9A-Fa-f]{{2}}|[^{_SAFE}]|%")
_HOST_OK = re.compile(_HOST_RE)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_AUTHORITY = re.compile(r"(https?)://([^/?#]*)")

# Session ids in URLs give every visit new URLs for the same pages (a spider trap), so they
# are dropped, as Heritrix does: path parameters (";jsessionid=...") and query items named
# like a session.  The generic names count only with a token-like value of 16+ letters or
# digits, so a short "?sid=3" (a section id, say) is kept.
_SESSION = (
    r"(?:jsessionid|phpsessid|aspsessionid[a-z]{8}|cfid|cftoken)=[^&;/?]*|(?:sid|sessionid|session_id)=[0-9a-z]{16,}"
)
_SESSION_HINT = re.compile(rf"[;?&](?:{_SESSION})(?=[;&/?]|$)", re.IGNORECASE)
_SESSION_PATH_PARAM = re.compile(rf";(?:{_SESSION})(?=[;/]|$)", re.IGNORECASE)
_SESSION_ITEM = re.compile(_SESSION, re.IGNORECASE)

# WHATWG URL parsing strips leading/trailing C0 controls and spaces, and removes
# tab/CR/LF anywhere; browsers therefore follow such hrefs, so we do too.
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_DROP_TAB_NL = str.maketrans("", "", "\t\n\r")


def normalize_url(url: str) -> str | None:
    """The canonical form of an absolute http(s) URL, or None if it is not one."""
    m = _FAST.fullmatch(url)
    if (
        m is not None
        and "/." not in m.group(3)
        and ("%" not in url or _BAD_ESCAPE.search(url) is None)
        and not _may_hold_session_id(url)
    ):
        port = m.group(2)
        if port is None:
            return url
        number = int(port)
        if number <= 65535 and number != _DEFAULT_PORTS[m.group(1)]:
            return url
    try:
        return _normalize_slow(url)
    except ValueError:  # UnicodeError and idna.IDNAError are ValueErrors too
        return None


def _normalize_slow(url: str) -> str | None:
    url = url.strip(_C0_AND_SPACE)
    if "\t" in url or "\n" in url or "\r" in url:
        url = url.translate(_DROP_TAB_NL)
    m = _SPLIT.fullmatch(url)
    if m is None:
        return None
    scheme, authority, path, query = m.groups()
    scheme = scheme.lower()
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is None or not authority:
        return None
    # The last "@" ends the userinfo, as in browsers; userinfo is dropped.
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            return None
        raw_host, rest = hostport[: end + 1], hostport[end + 1 :]
        if rest and rest[0] != ":":
            return None
        port_text = rest[1:]
    else:
        raw_host, _, port_text = hostport.partition(":")
    host = _normalize_host(raw_host)
    if host is None:
        return None
    netloc = host
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()):
            return None
        port = int(port_text)
        if not 0 < port <= 65535:  # port 0 cannot be connected to
            return None
        if port != default_port:
            netloc = f"{host}:{port}"
    path = _encode_part(_remove_dot_segments(path)) if path else "/"
    if query:  # an empty query ("?" alone) is dropped
        path = f"{path}?{_encode_part(query)}"
    if _may_hold_session_id(path):
        path = _strip_session_ids(path)
    return f"{scheme}://{netloc}{path}"


def _may_hold_session_id(url: str) -> bool:
    query, param = url.find("?"), url.find(";")
    start = param if query < 0 or 0 <= param < query else query
    if start < 0:
        return False
    # Cheap substring tests first: every session name holds "sid", "ssion" or "cf".
    tail = url[start:].lower()
    return ("sid" in tail or "ssion" in tail or "cf" in tail) and _SESSION_HINT.search(url, start) is not None


def _strip_session_ids(path: str) -> str:
    """Path and query without session-id path parameters and query items."""
    path, mark, query = path.partition("?")
    path = _SESSION_PATH_PARAM.sub("", path) or "/"
    if mark:
        query = "&".join(item for item in query.split("&") if not _SESSION_ITEM.fullmatch(item))
    return f"{path}?{query}" if query else path


@lru_cache(maxsize=4096)
def _normalize_host(raw: str) -> str | None:
    """Lowercase/punycode host, bracketed compressed IPv6, or None if invalid."""
    if "%" in raw:
        raw = unquote(raw, errors="strict")
    if raw.startswith("["):
        inner = raw[1:-1]
        if not raw.endswith("]") or "%" in inner:  # no zone ids: meaningless off-host
            return None
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            return None
    raw = raw.removesuffix(".")
    host: str | None = raw.lower() if raw.isascii() else _to_punycode(raw)
    if host and _HOST_OK.fullmatch(host):
        return host
    return None


def _to_punycode(host: str) -> str | None:
    try:
        if _HAVE_IDNA:
            return _idna_lib.encode(host, uts46=True, transitional=False).decode("ascii")
        return host.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        return None


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path; "/a/./b/../c" → "/a/c"."""
    if "/." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):  # "/a/b/.." means the directory "/a/"
        out.append("")
    return "/" + "/".join(out)


def _encode_part(part: str) -> str:
    if _CLEAN_PART.fullmatch(part) and ("%" not in part or _BAD_ESCAPE.search(part) is None):
        return part
    return _FIX_PART.sub(_fix_char, part)


def _fix_char(m: re.Match[str]) -> str:
    text = m.group()
    if len(text) == 3:  # an existing %xx escape: keep it, only uppercase the hex
        return text.upper()
    return "".join(f"%{byte:02X}" for byte in text.encode("utf-8"))


# Absolute and root-relative links resolve the same on every page of a site, and most of
# them repeat (navigation, footers, popular pages): remembering them spares a normalisation,
# a large part of a page's link handling.  Bounded, so a huge crawl's memory stays small.
_normalize_link = lru_cache(maxsize=16384)(normalize_url)


def join_url(base: str, href: str) -> str | None:
    """Resolve an href against base and normalise it; None for empty or non-http(s) links."""
    href = href.strip(_C0_AND_SPACE)
    if "\t" in href or "\n" in href or "\r" in href:
        href = href.translate(_DROP_TAB_NL)
    if not href:
        return None
    m = _SCHEME.match(href)
    if m is not None:
        if m.group(1).lower() not in _DEFAULT_PORTS:
            return None  # javascript:, mailto:, tel:, data:, ftp: ...
        if href.startswith("//", m.end()):
            return _normalize_link(href)  # absolute: the base does not matter
    elif href.startswith("//"):  # scheme-relative; urljoin would turn a bare "//" into base
        b = _SCHEME.match(base)
        return normalize_url(f"{b.group(1)}:{href}") if b is not None else None
    elif href[0] == "/":
        # Root-relative links are the common case; skip urljoin for them.
        a = _AUTHORITY.match(base)
        if a is not None:
            return _normalize_link(a.group() + href)
    try:
        return normalize_url(urljoin(base, href))
    except ValueError:  # e.g. an unterminated "[" in the href's host
        return None


def _split_normalized(url: str) -> tuple[str, str, int, int]:
    """(scheme, host, port, end of authority) of a normalized URL; ValueError otherwise."""
    m = _AUTHORITY.match(url)
    if m is None:
        raise ValueError(f"not an http(s) URL: {url!r}")
    scheme, hostport = m.groups()
    if hostport.endswith("]") or ":" not in hostport:
        return scheme, hostport, _DEFAULT_PORTS[scheme], m.end()
    host, _, port = hostport.rpartition(":")
    return scheme, host, int(port), m.end()


def host_key(url: str, *, normalized: bool = False) -> str:
    """ "host:port" with the port always explicit: the unit of politeness.

    normalized=True promises `url` came from normalize_url, skipping a second pass on the
    crawl's hot path (every discovered link)."""
    normal = url if normalized else normalize_url(url)
    if normal is None:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    _, host, port, _ = _split_normalized(normal)
    return f"{host}:{port}"


def origin(url: str, *, normalized: bool = False) -> str:
    """ "scheme://host[:port]" with a default port omitted, e.g. for robots.txt.

    normalized=True promises `url` came from normalize_url, as host_key's does."""
    normal = url if normalized else normalize_url(url)
    if normal is None:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    return normal[: _split_normalized(normal)[3]]


class Scope:
    """Which discovered URLs the crawl may fetch; built once, asked for every link."""

    __slots__ = ("_exact", "_exclude", "_include", "_max_depth", "_max_len", "_max_repeat", "_wildcard")

    def __init__(
        self,
        *,
        hosts: Iterable[str],
        max_depth: int,
        max_url_length: int,
        max_repeated_segments: int,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ) -> None:
        """hosts: names without ports; "*.example.com" also admits example.com itself."""
        exact: set[str] = set()
        wildcard: set[str] = set()
        for entry in hosts:
            is_wild = entry.startswith("*.")
            host = _normalize_host(entry[2:] if is_wild else entry)
            if host is None:
                raise ValueError(f"not a host name: {entry!r}")
            (wildcard if is_wild else exact).add(host)
        self._exact = frozenset(exact | wildcard)
        self._wildcard = frozenset(wildcard)
        self._max_depth = max_depth
        self._max_len = max_url_length
        self._max_repeat = max_repeated_segments
        self._include = tuple(re.compile(p) for p in include)
        self._exclude = tuple(re.compile(p) for p in exclude)

    @classmethod
    def from_config(cls, crawl: CrawlConfig) -> Scope:
        """The scope a [crawl] section describes; no allowed_hosts means the seeds' hosts."""
        hosts: Iterable[str] = crawl.allowed_hosts
        if not hosts:
            seeds = (normalize_url(seed) for seed in crawl.seeds)
            hosts = [_split_normalized(seed)[1] for seed in seeds if seed is not None]
        return cls(
            hosts=hosts,
            max_depth=crawl.max_depth,
            max_url_length=crawl.max_url_length,
            max_repeated_segments=crawl.max_repeated_segments,
            include=crawl.include,
            exclude=crawl.exclude,
        )

    def skip_reason(self, url: str, depth: int) -> SkipReason | None:
        """Why a normalized URL at this depth must not be fetched, or None to fetch it."""
        if len(url) > self._max_len:
            return SkipReason.URL_TOO_LONG
        try:
            _, host, _, path_start = _split_normalized(url)
        except ValueError:
            return SkipReason.OFF_SITE
        if not self._host_allowed(host.lower()):
            return SkipReason.OFF_SITE
        if depth > self._max_depth:
            return SkipReason.DEPTH
        if self._repeats_segment(url, path_start):
            return SkipReason.REPEATED_SEGMENTS
        if any(p.search(url) for p in self._exclude):
            return SkipReason.EXCLUDED
        if self._include and not any(p.search(url) for p in self._include):
            return SkipReason.NOT_INCLUDED
        return None

    def _host_allowed(self, host: str) -> bool:
        if host in self._exact:
            return True
        if self._wildcard:
            # Walk up the parent domains: a.b.example.com → b.example.com → example.com → com.
            dot = host.find(".")
            while dot >= 0:
                host = host[dot + 1 :]
                if host in self._wildcard:
                    return True
                dot = host.find(".")
        return False

    def _repeats_segment(self, url: str, path_start: int) -> bool:
        query = url.find("?", path_start)
        segments = url[path_start : query if query >= 0 else len(url)].split("/")
        # The first element is the empty string before the leading "/".
        if len(segments) - 1 <= self._max_repeat:
            return False
        counts: dict[str, int] = {}
        for segment in segments:
            if segment:  # empty segments ("//", trailing "/") are not a trap signal
                n = counts.get(segment, 0) + 1
                if n > self._max_repeat:
                    return True
                counts[segment] = n
        return False
