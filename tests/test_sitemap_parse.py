"""Reading sitemap documents: every sitemaps.org format, gzip, dates, the protocol's limits and hostile XML."""

from __future__ import annotations

import gzip
import tracemalloc

import pytest

from crawler.sitemaps.parse import (
    Entry,
    SitemapError,
    SitemapKind,
    looks_like_sitemap,
    normalize_lastmod,
    read_sitemap,
)

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def urlset(*locs: str, lastmod: str | None = None) -> bytes:
    date = f"<lastmod>{lastmod}</lastmod>" if lastmod else ""
    items = "".join(f"<url><loc>{loc}</loc>{date}<priority>0.5</priority></url>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset {NS}>{items}</urlset>'.encode()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>http://a.test/&lol9;</loc></url></urlset>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE urlset [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>http://a.test/&secret;</loc></url></urlset>
"""


def test_an_urlset_lists_its_locs_with_their_lastmod_in_utc() -> None:
    sitemap = read_sitemap(urlset(" http://a.test/x ", "http://a.test/y", lastmod="2024-03-01T10:00:00+02:00"))
    assert sitemap.kind is SitemapKind.URLSET and not sitemap.is_index
    assert sitemap.entries == [
        Entry("http://a.test/x", "2024-03-01T08:00:00.000Z"),
        Entry("http://a.test/y", "2024-03-01T08:00:00.000Z"),
    ]


def test_an_index_lists_sitemaps() -> None:
    body = f"<sitemapindex {NS}><sitemap><loc>http://a.test/s1.xml</loc><lastmod>2024-01-02</lastmod></sitemap>"
    body += "<sitemap><loc>http://a.test/s2.xml.gz</loc></sitemap></sitemapindex>"
    sitemap = read_sitemap(body.encode())
    assert sitemap.is_index
    assert sitemap.entries == [
        Entry("http://a.test/s1.xml", "2024-01-02T00:00:00.000Z"),
        Entry("http://a.test/s2.xml.gz", None),
    ]


def test_plain_text_is_one_url_per_line_and_other_lines_are_ignored() -> None:
    body = b"\xef\xbb\xbfhttp://a.test/1\r\n\n  https://a.test/2  \nnot a url\nftp://a.test/x\nhttp://a.test/3"
    sitemap = read_sitemap(body)
    assert sitemap.kind is SitemapKind.TEXT
    assert [e.loc for e in sitemap.entries] == ["http://a.test/1", "https://a.test/2", "http://a.test/3"]


def test_rss_items_give_their_link_and_pubdate() -> None:
    body = b"""<rss version="2.0"><channel><title>News</title><link>http://a.test/</link>
    <item><title>One</title><link>http://a.test/one</link><pubDate>Tue, 10 Jun 2003 04:00:00 GMT</pubDate></item>
    <item><title>No link</title></item>
    <item><link>http://a.test/two</link></item></channel></rss>"""
    sitemap = read_sitemap(body)
    assert sitemap.kind is SitemapKind.RSS
    assert sitemap.entries == [Entry("http://a.test/one", "2003-06-10T04:00:00.000Z"), Entry("http://a.test/two")]


def test_atom_entries_give_their_alternate_link_and_updated() -> None:
    body = b"""<feed xmlns="http://www.w3.org/2005/Atom"><link href="http://a.test/"/>
    <entry><link rel="self" href="http://a.test/self/1"/><link href="http://a.test/1"/>
      <updated>2003-12-13T18:30:02Z</updated></entry>
    <entry><link rel="alternate" href="http://a.test/2"/><published>2003-12-14T00:00:00Z</published></entry>
    </feed>"""
    sitemap = read_sitemap(body)
    assert sitemap.kind is SitemapKind.ATOM
    assert sitemap.entries == [
        Entry("http://a.test/1", "2003-12-13T18:30:02.000Z"),
        Entry("http://a.test/2", "2003-12-14T00:00:00.000Z"),
    ]


def test_a_gzip_body_is_undone_first() -> None:
    assert read_sitemap(gzip.compress(urlset("http://a.test/z"))).entries == [Entry("http://a.test/z")]
    assert read_sitemap(gzip.compress(b"http://a.test/t\n")).entries == [Entry("http://a.test/t")]


def test_over_50000_urls_the_file_is_invalid_and_none_is_kept() -> None:
    at_limit = urlset(*(f"http://a.test/{i}" for i in range(50_000)))
    assert len(read_sitemap(at_limit).entries) == 50_000
    with pytest.raises(SitemapError, match="more than 50,000 URLs"):
        read_sitemap(urlset(*(f"http://a.test/{i}" for i in range(50_001))))
    with pytest.raises(SitemapError, match="more than 3 URLs"):
        read_sitemap(b"http://a.test/1\nhttp://a.test/2\nhttp://a.test/3\nhttp://a.test/4\n", max_urls=3)


def test_a_gzip_bomb_stops_at_the_uncompressed_limit_with_memory_bounded() -> None:
    bomb = gzip.compress(b"<urlset>" + b" " * 20_000_000, compresslevel=9)
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(SitemapError, match="larger than 1,000,000 bytes uncompressed"):
            read_sitemap(bomb, max_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
    with pytest.raises(SitemapError, match="larger than 10 bytes"):
        read_sitemap(urlset("http://a.test/"), max_bytes=10)


def test_billion_laughs_and_external_entities_are_refused_without_expanding() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(SitemapError, match=r"refused XML.*billion laughs"):
            read_sitemap(BILLION_LAUGHS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
    with pytest.raises(SitemapError, match="refused XML"):
        read_sitemap(EXTERNAL_ENTITY)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty sitemap"),
        (b"<html><body>Not found</body></html>", "not a sitemap: root element <html>"),
        (b"<urlset><url><loc>http://a.test/</loc>", "malformed XML"),
        (b"\x1f\x8b\xff\xff" + b"x" * 20, "bad gzip"),
    ],
)
def test_what_is_not_a_sitemap_says_why(body: bytes, message: str) -> None:
    with pytest.raises(SitemapError, match=message):
        read_sitemap(body)


def test_a_body_is_recognised_by_its_root_element_not_its_name() -> None:
    assert looks_like_sitemap(b'<?xml version="1.0"?>\n<!-- made by hand -->\n<urlset/>', "text/xml")
    assert looks_like_sitemap(b"<sitemapindex/>", "application/xml; charset=utf-8")
    assert looks_like_sitemap(b'<rss version="2.0"/>', "application/rss+xml")
    assert looks_like_sitemap(b'<feed xmlns="http://www.w3.org/2005/Atom"/>', "application/atom+xml")
    assert looks_like_sitemap(gzip.compress(urlset("http://a.test/")), "application/octet-stream")
    assert looks_like_sitemap(gzip.compress(b"http://a.test/\n"), None)
    assert not looks_like_sitemap(b"<urlset/>", "text/html")  # HTML is parsed as a page
    assert not looks_like_sitemap(b"<html/>", "application/xhtml+xml")
    assert not looks_like_sitemap(b"<catalog/>", "application/xml")
    assert not looks_like_sitemap(BILLION_LAUGHS, "application/xml")
    assert not looks_like_sitemap(b"http://a.test/\n", "text/plain")


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2024", "2024-01-01T00:00:00.000Z"),
        ("2024-05", "2024-05-01T00:00:00.000Z"),
        ("2024-05-06", "2024-05-06T00:00:00.000Z"),
        ("2024-05-06T07:08Z", "2024-05-06T07:08:00.000Z"),
        ("2024-05-06T07:08:09.123456-01:00", "2024-05-06T08:08:09.123Z"),
        ("2024-05-06T07:08:09", "2024-05-06T07:08:09.000Z"),
        ("Tue, 10 Jun 2003 04:00:00 +0200", "2003-06-10T02:00:00.000Z"),
        ("yesterday", None),
        ("2024-13-01", None),
        ("", None),
    ],
)
def test_lastmod_is_normalised_to_iso_utc(text: str, iso: str | None) -> None:
    assert normalize_lastmod(text) == iso
