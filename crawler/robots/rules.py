"""robots.txt: RFC 9309 fetch-outcome rules and matching.

The parser and matcher are our own rather than protego's.  protego 0.7 is a
lenient, Google-flavoured parser and departs from RFC 9309 where it matters to
us: it matches a group's name anywhere in the whole User-Agent header (so
`User-agent: example` catches `crawler/0.1 (+https://example.org/...)`, and
`crawl` catches `crawler`) yet misses `User-agent: crawler/1.0`; it reads a
UTF-8 BOM as part of the first key; a junk line splits a run of user-agent
lines into two groups; it decodes every escape but `%2F`/`%25` (so `%3F`
equals `?`) and turns invalid UTF-8 escapes into U+FFFD (so `%E9` equals
`%FF`); `Disallow: /a$` also blocks `/a$b`; and `Allow: /index.html` also
allows `/`.  That leaves little worth reusing, so this module does the
whole job in one place:

* lines split on CR, LF or CRLF; `#` starts a comment; keys are
  case-insensitive with whitespace tolerated (and Google's usual misspellings);
  lines that are not a known `key: value` directive are skipped and neither
  end nor split the group they sit in;
* a group is a run of user-agent lines and the member lines after it; groups
  naming our product token are merged, else `*` applies, else nothing does;
* rule paths and URL paths are normalised alike before comparison: non-ASCII
  and characters not allowed in a URI are percent-encoded as UTF-8, escapes of
  unreserved characters are decoded, other escapes are upper-cased, and a
  literal `*` or `$` in a URL is encoded so only `%2A`/`%24` in a rule match it;
* the chosen group's rules are compiled once into one regex whose
  alternatives are ordered longest first, allow before disallow, so the first
  alternative that matches is the RFC's winner; each `*` becomes an atomic lazy
  group, which finds the same match as backtracking would but in linear time,
  so a hostile pattern cannot stall the crawler.

Naming: `unavailable=True` here means "do not crawl, ask again later", which
is RFC 9309's *unreachable* case (§2.3.1.4); the RFC's *unavailable* (4xx,
§2.3.1.3) is what we call allow-all.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field

MAX_ROBOTS_BYTES = 512_000  # RFC 9309 §2.5: parse at least 500 KiB; ignore the rest

_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_TOKEN = re.compile(r"[A-Za-z_-]*")

_AGENT, _ALLOW, _DISALLOW = "agent", "allow", "disallow"
_DELAY, _SITEMAP = "delay", "sitemap"
_KEYS = {
    "user-agent": _AGENT,
    "useragent": _AGENT,
    "user agent": _AGENT,
    "allow": _ALLOW,
    "disallow": _DISALLOW,
    # Misspellings Google's parser accepts; site owners write what Google obeys.
    "dissallow": _DISALLOW,
    "dissalow": _DISALLOW,
    "disalow": _DISALLOW,
    "diasllow": _DISALLOW,
    "disallaw": _DISALLOW,
    "crawl-delay": _DELAY,
    "sitemap": _SITEMAP,
    "site-map": _SITEMAP,
}
_DELAY_VALUE = re.compile(r"\d+(?:\.\d*)?|\.\d+")

# Characters kept as they are when normalising: unreserved and reserved URI
# characters, minus "%" (escapes are handled apart), "#" (never reaches here),
# and "$" and "*", which are special in rules.  A rule keeps its "*".
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~:/?\[\]@!&'()+,;=]*")
_PATH_WORK = re.compile(r"%[0-9A-Fa-f]{2}|[^A-Za-z0-9\-._~:/?\[\]@!&'()+,;=]")
_RULE_WORK = re.compile(r"%[0-9A-Fa-f]{2}|[^A-Za-z0-9\-._~:/?\[\]@!&'()+,;=*]")
# Path and query of a URL: skip scheme and authority, stop at the fragment.
_PATH_OF = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*:)?(?://[^/?#]*)?([^#]*)")


@dataclass(frozen=True, slots=True)
class RobotsResponse:
    """The final answer to GET /robots.txt, redirects already followed.

    `status` None means no HTTP answer at all (timeout, refused, TLS...) and
    `error` says why.
    """

    status: int | None
    body: bytes = b""
    error: str | None = None
    too_many_redirects: bool = False  # more than 5 redirects (or a loop): §2.3.1.2 allows all
    age: float = 0.0  # seconds old when it came: an answer read from a record rather than fetched


def product_token(user_agent: str) -> str:
    """The product token of a User-Agent: `crawler/0.1 (+https://x)` -> `crawler`."""
    match = _TOKEN.match(user_agent.strip())
    return match.group() if match else ""


def _escape_match(match: re.Match[str]) -> str:
    text = match.group()
    if len(text) == 3:  # a %XX escape; every other match is one character
        char = chr(int(text[1:], 16))
        return char if char in _UNRESERVED else text.upper()
    try:
        # surrogateescape gives back the very bytes an invalid UTF-8 body held
        octets = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        octets = text.encode("utf-8", "surrogatepass")
    return "".join(f"%{octet:02X}" for octet in octets)


def _normalize_path(path: str) -> str:
    """A URL's path and query in the one spelling rules are compared against."""
    if _PLAIN_PATH.fullmatch(path):  # the common case: nothing to change
        return path
    return _PATH_WORK.sub(_escape_match, path)


