"""A database that is not SQLite, read-only, or on a full disk: a clear message, exit status 3,
and nothing already stored is changed or corrupted.  The CLI runs as a real subprocess, so a
process that cannot exit (the store's SQLite thread left running) would fail too."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import crawler.writer
from crawler.errors import StoreError
from crawler.store import PAGE_ROWS, PageRecord, Store, utc_now
from tests.crawlkit import crawl, make_config, rows
from tests.support.localsite import SiteServer
from tests.support.site import Site, build_site

Serve = Callable[[Site], SiteServer]
HANG_GUARD = 120  # seconds; the CLI exits in about one, this only turns a hang into a failure


def write_config(path: Path, seeds: list[str], db: Path, **crawl: Any) -> Path:
    lines = ["[crawl]", f"seeds = {seeds!r}".replace("'", '"')]
    lines += [f"{key} = {value!r}" for key, value in crawl.items()]
    lines += ["[politeness]", "delay = 0.0", "adaptive = false"]
    lines += ["[storage]", f'path = "{db}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def without_permission_override() -> None:
    """For a child of root: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set
    before exec, so file modes bind it as they bind everyone else (it stays uid 0, the owner)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_cli(*args: str, honour_file_modes: bool = False) -> subprocess.CompletedProcess[str]:
    """`python -m crawler ARGS` in a child process (a hang fails the test rather than the suite)."""
    extra: dict[str, Any] = {}
    if honour_file_modes and os.geteuid() == 0:
        extra["preexec_fn"] = without_permission_override
    return subprocess.run(
        [sys.executable, "-m", "crawler", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        **extra,
    )


def snapshot(db: Path) -> tuple[str, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """integrity_check, and every stored page and URL state, to compare before and after."""
    conn = sqlite3.connect(db)  # read-write, only so that closing it removes the -wal and -shm files
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        pages = conn.execute("SELECT url, status, bytes, body FROM pages ORDER BY url").fetchall()
        urls = conn.execute("SELECT url, state FROM urls ORDER BY url").fetchall()
    finally:
        conn.close()
    return integrity, pages, urls


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def crawled_db(db: Path, server: SiteServer, **crawl_keys: Any) -> tuple[str, list[Any], list[Any]]:
    """A database holding a finished (or limited) crawl; returns its snapshot."""
    await crawl(make_config(db, [server.url + "/"], crawl=crawl_keys))
    before = snapshot(db)
    assert before[0] == "ok" and before[1], "the setup crawl must have stored pages"
    return before


# --------------------------------------------------------------------------- not SQLite


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are my notes, not a database\n" * 200)
    before = digest(db)
    config = write_config(tmp_path / "c.toml", ["http://127.0.0.1:9/"], db)

    result = run_cli("crawl", str(config), "-q")

    assert result.returncode == 3
    assert result.stderr == (
        f"crawler: error: {db} is not a SQLite database (choose another storage.path or move the file)\n"
    )
    assert digest(db) == before


# --------------------------------------------------------------------------- read-only


async def test_a_read_only_database_file_gets_a_clear_error_and_stays_intact(
    site_server: Serve, tmp_path: Path
) -> None:
    server = site_server(build_site(30, links_per_page=3))
    db = tmp_path / "c.db"
    before = await crawled_db(db, server, max_pages=10)
    config = write_config(tmp_path / "c.toml", [server.url + "/"], db)
    db.chmod(0o444)
    content = digest(db)

    result = run_cli("crawl", str(config), "-q", honour_file_modes=True)

    assert result.returncode == 3
    assert result.stderr.startswith(f"crawler: error: {db} is read-only (attempt to write a readonly database)")
    assert "the file and its folder must be writable" in result.stderr
    assert digest(db) == content
    assert snapshot(db) == before


async def test_a_read_only_folder_gets_a_clear_error_and_the_database_stays_intact(
    site_server: Serve, tmp_path: Path
) -> None:
    server = site_server(build_site(30, links_per_page=3))
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "c.db"
    before = await crawled_db(db, server, max_pages=10)
    config = write_config(tmp_path / "c.toml", [server.url + "/"], db)
    folder.chmod(0o555)  # the file stays writable; SQLite cannot create c.db-wal and c.db-shm
    content = digest(db)

    result = run_cli("crawl", str(config), "-q", honour_file_modes=True)

    assert result.returncode == 3
    assert result.stderr == (
        f"crawler: error: {db} is read-only (attempt to write a readonly database); the file and its folder"
        " must be writable, since SQLite keeps -wal and -shm files next to it\n"
    )
    assert digest(db) == content
    assert snapshot(db) == before


# --------------------------------------------------------------------------- disk full


async def test_a_full_disk_fails_the_flush_and_keeps_what_was_committed(tmp_path: Path) -> None:
    """SQLITE_FULL exactly as a full disk reports it, through PRAGMA max_page_count."""
    store = await Store.open(tmp_path / "c.db")
    try:
        first = page(1, b"x" * 1000)
        store.add_page(first, [("http://a.test/next", False)])
        await store.flush()
        pages = await store.scalar("PRAGMA page_count")
        await store.fetchall(f"PRAGMA max_page_count = {pages + 2}")
        store.add_page(page(2, os.urandom(200_000)), [])
        with pytest.raises(StoreError) as info:
            await store.flush()
        assert info.value.exit_code == 3
        assert str(info.value) == (
            f"the disk holding {tmp_path / 'c.db'} is full; free space and resume the crawl (what was stored is intact)"
        )
        assert await store.scalar("PRAGMA integrity_check") == "ok"
        assert [tuple(r) for r in await store.fetchall("SELECT url_id, url, bytes FROM pages")] == [
            (1, first.url, 1000)
        ]
        # The failed transaction was rolled back: with room again, the next flush commits.
        await store.fetchall("PRAGMA max_page_count = 1000000")
        store.add_page(page(3, b"y" * 10), [])
        await store.flush()
        assert [r[0] for r in await store.fetchall("SELECT url_id FROM pages ORDER BY url_id")] == [1, 3]
    finally:
        await store.close()


def page(url_id: int, body: bytes) -> PageRecord:
    return PageRecord(
        url_id=url_id,
        url=f"http://a.test/{url_id}",
        final_url=f"http://a.test/{url_id}",
        status=200,
        content_type="text/html",
        title=None,
        depth=0,
        fetched_at=utc_now(),
        elapsed_ms=1.0,
        http_version="HTTP/1.1",
        size=len(body),
        headers=[],
        redirects=[],
        noindex=False,
        text=None,
        body=body,
    )


def can_mount_a_private_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],  # private: only this child sees it
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not can_mount_a_private_tmpfs(), reason="needs unprivileged user namespaces (unshare -rm)")
async def test_the_cli_on_a_really_full_disk_exits_3_and_the_database_stays_intact(
    site_server: Serve, tmp_path: Path
) -> None:
    # A real ENOSPC: a 1 MB tmpfs in a private mount namespace (no root needed where user
    # namespaces are enabled), holding a database that already has ten pages.
    server = site_server(build_site(300, links_per_page=5, page_bytes=20_000))
    seeded = tmp_path / "seeded" / "c.db"
    before = await crawled_db(seeded, server, max_pages=10)
    mount, out = tmp_path / "mnt", tmp_path / "out"
    mount.mkdir()
    out.mkdir()
    config = write_config(tmp_path / "c.toml", [server.url + "/"], mount / "c.db", max_pages=0)
    size_kb = seeded.stat().st_size // 1024 + 1024
    script = (
        f'mount -t tmpfs -o size={size_kb}k tmpfs "{mount}" && cp "{seeded}" "{mount}/" &&'
        f' {{ "{sys.executable}" -m crawler crawl "{config}" -q 2> "{out}/stderr"; echo $? > "{out}/rc";'
        f' cp "{mount}"/c.db* "{out}/"; }}'
    )
    subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], timeout=HANG_GUARD, check=True, cwd=Path(__file__).parent.parent
    )

    assert (out / "rc").read_text().strip() == "3"
    assert (out / "stderr").read_text() == (
        f"crawler: error: the disk holding {mount / 'c.db'} is full;"
        " free space and resume the crawl (what was stored is intact)\n"
    )
    integrity, pages, _ = snapshot(out / "c.db")
    assert integrity == "ok"
    assert set(before[1]) <= set(pages)  # the ten earlier pages, byte for byte
    assert len(pages) > len(before[1])  # and whatever was committed before the disk filled up
    assert rows(out / "c.db", "SELECT outcome FROM runs ORDER BY id") == [("limit",), ("running",)]


