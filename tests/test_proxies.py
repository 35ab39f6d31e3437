"""Proxies: ProxyRules read from the config or a given environment, and crawls of local http and https
sites through a real forward proxy on loopback (tests/support/forward_proxy.py)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from crawler.config import HttpConfig, config_from_dict
from crawler.engine import Crawl, Outcome
from crawler.errors import ConfigError
from crawler.http.client import build_transport
from crawler.http.proxies import ProxyRules, basic_credentials, parse_no_proxy
from crawler.http.transport import H1Transport
from tests.crawlkit import closed_port, make_config, rows
from tests.support.forward_proxy import ForwardProxy
from tests.support.localsite import SiteServer
from tests.support.site import Site

# ---- ProxyRules: pure ---------------------------------------------------------------------


def rules(environ: Mapping[str, str], **http: Any) -> ProxyRules:
    return ProxyRules.from_config(HttpConfig(**http), environ)


def via(rules: ProxyRules, url: str) -> str | None:
    proxy = rules.for_url(httpx.URL(url))
    return None if proxy is None else str(proxy)


def test_http_proxy_takes_both_schemes_and_the_environment_is_not_read() -> None:
    found = rules({"HTTPS_PROXY": "http://env:1", "NO_PROXY": "*"}, proxy="http://cfg:3128")
    assert via(found, "http://a.test/") == "http://cfg:3128"
    assert via(found, "https://a.test/x") == "http://cfg:3128"


def test_the_environment_decides_per_scheme_lowercase_first_all_proxy_as_fallback() -> None:
    env = {"http_proxy": "http://lower:1", "HTTP_PROXY": "http://upper:2", "ALL_PROXY": "all:3"}
    found = rules(env)
    assert via(found, "http://a.test/") == "http://lower:1"
    assert via(found, "https://a.test/") == "http://all:3"  # no HTTPS_PROXY; "host:port" means http://
    assert via(rules({"HTTPS_PROXY": "http://s:4"}), "https://a.test/") == "http://s:4"
    assert via(rules({"HTTPS_PROXY": "http://s:4"}), "http://a.test/") is None
    assert via(rules({"HTTP_PROXY": "  "}), "http://a.test/") is None  # empty means unset
    assert not rules({}).any


def test_trust_env_false_ignores_the_environment() -> None:
    found = rules({"HTTP_PROXY": "http://p:1", "HTTPS_PROXY": "http://p:1"}, trust_env=False)
    assert not found.any
    assert via(found, "http://a.test/") is None


def test_under_cgi_an_uppercase_http_proxy_is_not_trusted() -> None:
    # httpoxy: a request's "Proxy:" header reaches a CGI script as HTTP_PROXY.
    assert via(rules({"HTTP_PROXY": "http://evil:1", "REQUEST_METHOD": "GET"}), "http://a.test/") is None
    assert via(rules({"http_proxy": "http://ok:1", "REQUEST_METHOD": "GET"}), "http://a.test/") == "http://ok:1"


@pytest.mark.parametrize(
    ("no_proxy", "url", "bypassed"),
    [
        ("a.test", "http://a.test/", True),
        ("a.test", "http://www.a.test/", True),  # a domain covers its subdomains, as in curl
        ("a.test", "http://aa.test/", False),
        (".a.test", "http://a.test/", True),
        (".a.test", "http://x.a.test/", True),
        ("*.a.test", "http://x.a.test/", True),
        ("A.Test.", "http://x.a.test/", True),
        ("*", "https://anything.test/", True),
        ("b.test, a.test:8080", "http://a.test:8080/", True),
        ("a.test:8080", "http://a.test/", False),
        ("a.test:443", "https://a.test/", True),  # the default port counts
        ("127.0.0.1", "http://127.0.0.1:5000/", True),
        ("10.0.0.0/8", "http://10.1.2.3/", True),
        ("10.0.0.0/8", "http://11.1.2.3/", False),
        ("::1", "http://[::1]:8080/", True),
        ("[::1]:8080", "http://[::1]:8080/", True),
        ("fd00::/8", "http://[fd12::1]/", True),
        ("10.0.0.0/8", "http://ten.test/", False),  # names are never resolved to be matched
    ],
)
def test_no_proxy_entries(no_proxy: str, url: str, bypassed: bool) -> None:
    found = rules({"HTTP_PROXY": "http://p:1", "HTTPS_PROXY": "http://p:1", "no_proxy": no_proxy})
    assert (via(found, url) is None) is bypassed


def test_no_proxy_star_turns_every_proxy_off() -> None:
    assert parse_no_proxy("a.test, *")[0] is True
    assert not rules({"HTTP_PROXY": "http://p:1", "NO_PROXY": "*"}).any


def test_credentials_become_basic_proxy_authorization() -> None:
    assert basic_credentials(httpx.URL("http://p:1")) is None
    assert basic_credentials(httpx.URL("http://us%40er:pa%3Ass@p:1")) == b"Basic dXNAZXI6cGE6c3M="  # us@er:pa:ss


def test_an_environment_proxy_this_crawler_cannot_use_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        rules({"https_proxy": "socks5://user:secret@p:1080"})
    assert info.value.key == "https_proxy"
    assert "http:// proxy URL" in str(info.value)
    assert "secret" not in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("proxy", "problem"),
    [
        ("https://p:3128", "must be an http:// proxy URL"),
        ("socks5://p:1080", "must be an http:// proxy URL"),
        ("http://p:99999", "not a URL"),
        ("http://:3128", "names no host"),
        ("http://p:3128/some/path", "no path"),
        ("p:3128", "must be an http:// proxy URL"),
    ],
)
def test_a_bad_http_proxy_names_the_key(proxy: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"crawl": {"seeds": ["http://a.test/"]}, "http": {"proxy": proxy}}, source="c.toml")
    assert str(info.value).startswith("c.toml: http.proxy: ")
    assert problem in str(info.value)
    assert info.value.exit_code == 2


def test_a_bad_http_proxy_message_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"crawl": {"seeds": ["http://a.test/"]}, "http": {"proxy": "https://u:hunter2@p:1"}})
    assert "hunter2" not in str(info.value)
    assert "u:***@p:1" in str(info.value)


def test_a_good_http_proxy_and_trust_env_load() -> None:
    config = config_from_dict(
        {"crawl": {"seeds": ["http://a.test/"]}, "http": {"proxy": "http://u:p@p:3128", "trust_env": False}}
    )
    assert (config.http.proxy, config.http.trust_env) == ("http://u:p@p:3128", False)
    assert config_from_dict({"crawl": {"seeds": ["http://a.test/"]}}).http.trust_env is True


# ---- the plain-http transport through a real forward proxy ---------------------------------


async def test_requests_to_several_sites_share_kept_alive_connections_to_the_proxy(proxy: ForwardProxy) -> None:
    with SiteServer(Site().page("/x")) as one, SiteServer(Site().page("/y")) as two:
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        transport = H1Transport(limits=limits, proxies=rules({"http_proxy": proxy.url}))
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                assert (await client.get(one.url_for("/x"))).status_code == 200
                assert (await client.get(two.url_for("/y"))).status_code == 200
    assert proxy.connections == 1
    assert [entry.target for entry in proxy.log] == [one.url_for("/x"), two.url_for("/y")] * 3
    assert all(record.headers["host"] == one.host_key for record in one.requests)


# ---- crawls through a real forward proxy --------------------------------------------------

SITE_PAGES = ("/", "/a", "/b")


def small_site() -> Site:
    return (
        Site()
        .page("/", body='<html><title>home</title><a href="/a">a</a> <a href="/b">b</a></html>')
        .page("/a", title="a")
        .page("/b", title="b")
        .robots("User-agent: *\nAllow: /\n")
    )


@pytest.fixture
def http_site() -> Iterator[SiteServer]:
    with SiteServer(small_site()) as server:
        yield server


@pytest.fixture
def tls_site(tmp_path: Path) -> Iterator[tuple[SiteServer, Path]]:
    """The same site over https from a trustme CA; yields the server and the CA's PEM file."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with SiteServer(small_site(), ssl=context) as server:
        yield server, ca_file


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


