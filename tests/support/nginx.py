"""A throwaway nginx for the protocol matrix: a temp prefix and config, free ports on 127.0.0.1, http and https.

It answers the matrix paths nginx can serve by configuration alone (see tests/support/matrix_servers.py
for what each means): /page, /chunked-trailers (sub_filter drops the length, so HTTP/1.1 gets chunks,
and add_trailer adds the trailer), /no-content, /not-modified, /gzip (nginx's gzip filter),
/big-header and /accept-encoding. The https port offers HTTP/2 and HTTP/1.1 by ALPN.

Without nginx the tests that need it skip, except in CI (the environment variable CI set),
where they fail: the matrix must run whole there, so a missing nginx is a fault.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.matrix_servers import BIG_HEADER_BYTES, ETAG, PAGE, TRAILER, Endpoints, Tls

START_ATTEMPTS = 3  # a free port can be taken by someone else between probing and listening
START_TIMEOUT = 10.0  # seconds for nginx to accept connections
_PIECE = 1024  # nginx refuses config tokens above a few KiB, so the big header is built from variables


def find_nginx() -> str | None:
    """The nginx binary, looking in /usr/sbin too (often not on a non-root PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_or_skip() -> str:
    """The nginx binary; skips the test without one, but fails it in CI."""
    binary = find_nginx()
    if binary is None:
        reason = "nginx is not installed (apt-get install nginx)"
        if os.environ.get("CI"):
            pytest.fail(f"nginx is required in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _big_header_directives() -> str:
    assert BIG_HEADER_BYTES % (_PIECE * 10) == 0
    tens = BIG_HEADER_BYTES // (_PIECE * 10)
    return (
        f"      set $piece {'b' * _PIECE};\n      set $ten {'$piece' * 10};\n      add_header X-Big {'$ten' * tens};\n"
    )


def config_text(prefix: Path, http_port: int, https_port: int, tls: Tls) -> str:
    page = prefix / "page.html"
    file_location = f"alias {page};\n      default_type text/html;\n      charset utf-8;\n"
    user = "user root;\n" if os.geteuid() == 0 else ""  # the temp files are the test user's only
    temp_paths = "".join(
        f"  {m}_temp_path {prefix}/{m}_temp;\n" for m in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nmaster_process on;\nworker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
        "events {\n  worker_connections 256;\n}\n"
        "http {\n  access_log off;\n  keepalive_timeout 75s;\n"
        f"{temp_paths}"
        "  server {\n"
        f"    listen 127.0.0.1:{http_port};\n"
        f"    listen 127.0.0.1:{https_port} ssl http2;\n"
        f"    ssl_certificate {tls.cert_pem};\n    ssl_certificate_key {tls.key_pem};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        f"    location = /page {{\n      {file_location}    }}\n"
        f"    location = /chunked-trailers {{\n      {file_location}"
        "      sub_filter '</body>' '</body>';\n"
        f"      add_trailer {TRAILER[0]} {TRAILER[1]};\n    }}\n"
        "    location = /no-content {\n      return 204;\n    }\n"
        f"    location = /not-modified {{\n      add_header ETag '{ETAG}';\n      return 304;\n    }}\n"
        f"    location = /gzip {{\n      {file_location}"
        "      gzip on;\n      gzip_min_length 0;\n    }\n"
        f"    location = /big-header {{\n      {file_location}{_big_header_directives()}    }}\n"
        "    location = /accept-encoding {\n      default_type text/plain;\n"
        "      return 200 $http_accept_encoding;\n    }\n"
        "  }\n}\n"
    )


class Nginx:
    """One nginx master (and its worker) under a temp prefix; stop() ends its process group."""

    def __init__(self, binary: str, prefix: Path, tls: Tls) -> None:
        self.binary = binary
        self.prefix = prefix
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoints = Endpoints("")

    def start(self) -> Nginx:
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "page.html").write_bytes(PAGE)
        failure = ""
        for _ in range(START_ATTEMPTS):
            http_port, https_port = _free_port(), _free_port()
            conf = self.prefix / "nginx.conf"
            conf.write_text(config_text(self.prefix, http_port, https_port, self.tls))
            with open(self.prefix / "stderr.log", "wb") as log:
                self.proc = subprocess.Popen(
                    [self.binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            if self._wait_listening(http_port, https_port):
                self.endpoints = Endpoints(f"http://127.0.0.1:{http_port}", f"https://127.0.0.1:{https_port}")
                return self
            failure = self._log_tail()
            self.stop()
        raise RuntimeError(f"nginx did not start in {START_ATTEMPTS} attempts; last: {failure}")

    def _wait_listening(self, *ports: int) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(ports)
        while pending and time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", pending[0]), timeout=1).close()
                pending.pop(0)
            except OSError:
                time.sleep(0.02)  # polling a child's port: nothing to wait on instead
        return not pending and self.proc.poll() is None

    def _log_tail(self) -> str:
        texts = [(self.prefix / name).read_text(errors="replace") for name in ("error.log", "stderr.log")
                 if (self.prefix / name).exists()]  # fmt: skip
        return " | ".join(t.strip()[-600:] for t in texts if t.strip()) or "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
