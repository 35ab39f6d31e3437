"""Plain-http transport: httpx's transport interface over one aiohttp session, with little work per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NoReturn

import aiohttp
import httpx
from multidict import CIMultiDict

# aiohttp errors and the httpx errors they become, as httpx-aiohttp mapped them (the most
# derived httpx class among the matches wins); translate_httpx_error also looks behind them.
_ERROR_MAP: tuple[tuple[type[BaseException], type[httpx.HTTPError]], ...] = (
    (aiohttp.ServerTimeoutError, httpx.TimeoutException),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectionError, httpx.ConnectTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.InvalidUrlClientError, httpx.UnsupportedProtocol),
)

_HTTP_11 = b"HTTP/1.1"
_HTTP_10 = b"HTTP/1.0"


def map_aiohttp_error(exc: BaseException) -> httpx.HTTPError | None:
    """The httpx error an aiohttp one stands for (raise it `from exc`), or None to let exc through."""
    mapped: type[httpx.HTTPError] | None = None
    for aiohttp_type, httpx_type in _ERROR_MAP:
        if isinstance(exc, aiohttp_type) and (mapped is None or issubclass(httpx_type, mapped)):
            mapped = httpx_type
    return None if mapped is None else mapped(str(exc))


def _raise_as_httpx(exc: BaseException) -> NoReturn:
    """Raise the httpx error exc stands for (from exc), or exc itself when it stands for none."""
    mapped = map_aiohttp_error(exc)
    if mapped is None:
        raise exc
    raise mapped from exc


class AiohttpBody(httpx.AsyncByteStream):
    """A response body read straight from aiohttp's stream, chunks as they arrive."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except Exception as exc:
                _raise_as_httpx(exc)
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        # What `async with response` does on exit: a body not read to the end closes the connection.
        response = self._response
        try:
            response.release()
            await response.wait_for_close()
        except Exception as exc:  # pragma: no cover - release does not fail in practice
            _raise_as_httpx(exc)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over aiohttp: its C parser and connection pool make plain http far cheaper than httpcore."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None
        # One ClientTimeout per distinct httpx timeout, not one per request.
        self._timeouts: dict[tuple[float | None, float | None, float | None], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        limit = self._limits.max_connections
        connector = aiohttp.TCPConnector(
            limit=100 if limit is None else limit, keepalive_timeout=self._limits.keepalive_expiry
        )
        self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        given = request.extensions.get("timeout") or {}
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
            self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        data: bytes | httpx.AsyncByteStream | None
        headers = CIMultiDict(request.headers.items())
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = request.stream  # type: ignore[assignment]
            headers.popall("transfer-encoding", None)  # aiohttp frames the body itself
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,  # Fetcher inflates, with a bound on the output
                timeout=self._timeout(request),
                server_hostname=request.extensions.get("sni_hostname"),
            )
        except Exception as exc:
            _raise_as_httpx(exc)
        extensions = {"http_version": _HTTP_10 if response.version == (1, 0) else _HTTP_11}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=AiohttpBody(response),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