async def crawl_with(
    db: Path, seeds: list[str], environ: Mapping[str, str] | None = None, **http: Any
) -> tuple[Outcome, set[str]]:
    """Crawl seeds with these [http] keys (environ: the environment the proxy rules read); (outcome, stored URLs)."""
    config = make_config(db, seeds, http=http, politeness={"robots_retry_interval": 0.05})
    transport = None
    if environ is not None:
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        transport = build_transport(config.http, limits, environ=environ)
    summary = await Crawl(config, transport=transport).run()
    return summary.outcome, {url for (url,) in rows(db, "SELECT url FROM pages")}


def errors(db: Path) -> list[tuple[str, str, str, int]]:
    return rows(db, "SELECT url, kind, message, attempts FROM errors ORDER BY url")


async def test_an_http_site_is_crawled_through_http_proxy_in_absolute_form(
    tmp_path: Path, http_site: SiteServer, proxy: ForwardProxy
) -> None:
    outcome, stored = await crawl_with(tmp_path / "p.db", [http_site.url_for("/")], proxy=proxy.url)
    assert outcome is Outcome.FINISHED
    assert stored == {http_site.url_for(p) for p in SITE_PAGES}
    carried = [(entry.method, entry.target) for entry in proxy.log]
    assert sorted(carried) == sorted(("GET", http_site.url_for(p)) for p in ("/robots.txt", *SITE_PAGES))
    assert sorted(http_site.paths()) == sorted(["/robots.txt", *SITE_PAGES])  # each reached the site once
    assert all(record.headers["host"] == http_site.host_key for record in http_site.requests)


