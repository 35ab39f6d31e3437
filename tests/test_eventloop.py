"""The crawl's event loop: pyreqwest's Tokio thread keeps one Python thread state across its wake-ups."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextvars import Context
from typing import TypeVarTuple

from pyreqwest.client import ClientBuilder

from crawler.http.eventloop import CrawlEventLoop
from tests.support.localsite import SiteServer
from tests.support.site import Site

Serve = Callable[[Site], SiteServer]
# Slow enough that every request is waiting when its response comes, so each one wakes the loop.
_SLOW = Site(default_latency=0.05).page("/", title="home")
_Ts = TypeVarTuple("_Ts")


class _Watch(asyncio.SelectorEventLoop):
    """Records, for each wake-up from another thread, whether that thread's thread-local data survived."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()  # held by the Python thread state: a new state starts empty
        self.kept: list[bool] = []

    def call_soon_threadsafe(
        self, callback: Callable[[*_Ts], object], *args: *_Ts, context: Context | None = None
    ) -> asyncio.Handle:
        thread = threading.get_ident()
        if thread not in {t.ident for t in threading.enumerate()}:  # a thread Python did not start
            self.kept.append(getattr(self.local, "mark", False))
            self.local.mark = True
        return super().call_soon_threadsafe(callback, *args, context=context)


class _WatchedCrawlLoop(_Watch, CrawlEventLoop):
    pass


class _WatchedAsyncioLoop(_Watch):
    pass


def _wakeups(loop_factory: Callable[[], asyncio.AbstractEventLoop], url: str, *, multithreaded: bool) -> list[bool]:
    async def fetch_a_few() -> None:
        client = ClientBuilder().runtime_multithreaded(multithreaded).build()
        try:
            for _ in range(6):
                async with client.request("GET", url).build_streamed() as response:
                    assert response.status == 200
        finally:
            await client.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(fetch_a_few())
        loop = runner.get_loop()
        assert isinstance(loop, _Watch)
        return loop.kept


def test_the_tokio_thread_keeps_its_thread_state_from_its_first_wake_up_on(site_server: Serve) -> None:
    server = site_server(_SLOW)
    kept = _wakeups(_WatchedCrawlLoop, server.url_for("/"), multithreaded=False)
    assert len(kept) >= 6  # each response wakes the loop from pyreqwest's thread
    assert all(kept[1:])  # the first may find a state kept by an earlier crawl in this process


def test_asyncio_s_own_loop_gives_that_thread_a_new_state_on_each_wake_up(site_server: Serve) -> None:
    """What CrawlEventLoop is for: without it, every wake-up builds and drops a thread state.

    Through pyreqwest's multithreaded runtime: its threads, unlike the default runtime's one, have
    never woken a CrawlEventLoop (a thread keeps its state for good once it has)."""
    server = site_server(_SLOW)
    kept = _wakeups(_WatchedAsyncioLoop, server.url_for("/"), multithreaded=True)
    assert len(kept) >= 6 and not any(kept)
