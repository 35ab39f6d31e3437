"""The crawl's event loop: asyncio's own, made cheap to wake from a thread Python did not start."""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Callable
from contextvars import Context
from typing import TypeVarTuple

_Ts = TypeVarTuple("_Ts")

# PyGILState_Ensure: called once on a foreign thread and never released, it keeps that thread's
# Python thread state alive between the thread's later, balanced Ensure/Release pairs.
_ensure_gil_state = ctypes.pythonapi.PyGILState_Ensure
_ensure_gil_state.argtypes = []
_ensure_gil_state.restype = ctypes.c_int


class CrawlEventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop whose call_soon_threadsafe keeps the calling thread's Python thread state.

    pyreqwest's Tokio thread wakes the loop once per response, through call_soon_threadsafe under
    a PyGILState_Ensure/Release pair. A thread that holds no lasting thread state gets a new one
    for each pair and loses it at the Release: its frame stack is mapped (mmap) and unmapped
    (munmap, which makes every core flush its TLB) once per request. The first call from such a
    thread takes one extra, unreleased Ensure, so the state lives as long as the thread. On a
    thread Python started, that extra count is harmless: the thread's state is deleted when it ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self._threads_kept: set[int] = set()

    def call_soon_threadsafe(
        self, callback: Callable[[*_Ts], object], *args: *_Ts, context: Context | None = None
    ) -> asyncio.Handle:
        thread = threading.get_ident()
        if thread not in self._threads_kept:
            self._threads_kept.add(thread)
            _ensure_gil_state()
        return super().call_soon_threadsafe(callback, *args, context=context)
