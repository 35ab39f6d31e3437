"""Serves a Site on 127.0.0.1 from a thread, recording every request; also `python -m tests.support.localsite`.

    with SiteServer(site) as server:
        ...  # crawl server.url
        assert server.max_in_flight == 1

The server runs its own asyncio loop in a background thread, so synchronous tests,
async tests and crawler subprocesses can all talk to it.  Every request is recorded
(`server.requests`) with monotonic start/end times and the concurrency it met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import re
import signal
import ssl as ssl_module
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tests.support.site import (
    HTML,
    DynamicRoute,
    RawRoute,
    Request,
    Response,
    Route,
    Site,
    build_site,
    header_items,
    response_head,
    status_page,
    to_bytes,
)

__all__ = ["RequestRecord", "SiteServer", "main"]

log = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024  # request line + headers; beyond this → 431
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NO_BODY_STATUSES = frozenset({204, 304})
_ONE_SEND = 16 * 1024  # responses up to this size are handed to the kernel in one write


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What the server saw of one request; times are time.monotonic()."""

    path: str
    method: str
    headers: dict[str, str]
    start: float  # request head fully received
    end: float  # response handed to the socket (see _respond), or connection aborted
    in_flight_at_start: int  # requests being served at `start`, this one included
    status: int  # status sent; 0 if none (raw handler that returned None, or aborted early)

    @property
    def duration(self) -> float:
        return self.end - self.start


def _encode_response(resp: Response, *, head_only: bool, close: bool, keep_alive_10: bool) -> bytes:
    body = to_bytes(resp.body)
    items = header_items(resp.headers)
    names = {k.lower() for k, _ in items}
    extra: list[tuple[str, str]] = []
    if resp.status in _NO_BODY_STATUSES or 100 <= resp.status < 200:
        body = b""
    else:
        if "content-length" not in names:  # a handler may lie on purpose
            extra.append(("Content-Length", str(len(body))))
        if body and "content-type" not in names:
            extra.append(("Content-Type", HTML))
    if "connection" not in names:  # else the response chose its own (see _response_closes)
        if close:
            extra.append(("Connection", "close"))
        elif keep_alive_10:
            extra.append(("Connection", "keep-alive"))
    head = response_head(resp.status, items + extra)
    return head if head_only else head + body


