"""Tests for crawler.parse: content types, charset decoding, link and meta extraction."""

from __future__ import annotations

import codecs

import pytest

from crawler.parse import (
    _UNICODE_SPACE,
    MAX_TEXT_CHARS,
    Link,
    _collapse,
    decode_html,
    is_html,
    parse_html,
    robots_directives,
)

PAGE = "http://example.com/dir/page.html"


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/html", True),
        ("text/html; charset=utf-8", True),
        ("TEXT/HTML;charset=UTF-8", True),
        (" text/html ", True),
        ("application/xhtml+xml", True),
        ("application/xhtml+xml; charset=utf-8", True),
        ("text/plain", False),
        ("application/json", False),
        ("text/htmlx", False),
        ("", False),
        (None, False),
    ],
)
def test_is_html(content_type: str | None, expected: bool) -> None:
    assert is_html(content_type) is expected


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        # header charset
        ("café €".encode(), "text/html; charset=utf-8", "café €"),
        ("café".encode("latin-1"), 'text/html; charset="ISO-8859-1"', "café"),
        (b"\x80 caf\xe9", "text/html; charset=latin1", "€ café"),  # browsers read latin-1 as cp1252
        ("привет".encode("koi8-r"), "text/html; charset=KOI8-R", "привет"),
        ("日本語".encode("shift_jis"), "text/html; charset=Shift_JIS", "日本語"),
        # a wrongly declared charset: replacement characters, never an exception
        (b"caf\xe9 ok", "text/html; charset=utf-8", "caf\ufffd ok"),
        # unknown or non-text charset names fall through to the next step
        ("café".encode(), "text/html; charset=no-such-charset", "café"),
        ("café".encode(), "text/html; charset=rot13", "café"),
        ("café".encode(), "text/html; charset=base64", "café"),
        (b"\\u0041", "text/html; charset=unicode_escape", "\\u0041"),
        (b'<meta charset="windows-1252">\x93q\x94', "text/html; charset=bogus", '<meta charset="windows-1252">“q”'),
        # BOM when the header names no charset
        (codecs.BOM_UTF8 + "café".encode(), "text/html", "café"),
        (codecs.BOM_UTF8 + "café".encode(), None, "café"),
        (codecs.BOM_UTF16_LE + "café".encode("utf-16-le"), "text/html", "café"),
        (codecs.BOM_UTF16_BE + "café".encode("utf-16-be"), None, "café"),
        # the header wins over a BOM, but the BOM's U+FEFF is not left in the text
        (codecs.BOM_UTF8 + "café".encode(), "text/html; charset=utf-8", "café"),
        # the BOM wins over <meta>
        (codecs.BOM_UTF8 + '<meta charset="iso-8859-5">é'.encode(), None, '<meta charset="iso-8859-5">é'),
        # <meta charset> and <meta http-equiv> in the first 4 KB
        (
            b"<html><head><META CHARSET=windows-1252><p>\x93hi\x94 caf\xe9",
            None,
            "<html><head><META CHARSET=windows-1252><p>“hi” café",
        ),
        (
            b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"><p>\x80 \xe9',
            "text/html",
            '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"><p>€ é',
        ),
        (b"<meta charset='utf-16'>caf\xc3\xa9", None, "<meta charset='utf-16'>café"),  # WHATWG: utf-16 → utf-8
        (b"<meta charset=nonsense>caf\xc3\xa9", None, "<meta charset=nonsense>café"),
        # undecodable bytes with no declaration: UTF-8 with replacement
        (b"ok \xc3\x28 \xff end", None, "ok \ufffd( \ufffd end"),
        (b"", None, ""),
    ],
)
def test_decode_html(body: bytes, content_type: str | None, expected: str) -> None:
    assert decode_html(body, content_type) == expected


def test_decode_html_ignores_meta_after_4kb() -> None:
    body = b"<!--" + b"x" * 5000 + b'--><meta charset="windows-1252">\x93'
    assert decode_html(body, None).endswith('<meta charset="windows-1252">\ufffd')


def links(html: str, max_links: int = 100, page: str = PAGE) -> list[tuple[str, bool]]:
    return [(link.url, link.nofollow) for link in parse_html(html, page, max_links=max_links).links]


def test_links_are_joined_normalised_and_weird_ones_skipped() -> None:
    html = """
    <a href="other.html">1</a>
    <a href="/Root/Path?Q=1#frag">2</a>
    <a href="  https://Other.example:443/x \n">3</a>
    <a href="//cdn.example.org/lib">4</a>
    <map><area href="../area.html"></map>
    <a href="javascript:void(0)">js</a>
    <a href="mailto:a@example.com">mail</a>
    <a href="tel:+123">tel</a>
    <a href="data:text/html,hi">data</a>
    <a href="ftp://example.com/f">ftp</a>
    <a href="">empty</a>
    <a href>valueless</a>
    <a name="anchor">no href</a>
    <a href="http://[::1">broken</a>
    <a href="#top">self</a>
    """
    assert links(html) == [
        ("http://example.com/dir/other.html", False),
        ("http://example.com/Root/Path?Q=1", False),
        ("https://other.example/x", False),
        ("http://cdn.example.org/lib", False),
        ("http://example.com/area.html", False),
        ("http://example.com/dir/page.html", False),
    ]


