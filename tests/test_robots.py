"""Tests for crawler.robots: RFC 9309 parsing, matching, status rules and the cache."""

from __future__ import annotations

import asyncio
import time

import pytest

from crawler.robots import (
    MAX_ROBOTS_BYTES,
    RobotsCache,
    RobotsResponse,
    RobotsRules,
    product_token,
)

UA = "crawler/0.1 (+https://example.org/contact)"
SITE = "https://example.com"


def rules(robots_txt: str | bytes, user_agent: str = UA) -> RobotsRules:
    """The rules a 200 answer with this body gives `user_agent`."""
    body = robots_txt.encode() if isinstance(robots_txt, str) else robots_txt
    return RobotsRules.from_response(RobotsResponse(200, body), user_agent, fetched_at=0.0)


def allowed(robots_txt: str | bytes, path: str, user_agent: str = UA) -> bool:
    """Whether `user_agent` may fetch SITE + path under this robots.txt."""
    return rules(robots_txt, user_agent).allowed(SITE + path)


def matches(pattern: str, path: str) -> bool:
    """Whether a lone `Disallow: pattern` matches `path`."""
    return not allowed(f"User-agent: *\nDisallow: {pattern}\n", path)


# --- product token ---------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "token"),
    [
        (UA, "crawler"),
        ("Googlebot", "Googlebot"),
        ("my_bot-x/2.0", "my_bot-x"),
        ("Mozilla/5.0 (compatible; Foobot/1.0)", "Mozilla"),
        ("  crawler ", "crawler"),
        ("", ""),
    ],
)
def test_product_token(user_agent: str, token: str) -> None:
    assert product_token(user_agent) == token


# --- the RFC's own examples ------------------------------------------------


def test_rfc_2_2_2_longest_match() -> None:
    robots_txt = "User-Agent: crawler\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n"
    assert allowed(robots_txt, "/example/page/")
    assert allowed(robots_txt, "/example/page/other.gif")
    assert not allowed(robots_txt, "/example/page/disallowed.gif")


RFC_5_1 = """\
User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot

EOF
"""


@pytest.mark.parametrize(
    ("agent", "path", "expected"),
    [
        # no group of its own: the "*" group
        ("otherbot", "/", True),
        ("otherbot", "/pic.gif", False),
        ("otherbot", "/pic.gif?size=2", True),  # "$" ends the pattern
        ("otherbot", "/example/page.html", False),
        ("otherbot", "/publications/index.html", True),
        ("otherbot", "/publications/pic.gif", True),  # /publications/ is longer
        # foobot: only its two allowed paths, and nothing from "*"
        ("foobot", "/", False),
        ("foobot", "/example/page.html", True),
        ("foobot", "/example/allowed.gif", True),
        ("foobot", "/example/other.html", False),
        ("foobot", "/publications/index.html", False),
        # barbot and bazbot share one group
        ("barbot", "/example/page.html", False),
        ("barbot", "/example/other.html", True),
        ("bazbot", "/example/page.html", False),
        ("bazbot", "/pic.gif", True),
        # quxbot has an empty group of its own: everything, no "*" fallback
        ("quxbot", "/example/page.html", True),
        ("quxbot", "/pic.gif", True),
    ],
)
def test_rfc_5_1_simple_example(agent: str, path: str, expected: bool) -> None:
    assert allowed(RFC_5_1, path, f"{agent}/1.0") is expected


def test_rfc_5_2_longest_match() -> None:
    robots_txt = "User-Agent: foobot\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n"
    assert allowed(robots_txt, "/example/page/", "foobot")
    assert not allowed(robots_txt, "/example/page/disallowed.gif", "foobot")


def test_rfc_2_2_3_escaped_special_characters_match_literally() -> None:
    assert matches("/path/file-with-a-%2A.html", "/path/file-with-a-*.html")
    assert matches("/path/foo-%24", "/path/foo-$")
    assert not matches("/path/file-with-a-%2A.html", "/path/file-with-a-b.html")