async def test_an_https_site_is_crawled_through_a_connect_tunnel(
    tmp_path: Path, tls_site: tuple[SiteServer, Path], proxy: ForwardProxy
) -> None:
    server, ca_file = tls_site
    db = tmp_path / "s.db"
    outcome, stored = await crawl_with(db, [server.url_for("/")], proxy=proxy.url, ca_bundle=str(ca_file))
    assert outcome is Outcome.FINISHED
    assert stored == {server.url_for(p) for p in SITE_PAGES}
    assert {(entry.method, entry.target) for entry in proxy.log} == {("CONNECT", f"127.0.0.1:{server.port}")}
    assert rows(db, "SELECT count(*) FROM errors") == [(0,)]


async def test_the_environment_s_http_proxy_and_https_proxy_are_honoured(
    tmp_path: Path, http_site: SiteServer, tls_site: tuple[SiteServer, Path], proxy: ForwardProxy
) -> None:
    tls_server, ca_file = tls_site
    seeds = [http_site.url_for("/"), tls_server.url_for("/")]
    env = {"HTTP_PROXY": proxy.url, "https_proxy": proxy.url}
    outcome, stored = await crawl_with(tmp_path / "e.db", seeds, env, ca_bundle=str(ca_file))
    assert outcome is Outcome.FINISHED
    assert stored == {s.url_for(p) for s in (http_site, tls_server) for p in SITE_PAGES}
    methods = {entry.method for entry in proxy.log}
    assert methods == {"GET", "CONNECT"}
    assert ("GET", http_site.url_for("/a")) in {(entry.method, entry.target) for entry in proxy.log}


async def test_no_proxy_hosts_go_direct(tmp_path: Path, http_site: SiteServer, proxy: ForwardProxy) -> None:
    env = {"HTTP_PROXY": proxy.url, "NO_PROXY": "example.org, 127.0.0.1"}
    outcome, stored = await crawl_with(tmp_path / "n.db", [http_site.url_for("/")], env)
    assert outcome is Outcome.FINISHED
    assert stored == {http_site.url_for(p) for p in SITE_PAGES}
    assert proxy.log == []


async def test_trust_env_false_goes_direct_whatever_the_environment_says(
    tmp_path: Path, http_site: SiteServer, proxy: ForwardProxy
) -> None:
    env = {"HTTP_PROXY": proxy.url, "ALL_PROXY": proxy.url}
    outcome, stored = await crawl_with(tmp_path / "t.db", [http_site.url_for("/")], env, trust_env=False)
    assert outcome is Outcome.FINISHED
    assert stored == {http_site.url_for(p) for p in SITE_PAGES}
    assert proxy.log == []


