"""The throwaway PostgreSQL of tests/support/postgres.py: it runs, isolates databases, and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import psycopg
import pytest

from tests.support.postgres import PostgresServer, PostgresUnavailable, _unavailable, find_bindir


def test_the_server_listens_on_loopback_only_with_fsync_off(pg_server: PostgresServer, pg_server_url: str) -> None:
    assert pg_server_url == f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"
    with psycopg.connect(pg_server_url) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("listen_addresses", "fsync", "unix_socket_directories", "port", "server_encoding")
        }
    assert settings == {
        "listen_addresses": "127.0.0.1",
        "fsync": "off",
        "unix_socket_directories": str(pg_server.root),
        "port": str(pg_server.port),
        "server_encoding": "UTF8",
    }
    assert pg_server.bindir == find_bindir()


def test_each_test_gets_a_fresh_empty_database(pg_url: str, pg_server: PostgresServer) -> None:
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{pg_server.port}/crawl_")
    with psycopg.connect(pg_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]  # type: ignore[index]
    assert pg_url.endswith("/" + name)
    assert tables == 0


def test_two_databases_are_isolated(pg_server: PostgresServer) -> None:
    first, second = pg_server.create_database(), pg_server.create_database()
    assert first != second
    with psycopg.connect(first) as conn:
        conn.execute("CREATE TABLE hosts (host text PRIMARY KEY)")
        conn.execute("INSERT INTO hosts VALUES ('a.test'), ('b.test')")
    with psycopg.connect(second) as conn:
        assert conn.execute("SELECT to_regclass('public.hosts')").fetchone() == (None,)
        conn.execute("CREATE TABLE hosts (host text PRIMARY KEY)")
        conn.execute("INSERT INTO hosts VALUES ('c.test')")
    with psycopg.connect(first) as conn:
        assert conn.execute("SELECT host FROM hosts ORDER BY host").fetchall() == [("a.test",), ("b.test",)]


async def test_the_async_driver_connects(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cursor = await conn.execute("SELECT %s::int + 1", (41,))
        assert await cursor.fetchone() == (42,)


def test_stop_leaves_no_process_and_no_directory() -> None:
    """A server of its own, so stopping it does not disturb the session's."""
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
        raise  # unreachable: _unavailable skips or fails
    pid = server.postmaster_pid()
    assert pid is not None
    postmaster = psutil.Process(pid)
    family = [postmaster, *postmaster.children(recursive=True)]
    assert len(family) > 1  # the postmaster and its background workers
    if os.geteuid() == 0:
        assert {p.username() for p in family} == {"postgres"}
    server.stop()
    _, alive = psutil.wait_procs(family, timeout=10)
    # An exited postmaster may stay a zombie until init reaps it: it runs nothing and holds no port.
    assert [p for p in alive if _running(p)] == []
    assert not server.root.exists()


def test_the_newest_major_with_both_binaries_is_chosen(tmp_path: Path) -> None:
    for major, binaries in {"9.6": ("initdb", "pg_ctl"), "13": ("initdb", "pg_ctl"), "17": ("initdb",)}.items():
        (tmp_path / major / "bin").mkdir(parents=True)
        for name in binaries:
            (tmp_path / major / "bin" / name).touch()
    (tmp_path / "common").mkdir()
    assert find_bindir(tmp_path) == tmp_path / "13" / "bin"
    with pytest.raises(PostgresUnavailable, match="apt-get install postgresql"):
        find_bindir(tmp_path / "absent")


def test_missing_postgres_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no initdb"):
        _unavailable("no initdb")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required in CI: no initdb"):
        _unavailable("no initdb")


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