# --- Google's robots.txt spec: path matching table -------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/", "/", True),
        ("/", "/any/thing", True),
        ("/*", "/", True),
        ("/*", "/any/thing", True),
        ("/$", "/", True),
        ("/$", "/page.html", False),
        ("/fish", "/fish", True),
        ("/fish", "/fish.html", True),
        ("/fish", "/fish/salmon.html", True),
        ("/fish", "/fishheads/yummy.html", True),
        ("/fish", "/fish.php?id=anything", True),
        ("/fish", "/Fish.asp", False),
        ("/fish", "/catfish", False),
        ("/fish", "/?id=fish", False),
        ("/fish", "/desert/fish", False),
        ("/fish*", "/fish", True),
        ("/fish*", "/fishheads", True),
        ("/fish*", "/Fish.asp", False),
        ("/fish/", "/fish/", True),
        ("/fish/", "/fish/?id=anything", True),
        ("/fish/", "/fish/salmon.htm", True),
        ("/fish/", "/fish", False),
        ("/fish/", "/fish.html", False),
        ("/fish/", "/animals/fish/", False),
        ("/fish/", "/Fish/Salmon.asp", False),
        ("/*.php", "/index.php", True),
        ("/*.php", "/folder/filename.php", True),
        ("/*.php", "/folder/filename.php?parameters", True),
        ("/*.php", "/folder/any.php.file.html", True),
        ("/*.php", "/filename.php/", True),
        ("/*.php", "/", False),
        ("/*.php", "/windows.PHP", False),
        ("/*.php$", "/filename.php", True),
        ("/*.php$", "/folder/filename.php", True),
        ("/*.php$", "/filename.php?parameters", False),
        ("/*.php$", "/filename.php/", False),
        ("/*.php$", "/filename.php5", False),
        ("/*.php$", "/windows.PHP", False),
        ("/fish*.php", "/fish.php", True),
        ("/fish*.php", "/fishheads/catfish.php?parameters", True),
        ("/fish*.php", "/Fish.PHP", False),
        # more wildcards than the table has
        ("/a*b*c", "/a-b-c", True),
        ("/a*b*c", "/a-c-b", False),
        ("/a*b*c$", "/abcbc", True),
        ("/a*b*c$", "/abcb", False),
        ("*.gif$", "/x/y.gif", True),
    ],
)
def test_google_path_matching(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


@pytest.mark.parametrize(
    ("allow", "disallow", "path", "expected"),
    [
        ("/p", "/", "/page", True),
        ("/folder", "/folder", "/folder/page", True),  # tie: allow wins
        ("/page", "/*.htm", "/page.htm", False),  # the disallow is longer
        ("/page", "/*.ph", "/page.php5", True),  # 5 octets each: allow wins
        ("/$", "/", "/", True),
        ("/$", "/", "/page.htm", False),
    ],
)
def test_google_precedence(allow: str, disallow: str, path: str, expected: bool) -> None:
    robots_txt = f"User-agent: *\nAllow: {allow}\nDisallow: {disallow}\n"
    assert allowed(robots_txt, path) is expected


def test_tie_goes_to_allow_whatever_the_order() -> None:
    assert allowed("User-agent: *\nDisallow: /same\nAllow: /same\n", "/same/x")
    assert allowed("User-agent: *\nAllow: /same\nDisallow: /same\n", "/same/x")


def test_rule_length_counts_octets_as_written() -> None:
    # "/*?id=" and "/shop/" are 6 octets each, so allow wins.  protego 0.7
    # counts "?" as its escape "%3F" and lets the disallow win.
    robots_txt = "User-agent: *\nAllow: /shop/\nDisallow: /*?id=\n"
    assert allowed(robots_txt, "/shop/item?id=3")
    assert not allowed(robots_txt, "/elsewhere?id=3")


# --- group selection -------------------------------------------------------


def test_group_is_chosen_by_product_token_case_insensitively() -> None:
    robots_txt = "User-agent: *\nDisallow: /\n\nUser-agent: CRAWLER\nDisallow: /x\n"
    assert allowed(robots_txt, "/page")
    assert not allowed(robots_txt, "/x")


def test_user_agent_line_with_a_version_still_names_the_product() -> None:
    # protego 0.7 does not match "crawler/1.0" against our token.
    robots_txt = "User-agent: *\nAllow: /\n\nUser-agent: crawler/1.0\nDisallow: /\n"
    assert not allowed(robots_txt, "/page")


@pytest.mark.parametrize("name", ["crawl", "crawlers", "example", "contact", "0.1"])
def test_only_the_whole_product_token_selects_a_group(name: str) -> None:
    # protego 0.7 matches a group name anywhere in the User-Agent header,
    # so "crawl" and "example" (from "+https://example.org") would apply.
    assert allowed(f"User-agent: {name}\nDisallow: /\n", "/page")


def test_groups_with_the_same_name_are_merged() -> None:
    robots_txt = (
        "User-agent: crawler\nDisallow: /a\n\nUser-agent: other\nDisallow: /b\n\nUser-agent: Crawler\nDisallow: /c\n"
    )
    assert not allowed(robots_txt, "/a")
    assert allowed(robots_txt, "/b")
    assert not allowed(robots_txt, "/c")
    assert rules(robots_txt).rule_count == 2


def test_star_group_is_the_fallback_and_is_not_added_to_ours() -> None:
    robots_txt = "User-agent: *\nDisallow: /private\n\nUser-agent: other\nDisallow: /\n"
    assert not allowed(robots_txt, "/private/x")
    assert allowed(robots_txt, "/public")
    assert rules(robots_txt).group == "*"
    ours = robots_txt + "\nUser-agent: crawler\nDisallow: /mine\n"
    assert allowed(ours, "/private/x")
    assert rules(ours).group == "crawler"


def test_no_group_at_all_allows_everything() -> None:
    assert allowed("User-agent: other\nDisallow: /\n", "/page")
    assert allowed("", "/page")
    assert rules("User-agent: other\nDisallow: /\n").group is None


def test_a_run_of_user_agent_lines_shares_the_rules_after_it() -> None:
    robots_txt = "User-agent: other\n\n# note\nUser-agent: crawler\nDisallow: /x\n"
    assert not allowed(robots_txt, "/x")
    assert not allowed(robots_txt, "/x", "other")


def test_rules_before_any_user_agent_belong_to_no_group() -> None:
    assert allowed("Disallow: /\nUser-agent: *\nDisallow: /x\n", "/page")


def test_crawl_delay_is_a_group_member_and_ends_the_user_agent_run() -> None:
    robots_txt = "User-agent: crawler\nCrawl-delay: 5\nUser-agent: other\nDisallow: /\n"
    assert allowed(robots_txt, "/page")
    assert rules(robots_txt).crawl_delay == 5.0


# --- lines the parser must survive ---------------------------------------------


def test_utf8_bom_is_ignored() -> None:
    # protego 0.7 reads the BOM as part of the first key and loses the group.
    body = b"\xef\xbb\xbfUser-agent: *\nDisallow: /\n"
    assert not allowed(body, "/page")


@pytest.mark.parametrize("prefix", [b"\xef\xbb", b"\xef"], ids=["EF BB", "EF"])
def test_a_partial_utf8_bom_is_skipped_like_a_whole_one(prefix: bytes) -> None:
    # Google's parser skips a cut-short BOM; read as text it would spoil the first line.
    got = rules(prefix + b"User-agent: *\nDisallow: /private\nCrawl-delay: 3\n")
    assert got.group == "*"
    assert got.rule_count == 1
    assert got.crawl_delay == 3.0
    assert not got.allowed(SITE + "/private/x")
    assert got.allowed(SITE + "/public")


def test_only_a_bom_prefix_is_skipped_not_other_leading_bytes() -> None:
    # \xef followed by anything but \xbb is no BOM: the line keeps its (unreadable) key and is ignored.
    got = rules(b"\xef\xbfUser-agent: *\nDisallow: /\n")
    assert got.group is None
    assert got.allowed(SITE + "/page")


def test_junk_lines_neither_end_nor_split_a_group() -> None:
    robots_txt = (
        "<html><body><pre>\n"
        "User-agent: other\n"
        "<p>Note: this line is HTML</p>\n"
        "User-agent: crawler\n"
        "this is just prose\n"
        "Disallow: /private\n"
        "</pre>\n"
        "Disallow: /secret\n"
    )
    # protego 0.7 ends the "other" group at the HTML line, so "other" gets nothing.
    for agent in ("crawler", "other"):
        assert not allowed(robots_txt, "/private", agent)
        assert not allowed(robots_txt, "/secret", agent)
        assert allowed(robots_txt, "/public", agent)


def test_unknown_directives_are_ignored() -> None:
    robots_txt = "User-agent: *\nHost: example.com\nNoindex: /x\nDisallow: /y\n"
    assert allowed(robots_txt, "/x")
    assert not allowed(robots_txt, "/y")


@pytest.mark.parametrize(
    "line",
    [
        "Disallow: /x",
        "disallow:/x",
        "DISALLOW : /x",
        "  Disallow\t:\t/x  ",
        "Disallow /x",  # Google reads a missing colon too
        "Disalow: /x",  # and this misspelling
        "Disallow: /x # not a comment on the path",
    ],
)
def test_keys_are_case_insensitive_and_whitespace_tolerant(line: str) -> None:
    for newline in ("\n", "\r\n", "\r"):
        robots_txt = newline.join(["User-Agent : *", line, ""])
        assert not allowed(robots_txt, "/x")
        assert allowed(robots_txt, "/y")


def test_comments_are_stripped() -> None:
    robots_txt = "# header\nUser-agent: * # all\nDisallow: /a#b\n"
    assert not allowed(robots_txt, "/a")
    assert not allowed(robots_txt, "/abc")


def test_empty_disallow_disallows_nothing() -> None:
    assert allowed("User-agent: *\nDisallow:\n", "/page")
    assert allowed("User-agent: *\nDisallow: \nAllow:\n", "/")
    assert rules("User-agent: *\nDisallow:\n").rule_count == 0


def test_robots_txt_itself_is_always_allowed() -> None:
    robots_txt = "User-agent: *\nDisallow: /\n"
    assert allowed(robots_txt, "/robots.txt")
    assert not allowed(robots_txt, "/robots.txt.bak")
    unavailable = RobotsRules.from_response(RobotsResponse(503), UA, fetched_at=0.0)
    assert unavailable.allowed(SITE + "/robots.txt")
    assert not unavailable.allowed(SITE + "/")


# --- what is compared: path, query, encoding ---------------------------------


def test_matching_uses_path_and_query_without_fragment() -> None:
    assert matches("/a$", "/a#fragment")
    assert matches("/*?", "/x?y=1")
    assert not matches("/*?", "/x")
    assert matches("/$", "")  # https://example.com has the path "/"
    assert matches("/?q", "?q")
    assert RobotsRules.from_response(RobotsResponse(200, b"User-agent: *\nDisallow: /$\n"), UA, fetched_at=0.0).allowed(
        "https://example.com:8443/x?y"
    )


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("/café", "/caf%C3%A9"),  # non-ASCII rule, encoded URL
        ("/caf%C3%A9", "/café"),  # encoded rule, non-ASCII URL
        ("/café", "/café"),
        ("/caf%c3%a9", "/caf%C3%A9"),  # hex case does not matter
        ("/日本", "/%E6%97%A5%E6%9C%AC/page"),
        ("/%7Euser", "/~user"),  # escaped unreserved characters are decoded
        ("/~user", "/%7euser"),
        ("/%41%2d%5F", "/A-_"),
        ("/a b", "/a%20b"),  # characters a URI cannot hold are encoded
        ("/a|b", "/a%7Cb"),
    ],
)
def test_equivalent_spellings_match(pattern: str, path: str) -> None:
    assert matches(pattern, path)


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        # Reserved characters differ from their escapes (RFC 3986 §2.2);
        # protego 0.7 decodes %3F and %3D and would match.
        ("/a%3Fb", "/a?b"),
        ("/a%3Db", "/a=b"),
        ("/a%2Fb", "/a/b"),
        # Distinct octets stay distinct; protego 0.7 turns both into U+FFFD.
        ("/%E9", "/%FF"),
        ("/café", "/caf%E9"),
    ],
)
def test_distinct_spellings_do_not_match(pattern: str, path: str) -> None:
    assert not matches(pattern, path)


