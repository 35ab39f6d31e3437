"""HTML decoding and extraction with selectolax; no I/O."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from crawler.urls import join_url

if TYPE_CHECKING:
    from selectolax.lexbor import LexborHTMLParser, LexborNode

__all__ = ["Link", "ParsedPage", "decode_html", "is_html", "parse_html", "parse_page", "robots_directives"]

MAX_TEXT_CHARS = 200_000
_META_SCAN_BYTES = 4096
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_TEXTLESS = "script, style, noscript, template"
_LINK_TAGS = frozenset({"a", "area"})

_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([^\s;\"',]+)", re.IGNORECASE)
# Matches both <meta charset=x> and <meta http-equiv=... content="...; charset=x">.
_META_CHARSET = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([A-Za-z0-9._:+\-]+)", re.IGNORECASE)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
)
_TOKEN_SPLIT = re.compile(r"[\s,]+")

# Labels browsers accept (WHATWG Encoding) that Python spells differently.
_EXTRA_LABELS = {
    "windows-874": "cp874",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-ukrainian": "mac-cyrillic",
    "windows-31j": "cp932",
    "x-sjis": "cp932",
    "iso-8859-8-i": "iso8859-8",
    "x-gbk": "gb18030",
    "x-euc-jp": "euc_jp",
}
# Python codec → the codec browsers really use for it (WHATWG decodes "latin-1" as
# windows-1252 and so on); pages rely on those supersets, so we decode with them.
_SUPERSETS = {
    "ascii": "cp1252",
    "iso8859-1": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
}
# Only real web encodings: Python also "decodes" rot13, idna, unicode-escape, utf-7 ...
_WEB_CODECS = frozenset(
    {
        "utf-8", "utf-16", "utf-16-le", "utf-16-be", "cp866", "koi8-r", "koi8-u", "mac-roman",
        "mac-cyrillic", "cp874", "cp932", "cp949", "euc_jp", "iso2022_jp", "gb18030", "big5hkscs",
        *(f"cp{n}" for n in range(1250, 1259)),
        *(f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 15, 16)),
    }
)  # fmt: skip


def is_html(content_type: str | None) -> bool:
    """Whether a Content-Type header names an HTML document."""
    if not content_type:
        return False
    return content_type.partition(";")[0].strip().lower() in _HTML_TYPES


@lru_cache(maxsize=128)
def _codec_for(label: str) -> str | None:
    """The Python codec to decode a charset label with, or None if it is not a web encoding."""
    label = label.strip().strip("\"'").lower()
    name = _EXTRA_LABELS.get(label)
    if name is None:
        try:
            name = codecs.lookup(label).name
        except LookupError:
            return None
    name = _SUPERSETS.get(name, name)
    return name if name in _WEB_CODECS else None


def decode_html(body: bytes, content_type: str | None) -> str:
    """Decode an HTML body: header charset, then BOM, then <meta>, then UTF-8; never raises."""
    codec = None
    if content_type:
        m = _HEADER_CHARSET.search(content_type)
        if m is not None:
            codec = _codec_for(m.group(1))
    if codec is None:
        for bom, bom_codec in _BOMS:
            if body.startswith(bom):
                codec, body = bom_codec, body[len(bom) :]
                break
    if codec is None:
        m2 = _META_CHARSET.search(body, 0, _META_SCAN_BYTES)
        if m2 is not None:
            codec = _codec_for(m2.group(1).decode("ascii"))
            if codec is not None and codec.startswith("utf-16"):
                codec = "utf-8"  # a <meta> readable as ASCII cannot be UTF-16 (WHATWG rule)
    try:
        text = body.decode(codec or "utf-8", errors="replace")
    except (LookupError, UnicodeError):  # belt and braces: codecs are allow-listed
        text = body.decode("utf-8", errors="replace")
    # A header charset wins over a UTF-8 BOM, whose U+FEFF would otherwise lead the text.
    return text.removeprefix("\ufeff")


class Link(NamedTuple):
    url: str
    nofollow: bool


@dataclass(frozen=True, slots=True)
class ParsedPage:
    title: str | None
    links: tuple[tuple[str, bool], ...]  # (url, nofollow): Link from parse_html, plain pairs from a parser process
    noindex: bool
    nofollow: bool
    canonical: str | None
    text: str


# Whitespace other than a lone space: what " ".join(text.split()) would fold. Unicode ones are
# only looked for in non-ASCII text.
_ODD_ASCII_SPACE = ("  ", "\n", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f")
_UNICODE_SPACE = tuple(ch for ch in map(chr, range(0x80, 0x3001)) if ch.isspace())


def _collapse(text: str) -> str:
    """ " ".join(text.split()), without splitting text that holds no whitespace to fold.

    Splitting a page's text into words and joining them again costs far more than the checks,
    and text from tidy markup (no line breaks or &nbsp; inside text nodes) passes them."""
    if any(map(text.__contains__, _ODD_ASCII_SPACE)) or (
        not text.isascii() and any(map(text.__contains__, _UNICODE_SPACE))
    ):
        return " ".join(text.split())
    return text.strip(" ")


def _has_token(value: str | None, token: str) -> bool:
    return value is not None and token in value.lower().split()


def _link_nodes(tree: LexborHTMLParser, html: str, max_links: int) -> Iterator[LexborNode]:
    """a/area elements in document order, choosing the cheaper of two equivalent walks."""
    root = tree.root
    if root is None:
        return iter(())
    # css() builds a Python object for every match up front, which dominates on pages
    # with far more anchors than we keep; a lazy walk can stop at the cap instead.
    # "<a" also counts <abbr>, <aside> ..., which only errs towards the lazy walk. A page
    # shorter than 4 * max_links minimal anchors cannot qualify, so most pages skip the count.
    if len(html) > 4 * max_links * len("<a href>") and html.count("<a") + html.count("<A") > 4 * max_links:
        return (node for node in root.traverse() if node.tag in _LINK_TAGS)
    if not tree.tags("area"):
        return iter(tree.tags("a"))  # _extract_links skips those without href
    return iter(tree.css("a[href], area[href]"))


def _extract_links(nodes: Iterable[LexborNode], base_url: str, max_links: int) -> tuple[Link, ...]:
    found: dict[str, bool] = {}  # url → nofollow, in first-seen order
    joined: dict[str, str | None] = {}  # href → url; nav links repeat a lot
    for node in nodes:
        attrs = node.attributes  # one dict: cheaper than two lookups through node.attrs
        href = attrs.get("href")
        if href is None:
            continue
        if href in joined:
            url = joined[href]
        else:
            url = joined[href] = join_url(base_url, href)
        if url is None:
            continue
        nofollow = _has_token(attrs.get("rel"), "nofollow")
        seen_nofollow = found.get(url)
        if seen_nofollow is None:
            found[url] = nofollow
            if len(found) >= max_links:
                break
        elif seen_nofollow and not nofollow:
            found[url] = False  # one followable occurrence is enough to follow it
    return tuple(Link(url, nofollow) for url, nofollow in found.items())


def parse_html(
    html: str, page_url: str, *, max_links: int, want_text: bool = True, robots_name: str = ""
) -> ParsedPage:
    """Title, links, robots meta, canonical and visible text of one HTML page.

    `<meta name="robots">` applies to every crawler; `<meta name=robots_name>` (our
    product token, compared case-insensitively) to us alone.
    """
    # Imported here: with parse_workers > 0 only the parser processes load the parser (its
    # native library costs the crawl's own process memory it would never use).
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)

    # Elements by tag name, filtered here, rather than CSS selectors: each css() call sets up
    # lexbor's selector engine anew, which a tags() call does not.
    base_url = page_url
    base = next((node.attributes for node in tree.tags("base") if "href" in node.attributes), None)
    if base is not None:
        base_url = join_url(page_url, base["href"] or "") or page_url

    noindex = nofollow = False
    meta_names = {"robots", robots_name.strip().lower()} - {""}
    for meta in tree.tags("meta"):
        attrs = meta.attributes
        if "name" in attrs and (attrs["name"] or "").strip().lower() in meta_names:
            tokens = _TOKEN_SPLIT.split((attrs.get("content") or "").lower())
            noindex = noindex or "noindex" in tokens or "none" in tokens
            nofollow = nofollow or "nofollow" in tokens or "none" in tokens

    canonical = None
    for link in tree.tags("link"):
        attrs = link.attributes
        if "href" in attrs and _has_token(attrs.get("rel"), "canonical"):
            canonical = join_url(base_url, attrs["href"] or "")
            break

    title_nodes = tree.tags("title")
    title = _collapse(title_nodes[0].text()) if title_nodes else ""

    links: tuple[Link, ...] = ()
    if max_links > 0:
        links = _extract_links(_link_nodes(tree, html, max_links), base_url, max_links)

    text = ""
    if want_text:
        # One selector walk instead of strip_tags' one per tag; reversed document order
        # removes descendants before their ancestors, so no node is freed twice.
        for node in reversed(tree.css(_TEXTLESS)):  # mutates the tree, so it runs last
            node.decompose()
        body = tree.body
        if body is not None:
            # Stripped fragments, whitespace-only ones left out: the same words as the raw
            # text, and usually nothing left for _collapse to fold.
            text = _collapse(body.text(separator=" ", strip=True, skip_empty=True))[:MAX_TEXT_CHARS]

    return ParsedPage(
        title=title or None,
        links=links,
        noindex=noindex,
        nofollow=nofollow,
        canonical=canonical,
        text=text,
    )


def parse_page(body: bytes, content_type: str | None, url: str, *, max_links: int, robots_name: str) -> ParsedPage:
    """parse_html of a response body, decoded as decode_html does."""
    return parse_html(decode_html(body, content_type), url, max_links=max_links, robots_name=robots_name)


# X-Robots-Tag directives that take a "name: value" form and so are not a bot name.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def robots_directives(values: list[str], product_token: str) -> tuple[bool, bool]:
    """(noindex, nofollow) from X-Robots-Tag header values, as they apply to product_token."""
    me = product_token.strip().lower()
    noindex = nofollow = False
    for value in values:
        applies = True  # until a "botname:" prefix says otherwise; it lasts to the next one
        for raw in value.split(","):
            token = raw.strip().lower()
            name, colon, rest = token.partition(":")
            if colon and name.strip() not in _VALUED_DIRECTIVES:
                applies = name.strip() == me
                token = rest.strip()
            if not applies:
                continue
            if token in ("noindex", "none"):
                noindex = True
            if token in ("nofollow", "none"):
                nofollow = True
    return noindex, nofollow
