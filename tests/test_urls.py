"""Tests for crawler.urls: normalisation, joining, host keys and scope rules."""

from __future__ import annotations

import pytest

from crawler.config import CrawlConfig
from crawler.errors import SkipReason
from crawler.urls import Scope, _normalize_slow, host_key, join_url, normalize_url, origin

NORMALIZE_CASES = [
    # already normal: returned untouched
    ("http://example.com/", "http://example.com/"),
    ("https://example.com/a/B/c.html?X=1&y=Z", "https://example.com/a/B/c.html?X=1&y=Z"),
    # scheme and host lowercased, path and query case kept
    ("HTTP://Example.COM/Path/To?Query=Value", "http://example.com/Path/To?Query=Value"),
    ("HtTpS://WWW.EXAMPLE.COM", "https://www.example.com/"),
    # default ports dropped, others kept
    ("http://example.com:80/a", "http://example.com/a"),
    ("https://example.com:443/a", "https://example.com/a"),
    ("http://example.com:443/a", "http://example.com:443/a"),
    ("https://example.com:80/a", "https://example.com:80/a"),
    ("https://example.com:8443/a", "https://example.com:8443/a"),
    ("http://example.com:080/", "http://example.com/"),
    ("http://example.com:/", "http://example.com/"),
    # fragment dropped, empty path becomes "/", empty query dropped
    ("http://example.com/a#frag", "http://example.com/a"),
    ("http://example.com#frag", "http://example.com/"),
    ("http://example.com/a?#", "http://example.com/a"),
    ("http://example.com?q=1", "http://example.com/?q=1"),
    # dot segments
    ("http://example.com/a/./b/../c", "http://example.com/a/c"),
    ("http://example.com/a/b/..", "http://example.com/a/"),
    ("http://example.com/a/b/.", "http://example.com/a/b/"),
    ("http://example.com/../../x", "http://example.com/x"),
    ("http://example.com/a//../b", "http://example.com/a/b"),
    ("http://example.com/a/.hidden/..x", "http://example.com/a/.hidden/..x"),
    ("http://example.com/a?x=/../y", "http://example.com/a?x=/../y"),
    # escaping: unsafe characters encoded, existing escapes kept (hex uppercased)
    ("http://example.com/a b?c d", "http://example.com/a%20b?c%20d"),
    ("http://example.com/caf\u00e9?q=\u00fc", "http://example.com/caf%C3%A9?q=%C3%BC"),
    ("http://example.com/%7e%2f%41?a=%2b", "http://example.com/%7E%2F%41?a=%2B"),
    ("http://example.com/%7E?q=%E2%82%AC", "http://example.com/%7E?q=%E2%82%AC"),
    ("http://example.com/100%?p=%zz", "http://example.com/100%25?p=%25zz"),
    ('http://example.com/<>"{}|\\^`[]', "http://example.com/%3C%3E%22%7B%7D%7C%5C%5E%60%5B%5D"),
    ("http://example.com/a+b;c=d,e@f:g!$&'()*~", "http://example.com/a+b;c=d,e@f:g!$&'()*~"),
    ("http://example.com/?a=1&b=/x?y", "http://example.com/?a=1&b=/x?y"),
    # userinfo dropped
    ("http://user:secret@example.com/", "http://example.com/"),
    ("http://a@b@example.com/", "http://example.com/"),
    # IDN and odd hosts
    ("http://b\u00fccher.example/", "http://xn--bcher-kva.example/"),
    ("http://B\u00dcCHER.example/x", "http://xn--bcher-kva.example/x"),
    ("http://\u4f8b\u3048.\u30c6\u30b9\u30c8/", "http://xn--r8jz45g.xn--zckzah/"),
    ("http://xn--bcher-kva.example/", "http://xn--bcher-kva.example/"),
    ("http://example.com./", "http://example.com/"),
    ("http://%65xample.com/", "http://example.com/"),
    ("http://my_host.example.com/", "http://my_host.example.com/"),
    ("http://192.168.0.1:8080/", "http://192.168.0.1:8080/"),
    # IPv6 stays bracketed, compressed and lowercased
    ("http://[::1]/", "http://[::1]/"),
    ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ("http://[2001:DB8:0:0:0:0:0:1]:80/", "http://[2001:db8::1]/"),
    # surrounding whitespace and embedded tab/newline
    ("  http://example.com/a\n/b\t ", "http://example.com/a/b"),
]


@pytest.mark.parametrize(("url", "expected"), NORMALIZE_CASES)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize(("url", "expected"), NORMALIZE_CASES)
def test_normalize_url_is_idempotent_and_fast_path_agrees(url: str, expected: str) -> None:
    assert normalize_url(expected) == expected
    assert _normalize_slow(expected) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com",
        "/relative/path",
        "//example.com/",
        "ftp://example.com/",
        "mailto:someone@example.com",
        "javascript:alert(1)",
        "data:text/html,hi",
        "file:///etc/passwd",
        "http:example.com",
        "http://",
        "http:///path",
        "http://[::1",
        "http://[::1]x/",
        "http://[not-ipv6]/",
        "http://[fe80::1%25eth0]/",
        "http://a:99999/",
        "http://a:65536/",
        "http://a:0/",
        "http://a:-1/",
        "http://a:8o/",
        "http://a:\u0661\u0662/",
        "http://a:80:80/",
        "http://exa\x01mple.com/",
        "http://exa\x7fmple.com/",
        "http://exa mple.com/",
        "http://exa<mple.com/",
        "http://a..b/",
        "http://.example.com/",
        "http://./",
        "http://%ff/",
        "http://\u2603.net/",
        "http://example.com/\ud800",
    ],
)
def test_normalize_url_rejects(url: str) -> None:
    assert normalize_url(url) is None