def test_non_utf8_body_bytes_are_compared_as_octets() -> None:
    latin1 = "User-agent: *\nDisallow: /café\n".encode("latin-1")
    assert not allowed(latin1, "/caf%E9")
    assert allowed(latin1, "/caf%C3%A9")


def test_dollar_is_an_anchor_only_at_the_end() -> None:
    # protego 0.7 also blocks "/a$b" for "Disallow: /a$".
    assert matches("/a$", "/a")
    assert not matches("/a$", "/a$b")
    assert not matches("/a$", "/a?x")
    assert matches("/a$b", "/a$b/c")  # a "$" inside is literal


def test_allow_index_html_does_not_allow_the_directory() -> None:
    # protego 0.7 (like Google) also allows "/" here; RFC 9309 does not.
    robots_txt = "User-agent: *\nAllow: /index.html\nDisallow: /\n"
    assert allowed(robots_txt, "/index.html")
    assert not allowed(robots_txt, "/")


def test_pathological_wildcards_stay_fast() -> None:
    robots_txt = "User-agent: *\nDisallow: /*a*a*a*a*a*a*a*a*a*a*b\n"
    rule = rules(robots_txt + "Disallow: /*a*a*a*a*a*a*a*a*a*a*b$\n")
    started = time.perf_counter()
    assert rule.allowed(SITE + "/" + "a" * 5000)
    assert time.perf_counter() - started < 0.5