def test_a_page_without_area_elements_gives_the_same_links_through_the_tag_walk() -> None:
    # With no <area>, the links come from tags("a") instead of a CSS selector: anchors without
    # href must be skipped there too, in document order.
    html = '<a name="top">no href</a><a href="b.html">b</a><a href>valueless</a><a href="a.html">a</a>'
    assert links(html) == [("http://example.com/dir/b.html", False), ("http://example.com/dir/a.html", False)]
    assert links(html + '<map><area href="c.html"></map>') == [*links(html), ("http://example.com/dir/c.html", False)]


def test_base_href_is_resolved_against_page_and_used_for_links() -> None:
    html = '<head><base href="../base/"><link rel="canonical" href="canon"></head><a href="x">x</a>'
    page = parse_html(html, PAGE, max_links=10)
    assert page.links == (Link("http://example.com/base/x", False),)
    assert page.canonical == "http://example.com/base/canon"


def test_unusable_base_href_falls_back_to_page_url() -> None:
    assert links('<base href="javascript:0"><a href="x">x</a>') == [("http://example.com/dir/x", False)]
    assert links('<base target="_blank"><a href="x">x</a>') == [("http://example.com/dir/x", False)]


def test_nofollow_and_dedupe() -> None:
    html = """
    <a href="/a">a</a>
    <a href="/a" rel="nofollow">a again, nofollow</a>
    <a href="/b" rel="External NoFollow">b</a>
    <a href="/c" rel="nofollower">c</a>
    <a href="/b">b again, followed</a>
    <a href="/d" rel="nofollow">d</a>
    <a href="/a#x">a again</a>
    """
    assert links(html) == [
        ("http://example.com/a", False),
        ("http://example.com/b", False),
        ("http://example.com/c", False),
        ("http://example.com/d", True),
    ]


def test_links_capped_at_max_links_in_document_order() -> None:
    html = "".join(f'<a href="/p/{i}">{i}</a>' for i in range(10))
    assert links(html, max_links=3) == [(f"http://example.com/p/{i}", False) for i in range(3)]
    # duplicates do not use up the cap
    assert links('<a href="/x">1</a><a href="/x">2</a><a href="/y">3</a>', max_links=2) == [
        ("http://example.com/x", False),
        ("http://example.com/y", False),
    ]


def test_both_link_walks_agree() -> None:
    # Few links per cap uses css(), many uses the lazy walk; results must not depend on it.
    html = "<body>" + "".join(
        f'<div><a href="/p/{i}" rel="{"nofollow" if i % 3 else ""}">{i}</a><map><area href="/m/{i}"></map></div>'
        for i in range(40)
    )
    lazy = links(html, max_links=5)
    eager = links(html, max_links=500)
    assert len(eager) == 80
    assert lazy == eager[:5]


def test_huge_page_is_capped() -> None:
    html = "<html><body>" + "".join(f'<p><a href="/p/{i}">link {i}</a></p>' for i in range(100_000))
    page = parse_html(html, PAGE, max_links=1000, want_text=False)
    assert len(page.links) == 1000
    assert page.links[0] == Link("http://example.com/p/0", False)
    assert page.links[-1] == Link("http://example.com/p/999", False)
    assert page.text == ""


def test_malformed_html_still_yields_links() -> None:
    html = (
        '<html><body><div><p>unclosed <b>bold <a href="/one">one<ul><li><a href=/two>two</i></div>'
        "\x00<<<>>> <a href='/three'>"
    )
    assert links(html) == [
        ("http://example.com/one", False),
        ("http://example.com/two", False),
        ("http://example.com/three", False),
    ]
    assert links("garbage \x00\x01 <<a href=/x>") == [("http://example.com/x", False)]
    assert links("") == []


@pytest.mark.parametrize(
    ("head", "noindex", "nofollow"),
    [
        ("", False, False),
        ('<meta name="robots" content="noindex">', True, False),
        ('<meta name="robots" content="nofollow">', False, True),
        ('<meta name="ROBOTS" content="NOINDEX, NOFOLLOW">', True, True),
        ('<meta name=" Robots " content="index,follow">', False, False),
        ('<meta name="robots" content="none">', True, True),
        ('<meta name="robots" content="all">', False, False),
        ('<meta name="robots" content="noindex"><meta name="robots" content="nofollow">', True, True),
        ('<meta name="googlebot" content="noindex">', False, False),
        ('<meta name="description" content="noindex nofollow">', False, False),
        ('<meta content="noindex">', False, False),
    ],
)
def test_meta_robots(head: str, noindex: bool, nofollow: bool) -> None:
    page = parse_html(f"<head>{head}</head><body>x</body>", PAGE, max_links=10)
    assert (page.noindex, page.nofollow) == (noindex, nofollow)