def _normalize_rule(value: str) -> str:
    """A rule path in the same spelling; `*` stays a wildcard, a final `$` an anchor."""
    anchored = value.endswith("$")
    body = value[:-1] if anchored else value
    return _RULE_WORK.sub(_escape_match, body) + ("$" if anchored else "")


def _rule_regex(rule: str) -> str:
    """Regex source for a normalised rule, to be matched at the start of a path."""
    anchored = rule.endswith("$")
    first, *rest = (rule[:-1] if anchored else rule).split("*")
    parts = [re.escape(first)]
    last = rest.pop() if anchored and rest else None
    # Taking each literal at its leftmost place is how a glob matches; the
    # atomic group stops the regex engine from retrying later places.
    parts.extend(f"(?>.*?{re.escape(part)})" for part in rest if part)
    if anchored:
        parts.append(r"\Z" if last is None else f".*{re.escape(last)}\\Z")
    return "".join(parts)


def _compile(
    rules: list[tuple[bool, str]],
) -> tuple[re.Pattern[str] | None, tuple[bool, ...]]:
    """One regex for a group's rules; alternative i ends in empty group i+1.

    The second item says, for each alternative, whether it is an Allow.
    """
    normalized = {(allow, _normalize_rule(value)) for allow, value in rules}
    # RFC 9309 §2.2.2: the longest rule wins, allow wins a tie; Python's regex
    # alternation takes the first alternative that matches.
    ordered = sorted(normalized, key=lambda rule: (-len(rule[1]), not rule[0], rule[1]))
    if not ordered:
        return None, ()
    source = "|".join(_rule_regex(rule) + "()" for _, rule in ordered)
    return re.compile(source, re.DOTALL), tuple(allow for allow, _ in ordered)


def _directive(line: str) -> tuple[str, str] | None:
    """(kind, value) of a stripped, comment-free line; None if no known directive."""
    key, colon, value = line.partition(":")
    kind = _KEYS.get(" ".join(key.lower().split())) if colon else None
    if kind is None:
        # Google also reads "Disallow /x"; exactly two words keeps prose out.
        words = line.split()
        if len(words) != 2:
            return None
        kind = _KEYS.get(words[0].lower())
        value = words[1]
    return None if kind is None else (kind, value.strip())


def _delay(value: str) -> float | None:
    if not _DELAY_VALUE.fullmatch(value):
        return None
    delay = float(value)
    return delay if math.isfinite(delay) else None


@dataclass(slots=True)
class _Parsed:
    group: str | None  # "*", our token, or None when no group applies
    rules: list[tuple[bool, str]]  # (is_allow, raw path pattern), empty values dropped
    crawl_delay: float | None
    sitemaps: tuple[str, ...]


def _parse(text: str, token: str) -> _Parsed:
    token = token.lower()
    ours: list[tuple[bool, str]] = []
    star: list[tuple[bool, str]] = []
    ours_delays: list[float] = []
    star_delays: list[float] = []
    sitemaps: dict[str, None] = {}  # ordered set
    seen_ours = seen_star = False
    in_ours = in_star = False  # the current group names us / "*"
    in_group = False  # a user-agent line has been seen
    reading_agents = False  # still in the current group's user-agent lines

    for raw_line in _LINE_BREAK.split(text):
        line = raw_line.partition("#")[0].strip()
        if not line:
            continue  # blank lines do not end a group (RFC 9309 §2.2 grammar)
        directive = _directive(line)
        if directive is None:
            continue
        kind, value = directive
        if kind == _SITEMAP:  # not a group member (§2.2.4); valid anywhere
            if value:
                sitemaps[value] = None
            continue
        if kind == _AGENT:
            if not reading_agents:
                in_ours = in_star = False
                in_group = reading_agents = True
            if value == "*":
                in_star = seen_star = True
            elif token and product_token(value).lower() == token:
                in_ours = seen_ours = True
            continue
        if not in_group:
            continue  # a member line before any user-agent line belongs to no group
        # Crawl-delay counts as a member too: whoever writes it means the group above.
        reading_agents = False
        if kind == _DELAY:
            delay = _delay(value)
            if delay is not None and in_ours:
                ours_delays.append(delay)
            if delay is not None and in_star:
                star_delays.append(delay)
            continue
        if not value:
            continue  # an empty Disallow disallows nothing; an empty Allow adds nothing
        rule = (kind == _ALLOW, value)
        if in_ours:
            ours.append(rule)
        if in_star:
            star.append(rule)

    # A group naming us wins even when empty (RFC 9309 §5.1, quxbot); merged
    # groups may disagree on Crawl-delay, and the longest is the polite reading.
    if seen_ours:
        return _Parsed(token, ours, max(ours_delays, default=None), tuple(sitemaps))
    if seen_star:
        return _Parsed("*", star, max(star_delays, default=None), tuple(sitemaps))
    return _Parsed(None, [], None, tuple(sitemaps))


