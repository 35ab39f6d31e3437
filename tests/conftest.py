"""Shared pytest fixtures: a local HTTP site served for the length of one test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.harbour import Harbour, crawl_harbour
from tests.support.localsite import SiteServer
from tests.support.postgres import pg_server, pg_server_url, pg_url  # noqa: F401  (fixtures)
from tests.support.site import Site


@pytest.fixture
def site_server() -> Iterator[Callable[[Site], SiteServer]]:
    """Factory: `server = site_server(site)` starts it; all are stopped after the test."""
    servers: list[SiteServer] = []

    def start(site: Site) -> SiteServer:
        server = SiteServer(site).start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture(scope="session")
def harbour(tmp_path_factory: pytest.TempPathFactory) -> Harbour:
    """The bookshop of tests/harbour.py, crawled once; tests only read its database."""
    return crawl_harbour(tmp_path_factory.mktemp("harbour"))