async def test_a_writer_that_breaks_ends_the_crawl_instead_of_leaving_workers_waiting(
    site_server: Callable[[Site], SiteServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error in a flush, not only a StoreError, must release the workers held back for the writer."""
    site = Site().page("/", body="".join(f"<a href='/p{i}'>{i}</a>" for i in range(40)))
    for i in range(40):
        site.page(f"/p{i}", body=f"<title>{i}</title>")
    server = site_server(site)
    monkeypatch.setattr(crawler.writer, "MAX_PENDING_ROWS", 1)  # every worker waits for each flush
    flushes = 0
    real_flush = Store.flush

    async def flush_that_breaks(self: Store) -> Any:
        nonlocal flushes
        flushes += 1
        if flushes == 4:
            raise RuntimeError("a bug in the writer")
        return await real_flush(self)

    monkeypatch.setattr(Store, "flush", flush_that_breaks)
    db = tmp_path / "c.db"
    with pytest.raises(RuntimeError, match="a bug in the writer"):
        # The timeout only turns a hang into a failure; the crawl itself takes well under a second.
        await asyncio.wait_for(crawl(make_config(db, [server.url_for("/")])), timeout=60)
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "SELECT count(*) FROM pages")[0][0] >= 1  # what was committed stays


async def test_page_texts_and_bodies_come_back_exactly_as_stored(tmp_path: Path) -> None:
    """Empty, missing and odd texts and bodies come back exactly, and with their SQL types."""
    cases = [(None, None), ("", b""), ("ünï “quotes” \\ \x00 end", b"\x00\xff\x00"), ("plain", os.urandom(5000))]
    assert len(cases * 9) % PAGE_ROWS, "the last statement must be a padded one"
    store = await Store.open(tmp_path / "c.db")
    try:
        for url_id, (text, body) in enumerate(cases * 9, start=1):
            record = page(url_id, b"")
            record.text, record.body = text, body
            store.add_page(record, [])
        await store.flush()
        stored = [tuple(r) for r in await store.fetchall("SELECT text, body FROM pages ORDER BY url_id")]
        assert stored == cases * 9
        assert [tuple(r) for r in await store.fetchall("SELECT DISTINCT typeof(text), typeof(body) FROM pages")] == [
            ("null", "null"),
            ("text", "blob"),
        ]
    finally:
        await store.close()