# --- the 500 KiB limit ---------------------------------------------------------


def _padded(before_limit: int, tail: str) -> bytes:
    """`User-agent: *`, comment lines filling `before_limit` bytes, then `tail`."""
    head = b"User-agent: *\n"
    filler_len = before_limit - len(head)
    filler = (b"#" * 99 + b"\n") * (filler_len // 100)
    filler += b"#" * (filler_len - len(filler) - 1) + b"\n"
    body = head + filler + tail.encode()
    assert body.index(tail.encode()) == before_limit
    return body


def test_rules_past_500_kib_are_ignored() -> None:
    body = _padded(MAX_ROBOTS_BYTES - 20, "Disallow: /before\nDisallow: /after\n")
    assert MAX_ROBOTS_BYTES == 512_000
    assert not allowed(body, "/before")
    assert allowed(body, "/after")


def test_a_rule_cut_by_the_limit_is_dropped_not_shortened() -> None:
    # Cut at the limit, this line would read "Disallow: /p" and block /public.
    body = _padded(MAX_ROBOTS_BYTES - 12, "Disallow: /private\n")
    assert allowed(body, "/public")
    assert allowed(body, "/private")
    exact = _padded(MAX_ROBOTS_BYTES - 18, "Disallow: /private\n")  # ends at the limit
    assert not allowed(exact, "/private")


# --- fetch outcomes (RFC 9309 §2.3.1) ------------------------------------------


@pytest.mark.parametrize(
    ("status", "may_crawl", "unavailable"),
    [
        (200, False, False),  # the body says Disallow: /
        (204, False, False),
        (401, True, False),
        (403, True, False),
        (404, True, False),
        (410, True, False),
        (429, False, True),
        (500, False, True),
        (503, False, True),
        (301, False, True),  # a redirect the caller could not follow
        (100, False, True),
        (None, False, True),
    ],
)
def test_status_semantics(status: int | None, may_crawl: bool, unavailable: bool) -> None:
    resp = RobotsResponse(status, b"User-agent: *\nDisallow: /\n")
    got = RobotsRules.from_response(resp, UA, fetched_at=12.5)
    assert got.allowed(SITE + "/page") is may_crawl
    assert got.unavailable is unavailable
    assert got.status == status
    assert got.fetched_at == 12.5


def test_unreachable_keeps_the_reason() -> None:
    resp = RobotsResponse(None, error="timed out")
    got = RobotsRules.from_response(resp, UA, fetched_at=0.0)
    assert got.unavailable
    assert got.error == "timed out"
    assert "timed out" in got.describe()


def test_more_than_five_redirects_means_unavailable_so_allow_all() -> None:
    # RFC 9309 §2.3.1.2: past five redirects robots.txt MAY be taken as unavailable,
    # and §2.3.1.3: unavailable means no rules apply.
    resp = RobotsResponse(301, error="more than 5 redirects", too_many_redirects=True)
    got = RobotsRules.from_response(resp, UA, fetched_at=0.0)
    assert got.allowed(SITE + "/page")
    assert not got.unavailable
    assert got.describe() == "301 (more than 5 redirects): allow all"


def test_describe() -> None:
    robots_txt = "Sitemap: https://example.com/s.xml\nUser-agent: crawler\nDisallow: /a\nAllow: /a/b\nCrawl-delay: 2\n"
    assert rules(robots_txt).describe() == ("200, 2 rules for crawler, crawl-delay 2, 1 sitemap")
    assert rules("").describe() == "200, no group applies: allow all"
    assert "allow all" in RobotsRules.from_response(RobotsResponse(404), UA, fetched_at=0.0).describe()
    assert "disallow all" in RobotsRules.from_response(RobotsResponse(503), UA, fetched_at=0.0).describe()


# --- Crawl-delay and Sitemap ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "delay"),
    [
        ("2", 2.0),
        ("0.5", 0.5),
        (" 10 ", 10.0),
        ("0", 0.0),
        ("fast", None),
        ("-1", None),
        ("inf", None),
        ("nan", None),
        ("", None),
    ],
)
def test_crawl_delay_parsing(value: str, delay: float | None) -> None:
    assert rules(f"User-agent: *\nCrawl-delay: {value}\n").crawl_delay == delay


