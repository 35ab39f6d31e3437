"""Pure-Python fallback for nginx: serve a generated site from memory with aiohttp.

Usage: python bench/pyserver.py [--tls CERT_PEM KEY_PEM] ROOT PORT HOST [HOST ...]

Loads every file under ROOT/<host>/ into memory, then listens on HOST:PORT for each host
(loopback addresses only) and answers GET/HEAD with the file for the path ("/" → index.html),
or 404. The host is chosen by the address the connection arrived on, not by the Host header.
Several copies may run side by side: the sockets use SO_REUSEPORT, so the kernel spreads
connections across them. With --tls it serves https (HTTP/1.1 only). Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

_TYPES = {".html": "text/html", ".txt": "text/plain"}


def load_host(folder: Path) -> dict[str, tuple[bytes, str]]:
    """Map URL path → (body, content type) for every file under one host's folder."""
    files: dict[str, tuple[bytes, str]] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            rel = "/" + path.relative_to(folder).as_posix()
            content_type = _TYPES.get(path.suffix, "application/octet-stream")
            files[rel] = (path.read_bytes(), content_type)
            if rel.endswith("/index.html"):
                files[rel[: -len("index.html")]] = files[rel]
    return files


def make_app(sites: dict[str, dict[str, tuple[bytes, str]]]) -> web.Application:
    """One catch-all handler that picks the host's files by the local socket address."""

    async def handle(request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        files = sites.get(sockname[0] if sockname else "", {})
        found = files.get(request.path)
        if found is None:
            return web.Response(status=404, text="not found\n")
        body, content_type = found
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def serve(root: Path, port: int, hosts: list[str], tls: ssl.SSLContext | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    for host in hosts:
        if not ipaddress.ip_address(host).is_loopback:
            raise SystemExit(f"refusing to listen on non-loopback address {host}")
    sites = {host: load_host(root / host) for host in hosts}
    runner = web.AppRunner(make_app(sites), access_log=None, handle_signals=False)
    await runner.setup()
    for host in hosts:
        await web.TCPSite(runner, host, port, reuse_port=True, backlog=1024, ssl_context=tls).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str]) -> int:
    """Parse ROOT PORT HOST... and serve."""
    tls = None
    if argv[:1] == ["--tls"] and len(argv) >= 3:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(argv[1], argv[2])
        tls.set_alpn_protocols(["http/1.1"])
        argv = argv[3:]
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve(Path(argv[0]), int(argv[1]), argv[2:], tls))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
