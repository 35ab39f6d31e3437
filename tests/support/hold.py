"""A gate in front of a test server's handlers: answer a number of requests, then hold the rest until opened."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from tests.support.site import Request, Response


class Hold:
    """Answers the first `allowed` page requests after close(), holds the later ones until open()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._allowed = 0
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.held = 0

    def wrap(self, fn: Callable[[Request], Response]) -> Callable[[Request], object]:
        async def answer(request: Request) -> Response:
            with self._lock:
                if self._event is None:
                    self._loop, self._event = asyncio.get_running_loop(), asyncio.Event()
                wait = self._closed and self._allowed <= 0
                self._allowed -= 1
                if wait:
                    self.held += 1
            if wait:
                await self._event.wait()
            return fn(request)

        return answer

    def close(self, allowed: int) -> None:
        with self._lock:
            self._closed, self._allowed = True, allowed

    def open(self) -> None:
        with self._lock:
            self._closed = False
            if self._loop is not None and self._event is not None:
                self._loop.call_soon_threadsafe(self._event.set)