def _path_of(url: str) -> str:
    match = _PATH_OF.match(url)
    path = match.group(1) if match else url
    return path if path.startswith("/") else "/" + path


@dataclass(frozen=True, slots=True, eq=False)
class RobotsRules:
    """What one robots.txt outcome lets our user agent fetch; see `from_response`."""

    status: int | None
    fetched_at: float
    unavailable: bool = False  # disallow all and fetch robots.txt again soon
    crawl_delay: float | None = None
    sitemaps: tuple[str, ...] = ()
    group: str | None = None  # the user-agent group obeyed: our token, "*", or None
    rule_count: int = 0
    error: str | None = None
    _verdict: bool | None = field(default=True, repr=False)  # None: ask _regex
    _regex: re.Pattern[str] | None = field(default=None, repr=False)
    _allows: tuple[bool, ...] = field(default=(), repr=False)

    @classmethod
    def from_response(cls, resp: RobotsResponse, user_agent: str, *, fetched_at: float) -> RobotsRules:
        """RFC 9309 §2.3.1: 2xx parse, 4xx but 429 allow all, the rest disallow all."""
        status = resp.status
        if resp.too_many_redirects:
            # §2.3.1.2: past five redirects a crawler may take robots.txt as unavailable,
            # which §2.3.1.3 says means no rules at all.
            return cls(status, fetched_at, error=resp.error)
        if status is not None and 200 <= status < 300:
            parsed = _parse(_decode(resp.body), product_token(user_agent))
            regex, allows = _compile(parsed.rules)
            return cls(
                status,
                fetched_at,
                crawl_delay=parsed.crawl_delay,
                sitemaps=parsed.sitemaps,
                group=parsed.group,
                rule_count=len(parsed.rules),
                _verdict=None if regex is not None else True,
                _regex=regex,
                _allows=allows,
            )
        if status is not None and 400 <= status < 500 and status != 429:
            return cls(status, fetched_at)
        # 429, 5xx, an unfollowed 3xx, 1xx or no answer: the site may be
        # overloaded or hiding its rules, so stay out until a retry succeeds.
        return cls(status, fetched_at, unavailable=True, error=resp.error, _verdict=False)

    def allowed(self, url: str) -> bool:
        """Whether an absolute URL may be fetched; /robots.txt itself always may."""
        path = _path_of(url)
        if path == "/robots.txt" or path.startswith("/robots.txt?"):
            return True
        if self._verdict is not None:
            return self._verdict
        assert self._regex is not None  # set whenever _verdict is None
        match = self._regex.match(_normalize_path(path))
        if match is None:
            return True
        index = match.lastindex  # never None: every alternative ends in a group
        return index is not None and self._allows[index - 1]

    def describe(self) -> str:
        """A short account for logs: "200, 12 rules for crawler, crawl-delay 2"."""
        if self.unavailable:
            what = str(self.status) if self.status is not None else "unreachable"
            if self.error:
                what += f" ({self.error})"
            return f"{what}: disallow all until retried"
        if self.status is None or not 200 <= self.status < 300:
            what = str(self.status) if self.status is not None else "no robots.txt"
            if self.error:
                what += f" ({self.error})"
            return f"{what}: allow all"
        if self.group is None:
            text = f"{self.status}, no group applies: allow all"
        else:
            plural = "" if self.rule_count == 1 else "s"
            text = f"{self.status}, {self.rule_count} rule{plural} for {self.group}"
        if self.crawl_delay is not None:
            text += f", crawl-delay {self.crawl_delay:g}"
        if self.sitemaps:
            plural = "" if len(self.sitemaps) == 1 else "s"
            text += f", {len(self.sitemaps)} sitemap{plural}"
        return text


def _without_bom(body: bytes) -> bytes:
    """body without a leading UTF-8 byte-order mark, or the start of one (as Google's parser skips)."""
    for size in (3, 2, 1):
        if body[:size] == _BOM[:size]:
            return body[size:]
    return body


def _decode(body: bytes) -> str:
    if len(body) > MAX_ROBOTS_BYTES:
        cut = body[:MAX_ROBOTS_BYTES]
        if body[MAX_ROBOTS_BYTES] not in b"\r\n":
            # Drop the line the limit cuts through: "Allow: /private-a" cut to
            # "Allow: /pri" would allow more than the site said.
            cut = cut[: max(cut.rfind(b"\n"), cut.rfind(b"\r")) + 1]
        body = cut
    body = _without_bom(body)
    # surrogateescape keeps stray non-UTF-8 bytes, so they are escaped as the
    # same octets rather than all collapsing into U+FFFD.
    return body.decode("utf-8", "surrogateescape")
