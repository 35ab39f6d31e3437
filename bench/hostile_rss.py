"""Peak memory of one crawl through every hostile case at once, next to a clean crawl of the same size.

    .venv/bin/python bench/hostile_rss.py [--pages 3000] [--bombs 30] [--keep]

Serves, on 127.0.0.1: a clean generated site (--pages pages of ~5 KB), a fault site whose hub
links to every case of issue 6 (gzip, deflate and stacked `gzip, gzip` bombs of 1 GiB each,
endless and over-declared bodies, trickling servers, redirect loops, chains and bad Locations,
resets, empty replies, garbled and short responses, wrong charsets, tag soup, weird hrefs,
non-HTML bodies, a page with 100,000 links, an endless calendar, ever-deepening paths, growing
URLs, session ids in URLs, a 10 MB robots.txt), an https host with an untrusted certificate and
a refused port.  Then it runs `python -m crawler crawl` as a child twice, the clean site alone
and everything together, and prints wall time, pages, errors by kind, skips by reason and the
child's peak RSS (ru_maxrss and polled tree RSS, whichever is higher).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sqlite3
import ssl
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from measure import run_measured  # noqa: E402 - bench/ scripts import their siblings this way

from tests.support.faults import empty_reply, gzip_bomb, raw_bytes, reset_mid_body, trickle  # noqa: E402
from tests.support.localsite import SiteServer  # noqa: E402
from tests.support.site import HTML, Request, Response, Site, build_site, html_page, response_head  # noqa: E402

GIB = 1 << 30


async def endless(request: Request, writer: asyncio.StreamWriter) -> int:
    """A close-delimited body that never ends."""
    writer.write(response_head(200, [("Content-Type", HTML), ("Connection", "close")]))
    block = b"<p>" + b"x" * 65536 + b"</p>"
    while True:
        writer.write(block)
        await writer.drain()


def calendar(request: Request) -> Response:
    month = int(request.path.rpartition("=")[2])
    links = [f"/cal?month={month + d}" for d in (1, -1, 12)]
    return Response(200, [("Content-Type", HTML)], html_page(f"Month {month}", links))


def deepening(request: Request) -> Response:
    return Response(200, [("Content-Type", HTML)], html_page(request.path, ["a/", "b/"]))


def growing(request: Request) -> Response:
    return Response(200, [("Content-Type", HTML)], html_page("grow", [request.path + "x" * 100]))


_visits = iter(range(10**12))


def sessions(request: Request) -> Response:
    sid = f"{next(_visits):032x}"
    links = [f"/s/{n};jsessionid={sid}" for n in range(5)] + [f"/s/q{n}?PHPSESSID={sid}" for n in range(5)]
    return Response(200, [("Content-Type", HTML)], html_page(request.path, links))


def fault_site(bombs: int, dead: str, tls: str) -> Site:
    site = Site().robots("User-agent: *\nDisallow: /private\n" + "# padding\n" * 1_000_000)
    links: list[str] = [dead + "/gone", tls + "/secret", "/private"]

    def add(path: str) -> None:
        links.append(path)

    for i in range(bombs):
        for encodings in (("gzip",), ("deflate",), ("gzip", "gzip")):
            path = f"/bomb/{'-'.join(encodings)}/{i}"
            site.raw(path, gzip_bomb(GIB, encodings=encodings))
            add(path)
    for i in range(10):
        site.raw(f"/endless/{i}", endless)
        site.raw(f"/trickle/{i}", trickle(10_000, 1.0))
        site.raw(f"/reset/{i}", reset_mid_body())
        site.raw(f"/empty/{i}", empty_reply())
        site.raw(f"/garbled/{i}", raw_bytes(b"HTTX/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"))
        site.page(f"/declared/{i}", body=b"x" * 6_000_000)
        for path in (f"/endless/{i}", f"/trickle/{i}", f"/reset/{i}", f"/empty/{i}", f"/garbled/{i}", f"/declared/{i}"):
            add(path)
    site.redirect("/loop-a", "/loop-b").redirect("/loop-b", "/loop-a")
    for i in range(20):
        site.redirect(f"/chain/{i}", f"/chain/{i + 1}")
    site.redirect("/to-ftp", "ftp://x/").redirect("/to-js", "javascript:alert(1)").page("/no-loc", status=302, body="")
    for path in ("/loop-a", "/chain/0", "/to-ftp", "/to-js", "/no-loc"):
        add(path)
    site.page("/latin1", body=b"<title>Caf\xe9</title><a href='/ok'>x</a>", content_type="text/html; charset=utf-8")
    site.page("/soup", body=b"<html><title>soup</title><div><a href=/ok>x<table><td><<<>>><a href='/ok2'>")
    site.page("/weird", body=html_page("w", ["http://[::1", "javascript:x", "mailto:a@b", "/" + "y" * 5000]))
    site.page("/doc.pdf", body=b"%PDF-1.4" + os.urandom(100_000), content_type="application/pdf")
    site.page("/many", body=html_page("many", [f"/l/{i}" for i in range(100_000)]))
    site.page("/ok").page("/ok2")
    for path in ("/latin1", "/soup", "/weird", "/doc.pdf", "/many", "/cal?month=0", "/t/", "/g?p=", "/s/"):
        add(path)
    site.prefix("/cal?month=", calendar).prefix("/t/", deepening).prefix("/g?p=", growing).prefix("/s/", sessions)
    return site.page("/", body=html_page("Hostile hub", links))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def untrusted_context() -> ssl.SSLContext:
    import trustme

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


def write_config(path: Path, seeds: list[str], db: Path) -> None:
    path.write_text(
        f"""[crawl]