def _parse_head(head: bytes) -> Request | None:
    """Request line + headers, or None when malformed."""
    try:
        text = head.decode("latin-1").lstrip("\r\n")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or version not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    if target.startswith(("http://", "https://")):  # absolute-form → origin-form
        slash = target.find("/", target.find("//") + 2)
        target = "/" if slash < 0 else target[slash:]
    if not target.startswith("/") or any(c in target for c in " \t"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            return None
        key, value = name.lower(), value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Request(method, target, version, headers)


def _wants_keep_alive(req: Request) -> bool:
    tokens = {t.strip().lower() for t in req.headers.get("connection", "").split(",")}
    if "close" in tokens:
        return False
    return req.version == "HTTP/1.1" or "keep-alive" in tokens


def _response_closes(resp: Response) -> bool:
    return any(k.lower() == "connection" and "close" in v.lower() for k, v in header_items(resp.headers))


# --------------------------------------------------------------------------- server


class SiteServer:
    """Serves one Site on 127.0.0.1:<ephemeral> from a thread with its own event loop."""

    def __init__(self, site: Site, *, host: str = "127.0.0.1", ssl: ssl_module.SSLContext | None = None) -> None:
        """ssl: a server context (e.g. from `trustme`) to serve https:// instead of http://."""
        self.site = site
        self.host = host
        self._ssl = ssl
        self._port = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._closing = False
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # recording; RLock-based so wait_for predicates may call count()/paths()
        self._cond = threading.Condition(threading.RLock())
        self._slots: list[RequestRecord | None] = []  # arrival order; filled on completion
        self._in_flight = 0
        self._max_in_flight = 0

    # ----- lifecycle

    def start(self, timeout: float = 10.0) -> SiteServer:
        """Start serving; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("SiteServer already started")
        self._thread = threading.Thread(target=self._run, name="localsite", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("localsite did not start")
        if self._error is not None:
            self._thread.join(timeout)
            raise RuntimeError("localsite failed to start") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection, then join the thread. Idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            # RuntimeError: the loop is already closed, so the thread is ending anyway
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("localsite thread did not stop")

    def __enter__(self) -> SiteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self.host}:{self._port}"

    @property
    def host_key(self) -> str:
        return f"{self.host}:{self._port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    # ----- recording

    @property
    def requests(self) -> list[RequestRecord]:
        """Completed requests, in arrival order (a snapshot).

        A normal response is recorded before the client can finish reading it, so no
        waiting is needed; a raw handler's request is recorded when the handler returns,
        which a client may notice first, so use wait_for() for those.
        """
        with self._cond:
            return [r for r in self._slots if r is not None]

    def paths(self) -> list[str]:
        """Paths of completed requests, in arrival order."""
        return [r.path for r in self.requests]

    def count(self, path: str) -> int:
        with self._cond:
            return sum(1 for r in self._slots if r is not None and r.path == path)

    @property
    def in_flight(self) -> int:
        """Requests received whose response is not yet written."""
        with self._cond:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._cond:
            return self._max_in_flight

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until predicate() holds (re-checked whenever a request starts or ends)."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def clear(self) -> None:
        """Forget recorded requests and reset max_in_flight to the current in-flight count."""
        with self._cond:
            self._slots = []
            self._max_in_flight = self._in_flight

    def _begin(self) -> tuple[list[RequestRecord | None], int, float, int]:
        start = time.monotonic()
        with self._cond:
            self._in_flight += 1
            n = self._in_flight
            self._max_in_flight = max(self._max_in_flight, n)
            slots = self._slots
            slots.append(None)
            self._cond.notify_all()
        return slots, len(slots) - 1, start, n

    def _end(self, token: tuple[list[RequestRecord | None], int, float, int], req: Request, status: int) -> None:
        slots, index, start, n = token
        record = RequestRecord(req.path, req.method, req.headers, start, time.monotonic(), n, status)
        with self._cond:
            self._in_flight -= 1
            slots[index] = record  # after clear() this lands in the discarded list
            self._cond.notify_all()

    # ----- event loop side

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to start() if we never got ready
            self._error = exc
            if self._ready.is_set():
                log.exception("localsite crashed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._on_connect, self.host, 0, backlog=1024, limit=_MAX_HEAD, ssl=self._ssl
        )
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            self._closing = True
            server.close()
            await self._close_connections()
            await server.wait_closed()

    async def _close_connections(self) -> None:
        while self._conns:
            tasks = list(self._conns)
            for task, writer in list(self._conns.items()):
                # An empty buffer closes at once with a FIN; a busy one (trickle to a
                # peer that stopped reading) would wait forever, so it is aborted.
                if writer.transport.get_write_buffer_size():
                    writer.transport.abort()
                else:
                    writer.close()
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            if pending:
                log.warning("localsite: %d connections did not close", len(pending))
                return

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            writer.transport.abort()
            return
        self._conns[task] = writer
        # high-water 0: drain() returns only once the kernel has every byte, which is what
        # `end` of a large response and a fault's "reach the peer before the RST" rely on
        writer.transport.set_write_buffer_limits(high=0)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            writer.transport.abort()
        except Exception:
            log.exception("localsite: connection handler failed")
        finally:
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self._conns.pop(task, None)

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True if the connection stays open for another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # clean EOF between requests (or a truncated head)
        except asyncio.LimitOverrunError:
            await self._reject(writer, Request("", "", "HTTP/1.1", {}), 431)
            return False
        req = _parse_head(head)
        if req is None:
            await self._reject(writer, Request("", "", "HTTP/1.1", {}), 400)
            return False
        if "transfer-encoding" in req.headers:
            await self._reject(writer, req, 400)  # request bodies are never chunked here
            return False
        length = req.headers.get("content-length", "0")
        if not length.isdigit():
            await self._reject(writer, req, 400)
            return False
        if int(length):
            await reader.readexactly(int(length))  # discard, keeping the stream in sync
        return await self._respond(req, writer)

    async def _reject(self, writer: asyncio.StreamWriter, req: Request, status: int) -> None:
        token = self._begin()
        try:
            resp = Response(status, None, status_page(status))
            writer.write(_encode_response(resp, head_only=False, close=True, keep_alive_10=False))
            await writer.drain()
        finally:
            self._end(token, req, status)

    async def _respond(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        token = self._begin()
        status = 0
        try:
            if self.site.default_latency > 0:
                await asyncio.sleep(self.site.default_latency)  # simulated slow server
            route = self.site.lookup(req.path)
            if isinstance(route, RawRoute):
                try:
                    status = await route.fn(req, writer) or 0
                    if not writer.is_closing():
                        await writer.drain()
                except ConnectionError:
                    pass
                return False
            resp = await self._resolve(req, route)
            if resp.latency > 0:
                await asyncio.sleep(resp.latency)
            status = resp.status
            close = not _wants_keep_alive(req) or _response_closes(resp)
            keep_alive_10 = req.version == "HTTP/1.0"
            data = _encode_response(resp, head_only=req.method == "HEAD", close=close, keep_alive_10=keep_alive_10)
            # Record before the client can have the whole response, so a test that has read
            # it always finds it in server.requests and never sees it still in flight.  A
            # small response goes to the kernel in one send() right after; a large one is
            # written but for its last byte first, so `end` still means "written".
            if len(data) > _ONE_SEND:
                writer.write(data[:-1])
                await writer.drain()
                data = data[-1:]
        finally:
            self._end(token, req, status)
        writer.write(data)
        await writer.drain()
        return not close

    async def _resolve(self, req: Request, route: Route | None) -> Response:
        if req.method not in ("GET", "HEAD"):
            return Response(405, [("Allow", "GET, HEAD")], status_page(405))
        if route is None:
            return Response(404, None, status_page(404, f"No page at {req.path}"))
        if isinstance(route, DynamicRoute):
            try:
                result = route.fn(req)
                return await result if inspect.isawaitable(result) else result
            except Exception:
                log.exception("localsite: handler for %s failed", req.path)
                return Response(500, None, status_page(500))
        assert isinstance(route, Response)
        return route


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.localsite", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--links", type=int, default=5, help="links per page")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every response")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--page-bytes", type=int, default=0)
    args = parser.parse_args(argv)
    site = build_site(args.pages, links_per_page=args.links, seed=args.seed, page_bytes=args.page_bytes)
    site.default_latency = args.latency
    # SIGTERM → SystemExit, so the `with` below closes connections on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with SiteServer(site) as server:
        print(server.url, flush=True)  # the one stdout line a parent process waits for
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()  # serve until killed
    return 0


if __name__ == "__main__":
    sys.exit(main())