def test_crawl_delay_comes_from_the_chosen_group() -> None:
    robots_txt = (
        "User-agent: *\nCrawl-delay: 9\n\nUser-agent: crawler\nCrawl-delay: 2\n\nUser-agent: crawler\nCrawl-delay: 3\n"
    )
    assert rules(robots_txt).crawl_delay == 3.0  # merged groups: the longest delay
    assert rules(robots_txt, "other").crawl_delay == 9.0
    assert rules("User-agent: *\nCrawl-delay: 9\n\nUser-agent: crawler\n").crawl_delay is None


def test_sitemaps_are_collected_from_anywhere() -> None:
    robots_txt = (
        "Sitemap: https://example.com/a.xml\n"
        "User-agent: other\nDisallow: /\n"
        "Sitemap: https://example.com/b.xml\n"
        "User-agent: crawler\n"
        "sitemap: https://example.com/a.xml\n"
        "Disallow: /x\n"
    )
    got = rules(robots_txt)
    assert got.sitemaps == ("https://example.com/a.xml", "https://example.com/b.xml")
    # Sitemap lines are not group members: "other" and "crawler" stay apart.
    assert allowed(robots_txt, "/page")


def test_non_2xx_has_no_delay_or_sitemaps() -> None:
    got = RobotsRules.from_response(RobotsResponse(404), UA, fetched_at=0.0)
    assert got.crawl_delay is None
    assert got.sitemaps == ()


