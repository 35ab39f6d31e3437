"""Serve a generated site on loopback: nginx if installed, else the aiohttp fallback.

An https site (the TLS twin) is served with a certificate from a private trustme CA that
covers every host address; `Tls.ca_pem` is the file each client must trust. nginx offers
HTTP/2 and HTTP/1.1 by ALPN; the aiohttp fallback speaks HTTP/1.1 only.

Both servers run as child processes in their own session, so the harness can count their
CPU time (to show they are not the bottleneck) and kill them as a group. Only loopback
addresses are ever bound.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from sitegen import Site

WORKER_CONNECTIONS = 4096

BENCH_DIR = Path(__file__).resolve().parent


def find_nginx() -> str | None:
    """The nginx binary, looking in /usr/sbin too (often not on a non-root PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _check_loopback(hosts: tuple[str, ...] | list[str]) -> None:
    for host in hosts:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"refusing to use non-loopback address {host}")


def pick_port(hosts: tuple[str, ...]) -> int:
    """A TCP port that is free on every one of `hosts` (all loopback addresses)."""
    _check_loopback(hosts)
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no TCP port is free on all loopback addresses")


@dataclass(frozen=True, slots=True)
class Tls:
    """The files of a private CA and of one server certificate for a set of loopback addresses."""

    ca_pem: Path  # what clients trust: [http] ca_bundle, SSL_CERT_FILE, an ssl context's cafile
    cert_pem: Path  # the server's certificate, then the chain up to the CA
    key_pem: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the private CA."""
        return ssl.create_default_context(cafile=str(self.ca_pem))


def make_tls(folder: Path, hosts: tuple[str, ...] | list[str]) -> Tls:
    """A new trustme CA and a certificate for every address in `hosts` (IP SANs) and localhost."""
    import trustme  # the bench extra has it; only https sites need it

    _check_loopback(hosts)
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="crawler bench CA")
    cert = ca.issue_cert(*hosts, "localhost")
    tls = Tls(ca_pem=folder / "ca.pem", cert_pem=folder / "server.pem", key_pem=folder / "server.key")
    ca.cert_pem.write_to_path(str(tls.ca_pem))
    cert.private_key_pem.write_to_path(str(tls.key_pem))
    with tls.cert_pem.open("wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    for path in (tls.ca_pem, tls.cert_pem, tls.key_pem):
        path.chmod(0o644)  # nginx workers (run as `nobody` when started by root) read them after start
    return tls


class Server:
    """Base class: a server process (tree) serving one Site; use as a context manager."""

    kind = "server"

    def __init__(self, site: Site, workdir: Path, workers: int, tls: Tls | None = None) -> None:
        self.site = site
        self.workdir = workdir
        self.workers = workers
        self.tls = tls
        self.procs: list[subprocess.Popen[bytes]] = []
        _check_loopback(site.spec.hosts)
        if (site.spec.scheme == "https") != (tls is not None):
            raise ValueError(f"a {site.spec.scheme} site needs {'a' if tls is None else 'no'} certificate")

    def describe(self) -> str:
        """One line naming the server and its worker count."""
        return f"{self.kind} ({self.workers} worker{'s' if self.workers != 1 else ''})"

    def _launch(self) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        """Start the process(es) and wait until every host answers /robots.txt."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._launch()
        deadline = time.monotonic() + timeout
        pending = list(self.site.spec.hosts)
        while pending:
            for proc in self.procs:
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{self.kind} exited early (code {proc.returncode}); {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} not answering after {timeout:.0f} s; {self._log_tail()}")
            if _robots_ok(pending[0], self.site.port, self.tls):
                pending.pop(0)
            else:
                time.sleep(0.05)

    def _log_tail(self) -> str:
        log = self.workdir / "server.log"
        text = log.read_text(errors="replace")[-800:] if log.exists() else ""
        return f"log: {text.strip() or '(empty)'}"

    def tree(self) -> list[psutil.Process]:
        """The live server processes (the children and their descendants)."""
        found: list[psutil.Process] = []
        for proc in self.procs:
            try:
                top = psutil.Process(proc.pid)
                found.append(top)
                found.extend(top.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the live server processes."""
        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        """SIGTERM the process groups, then SIGKILL what is left after 10 s."""
        for proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _robots_ok(host: str, port: int, tls: Tls | None) -> bool:
    conn = (
        http.client.HTTPSConnection(host, port, timeout=1.0, context=tls.client_context())
        if tls is not None
        else http.client.HTTPConnection(host, port, timeout=1.0)
    )
    try:
        conn.request("GET", "/robots.txt")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _open_file_cache_size() -> int:
    """Files nginx may keep open: at most 50,000, and within the descriptors a worker inherits
    beside its connections (a site bigger than the limit ran nginx out of descriptors: 500s)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1000, min(50_000, soft - 2 * WORKER_CONNECTIONS))


