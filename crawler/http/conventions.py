"""What our transports keep alike: the head bound, the methods sent again, the send reports, the protocol error."""

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
