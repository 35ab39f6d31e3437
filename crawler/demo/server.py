"""The demo's web server: serves a DemoSite on 127.0.0.1, on a free port, from a background thread."""

from __future__ import annotations

import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from crawler.demo.site import DemoSite, build_demo_site

__all__ = ["DemoServer"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the crawler reuses its connections as on a real site
    disable_nagle_algorithm = True  # the head and the body go out in two writes
    timeout = 30  # an idle keep-alive connection gives its thread back
    server: _Server

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        page = self.server.site.get(self.path)
        self.send_response(page.status)
        self.send_header("Content-Type", page.content_type)
        self.send_header("Content-Length", str(len(page.body)))
        if page.location is not None:
            self.send_header("Location", page.location)
        self.end_headers()
        if with_body:
            self.wfile.write(page.body)

    def version_string(self) -> str:
        return "crawler-demo"

    def log_message(self, format: str, *args: object) -> None:
        pass  # the crawl's progress display is the demo's output


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the crawler opens its connections at once; a full backlog stalls a SYN for a second

    def __init__(self, site: DemoSite) -> None:
        self.site = site
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the host name up (getfqdn), which nothing here needs.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


class DemoServer:
    """`with DemoServer() as server:` serves the demo site at `server.url` for the block."""

    def __init__(self, site: DemoSite | None = None) -> None:
        self.site = build_demo_site() if site is None else site
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DemoServer:
        self._httpd = _Server(self.site)
        # A short poll interval, so leaving the block does not wait on serve_forever's select().
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="crawler-demo-server", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None and self._thread is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
        self._httpd = self._thread = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("DemoServer is not serving")
        return self._httpd.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