class NginxServer(Server):
    """nginx in the foreground (`daemon off`) with a generated config, serving the site's files."""

    kind = "nginx"

    def __init__(self, site: Site, workdir: Path, workers: int, binary: str, tls: Tls | None = None) -> None:
        super().__init__(site, workdir, workers, tls)
        self.binary = binary
        self._build_info = ""

    def _version(self) -> tuple[int, ...]:
        text = subprocess.run([self.binary, "-v"], capture_output=True, text=True).stderr
        found = text.split("nginx/", 1)[-1].split()[0] if "nginx/" in text else "0"
        return tuple(int(p) for p in found.split(".") if p.isdigit())

    def _listen(self, host: str) -> str:
        """The listen directive(s): plain, or TLS with HTTP/2 and HTTP/1.1 offered by ALPN."""
        line = f"    listen {host}:{self.site.port} backlog=4096"
        if self.tls is None:
            return line + ";\n"
        if self._version() >= (1, 25, 1):  # `listen … http2` is deprecated from 1.25.1 on
            return line + " ssl;\n    http2 on;\n"
        return line + " ssl http2;\n"

    def config_text(self) -> str:
        """The nginx.conf: one server block per host address, static files, no access log."""
        w = self.workdir
        temp_paths = "".join(
            f"  {module}_temp_path {w}/{module}_temp;\n"
            for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            if self._has_module(module)
        )
        servers = "".join(
            f"  server {{\n{self._listen(host)}    root {self.site.root / host};\n    index index.html;\n  }}\n"
            for host in self.site.spec.hosts
        )
        tls = ""
        if self.tls is not None:
            tls = (
                f"  ssl_certificate {self.tls.cert_pem};\n  ssl_certificate_key {self.tls.key_pem};\n"
                "  ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_session_cache shared:SSL:10m;\n"
            )
        return (
            "daemon off;\nmaster_process on;\n"
            f"worker_processes {self.workers};\n"
            f"pid {w}/nginx.pid;\nerror_log {w}/server.log warn;\n"
            f"events {{\n  worker_connections {WORKER_CONNECTIONS};\n  multi_accept on;\n}}\n"
            "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n"
            "  keepalive_timeout 75s;\n  keepalive_requests 1000000;\n"
            f"  open_file_cache max={_open_file_cache_size()} inactive=120s;\n"
            "  types {\n    text/html html;\n    text/plain txt;\n  }\n"
            "  default_type application/octet-stream;\n"
            f"{tls}{temp_paths}{servers}}}\n"
        )

    def _has_module(self, module: str) -> bool:
        """Whether this nginx build has the module whose temp path we would set."""
        if not self._build_info:
            self._build_info = subprocess.run([self.binary, "-V"], capture_output=True, text=True).stderr
        return module == "client_body" or f"--without-http_{module}_module" not in self._build_info

    def _launch(self) -> None:
        # The site folders must be world-readable: nginx started by root serves as `nobody`.
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config_text())
        log = open(self.workdir / "server.stderr", "wb")  # noqa: SIM115 - handed to the child
        with log:
            self.procs.append(
                subprocess.Popen(
                    [self.binary, "-p", str(self.workdir), "-e", str(self.workdir / "server.log"), "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )


class PythonServer(Server):
    """`workers` copies of bench/pyserver.py sharing the ports through SO_REUSEPORT."""

    kind = "aiohttp-server"

    def _launch(self) -> None:
        cmd = [sys.executable, str(BENCH_DIR / "pyserver.py")]
        if self.tls is not None:
            cmd += ["--tls", str(self.tls.cert_pem), str(self.tls.key_pem)]
        cmd += [str(self.site.root), str(self.site.port), *self.site.spec.hosts]
        with open(self.workdir / "server.log", "ab") as log:
            for _ in range(self.workers):
                self.procs.append(
                    subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
                )
