"""Continuing a stored crawl under a changed config: new seeds, raised or lowered limits, a changed scope."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from crawler import cli
from crawler.config import Config
from crawler.engine import Crawl, CrawlSummary, Outcome
from crawler.errors import ConfigError, NothingToResume
from crawler.store import writer_lock
from tests.crawlkit import make_config, rows, stored_paths
from tests.support.localsite import SiteServer
from tests.support.site import Site, build_site

Serve = Callable[[Site], SiteServer]


async def crawl_saying(config: Config, **kwargs: Any) -> tuple[CrawlSummary, list[str]]:
    """Run a crawl; also return what it said (the lines the CLI prints)."""
    said: list[str] = []
    summary = await Crawl(config, on_message=said.append).run(**kwargs)
    return summary, said


def page_requests(server: SiteServer) -> Counter[str]:
    return Counter(p for p in server.paths() if p != "/robots.txt")


def chain_site() -> Site:
    """/ → /1 → /2 → /3 → /4; /1 also links /1/x, which the tests exclude."""
    return (
        Site()
        .page("/", links=["/1"])
        .page("/1", links=["/2", "/1/x"])
        .page("/1/x")
        .page("/2", links=["/3"])
        .page("/3", links=["/4"])
        .page("/4")
    )


async def test_new_seeds_are_queued_and_nothing_is_fetched_again(site_server: Serve, tmp_path: Path) -> None:
    site = Site().page("/", links=["/a"]).page("/a").page("/other", links=["/b"]).page("/b")
    server = site_server(site)
    db = tmp_path / "c.db"
    await crawl_saying(make_config(db, [server.url + "/"]))
    assert stored_paths(db, server.url) == {"/", "/a"}

    summary, said = await crawl_saying(make_config(db, [server.url + "/", server.url + "/other"]))
    assert summary.outcome is Outcome.FINISHED
    assert said == []  # nothing was unfinished: no "resuming" line
    assert stored_paths(db, server.url) == {"/", "/a", "/other", "/b"}
    assert page_requests(server) == Counter({"/": 1, "/a": 1, "/other": 1, "/b": 1})


async def test_a_finished_crawl_says_there_is_nothing_left(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(5, links_per_page=2))
    db = tmp_path / "c.db"
    await crawl_saying(make_config(db, [server.url + "/"]))
    summary, said = await crawl_saying(make_config(db, [server.url + "/"]))
    assert (summary.fetched, said) == (0, [f"nothing left to fetch in {db} (5 done); --fresh starts over"])
    with pytest.raises(NothingToResume, match=r"holds no unfinished crawl \(5 done\)"):
        await Crawl(make_config(db, [server.url + "/"])).run(require_resume=True)


async def test_raised_max_pages_continues_and_counts_earlier_pages(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(50, links_per_page=3))
    db = tmp_path / "c.db"
    first, _ = await crawl_saying(make_config(db, [server.url + "/"], crawl={"max_pages": 10}))
    assert first.outcome is Outcome.LIMIT
    queued = rows(db, "SELECT count(*) FROM urls WHERE state = 'queued'")[0][0]

    # The same limit: nothing to do, and the user is told which key to raise.
    same = make_config(db, [server.url + "/"], crawl={"max_pages": 10})
    with pytest.raises(NothingToResume, match=r"crawl.max_pages = 10 is reached \(10 pages fetched\)"):
        await Crawl(same).run(require_resume=True)
    summary, said = await crawl_saying(same)
    assert summary.fetched == 0
    assert said == [
        f"crawl.max_pages = 10 is reached (10 pages fetched) and {queued} URLs are waiting:"
        " raise crawl.max_pages in <test> to continue"
    ]

    summary, said = await crawl_saying(make_config(db, [server.url + "/"], crawl={"max_pages": 25}))
    assert said == [f"resuming: 10 done, {queued} queued, 0 were in flight"]
    assert (summary.outcome, summary.fetched) == (Outcome.LIMIT, 15)
    assert rows(db, "SELECT count(*) FROM pages") == [(25,)]
    assert max(page_requests(server).values()) == 1


async def test_raised_max_depth_brings_back_what_depth_skipped(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(chain_site())
    db = tmp_path / "c.db"
    seeds = [server.url + "/"]
    await crawl_saying(make_config(db, seeds, crawl={"max_depth": 1, "exclude": ["/x$"]}))
    assert stored_paths(db, server.url) == {"/", "/1"}
    assert rows(db, "SELECT reason, count(*) FROM urls WHERE state = 'skipped' GROUP BY reason") == [("depth", 2)]

    summary, said = await crawl_saying(make_config(db, seeds, crawl={"max_depth": 3, "exclude": ["/x$"]}))
    assert said[0] == "limits changed (crawl.max_depth 1 → 3): 1 URLs queued again, 0 queued URLs now skipped"
    assert summary.outcome is Outcome.FINISHED
    assert stored_paths(db, server.url) == {"/", "/1", "/2", "/3"}
    # Judged again by the whole scope: /1/x, once too deep, is now excluded; /4 is too deep.
    skipped = dict(rows(db, "SELECT url, reason FROM urls WHERE state = 'skipped'"))
    assert skipped == {server.url + "/1/x": "excluded", server.url + "/4": "depth"}
    assert max(page_requests(server).values()) == 1


async def test_lowered_max_depth_skips_what_is_queued_deeper(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(Site().page("/", links=[f"/{i}" for i in range(5)]))
    db = tmp_path / "c.db"
    seeds = [server.url + "/"]
    await crawl_saying(make_config(db, seeds, crawl={"max_pages": 1}))
    assert rows(db, "SELECT count(*) FROM urls WHERE state = 'queued'") == [(5,)]

    summary, said = await crawl_saying(make_config(db, seeds, crawl={"max_pages": 10, "max_depth": 0}))
    assert said[0] == "limits changed (crawl.max_depth 10 → 0): 0 URLs queued again, 5 queued URLs now skipped"
    assert summary.fetched == 0
    assert rows(db, "SELECT reason, count(*) FROM urls WHERE state = 'skipped' GROUP BY reason") == [("depth", 5)]


async def test_raised_max_pages_per_host_continues_the_host(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(20, links_per_page=4))
    db = tmp_path / "c.db"
    seeds = [server.url + "/"]
    await crawl_saying(make_config(db, seeds, crawl={"max_pages_per_host": 5}))
    assert rows(db, "SELECT count(*) FROM pages") == [(5,)]

    await crawl_saying(make_config(db, seeds, crawl={"max_pages_per_host": 8}))
    assert rows(db, "SELECT count(*) FROM pages") == [(8,)]
    assert rows(db, "SELECT reason FROM urls WHERE state = 'skipped' GROUP BY reason") == [("host_limit",)]

    summary, _ = await crawl_saying(make_config(db, seeds, crawl={"max_pages_per_host": 0}))
    assert summary.outcome is Outcome.FINISHED
    assert rows(db, "SELECT count(*) FROM pages") == [(20,)]
    assert max(page_requests(server).values()) == 1


async def test_a_changed_scope_is_refused_and_changes_nothing(site_server: Serve, tmp_path: Path) -> None:
    server = site_server(build_site(10, links_per_page=3))
    db = tmp_path / "c.db"
    seeds = [server.url + "/"]
    await crawl_saying(make_config(db, seeds, crawl={"max_pages": 3, "allowed_hosts": ["127.0.0.1", "localhost"]}))
    before = rows(db, "SELECT * FROM urls"), rows(db, "SELECT count(*) FROM runs")

    changed = make_config(db, seeds, crawl={"allowed_hosts": ["127.0.0.1", "localhost"], "exclude": ["/p/3$"]})
    with pytest.raises(ConfigError) as caught:
        await Crawl(changed).run()
    assert caught.value.key == "crawl.exclude"
    assert str(caught.value) == (
        f"<test>: crawl.exclude: is ['/p/3$'] but the crawl stored in {db} used []; a crawl keeps its scope."
        " Restore the old value, or start over with `crawler crawl --fresh` (the old database is kept)"
    )
    assert (rows(db, "SELECT * FROM urls"), rows(db, "SELECT count(*) FROM runs")) == before

    # Order and repeats do not make a different scope.
    same = make_config(db, seeds, crawl={"allowed_hosts": ["localhost", "127.0.0.1", "localhost"]})
    summary, _ = await crawl_saying(same)
    assert summary.outcome is Outcome.FINISHED


def write_config(tmp_path: Path, server: SiteServer, **crawl: object) -> Path:
    settings = {"max_pages": 0, **crawl}
    path = tmp_path / "crawl.toml"
    path.write_text(
        f'[crawl]\nseeds = ["{server.url}/"]\n'
        + "".join(f"{key} = {value!r}\n" for key, value in settings.items())
        + '[politeness]\ndelay = 0.0\nadaptive = false\n[storage]\npath = "crawl.db"\n'
    )
    return path


def test_cli_fresh_keeps_the_old_database_and_starts_over(
    site_server: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = site_server(build_site(5, links_per_page=2))
    config = write_config(tmp_path, server)
    assert cli.main(["crawl", str(config), "-q"]) == 0
    assert cli.main(["crawl", str(config), "--fresh"]) == 0
    (kept,) = tmp_path.glob("crawl.*.db")
    assert capsys.readouterr().err.startswith(f"previous database moved to {kept}\n")
    assert rows(kept, "SELECT count(*) FROM pages") == [(5,)]
    assert rows(tmp_path / "crawl.db", "SELECT count(*) FROM runs") == [(1,)]
    assert page_requests(server) == Counter({p: 2 for p in ["/", "/p/1", "/p/2", "/p/3", "/p/4"]})


def test_move_aside_never_overwrites_an_earlier_copy(tmp_path: Path) -> None:
    db = tmp_path / "crawl.db"
    now = datetime(2025, 1, 2, 3, 4, 5)
    moved = []
    for generation in range(3):
        db.write_text(f"db {generation}")
        Path(f"{db}-wal").write_text(f"wal {generation}")
        moved.append(cli.move_aside(db, now=now))
    stamp = "crawl.20250102-030405"
    assert [p.name for p in moved if p] == [f"{stamp}.db", f"{stamp}-2.db", f"{stamp}-3.db"]
    assert [p.read_text() for p in moved if p] == ["db 0", "db 1", "db 2"]
    assert [Path(f"{p}-wal").read_text() for p in moved if p] == ["wal 0", "wal 1", "wal 2"]
    assert not db.exists() and cli.move_aside(db) is None


def test_cli_scope_change_exits_2(site_server: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = site_server(build_site(5, links_per_page=2))
    asyncio.run(crawl_saying(make_config(tmp_path / "crawl.db", [server.url + "/"], crawl={"max_pages": 2})))
    config = write_config(tmp_path, server, include=["/p/"])
    assert cli.main(["resume", str(config)]) == 2
    assert capsys.readouterr().err.startswith(f"crawler: error: {config}: crawl.include: is ['/p/'] but the crawl")


def test_one_crawler_per_database(site_server: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = site_server(build_site(5, links_per_page=2))
    config = write_config(tmp_path, server)
    assert cli.main(["crawl", str(config), "-q"]) == 0
    db = tmp_path / "crawl.db"
    with writer_lock(db):  # as a running crawl holds it
        assert cli.main(["crawl", str(config)]) == 3
        assert cli.main(["crawl", str(config), "--fresh"]) == 3
    message = f"crawler: error: {db} is in use by another crawler (pid {os.getpid()}); wait for it or stop it"
    assert capsys.readouterr().err.splitlines() == [message] * 2
    assert list(tmp_path.glob("crawl.*.db")) == []  # --fresh moved nothing
    assert cli.main(["crawl", str(config), "--fresh", "-q"]) == 0


async def test_a_resumed_crawl_uses_the_stored_robots_txt_within_robots_ttl(site_server: Serve, tmp_path: Path) -> None:
    """Its rules (and its Crawl-delay) come from the robots row; past robots_ttl it is fetched again."""
    site = chain_site().page("/private").robots("User-agent: *\nDisallow: /1/x\nCrawl-delay: 0.01\n")
    server = site_server(site)
    db = tmp_path / "c.db"
    first, _ = await crawl_saying(make_config(db, [server.url + "/"], crawl={"max_pages": 2}))
    assert first.outcome is Outcome.LIMIT
    assert server.paths().count("/robots.txt") == 1

    summary, _ = await crawl_saying(make_config(db, [server.url + "/"]))
    assert summary.outcome is Outcome.FINISHED
    assert server.paths().count("/robots.txt") == 1  # the resumed run rebuilt the rules from the row
    assert rows(db, "SELECT url, reason FROM urls WHERE state = 'skipped'") == [(server.url + "/1/x", "robots")]
    assert stored_paths(db, server.url) == {"/", "/1", "/2", "/3", "/4"}

    # Past robots_ttl (here 0 s: nothing is trusted) the next run asks the site again.
    new_seed = make_config(db, [server.url + "/", server.url + "/private"], politeness={"robots_ttl": 0.0})
    await crawl_saying(new_seed)
    assert server.paths().count("/robots.txt") == 2