# --- the cache ---------------------------------------------------------------------


class FakeSite:
    """A robots.txt server stand-in: answers from a queue and records every fetch."""

    def __init__(self, *answers: RobotsResponse | Exception) -> None:
        self.answers = list(answers)
        self.fetched: list[str] = []
        self.gate: asyncio.Event | None = None  # set to hold fetches until released
        self.fetch_began = asyncio.Event()  # set whenever a fetch begins

    async def fetch(self, url: str) -> RobotsResponse:
        self.fetched.append(url)
        self.fetch_began.set()
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


DISALLOW_X = RobotsResponse(200, b"User-agent: *\nDisallow: /x\n")
ORIGIN = "http://127.0.0.1:8080"


def make_cache(clock: FakeClock) -> RobotsCache:
    return RobotsCache(UA, ttl=100.0, retry_interval=10.0, clock=clock)


def test_cache_fetches_once_and_keeps_rules_for_ttl() -> None:
    site, clock = FakeSite(DISALLOW_X), FakeClock()
    cache = make_cache(clock)

    async def story() -> None:
        assert cache.cached(ORIGIN) is None
        first = await cache.rules_for(ORIGIN, site.fetch)
        assert site.fetched == [ORIGIN + "/robots.txt"]
        assert not first.allowed(ORIGIN + "/x")
        assert first.fetched_at == 1000.0
        clock.now += 99.0
        assert await cache.rules_for(ORIGIN, site.fetch) is first
        assert cache.cached(ORIGIN) is first
        assert cache.retry_at(ORIGIN) is None
        clock.now += 1.0  # ttl over
        assert cache.cached(ORIGIN) is None
        second = await cache.rules_for(ORIGIN, site.fetch)
        assert len(site.fetched) == 2
        assert second is not first
        assert second.fetched_at == 1100.0

    asyncio.run(story())


