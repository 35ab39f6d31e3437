"""Reading one sitemap document safely: XML urlset and index, RSS 2.0, Atom, plain text, gzip; the protocol's limits.

Everything here is pure: bytes in, a `Sitemap` or a `SitemapError` out. XML goes through
defusedxml's expat parser with every DTD refused (sitemaps never need one, and entity
expansion and external entities both need one), fed piece by piece into a target that keeps
only the entries, so no element tree is ever built.
"""

from __future__ import annotations

import email.utils
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from crawler.errors import FetchError
from crawler.http.decoding import Inflater

# sitemaps.org: "no more than 50,000 URLs and must be no larger than 50MB (52,428,800 bytes)", uncompressed.
MAX_URLS = 50_000
MAX_BYTES = 52_428_800
MAX_FIELD_CHARS = 16_384  # a <loc> or date longer than this is no URL we would keep; its text is cut
SNIFF_BYTES = 65_536  # enough of a body to reach its root element past a prolog and comments

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


class SitemapError(Exception):
    """A sitemap that cannot be read: not a sitemap, malformed, a DTD, or over a limit."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class SitemapKind(StrEnum):
    URLSET = "urlset"
    INDEX = "sitemapindex"
    RSS = "rss"
    ATOM = "atom"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed URL (as written, not yet normalised) and its last modification time, ISO-8601 UTC."""

    loc: str
    lastmod: str | None = None


@dataclass(frozen=True, slots=True)
class Sitemap:
    kind: SitemapKind
    entries: list[Entry]

    @property
    def is_index(self) -> bool:
        return self.kind is SitemapKind.INDEX


# Root element → (kind, item element, URL element, date elements); None as the URL element
# means Atom's <link href>. Names are local: any namespace (or none) is accepted.
_FORMATS: dict[str, tuple[SitemapKind, str, str | None, tuple[str, ...]]] = {
    "urlset": (SitemapKind.URLSET, "url", "loc", ("lastmod",)),
    "sitemapindex": (SitemapKind.INDEX, "sitemap", "loc", ("lastmod",)),
    "rss": (SitemapKind.RSS, "item", "link", ("pubDate",)),
    "feed": (SitemapKind.ATOM, "entry", None, ("updated", "published")),
}


def read_sitemap(body: bytes, *, max_urls: int = MAX_URLS, max_bytes: int = MAX_BYTES) -> Sitemap:
    """The entries of a sitemap body (gzip undone here when the body is gzip); SitemapError if unreadable.

    A file over max_urls is invalid as a whole (the protocol's word), so none of its entries is kept.
    """
    pieces = _uncompressed(body, max_bytes)
    first = b""
    for first in pieces:
        if first.strip():
            break
    head = first.lstrip()
    if head.startswith(_BOM):
        head = head[len(_BOM) :].lstrip()
    if not head:
        raise SitemapError("empty sitemap")
    if head.startswith(b"<"):
        # Whitespace before an XML declaration is an error to expat, and a common slip of generators.
        return _read_xml(head, pieces, max_urls)
    return _read_text(head, pieces, max_urls)


def looks_like_sitemap(body: bytes, content_type: str | None) -> bool:
    """Whether a response is a sitemap: an XML body whose root is one, or a gzip body holding one.

    Decided by the content, not the URL: a seed named /feed may be HTML, and /sitemap.php XML.
    """
    gzipped = body.startswith(_GZIP_MAGIC)
    if not gzipped and (content_type is None or "xml" not in content_type.lower()):
        return False
    head = bytearray()
    try:
        for piece in _uncompressed(body, max_bytes=SNIFF_BYTES * 4, strict=False):
            head += piece
            if len(head) >= SNIFF_BYTES:
                break
    except SitemapError:
        return False
    text = bytes(head).lstrip().removeprefix(_BOM).lstrip()
    if gzipped and text.startswith((b"http://", b"https://")):
        return True  # a gzipped plain-text sitemap
    return _root_name(bytes(head)) in _FORMATS


# ---- bytes ---------------------------------------------------------------------------------


def _uncompressed(body: bytes, max_bytes: int, *, strict: bool = True) -> Iterator[bytes]:
    """The body in pieces, gzip undone by a bounded inflater; SitemapError beyond max_bytes (strict)."""
    if not body.startswith(_GZIP_MAGIC):
        if strict and len(body) > max_bytes:
            raise SitemapError(f"sitemap larger than {max_bytes:,} bytes")
        yield body
        return
    size = 0
    try:
        for piece in Inflater("gzip").feed(body):
            size += len(piece)
            if size > max_bytes:
                if not strict:
                    return
                raise SitemapError(f"gzipped sitemap larger than {max_bytes:,} bytes uncompressed")
            yield piece
    except FetchError as exc:
        raise SitemapError(f"bad gzip: {exc.message}") from None


# ---- XML -----------------------------------------------------------------------------------


