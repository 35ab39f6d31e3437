"""A small bookshop site crawled once per test session, so query tests read a real crawl database.

/              "Harbour Books": links to everything below, a nofollow /login, an off-site link
/catalogue     mentions "lighthouse keeper" three times in its text
/lighthouse    titled "Lighthouse Keeper" (the exact title hit search must rank first)
/old           301 → /new "New arrivals"
/missing       404 with a tiny body
/down          500 every time: an http_status error after 2 attempts
/quiet         <meta name="robots" content="noindex">: stored without text or body
/report.pdf    application/pdf
/private/x     disallowed by robots.txt (skipped)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from tests.crawlkit import crawl, make_config
from tests.support.localsite import SiteServer
from tests.support.site import Site, html_page

HTML = "text/html; charset=utf-8"
USER_AGENT = "crawler-test/0.1 (+https://example.org/tests)"

HOME = """<!DOCTYPE html><html><head><title>Harbour Books</title></head><body>
<h1>Harbour Books</h1><p>A bookshop by the quay.</p><script>var hidden = "scripted words";</script>
<a href="/catalogue">Catalogue</a> <a href="/lighthouse">Lighthouse</a> <a href="/old">Old</a>
<a href="/missing">Missing</a> <a href="/down">Down</a> <a href="/private/x">Private</a>
<a href="/report.pdf">Report</a> <a href="/quiet">Quiet</a> <a rel="nofollow" href="/login">Log in</a>
<a href="http://elsewhere.test/">Elsewhere</a>
</body></html>
"""
CATALOGUE = html_page(
    "Catalogue",
    ["/lighthouse", "/"],
    [
        "The lighthouse keeper kept a diary.",
        "Every lighthouse keeper on this coast wrote one.",
        "Our lighthouse keeper shelf is by the window.",
    ],
)
LIGHTHOUSE = html_page("Lighthouse Keeper", ["/catalogue"], ["A memoir of thirty winters on the rock."])
NEW = html_page("New arrivals", ["/"], ["Fresh from the printer."])
QUIET = """<!DOCTYPE html><html><head><title>Quiet room</title><meta name="robots" content="noindex"></head>
<body><p>Whispered catalogue of secret volumes.</p></body></html>
"""
MISSING = "<p>gone</p>"
PDF = b"%PDF-1.4 harbour report"


def harbour_site() -> Site:
    return (
        Site()
        .robots("User-agent: *\nDisallow: /private/\n")
        .page("/", body=HOME)
        .page("/catalogue", body=CATALOGUE)
        .page("/lighthouse", body=LIGHTHOUSE)
        .redirect("/old", "/new")
        .page("/new", body=NEW)
        .page("/missing", body=MISSING, status=404)
        .page("/down", body="<p>down</p>", status=500)
        .page("/quiet", body=QUIET)
        .page("/report.pdf", body=PDF, content_type="application/pdf")
        .page("/private/x", title="Private")
    )


@dataclass(frozen=True)
class Harbour:
    """A finished crawl of harbour_site(): its database and the base URL it was served at."""

    db: Path
    base: str

    def url(self, path: str) -> str:
        return self.base + path


def crawl_harbour(folder: Path) -> Harbour:
    db = folder / "harbour.db"
    with SiteServer(harbour_site()) as server:
        asyncio.run(crawl(make_config(db, [server.url + "/"])))
        return Harbour(db, server.url)


# What the crawl stores, by asked path: (final path, status, content type, title, body).
STORED: dict[str, tuple[str, int, str, str | None, bytes]] = {
    "/": ("/", 200, HTML, "Harbour Books", HOME.encode()),
    "/catalogue": ("/catalogue", 200, HTML, "Catalogue", CATALOGUE.encode()),
    "/lighthouse": ("/lighthouse", 200, HTML, "Lighthouse Keeper", LIGHTHOUSE.encode()),
    "/missing": ("/missing", 404, HTML, None, MISSING.encode()),
    "/old": ("/new", 200, HTML, "New arrivals", NEW.encode()),
    "/quiet": ("/quiet", 200, HTML, "Quiet room", QUIET.encode()),
    "/report.pdf": ("/report.pdf", 200, "application/pdf", None, PDF),
}