def test_cache_keeps_4xx_for_ttl() -> None:
    site, clock = FakeSite(RobotsResponse(404)), FakeClock()
    cache = make_cache(clock)

    async def story() -> None:
        assert (await cache.rules_for(ORIGIN, site.fetch)).allowed(ORIGIN + "/x")
        clock.now += 50.0
        await cache.rules_for(ORIGIN, site.fetch)
        assert len(site.fetched) == 1
        assert cache.retry_at(ORIGIN) is None

    asyncio.run(story())


def test_cache_keeps_unavailable_only_for_retry_interval() -> None:
    site, clock = FakeSite(RobotsResponse(503), DISALLOW_X), FakeClock()
    cache = make_cache(clock)

    async def story() -> None:
        first = await cache.rules_for(ORIGIN, site.fetch)
        assert first.unavailable
        assert not first.allowed(ORIGIN + "/page")
        assert cache.retry_at(ORIGIN) == 1010.0
        clock.now += 9.0
        assert await cache.rules_for(ORIGIN, site.fetch) is first
        assert len(site.fetched) == 1
        clock.now += 1.0
        assert cache.cached(ORIGIN) is None
        second = await cache.rules_for(ORIGIN, site.fetch)
        assert len(site.fetched) == 2
        assert not second.unavailable
        assert second.allowed(ORIGIN + "/page")
        assert cache.retry_at(ORIGIN) is None

    asyncio.run(story())


def test_fetch_raising_is_treated_as_unreachable() -> None:
    site, clock = FakeSite(ConnectionRefusedError("refused"), TimeoutError()), FakeClock()
    cache = make_cache(clock)

    async def story() -> None:
        first = await cache.rules_for(ORIGIN, site.fetch)
        assert first.unavailable
        assert first.status is None
        assert first.error == "refused"
        assert not first.allowed(ORIGIN + "/page")
        clock.now += 10.0
        second = await cache.rules_for(ORIGIN, site.fetch)
        assert second.error == "TimeoutError"  # str() is empty: the type name stands in

    asyncio.run(story())