class _Found(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


class _RootOnly:
    """A parser target that stops at the root element."""

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        raise _Found(_local(tag))

    def close(self) -> None:
        return None


def _root_name(head: bytes) -> str | None:
    parser = DefusedXMLParser(target=_RootOnly(), forbid_dtd=True)
    try:
        parser.feed(head)
    except _Found as found:
        return found.name
    except (ParseError, DefusedXmlException, ValueError):
        return None
    return None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


class _Entries:
    """A parser target that keeps (URL, date) per item of the format its root names, nothing else."""

    def __init__(self, max_urls: int) -> None:
        self.max_urls = max_urls
        self.kind: SitemapKind | None = None
        self.entries: list[Entry] = []
        self._item = ""
        self._url_field: str | None = None
        self._date_fields: tuple[str, ...] = ()
        self._depth = 0
        self._item_depth = 0  # depth of the open item; 0 when none is open
        self._field: str | None = None  # the child of the item whose text is being read
        self._text: list[str] = []
        self._text_len = 0
        self._loc: str | None = None
        self._dates: dict[str, str] = {}

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self._depth += 1
        name = _local(tag)
        if self._depth == 1:
            known = _FORMATS.get(name)
            if known is None:
                raise SitemapError(f"not a sitemap: root element <{name}>")
            self.kind, self._item, self._url_field, self._date_fields = known
        elif not self._item_depth:
            if name == self._item:
                self._item_depth = self._depth
                self._loc, self._dates = None, {}
        elif self._depth == self._item_depth + 1:
            if name == self._url_field or name in self._date_fields:
                self._field, self._text, self._text_len = name, [], 0
            elif (
                # Atom: the entry's own page is its alternate link, the default rel.
                self._url_field is None
                and name == "link"
                and self._loc is None
                and attrib.get("rel", "alternate") == "alternate"
                and attrib.get("href")
            ):
                self._loc = attrib["href"].strip()

    def data(self, text: str) -> None:
        if self._field is not None and self._text_len < MAX_FIELD_CHARS:
            self._text.append(text)
            self._text_len += len(text)

    def end(self, tag: str) -> None:
        if self._field is not None and self._depth == self._item_depth + 1:
            value = "".join(self._text).strip()
            if self._field == self._url_field:
                self._loc = value
            else:
                self._dates.setdefault(self._field, value)
            self._field = None
        elif self._item_depth and self._depth == self._item_depth:
            self._item_depth = 0
            if self._loc:
                date = next((self._dates[f] for f in self._date_fields if self._dates.get(f)), None)
                self._add(Entry(self._loc, normalize_lastmod(date) if date else None))
        self._depth -= 1

    def _add(self, entry: Entry) -> None:
        if len(self.entries) >= self.max_urls:
            raise SitemapError(f"more than {self.max_urls:,} URLs (the protocol's limit per file); none read")
        self.entries.append(entry)

    def close(self) -> None:
        return None


def _read_xml(first: bytes, rest: Iterator[bytes], max_urls: int) -> Sitemap:
    target = _Entries(max_urls)
    parser = DefusedXMLParser(target=target, forbid_dtd=True)
    try:
        parser.feed(first)
        for piece in rest:
            parser.feed(piece)
        parser.close()
    except DefusedXmlException as exc:
        raise SitemapError(
            f"refused XML ({type(exc).__name__}): a sitemap needs no DTD, and entity expansion"
            " (billion laughs) and external entities rely on one"
        ) from None
    except ParseError as exc:
        raise SitemapError(f"malformed XML: {exc}") from None
    assert target.kind is not None, "a well-formed document has a root element"
    return Sitemap(target.kind, target.entries)


# ---- plain text ------------------------------------------------------------------------------


def _read_text(first: bytes, rest: Iterator[bytes], max_urls: int) -> Sitemap:
    """One URL per line (sitemaps.org's text format); lines that are not http(s) URLs are ignored."""
    entries: list[Entry] = []
    carry = b""
    for piece in itertools.chain((first,), rest, (b"",)):  # the empty piece flushes the last line
        lines = (carry + piece).split(b"\n")
        carry = lines.pop() if piece else b""
        for raw in lines:
            line = raw.strip().removeprefix(_BOM).decode("utf-8", "replace")
            if line.startswith(("http://", "https://")):
                if len(entries) >= max_urls:
                    raise SitemapError(f"more than {max_urls:,} URLs (the protocol's limit per file); none read")
                entries.append(Entry(line))
    return Sitemap(SitemapKind.TEXT, entries)


# ---- dates ---------------------------------------------------------------------------------

_YEAR_MONTH_DAY = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def normalize_lastmod(text: str) -> str | None:
    """A W3C datetime (sitemaps, Atom) or RFC 822 date (RSS) as ISO-8601 UTC with milliseconds; None if junk.

    A time without a zone is taken as UTC, a date alone as its midnight UTC.
    """
    text = text.strip()
    when: datetime | None = None
    try:
        if m := _YEAR_MONTH_DAY.fullmatch(text):
            when = datetime(int(m[1]), int(m[2] or 1), int(m[3] or 1), tzinfo=UTC)
        else:
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"
