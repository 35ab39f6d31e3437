"""A forward HTTP proxy on 127.0.0.1 for tests: absolute-form requests forwarded, CONNECT tunnels, Basic auth.

    with ForwardProxy(credentials=("user", "pa:ss")) as proxy:
        ...  # crawl with http.proxy = proxy.url_with("user", "pa:ss")
        assert [entry.target for entry in proxy.log] == [...]

It runs its own asyncio loop in a background thread, like SiteServer, and logs every request
it was asked to carry (`proxy.log`). `fail=True` makes it answer every request and every
CONNECT with 502 Bad Gateway, as a proxy that cannot reach its upstream does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from dataclasses import dataclass

import httptools

__all__ = ["ForwardProxy", "ProxyLogEntry"]

_MAX_HEAD = 64 * 1024
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer", "upgrade"}
)


@dataclass(frozen=True, slots=True)
class ProxyLogEntry:
    """One request the proxy was asked to carry, and what it answered itself (0 when it forwarded)."""

    method: str
    target: str  # "http://host:port/path" or, for CONNECT, "host:port"
    proxy_authorization: str | None
    refused_with: int


class ForwardProxy:
    """A forward proxy in a thread; `url` is where to point http.proxy."""

    def __init__(self, *, credentials: tuple[str, str] | None = None, fail: bool = False) -> None:
        self._expected = (
            "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode() if credentials else None
        )
        self._fail = fail
        self._log: list[ProxyLogEntry] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port = 0
        self.connections = 0  # client connections accepted

    # ---- life cycle -----------------------------------------------------------------------

    def start(self) -> ForwardProxy:
        self._thread = threading.Thread(target=self._run, name="forward-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("forward proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        """The proxy's URL with credentials in it (percent-encode them first if they need it)."""
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def log(self) -> list[ProxyLogEntry]:
        with self._lock:
            return list(self._log)

    # ---- the loop's side ------------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0, limit=_MAX_HEAD))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self.connections += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Carry one request; whether the client connection stays open for another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines if ":" in line]
        auth = next((value for name, value in headers if name.lower() == "proxy-authorization"), None)
        length = int(next((value for name, value in headers if name.lower() == "content-length"), "0"))
        body = await reader.readexactly(length) if length else b""

        refused = 0
        if self._expected is not None and auth != self._expected:
            refused = 407
        elif self._fail:
            refused = 502
        with self._lock:
            self._log.append(ProxyLogEntry(method, target, auth, refused))
        if refused == 407:
            await _answer(writer, b"407 Proxy Authentication Required", [b'Proxy-Authenticate: Basic realm="test"'])
            return True
        if refused:
            await _answer(writer, b"502 Bad Gateway", [])
            return True
        if method == "CONNECT":
            await self._tunnel(target, reader, writer)
            return False
        return await self._forward(method, target, headers, body, writer)

    async def _tunnel(self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            await _answer(writer, b"502 Bad Gateway", [])
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _forward(
        self, method: str, target: str, headers: list[tuple[str, ...]], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        url = httptools.parse_url(target.encode())
        if url.schema != b"http" or url.host is None:
            await _answer(writer, b"400 Bad Request", [])
            return False
        path = (url.path or b"/") + (b"?" + url.query if url.query else b"")
        out = [b"%s %s HTTP/1.1" % (method.encode(), path)]
        out += [f"{name}: {value}".encode("latin-1") for name, value in headers if name.lower() not in _HOP_BY_HOP]
        out.append(b"Connection: close")
        try:
            up_reader, up_writer = await asyncio.open_connection(url.host.decode(), url.port or 80)
        except OSError:
            await _answer(writer, b"502 Bad Gateway", [])
            return True
        try:
            up_writer.write(b"\r\n".join(out) + b"\r\n\r\n" + body)
            answer = await _read_response(up_reader, head_only=method == "HEAD")
        finally:
            up_writer.close()
        status, reason, resp_headers, resp_body = answer
        lines = [f"{name}: {value}".encode("latin-1") for name, value in resp_headers]
        lines.append(b"Via: 1.1 forward-proxy")
        if method != "HEAD" and status not in (204, 304):
            lines.append(b"Content-Length: %d" % len(resp_body))
        writer.write(b"HTTP/1.1 %d %s\r\n" % (status, reason) + b"\r\n".join(lines) + b"\r\n\r\n" + resp_body)
        await writer.drain()
        return True


async def _answer(writer: asyncio.StreamWriter, status: bytes, headers: list[bytes]) -> None:
    """The proxy's own answer, with an empty body; the connection stays usable."""
    head = b"".join(h + b"\r\n" for h in headers)
    writer.write(b"HTTP/1.1 " + status + b"\r\n" + head + b"Content-Length: 0\r\n\r\n")
    await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()


async def _read_response(
    reader: asyncio.StreamReader, *, head_only: bool
) -> tuple[int, bytes, list[tuple[str, str]], bytes]:
    """The upstream's whole response, de-chunked: (status, reason, headers minus framing, body)."""

    class Collect:
        def __init__(self) -> None:
            self.reason = b""
            self.headers: list[tuple[str, str]] = []
            self.body: list[bytes] = []
            self.done = False

        def on_status(self, reason: bytes) -> None:
            self.reason += reason

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

        def on_headers_complete(self) -> None:
            if head_only:
                self.done = True

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            self.done = True

    collect = Collect()
    parser = httptools.HttpResponseParser(collect)
    while not collect.done:
        data = await reader.read(65536)
        if not data:
            break  # a body delimited by the end of the connection
        parser.feed_data(data)
    framing = {"content-length", "transfer-encoding", *_HOP_BY_HOP}
    headers = [(name, value) for name, value in collect.headers if name.lower() not in framing]
    return parser.get_status_code(), collect.reason, headers, b"".join(collect.body)