def test_concurrent_callers_share_one_fetch() -> None:
    site, clock = FakeSite(DISALLOW_X), FakeClock()
    cache = make_cache(clock)

    async def story() -> None:
        site.gate = asyncio.Event()
        waiting = [asyncio.create_task(cache.rules_for(ORIGIN, site.fetch)) for _ in range(5)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(site.fetched) == 1
        site.gate.set()
        results = await asyncio.gather(*waiting)
        assert all(r is results[0] for r in results)
        assert len(site.fetched) == 1
        # a different origin is fetched on its own
        await cache.rules_for("https://example.com", site.fetch)
        assert site.fetched[-1] == "https://example.com/robots.txt"

    asyncio.run(story())


def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch() -> None:
    site, clock = FakeSite(DISALLOW_X), FakeClock()
    cache = make_cache(clock)

    async def story() -> None:
        site.gate = asyncio.Event()
        fetching = asyncio.create_task(cache.rules_for(ORIGIN, site.fetch))
        impatient = asyncio.create_task(cache.rules_for(ORIGIN, site.fetch))
        await asyncio.sleep(0)
        impatient.cancel()
        await asyncio.sleep(0)
        site.gate.set()
        assert not (await fetching).unavailable
        assert impatient.cancelled()
        assert len(site.fetched) == 1

    asyncio.run(story())


def test_a_cancelled_fetching_caller_hands_the_fetch_to_a_waiter() -> None:
    # The fetch runs in the first caller's task (under its politeness gate), so it
    # ends with that task; a caller that was waiting for it fetches in its place.
    site, clock = FakeSite(DISALLOW_X), FakeClock()
    cache = make_cache(clock)

    async def story() -> None:
        site.gate = asyncio.Event()
        first = asyncio.create_task(cache.rules_for(ORIGIN, site.fetch))
        second = asyncio.create_task(cache.rules_for(ORIGIN, site.fetch))
        await site.fetch_began.wait()
        site.fetch_began.clear()
        assert len(site.fetched) == 1
        first.cancel()
        await site.fetch_began.wait()
        assert len(site.fetched) == 2  # the waiter took over
        site.gate.set()
        rules = await second
        assert not rules.allowed(ORIGIN + "/x")
        assert first.cancelled()
        assert cache.cached(ORIGIN) is rules
        assert len(site.fetched) == 2

    asyncio.run(story())


def test_origin_trailing_slash_is_the_same_origin() -> None:
    site, clock = FakeSite(DISALLOW_X), FakeClock()
    cache = make_cache(clock)

    async def story() -> None:
        await cache.rules_for("https://example.com/", site.fetch)
        assert site.fetched == ["https://example.com/robots.txt"]
        assert cache.cached("https://example.com") is not None

    asyncio.run(story())


def test_a_caller_taking_over_fetches_with_its_own_fetch() -> None:
    # Each caller passes the fetch bound to its own gate; the waiter's is used once the first is cancelled.
    first_site, second_site, clock = FakeSite(DISALLOW_X), FakeSite(DISALLOW_X), FakeClock()
    cache = make_cache(clock)

    async def story() -> None:
        first_site.gate = asyncio.Event()
        first = asyncio.create_task(cache.rules_for(ORIGIN, first_site.fetch))
        await first_site.fetch_began.wait()
        second = asyncio.create_task(cache.rules_for(ORIGIN, second_site.fetch))
        await asyncio.sleep(0)
        assert second_site.fetched == []  # waiting for the first caller's fetch
        first.cancel()
        rules = await second
        assert first.cancelled()
        assert first_site.fetched == [ORIGIN + "/robots.txt"]
        assert second_site.fetched == [ORIGIN + "/robots.txt"]
        assert not rules.allowed(ORIGIN + "/x")

    asyncio.run(story())
