"""What each candidate engine of bench/https_engines.py can do, checked against loopback servers.

    .venv/bin/python bench/engine_features.py [--only a,b]

For each engine under the one httpx client (and aiohttp alone), against an aiohttp server
(https from a private trustme CA, and plain http) and a forward proxy on loopback that wants
Basic credentials:
  raw gzip     a gzip body arrives still compressed (we decode it ourselves, bounded);
  early close  closing a 20 MB response after its first chunk returns at once;
  proxy http   a plain http request forwarded by the proxy, credentials from the proxy URL;
  proxy https  an https request through CONNECT, credentials from the proxy URL.
Prints one markdown table. HTTP/2 against nginx is shown by bench/https_engines.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from https_engines import ENGINES, _transport  # noqa: E402
from servers import make_tls  # noqa: E402

CREDENTIALS = ("bench", "s3cret")
GZIPPED = gzip.compress(b"<p>hello</p>" * 5000)
BIG = 20 * 2**20


class Proxy:
    """A forward proxy on 127.0.0.1: CONNECT tunnels and absolute-form plain requests, Basic auth required."""

    def __init__(self) -> None:
        self.connects = 0
        self.forwards = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, with_credentials: bool = True) -> str:
        auth = f"{CREDENTIALS[0]}:{CREDENTIALS[1]}@" if with_credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
            wanted = "Basic " + base64.b64encode(":".join(CREDENTIALS).encode()).decode()
            if headers.get("proxy-authorization") != wanted:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                self.connects += 1
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            url = httpx.URL(target)
            up_reader, up_writer = await asyncio.open_connection(url.host, url.port or 80)
            self.forwards += 1
            kept = [x for x in lines[1:] if x and not x.lower().startswith(("proxy-", "connection:"))]
            up_writer.write(
                f"{method} {url.raw_path.decode()} HTTP/1.1\r\n".encode()
                + "".join(f"{x}\r\n" for x in kept).encode()
                + b"Connection: close\r\n\r\n"
            )
            await _pipe(up_reader, writer)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def _app() -> web.Application:
    async def gz(request: web.Request) -> web.Response:
        return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "text/html"})

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(BIG), "Content-Type": "text/html"})
        await response.prepare(request)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(BIG // len(chunk)):
                await response.write(chunk)
        return response

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<p>ok</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/gz", gz)
    app.router.add_get("/big", big)
    app.router.add_get("/page", page)
    return app


@contextlib.asynccontextmanager
async def _servers(folder: Path) -> AsyncIterator[tuple[str, str, str]]:
    """An https and a plain http server of the same app; yields (https base, http base, CA file)."""
    tls = make_tls(folder, ["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_pem, tls.key_pem)
    runner = web.AppRunner(_app(), access_log=None)
    await runner.setup()
    secure = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    await secure.start()
    await plain.start()
    ports = [s._server.sockets[0].getsockname()[1] for s in (secure, plain)]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", str(tls.ca_pem)
    finally:
        await runner.cleanup()


def _proxied_transport(engine: str, ca_pem: str, proxy_url: str) -> Any:
    """The engine's transport sending everything through `proxy_url`, or None if it has no proxy support."""
    verify = ssl.create_default_context(cafile=ca_pem)
    if engine in ("httpcore", "httpcore-h1"):
        return httpx.AsyncHTTPTransport(http2=engine == "httpcore", verify=verify, proxy=httpx.Proxy(proxy_url))
    if engine == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(verify=verify, proxy=httpx.Proxy(proxy_url))
    if engine == "curl_cffi":
        from engine_adapters import CurlTransport

        return CurlTransport(max_clients=4, ca_pem=ca_pem, proxy=proxy_url)
    if engine == "pyreqwest":
        from engine_adapters import pyreqwest_transport
        from pyreqwest.client import ClientBuilder
        from pyreqwest.proxy import ProxyBuilder

        builder = ClientBuilder().http2(True).add_root_certificate_pem(Path(ca_pem).read_bytes()).gzip(False)
        return pyreqwest_transport(builder.proxy(ProxyBuilder.all(proxy_url)).build())
    return None  # ours-tls: no proxy support


async def _check(engine: str, https: str, http: str, ca_pem: str, proxy: Proxy) -> dict[str, str]:
    found: dict[str, str] = {}
    if engine == "aiohttp-bare":
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca_pem))
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            async with session.get(https + "/gz") as r:
                found["raw gzip"] = "yes" if (await r.content.read(2)) == b"\x1f\x8b" else "no"
            started = time.perf_counter()
            async with session.get(https + "/big") as r:
                await r.content.readany()
            found["early close"] = f"yes ({(time.perf_counter() - started) * 1000:.0f} ms)"
            for label, base in (("proxy http", http), ("proxy https", https)):
                before = proxy.connects + proxy.forwards
                try:
                    async with session.get(base + "/page", proxy=proxy.url()) as r:
                        ok = r.status == 200 and proxy.connects + proxy.forwards > before
                    found[label] = "yes" if ok else f"no (status {r.status})"
                except Exception as exc:
                    found[label] = f"no ({type(exc).__name__})"
        return found
    async with httpx.AsyncClient(transport=_transport(engine, ca_pem, 4)) as client:  # type: ignore[arg-type]
        async with client.stream("GET", https + "/gz", headers={"Accept-Encoding": "gzip"}) as r:
            raw = b"".join([c async for c in r.aiter_raw()])
            found["raw gzip"] = "yes" if raw[:2] == b"\x1f\x8b" else "no (decoded by the engine)"
        started = time.perf_counter()
        async with client.stream("GET", https + "/big") as r:
            async for _ in r.aiter_raw():
                break
        found["early close"] = f"yes ({(time.perf_counter() - started) * 1000:.0f} ms)"
    for label, base in (("proxy http", http), ("proxy https", https)):
        transport = _proxied_transport(engine, ca_pem, proxy.url())
        if transport is None or (engine == "ours-tls"):
            found[label] = "no"
            continue
        before = proxy.connects + proxy.forwards
        try:
            async with httpx.AsyncClient(transport=transport) as client:
                r = await client.get(base + "/page")
            ok = r.status_code == 200 and proxy.connects + proxy.forwards > before
            found[label] = "yes" if ok else f"no (status {r.status_code})"
        except Exception as exc:
            found[label] = f"no ({type(exc).__name__}: {str(exc)[:60]})"
    return found


async def run(engines: list[str]) -> None:
    proxy = Proxy()
    await proxy.start()
    with tempfile.TemporaryDirectory(prefix="engine-features-") as tmp:
        async with _servers(Path(tmp)) as (https, http, ca_pem):
            columns = ("raw gzip", "early close", "proxy http", "proxy https")
            print("| engine | " + " | ".join(columns) + " |")
            print("|---|" + "---|" * len(columns))
            for engine in engines:
                try:
                    found = await _check(engine, https, http, ca_pem, proxy)
                except Exception as exc:
                    found = {"raw gzip": f"error {exc!r}"[:80]}
                print(f"| {engine} | " + " | ".join(found.get(c, "") for c in columns) + " |")
    await proxy.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ENGINES))
    args = parser.parse_args()
    asyncio.run(run([e for e in args.only.split(",") if e]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
