"""Fault handlers for a Site: resets, empty and garbled replies, trickled bodies, compression bombs, Retry-After."""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
import zlib
from collections.abc import Callable, Sequence

from tests.support.site import (
    HTML,
    DynamicHandler,
    RawHandler,
    Request,
    Response,
    html_page,
    response_head,
    status_page,
)

__all__ = [
    "bomb_body",
    "deflate_bomb_body",
    "empty_reply",
    "gzip_bomb",
    "gzip_bomb_body",
    "raw_bytes",
    "reset_connection",
    "reset_mid_body",
    "retry_after",
    "trickle",
]


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Abort with a TCP RST (SO_LINGER 0 + close) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def reset_mid_body(declared: int = 100_000, sent: int = 1000) -> RawHandler:
    """Promise `declared` body bytes, send `sent` of them, then RST the connection."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> int:
        writer.write(response_head(200, [("Content-Type", HTML), ("Content-Length", str(declared))]))
        if request.method != "HEAD":
            writer.write(b"<" + b"x" * max(0, sent - 1) if sent else b"")
        await writer.drain()  # the partial body must reach the peer before the RST
        reset_connection(writer)
        return 200

    return handler


def empty_reply() -> RawHandler:
    """Close the connection without sending a single byte."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.close()

    return handler


def raw_bytes(data: bytes, *, reset: bool = False) -> RawHandler:
    """Send `data` verbatim (e.g. a malformed status line), then close or RST."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if reset:
            reset_connection(writer)

    return handler


def trickle(total_bytes: int, bytes_per_second: float, *, content_type: str = "text/plain") -> RawHandler:
    """A correct response whose body dribbles out at `bytes_per_second`."""
    if bytes_per_second <= 0:
        raise ValueError("bytes_per_second must be > 0")
    chunk = max(1, int(bytes_per_second // 20))  # ~20 writes a second

    async def handler(request: Request, writer: asyncio.StreamWriter) -> int:
        headers = [("Content-Type", content_type), ("Content-Length", str(total_bytes)), ("Connection", "close")]
        writer.write(response_head(200, headers))
        await writer.drain()
        if request.method == "HEAD":
            return 200
        loop = asyncio.get_running_loop()
        t0, sent = loop.time(), 0
        while sent < total_bytes:
            n = min(chunk, total_bytes - sent)
            writer.write(b"." * n)
            await writer.drain()
            sent += n
            # pace against the start time so per-write overheads don't accumulate
            await asyncio.sleep(max(0.0, t0 + sent / bytes_per_second - loop.time()))
        return 200

    return handler


_ZEROS = bytes(1 << 20)


def _deflate_zeros(inflated_bytes: int) -> bytes:
    """Raw deflate of `inflated_bytes` zeros (~1000:1) without compressing them all.

    After Z_FULL_FLUSH the deflate state is reset, so every MiB of zeros compresses to
    the same block: compress one, repeat it, finish with the remainder.
    """
    n_blocks, rest = divmod(inflated_bytes, len(_ZEROS))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(_ZEROS) + comp.flush(zlib.Z_FULL_FLUSH) if n_blocks else b""
    tail = comp.compress(_ZEROS[:rest]) + comp.flush(zlib.Z_FINISH)
    return block * n_blocks + tail


def _checksum_zeros(fn: Callable[[bytes, int], int], start: int, inflated_bytes: int) -> int:
    n_blocks, rest = divmod(inflated_bytes, len(_ZEROS))
    value = start
    for _ in range(n_blocks):
        value = fn(_ZEROS, value)
    return fn(_ZEROS[:rest], value)


@functools.lru_cache(maxsize=8)
def gzip_bomb_body(inflated_bytes: int) -> bytes:
    """A gzip member that inflates to `inflated_bytes` zeros (~1000:1); ~0.25 s per GiB.

    Only the CRC has to walk the whole length.
    """
    crc = _checksum_zeros(zlib.crc32, 0, inflated_bytes)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # magic, deflate, no flags, mtime 0
    trailer = struct.pack("<II", crc, inflated_bytes & 0xFFFFFFFF)
    return b"".join([header, _deflate_zeros(inflated_bytes), trailer])


@functools.lru_cache(maxsize=8)
def deflate_bomb_body(inflated_bytes: int) -> bytes:
    """A zlib stream (HTTP's `deflate`) that inflates to `inflated_bytes` zeros (~1000:1)."""
    adler = _checksum_zeros(zlib.adler32, 1, inflated_bytes)
    return b"".join([b"\x78\xda", _deflate_zeros(inflated_bytes), struct.pack(">I", adler)])


def bomb_body(inflated_bytes: int, encodings: Sequence[str] = ("gzip",)) -> bytes:
    """Zeros compressed with each Content-Encoding in turn (the first is applied first).

    Stacking helps an attacker: the inner bomb is itself repetitive, so `gzip, gzip` sends
    a few KB that inflate to megabytes of gzip that inflate to gigabytes.
    """
    if not encodings:
        raise ValueError("at least one encoding")
    first, *rest = encodings
    body = gzip_bomb_body(inflated_bytes) if first == "gzip" else deflate_bomb_body(inflated_bytes)
    for encoding in rest:
        wbits = 31 if encoding == "gzip" else 15
        comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
        body = comp.compress(body) + comp.flush()
    return body


def gzip_bomb(inflated_bytes: int, *, content_type: str = HTML, encodings: Sequence[str] = ("gzip",)) -> RawHandler:
    """A compressed response that inflates to `inflated_bytes`; `encodings` may be e.g. ("deflate",)."""
    for encoding in encodings:
        if encoding not in ("gzip", "deflate"):
            raise ValueError(f"unsupported encoding {encoding!r}")
    body = bomb_body(inflated_bytes, encodings)
    headers = [
        ("Content-Type", content_type),
        ("Content-Encoding", ", ".join(encodings)),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]

    async def handler(request: Request, writer: asyncio.StreamWriter) -> int:
        writer.write(response_head(200, headers))
        if request.method != "HEAD":
            writer.write(body)
        await writer.drain()
        return 200

    return handler


def retry_after(
    value: str | int,
    status: int = 429,
    then: Response | None = None,
    *,
    times: int = 1,
) -> DynamicHandler:
    """For Site.handler: `times` answers of `status` + Retry-After, then `then` (or 200)."""
    calls = 0  # only touched on the server loop, so no lock
    final = then or Response(200, [("Content-Type", HTML)], html_page("OK"))

    def handler(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls <= times:
            return Response(status, [("Retry-After", str(value))], status_page(status))
        return final

    return handler
