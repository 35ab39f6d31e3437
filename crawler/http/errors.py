"""The one boundary where httpx exceptions (our transports raise httpx's too) become FetchError kinds."""

from __future__ import annotations

import ssl

import httpx

from crawler.errors import ErrorKind, FetchError
from crawler.http.conventions import ResponseError
from crawler.http.reqwest import TLSError


class Retryable(FetchError):
    """A transient failure tenacity may retry; keeps the status for the final message."""

    def __init__(self, kind: ErrorKind, message: str, status: int | None = None) -> None:
        super().__init__(kind, message, status=status)


def translate_httpx_error(exc: BaseException) -> FetchError:
    """The one place httpx exceptions (crawler.http.transport and .reqwest raise httpx's too) become our error kinds."""
    chain = _causes(exc)
    text = _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, TLSError):  # the handshake failed: a certificate does not fix itself, no retry
        return FetchError(ErrorKind.TLS, f"TLS failure: {text}")
    for cause in chain:
        if isinstance(cause, ssl.SSLError):
            reason = _one_line(str(cause)) or type(cause).__name__
            return FetchError(ErrorKind.TLS, f"TLS failure: {reason}")
    if isinstance(exc, httpx.ProxyError):  # crawler.http.proxies.ProxyError, with the proxy's answer if any
        status = getattr(exc, "status", None)
        if status == 407:  # wrong or missing credentials stay wrong
            return FetchError(ErrorKind.PROXY, text, status=status)
        return Retryable(ErrorKind.PROXY, text, status=status)
    if isinstance(exc, ResponseError):  # its text says it all: "body cut short: ...", "malformed response: ..."
        return Retryable(ErrorKind.PROTOCOL, text)
    if isinstance(exc, httpx.TimeoutException):
        return Retryable(ErrorKind.TIMEOUT, f"{type(exc).__name__}: {text}")
    if isinstance(exc, httpx.ConnectError):
        return Retryable(ErrorKind.CONNECT, f"connection failed: {text}")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return Retryable(ErrorKind.PROTOCOL, f"{type(exc).__name__}: {text}")
    if isinstance(exc, httpx.DecodingError):
        return FetchError(ErrorKind.PROTOCOL, f"undecodable body: {text}")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return FetchError(ErrorKind.BAD_REDIRECT, f"unsupported URL scheme: {text}")
    return FetchError(ErrorKind.OTHER, f"{type(exc).__name__}: {text}")


def _causes(exc: BaseException) -> list[BaseException]:
    """exc and what lies behind it, outermost first.

    A transport may raise its error `from None` with the underlying error as its argument,
    so the suppressed context and exception arguments count too.
    """
    chain = [exc]
    for current in chain:  # grows while it is walked
        behind = [current.__cause__, current.__context__, *current.args[:1]]
        chain.extend(e for e in behind if isinstance(e, BaseException) and all(e is not c for c in chain))
        if len(chain) > 20:  # pragma: no cover - a pathological chain
            break
    return chain


def _one_line(text: str) -> str:
    """Some error texts span lines (a parser pointing at the bad byte with a caret); keep the words."""
    lines = (line.strip() for line in text.splitlines())
    return " ".join(line for line in lines if line and set(line) != {"^"})