BASE = "http://example.com/dir/page.html?q=1"


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("other.html", "http://example.com/dir/other.html"),
        ("../up.html", "http://example.com/up.html"),
        ("../../../../top", "http://example.com/top"),
        ("./", "http://example.com/dir/"),
        ("/root?A=B", "http://example.com/root?A=B"),
        ("?x=2", "http://example.com/dir/page.html?x=2"),
        ("#section", "http://example.com/dir/page.html?q=1"),
        ("//cdn.example.org/lib.js", "http://cdn.example.org/lib.js"),
        ("https://Other.example/X", "https://other.example/X"),
        ("HTTP://other.example:80", "http://other.example/"),
        ("  spaced.html \n", "http://example.com/dir/spaced.html"),
        ("/a\n/b\t/c\r", "http://example.com/a/b/c"),
        ("with space.html", "http://example.com/dir/with%20space.html"),
        ("caf\u00e9", "http://example.com/dir/caf%C3%A9"),
        ("http:relative", "http://example.com/dir/relative"),
        ("//b\u00fccher.example/", "http://xn--bcher-kva.example/"),
    ],
)
def test_join_url(href: str, expected: str) -> None:
    assert join_url(BASE, href) == expected


@pytest.mark.parametrize(
    "href",
    [
        "",
        "   ",
        "\t\n",
        "javascript:void(0)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "java\nscript:alert(1)",
        "mailto:a@example.com",
        "tel:+123",
        "data:text/html,hi",
        "ftp://example.com/f",
        "about:blank",
        "http://[::1",
        "http://a:99999/",
        "//",
    ],
)
def test_join_url_skips(href: str) -> None:
    assert join_url(BASE, href) is None


def test_join_url_root_relative_against_unnormalized_base() -> None:
    assert join_url("HTTP://User@Example.COM:80/x", "/y/../z") == "http://example.com/z"


@pytest.mark.parametrize(
    ("url", "key", "orig"),
    [
        ("https://Example.com/", "example.com:443", "https://example.com"),
        ("http://example.com/a?b", "example.com:80", "http://example.com"),
        ("http://example.com:8080/a", "example.com:8080", "http://example.com:8080"),
        ("https://example.com:443/", "example.com:443", "https://example.com"),
        ("http://[::1]:8080/", "[::1]:8080", "http://[::1]:8080"),
        ("https://[::1]/", "[::1]:443", "https://[::1]"),
        ("http://b\u00fccher.example/", "xn--bcher-kva.example:80", "http://xn--bcher-kva.example"),
    ],
)
def test_host_key_and_origin(url: str, key: str, orig: str) -> None:
    assert host_key(url) == key
    assert origin(url) == orig


@pytest.mark.parametrize("url", ["ftp://example.com/", "not a url", "http://[::1"])
def test_host_key_and_origin_reject_non_http(url: str) -> None:
    with pytest.raises(ValueError):
        host_key(url)
    with pytest.raises(ValueError):
        origin(url)


def scope(**crawl: object) -> Scope:
    crawl.setdefault("seeds", ("https://example.com/",))
    return Scope.from_config(CrawlConfig(**crawl))  # type: ignore[arg-type]


def test_scope_defaults_to_seed_hosts_on_any_port() -> None:
    s = scope(seeds=("https://Example.com/start", "http://other.org:8080/"))
    assert s.skip_reason("https://example.com/", 0) is None
    assert s.skip_reason("http://example.com:8443/x", 1) is None
    assert s.skip_reason("http://other.org/", 1) is None
    assert s.skip_reason("https://www.example.com/", 1) is SkipReason.OFF_SITE
    assert s.skip_reason("https://example.com.evil.org/", 1) is SkipReason.OFF_SITE


def test_scope_allowed_hosts_exact_and_wildcard() -> None:
    s = scope(allowed_hosts=("*.example.com", "Exact.org", "b\u00fccher.example", "[::1]"))
    for url in (
        "https://example.com/",
        "https://www.example.com/",
        "https://a.b.example.com:8443/",
        "http://exact.org/",
        "http://xn--bcher-kva.example/",
        "http://[::1]:8080/",
    ):
        assert s.skip_reason(url, 0) is None, url
    for url in (
        "https://badexample.com/",
        "https://example.com.evil.org/",
        "http://www.exact.org/",
        "http://org/",
        "http://com/",
        "http://[::2]/",
    ):
        assert s.skip_reason(url, 0) is SkipReason.OFF_SITE, url


