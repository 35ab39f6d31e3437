"""Throwaway httpx transports for bench/https_engines.py: curl_cffi under httpx, and our HTTP/1.1 pool over TLS.

Neither is meant for the crawl as it stands: they exist so that every candidate engine is
measured under the same httpx.AsyncClient and the same fetch path (crawler.http.fetcher).
  CurlTransport      curl_cffi's AsyncSession used plainly (no impersonation, no default
                     headers, no automatic decoding, so the fetch path gets the raw body).
  TlsH1Transport     crawler/http/transport.py's H1Transport with TLS under it: asyncio's
                     create_connection with an ssl context, ALPN "http/1.1". HTTP/1.1 only.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from crawler.http.transport import H1Transport, _Connection, _Origin


class _CurlBody(httpx.AsyncByteStream):
    def __init__(self, response: Any) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_content():
            yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


# CURL_HTTP_VERSION_* as libcurl's CURLINFO_HTTP_VERSION reports them.
_CURL_VERSIONS = {1: b"HTTP/1.0", 2: b"HTTP/1.1", 3: b"HTTP/2", 30: b"HTTP/3"}


class CurlTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over one curl_cffi AsyncSession (libcurl's multi interface)."""

    def __init__(self, *, max_clients: int, ca_pem: str, http2: bool = True, proxy: str | None = None) -> None:
        from curl_cffi import CurlHttpVersion
        from curl_cffi.requests import AsyncSession

        version = CurlHttpVersion.V2TLS if http2 else CurlHttpVersion.V1_1
        self._session = AsyncSession(
            max_clients=max_clients,
            verify=ca_pem,
            http_version=version,
            default_headers=False,
            trust_env=False,
            proxy=proxy,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        from curl_cffi.requests.exceptions import RequestException

        timeouts = request.extensions.get("timeout") or {}
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw if k.lower() != b"host"]
        try:
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=dict(headers),
                data=await request.aread() or None,
                timeout=(timeouts.get("connect") or 10.0, timeouts.get("read") or 30.0),
                allow_redirects=False,
                accept_encoding=None,  # libcurl decodes only what CURLOPT_ACCEPT_ENCODING asks for: keep it raw
                stream=True,
            )
        except RequestException as exc:
            raise httpx.ConnectError(str(exc)) from exc
        return httpx.Response(
            status_code=response.status_code,
            headers=list(response.headers.multi_items()),
            stream=_CurlBody(response),
            request=request,
            extensions={"http_version": _CURL_VERSIONS.get(response.http_version, b"HTTP/1.1")},
        )

    async def aclose(self) -> None:
        await self._session.close()


class TlsH1Transport(H1Transport):
    """Our HTTP/1.1 pool for https: the same connections, each wrapped in asyncio's TLS (ALPN http/1.1)."""

    def __init__(self, *, limits: httpx.Limits, ca_pem: str) -> None:
        super().__init__(limits=limits)
        self._ssl = ssl.create_default_context(cafile=ca_pem)
        self._ssl.set_alpn_protocols(["http/1.1"])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "https":
            raise httpx.UnsupportedProtocol("this prototype speaks https only")
        # H1Transport reads the URL only to pick the origin and write the request line.
        request.url = url.copy_with(scheme="http", port=url.port or 443)
        try:
            return await super().handle_async_request(request)
        finally:
            request.url = url

    async def _checkout(
        self, origin: _Origin, connect_timeout: float | None, pool_timeout: float | None, *, reuse: bool = True
    ) -> _Connection:
        # H1Transport._checkout with ssl= and server_hostname= on create_connection.
        idle = self._idle.get(origin) if reuse else None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not conn.closed and (self._expiry is None or now - conn.idle_since < self._expiry):
                return conn
            self._drop(conn)
        if self._max_open is not None and self._open >= self._max_open:
            try:
                async with asyncio.timeout(pool_timeout):
                    await self._make_room()
            except TimeoutError:
                raise httpx.PoolTimeout(f"no free connection within {pool_timeout:g}s") from None
        self._open += 1
        conn = _Connection(self, origin)
        self._conns.add(conn)
        host, port = origin
        try:
            async with asyncio.timeout(connect_timeout):
                await asyncio.get_running_loop().create_connection(
                    lambda: conn, host, port, ssl=self._ssl, server_hostname=host
                )
        except BaseException as exc:
            self._drop(conn)
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {connect_timeout:g}s") from None
            if isinstance(exc, OSError):
                reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else (exc.strerror or str(exc))
                raise httpx.ConnectError(f"{reason} ({host}:{port})") from exc
            raise
        return conn


def pyreqwest_transport(client: Any) -> httpx.AsyncBaseTransport:
    """pyreqwest's own httpx transport, less two gaps: it sends httpx's Host header next to
    the one hyper writes (nginx answers 400), and leaves the HTTP version out of the response."""
    from pyreqwest.compatibility.httpx import HttpxTransport

    class _Transport(HttpxTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            del request.headers["host"]
            response = await super().handle_async_request(request)
            version = response.extensions["pyreqwest_response"].version
            response.extensions["http_version"] = b"HTTP/2" if version.startswith("HTTP/2") else version.encode()
            return response

    return _Transport(client)
