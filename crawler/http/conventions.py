"""What our transports keep alike: head bound, methods sent again, send reports, protocol error, request head."""

from __future__ import annotations

from typing import Protocol

import httpx

# A status line and headers longer than this are refused (nginx and aiohttp allow ~8 KB a line).
MAX_HEAD_BYTES = 64 * 1024
# Methods safe to send again when a reused keep-alive connection turns out to be closed.
RETRY_ON_STALE = frozenset({"GET", "HEAD", "OPTIONS"})
# RFC 8305's recommended wait before racing the next address.
HAPPY_EYEBALLS_DELAY = 0.25
# A request extension of ours: a callable a transport with `reports_sent` calls, without arguments,
# once the request is written (politeness counts a host's gap from then; crawler/politeness.py).
ON_SENT = "on_sent"
# A request extension of ours: an async callable a transport awaits, without arguments, before it writes
# the same request once more (a new connection after a dropped one): that write waits for, and takes,
# a turn of its host, which the ON_SENT call after it ends.
BEFORE_RESEND = "before_resend"


class SendReports(Protocol):
    """What a request's writes are reported to (politeness's HostGate), through the two extensions above."""

    def sent(self) -> None: ...

    async def before_resend(self) -> None: ...


class ResponseError(httpx.RemoteProtocolError):
    """A response that is malformed, cut short or missing; its text is the whole message for an error row."""


def request_head(request: httpx.Request, body_length: int, target: bytes, extra: bytes = b"") -> bytes:
    """An HTTP/1.1 request line and headers, `extra` lines first; a body goes whole, with its
    Content-Length (never chunked)."""
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), target)]
    if extra:
        lines.append(extra)
    has_length = False
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"transfer-encoding":
            continue
        has_length = has_length or lower == b"content-length"
        lines.append(b"%s: %s\r\n" % (name, value))
    if body_length and not has_length:
        lines.append(b"Content-Length: %d\r\n" % body_length)
    lines.append(b"\r\n")
    return b"".join(lines)
