"""One https response head read as bytes, for a header pyreqwest cannot hand over (a non-ASCII Location).

pyreqwest gives header values only as text of visible ASCII; hyper keeps other bytes, but no
call returns them. The request is then sent once more over a connection of our own (HTTP/1.1
by ALPN, the same address lookup, proxy and trusted CAs) and only the head of the answer is read.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import httpx

from crawler.http.conventions import BEFORE_RESEND, HAPPY_EYEBALLS_DELAY, MAX_HEAD_BYTES, ON_SENT, request_head
from crawler.http.proxies import ProxyError, basic_credentials
from crawler.http.resolver import DnsCache, open_socket


@dataclass(frozen=True, slots=True)
class RawHead:
    status: int
    headers: list[tuple[bytes, bytes]]


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The system's trusted CAs and ca_bundle's, HTTP/1.1 offered by ALPN."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=ca_bundle)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def read_head(
    request: httpx.Request,
    *,
    target: bytes,
    dns: DnsCache,
    context: ssl.SSLContext,
    proxy: httpx.URL | None,
    timeout: float,
) -> RawHead:
    """request sent again (target: its request target), the answer's status and header bytes; the body is not read.

    Raises httpx.TransportError subclasses (ProxyError for a proxy's refusal), as the transports do.
    """
    url = request.url
    host, port = url.raw_host.decode("ascii"), url.port or 443
    before_resend = request.extensions.get(BEFORE_RESEND)
    if before_resend is not None:  # the server saw the request once already: this write takes a turn of its own
        await before_resend()
    try:
        async with asyncio.timeout(timeout):
            if proxy is None:
                sock = await open_socket(dns, host, port, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY)
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=context, server_hostname=host, limit=MAX_HEAD_BYTES
                )
            else:
                reader, writer = await _tunnel(proxy, host, port, context)
            try:
                writer.write(request_head(request, 0, target, b"Connection: close\r\n"))
                on_sent = request.extensions.get(ON_SENT)
                if on_sent is not None:  # ends the turn before_resend took
                    on_sent()
                await writer.drain()
                while True:
                    head = await _read_head(reader)
                    if not 100 <= head.status < 200:  # interim answers (100 Continue, 103 Early Hints) pass
                        return head
            finally:
                writer.close()
    except TimeoutError:
        raise httpx.ReadTimeout(f"no response head from {host}:{port} within {timeout:g}s", request=request) from None
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise httpx.RemoteProtocolError(f"malformed response: {exc}", request=request) from exc
    except ssl.SSLError as exc:
        raise httpx.ConnectError(f"TLS failure: {exc.reason or exc}", request=request) from exc
    except OSError as exc:
        raise httpx.ConnectError(f"{exc.strerror or exc} ({host}:{port})", request=request) from exc


async def _read_head(reader: asyncio.StreamReader) -> RawHead:
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw[:-4].split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:100]!r}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon and name and not name.endswith((b" ", b"\t")):
            headers.append((name, value.strip(b" \t")))
    return RawHead(int(rest[:3]), headers)


async def _tunnel(
    proxy: httpx.URL, host: str, port: int, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to host:port through proxy's CONNECT tunnel."""
    where = f"{proxy.host}:{proxy.port or 80}"
    try:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port or 80, limit=MAX_HEAD_BYTES)
    except OSError as exc:
        raise ProxyError(f"cannot connect to the proxy {where}: {exc.strerror or exc}") from exc
    credentials = basic_credentials(proxy)
    authority = f"{host}:{port}".encode("ascii")
    auth = b"Proxy-Authorization: %s\r\n" % credentials if credentials else b""
    writer.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (authority, authority, auth))
    answer = await _read_head(reader)
    if not 200 <= answer.status < 300:
        writer.close()
        raise ProxyError(f"the proxy {where} refused the tunnel: {answer.status}", status=answer.status)
    await writer.start_tls(context, server_hostname=host)
    return reader, writer
