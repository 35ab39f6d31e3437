"""What our transports keep alike: the head bound, the methods sent again, the send report, the protocol error."""

from __future__ import annotations

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


class ResponseError(httpx.RemoteProtocolError):
    """A response that is malformed, cut short or missing; its text is the whole message for an error row."""