async def test_credentials_in_the_proxy_url_reach_the_proxy_for_both_schemes(
    tmp_path: Path, http_site: SiteServer, tls_site: tuple[SiteServer, Path]
) -> None:
    tls_server, ca_file = tls_site
    seeds = [http_site.url_for("/"), tls_server.url_for("/")]
    with ForwardProxy(credentials=("crawl@er", "p:ss w")) as guarded:
        proxy_url = guarded.url_with("crawl%40er", "p%3Ass%20w")
        outcome, stored = await crawl_with(tmp_path / "c.db", seeds, proxy=proxy_url, ca_bundle=str(ca_file))
        log = guarded.log
    assert outcome is Outcome.FINISHED
    assert stored == {s.url_for(p) for s in (http_site, tls_server) for p in SITE_PAGES}
    assert {entry.refused_with for entry in log} == {0}
    assert {entry.method for entry in log} == {"GET", "CONNECT"}
    assert all(entry.proxy_authorization == "Basic Y3Jhd2xAZXI6cDpzcyB3" for entry in log)  # crawl@er:p:ss w
    assert all("proxy-authorization" not in record.headers for record in http_site.requests)


async def test_a_refusing_proxy_gives_proxy_errors_and_the_crawl_goes_on(
    tmp_path: Path, http_site: SiteServer, tls_site: tuple[SiteServer, Path]
) -> None:
    tls_server, ca_file = tls_site
    refusing = f"http://127.0.0.1:{closed_port()}"
    direct = http_site.url_for("/").replace("127.0.0.1", "localhost")  # NO_PROXY lets this one by
    seeds = [http_site.url_for("/"), tls_server.url_for("/"), direct]
    env = {"HTTP_PROXY": refusing, "HTTPS_PROXY": refusing, "NO_PROXY": "localhost"}
    db = tmp_path / "r.db"
    outcome, stored = await crawl_with(db, seeds, env, ca_bundle=str(ca_file))
    assert outcome is Outcome.FINISHED
    assert stored == {direct.removesuffix("/") + p for p in SITE_PAGES}
    failed = {(url, kind) for url, kind, _, _ in errors(db)}
    assert failed == {(http_site.url_for("/"), "proxy"), (tls_server.url_for("/"), "proxy")}
    port = refusing.rsplit(":", 1)[1]
    for _, _, message, _ in errors(db):  # robots.txt failed first: the URL's row quotes its error
        assert f"cannot connect to the proxy 127.0.0.1:{port}: " in message


async def test_a_407_from_the_proxy_is_a_proxy_error_not_retried_for_both_schemes(
    tmp_path: Path, http_site: SiteServer, tls_site: tuple[SiteServer, Path]
) -> None:
    tls_server, ca_file = tls_site
    seeds = [http_site.url_for("/"), tls_server.url_for("/")]
    db = tmp_path / "a.db"
    with ForwardProxy(credentials=("user", "right")) as guarded:
        proxy_url = guarded.url_with("user", "wrong")
        outcome, stored = await crawl_with(db, seeds, proxy=proxy_url, ca_bundle=str(ca_file))
        refusals = {entry.refused_with for entry in guarded.log}
    assert outcome is Outcome.FINISHED
    assert stored == set()
    assert refusals == {407}
    found = errors(db)
    assert [(url, kind, attempts) for url, kind, _, attempts in found] == [
        (http_site.url_for("/"), "proxy", 1),
        (tls_server.url_for("/"), "proxy", 1),
    ]
    assert "407" in found[0][2] and "407" in found[1][2]
    assert "wrong" not in found[0][2] + found[1][2]
    assert http_site.requests == [] and tls_server.requests == []


async def test_a_proxy_that_fails_a_connect_gives_a_proxy_error(
    tmp_path: Path, tls_site: tuple[SiteServer, Path]
) -> None:
    tls_server, ca_file = tls_site
    db = tmp_path / "f.db"
    with ForwardProxy(fail=True) as failing:
        outcome, _ = await crawl_with(db, [tls_server.url_for("/")], proxy=failing.url, ca_bundle=str(ca_file))
        log = failing.log
    assert outcome is Outcome.FINISHED
    [(url, kind, message, _)] = errors(db)
    assert (url, kind) == (tls_server.url_for("/"), "proxy")
    assert f"the proxy 127.0.0.1:{failing.port} refused the tunnel: 502 Bad Gateway after 2 attempts" in message
    assert {entry.method for entry in log} == {"CONNECT"}