def test_meta_named_after_our_product_token_applies_to_us_only() -> None:
    head = '<meta name="Crawler" content="noindex"><meta name="otherbot" content="nofollow">'
    page = parse_html(f"<head>{head}</head>", PAGE, max_links=10, robots_name="crawler")
    assert (page.noindex, page.nofollow) == (True, False)
    assert parse_html(f"<head>{head}</head>", PAGE, max_links=10).noindex is False


def test_meta_nofollow_does_not_change_link_flags() -> None:
    page = parse_html('<meta name="robots" content="nofollow"><a href="/a">a</a>', PAGE, max_links=10)
    assert page.nofollow is True
    assert page.links == (Link("http://example.com/a", False),)


@pytest.mark.parametrize(
    ("head", "canonical"),
    [
        ('<link rel="canonical" href="/Canon?x=1#f">', "http://example.com/Canon?x=1"),
        ('<link rel="Canonical" href="https://Other.example/c">', "https://other.example/c"),
        ('<link rel="stylesheet" href="/s.css"><link rel="canonical" href="c">', "http://example.com/dir/c"),
        ('<link rel="canonical">', None),
        ('<link rel="canonical" href="javascript:0">', None),
        ('<link rel="alternate" href="/alt">', None),
        ("", None),
    ],
)
def test_canonical(head: str, canonical: str | None) -> None:
    assert parse_html(f"<head>{head}</head>", PAGE, max_links=10).canonical == canonical


@pytest.mark.parametrize(
    ("html", "title"),
    [
        ("<title>  Hello \n\t World  </title>", "Hello World"),
        ("<title>A &amp; B</title><title>second</title>", "A & B"),
        ("<title>   </title>", None),
        ("<title></title>", None),
        ("<p>no title</p>", None),
    ],
)
def test_title(html: str, title: str | None) -> None:
    assert parse_html(html, PAGE, max_links=10).title == title


def test_text_is_visible_body_text_collapsed() -> None:
    html = """<html><head><title>T</title><style>h1 {}</style></head><body>
    <h1>Head&nbsp;line</h1><p>First   para<br>line two</p><!-- comment -->
    <script>var hidden = 1;</script><noscript><a href="/ns">no script</a></noscript>
    <template><p>template</p></template><style>.x {}</style>
    <div>Last <b>bold</b></div></body></html>"""
    page = parse_html(html, PAGE, max_links=10)
    assert page.text == "Head line First para line two Last bold"
    assert page.links == (Link("http://example.com/ns", False),)  # links inside noscript still count
    assert parse_html(html, PAGE, max_links=10, want_text=False).text == ""


def test_text_is_capped() -> None:
    html = "<body>" + "<p>word</p>" * 60_000
    text = parse_html(html, PAGE, max_links=10).text
    assert len(text) == MAX_TEXT_CHARS
    assert text.startswith("word word ")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], (False, False)),
        (["noindex"], (True, False)),
        (["nofollow"], (False, True)),
        (["noindex, nofollow"], (True, True)),
        (["NoIndex", "NOFOLLOW"], (True, True)),
        (["none"], (True, True)),
        (["all"], (False, False)),
        (["mybot: noindex"], (True, False)),
        (["MyBot: none"], (True, True)),
        (["otherbot: noindex, nofollow"], (False, False)),
        (["otherbot: noindex", "mybot: nofollow"], (False, True)),
        (["otherbot: noindex, mybot: nofollow"], (False, True)),
        (["noindex, otherbot: nofollow"], (True, False)),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], (False, False)),
        (["max-snippet: 20, noindex"], (True, False)),
        (["mybot: unavailable_after: 25 Jun 2010 15:00:00 PST"], (False, False)),
        ([" , ,"], (False, False)),
    ],
)
def test_robots_directives(values: list[str], expected: tuple[bool, bool]) -> None:
    assert robots_directives(values, "MyBot") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "plain words only",
        " lead and trail ",
        "two  spaces",
        "line\nbreak",
        "tab\there",
        "no\xa0break\xa0space",
        "em\u2003space and ideographic\u3000space",
        "caf\u00e9 au lait",
        "\x1cfile separator\x1f",
        "mixed \r\n\t \xa0 runs\u2028",
    ],
)
def test_collapse_folds_exactly_as_split_and_join(text: str) -> None:
    assert _collapse(text) == " ".join(text.split())


def test_collapse_knows_every_unicode_space() -> None:
    # The fast path trusts this list: a space character missing from it would go unfolded.
    assert set(_UNICODE_SPACE) == {chr(c) for c in range(0x80, 0x110000) if chr(c).isspace()}


def test_visible_text_has_the_words_of_the_raw_text_in_order() -> None:
    html = (
        "<body>\n  <p>First\n   para&nbsp;x</p>\n\n<ul>\n <li> a </li><li>b</li></ul>"
        "<pre>\t c \r\n d</pre>\u3000e</body>"
    )
    assert parse_html(html, PAGE, max_links=10).text == "First para x a b c d e"