seeds = [{", ".join(f'"{s}"' for s in seeds)}]
max_pages = 0
max_depth = 40
max_links_per_page = 5000

[politeness]
delay = 0.0
adaptive = false
concurrency = 32
per_host_concurrency = 16
robots_retry_interval = 0.2
robots_max_attempts = 2

[http]
total_timeout = 3.0
retries = 1
retry_backoff = 0.05
retry_backoff_max = 0.2

[storage]
path = "{db}"
"""
    )


def report(label: str, db: Path, measured: object) -> None:
    conn = sqlite3.connect(db)
    pages = conn.execute("SELECT count(*) FROM pages").fetchone()[0]
    errors = conn.execute("SELECT kind, count(*) FROM errors GROUP BY kind ORDER BY 2 DESC").fetchall()
    skips = conn.execute(
        "SELECT reason, count(*) FROM urls WHERE state = 'skipped' GROUP BY reason ORDER BY 2 DESC"
    ).fetchall()
    left = conn.execute("SELECT count(*) FROM urls WHERE state IN ('queued', 'in_flight')").fetchone()[0]
    conn.close()
    m = measured
    print(f"{label}:")
    print(f"  exit {m.returncode}{' (timed out)' if m.timed_out else ''}, {m.wall:.1f} s wall, {m.cpu:.1f} s CPU")  # type: ignore[attr-defined]
    print(f"  pages stored {pages:,}; left queued {left}")
    print(f"  errors by kind: {', '.join(f'{k} {n:,}' for k, n in errors) or 'none'}")
    print(f"  skipped by reason: {', '.join(f'{k} {n:,}' for k, n in skips) or 'none'}")
    print(f"  peak RSS {m.peak_rss / 1e6:.1f} MB")  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3000, help="pages of the clean site (default 3000)")
    parser.add_argument("--bombs", type=int, default=30, help="bombs of each of 3 kinds (default 30)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (databases, logs)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hostile-rss-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        with ExitStack() as stack:
            clean = stack.enter_context(SiteServer(build_site(args.pages, links_per_page=10, page_bytes=5000)))
            tls = stack.enter_context(SiteServer(Site().page("/secret"), ssl=untrusted_context()))
            dead = f"http://127.0.0.1:{closed_port()}"
            hostile = stack.enter_context(SiteServer(fault_site(args.bombs, dead, tls.url)))
            print(
                f"clean site {clean.url} ({args.pages:,} pages), fault hub {hostile.url}/, https {tls.url}, dead {dead}"
            )
            runs = [("clean crawl", [clean.url + "/"]), ("hostile mixed crawl", [clean.url + "/", hostile.url + "/"])]
            for n, (label, seeds) in enumerate(runs):
                db, config = work / f"run{n}.db", work / f"run{n}.toml"
                write_config(config, seeds, db)
                measured = run_measured(
                    [sys.executable, "-m", "crawler", "crawl", str(config), "-q"],
                    cwd=ROOT,
                    env=env,
                    stdout=work / f"run{n}.out",
                    stderr=work / f"run{n}.err",
                    timeout=900,
                )
                report(label, db, measured)
                if measured.returncode != 0:
                    print((work / f"run{n}.err").read_text()[-2000:], file=sys.stderr)
                    return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