def test_scope_url_too_long() -> None:
    s = scope(max_url_length=40)
    ok = "https://example.com/" + "a" * 20
    assert len(ok) == 40
    assert s.skip_reason(ok, 0) is None
    assert s.skip_reason(ok + "b", 0) is SkipReason.URL_TOO_LONG


def test_scope_depth() -> None:
    s = scope(max_depth=2)
    assert s.skip_reason("https://example.com/", 2) is None
    assert s.skip_reason("https://example.com/", 3) is SkipReason.DEPTH
    assert scope(max_depth=0).skip_reason("https://example.com/", 1) is SkipReason.DEPTH


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/a/a/a", None),
        ("/a/a/a/", None),
        ("/a/a/a/a", SkipReason.REPEATED_SEGMENTS),
        ("/x/y/x/y/x/y", None),
        ("/x/y/x/y/x/y/x/y", SkipReason.REPEATED_SEGMENTS),
        ("/a/b/a/c/a/d/a", SkipReason.REPEATED_SEGMENTS),
        ("/a//a//a//b//c//d", None),  # empty segments are not counted
        ("/p?x=/a/a/a/a/a", None),  # only the path counts
        ("/A/a/A/a/A/a", None),  # segments compare case-sensitively
    ],
)
def test_scope_repeated_segments(path: str, reason: SkipReason | None) -> None:
    assert scope(max_repeated_segments=3).skip_reason("https://example.com" + path, 0) is reason


def test_scope_include_and_exclude() -> None:
    s = scope(include=(r"/docs/", r"\?page=\d+$"), exclude=(r"\.pdf$", r"/private/"))
    assert s.skip_reason("https://example.com/docs/intro", 0) is None
    assert s.skip_reason("https://example.com/?page=2", 0) is None
    assert s.skip_reason("https://example.com/blog/", 0) is SkipReason.NOT_INCLUDED
    assert s.skip_reason("https://example.com/docs/manual.pdf", 0) is SkipReason.EXCLUDED
    assert s.skip_reason("https://example.com/docs/private/x", 0) is SkipReason.EXCLUDED
    assert scope(exclude=(r"\.pdf$",)).skip_reason("https://example.com/anything", 0) is None


def test_scope_check_order() -> None:
    s = scope(
        max_url_length=60,
        max_depth=1,
        max_repeated_segments=2,
        include=(r"/keep",),
        exclude=(r"/drop",),
    )
    base = "https://example.com"
    # Each URL breaks every rule from its own onwards, so only the order decides.
    assert s.skip_reason("https://elsewhere.org/drop/a/a/a/" + "x" * 40, 5) is SkipReason.URL_TOO_LONG
    assert s.skip_reason("https://elsewhere.org/drop/a/a/a", 5) is SkipReason.OFF_SITE
    assert s.skip_reason(base + "/drop/a/a/a", 5) is SkipReason.DEPTH
    assert s.skip_reason(base + "/drop/a/a/a", 1) is SkipReason.REPEATED_SEGMENTS
    assert s.skip_reason(base + "/drop/a/a", 1) is SkipReason.EXCLUDED
    assert s.skip_reason(base + "/other", 1) is SkipReason.NOT_INCLUDED
    assert s.skip_reason(base + "/keep", 1) is None


def test_scope_rejects_bad_host_entry() -> None:
    with pytest.raises(ValueError):
        scope(allowed_hosts=("exa mple.com",))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://a.com/x;jsessionid=0A1B2C3D", "http://a.com/x"),
        ("http://a.com/x;JSESSIONID=0A1B2C3D?b=1", "http://a.com/x?b=1"),
        ("http://a.com/x;jsessionid=0A1B/y", "http://a.com/x/y"),
        ("http://a.com/;jsessionid=0A1B", "http://a.com/"),
        ("http://a.com/p?PHPSESSID=abc&x=1", "http://a.com/p?x=1"),
        ("http://a.com/p?x=1&phpsessid=abc&y=2", "http://a.com/p?x=1&y=2"),
        ("http://a.com/p?ASPSESSIONIDQACTRBDS=ABCDEFGH&cfid=12&cftoken=34", "http://a.com/p"),
        ("http://a.com/p?sid=0123456789abcdef0123456789abcdef", "http://a.com/p"),
        ("http://a.com/p?sessionid=ABCDEFGHIJKLMNOP&q=1", "http://a.com/p?q=1"),
        # kept: a short sid is more likely a section id than a session; look-alike names stay
        ("http://a.com/p?sid=7", "http://a.com/p?sid=7"),
        ("http://a.com/p?said=0123456789abcdef0123", "http://a.com/p?said=0123456789abcdef0123"),
        ("http://a.com/p?x_jsessionid=1", "http://a.com/p?x_jsessionid=1"),
        ("http://sid.example/?sessions=1", "http://sid.example/?sessions=1"),
    ],
)
def test_session_ids_are_dropped_so_they_cannot_multiply_urls(url: str, expected: str) -> None:
    assert normalize_url(url) == expected
    assert normalize_url(expected) == expected
    assert _normalize_slow(url) == expected
